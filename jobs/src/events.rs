//! Realtime events for users (job state changes, notifications), published on
//! one Redis channel per user. Every api process subscribes to the pattern and
//! forwards each event only to that user's open WebSockets. Pub/sub is
//! fire-and-forget: a lost event loses only the live push, never the state,
//! which is in Postgres.

use redis::aio::ConnectionManager;
use uuid::Uuid;

pub const PATTERN: &str = "berth:events:*";

/// Workers listen here for the ids of running jobs to cancel.
pub const CANCEL_CHANNEL: &str = "berth:jobs:cancel";

/// Tells whichever worker runs `job_id` to stop it. Fire-and-forget: workers
/// also poll `cancel_requested_at`, so a lost message only delays the stop.
pub async fn publish_cancel(redis: &ConnectionManager, job_id: &str) {
    let sent: Result<i64, redis::RedisError> = redis::cmd("PUBLISH")
        .arg(CANCEL_CHANNEL)
        .arg(job_id)
        .query_async(&mut redis.clone())
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cancellation not published; workers poll for it");
    }
}
const PREFIX: &str = "berth:events:";

pub fn channel(user_id: Uuid) -> String {
    format!("{PREFIX}{user_id}")
}

/// The user a channel belongs to.
pub fn user_of(channel: &str) -> Option<Uuid> {
    channel.strip_prefix(PREFIX)?.parse().ok()
}

pub async fn publish(redis: &ConnectionManager, user_id: Uuid, event: &serde_json::Value) {
    let sent: Result<i64, redis::RedisError> = redis::cmd("PUBLISH")
        .arg(channel(user_id))
        .arg(event.to_string())
        .query_async(&mut redis.clone())
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "realtime event not published");
    }
}

/// What a job acts on, so a client can tell which server's or deployment's
/// view a job event updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobTargets {
    pub server_id: Option<Uuid>,
    pub deployment_id: Option<Uuid>,
}

/// A job's new state, as the WebSocket carries it.
pub fn job_event(
    job_id: &str,
    kind: &str,
    state: &str,
    attempts: i32,
    error: Option<&str>,
    targets: JobTargets,
) -> serde_json::Value {
    serde_json::json!({
        "type": "job",
        "data": {
            "id": job_id, "kind": kind, "state": state, "attempts": attempts, "error": error,
            "serverId": targets.server_id, "deploymentId": targets.deployment_id,
        },
    })
}
