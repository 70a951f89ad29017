//! Realtime events for users (job state changes, notifications), published on
//! one Redis channel per user. Every api process subscribes to the pattern and
//! forwards each event only to that user's open WebSockets. Pub/sub is
//! fire-and-forget: a lost event loses only the live push, never the state,
//! which is in Postgres.

use redis::aio::ConnectionManager;
use serde::Serialize;
use uuid::Uuid;

pub const PATTERN: &str = "berth:events:*";

/// Workers listen here for the ids of running jobs to cancel.
pub const CANCEL_CHANNEL: &str = "berth:jobs:cancel";

/// Publishes `payload` on `channel`; a failure is logged as `unsent`.
/// Every message here is a hint with a slower path behind it (a poll, a
/// re-check), so none is retried.
async fn send(
    redis: &ConnectionManager,
    channel: impl redis::ToRedisArgs,
    payload: impl redis::ToRedisArgs,
    unsent: &str,
) {
    let sent: Result<i64, redis::RedisError> = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(&mut redis.clone())
        .await;
    if let Err(e) = sent {
        tracing::warn!(error = %e, "{unsent}");
    }
}

/// Tells whichever worker runs `job_id` to stop it. Fire-and-forget: workers
/// also poll `cancel_requested_at`, so a lost message only delays the stop.
pub async fn publish_cancel(redis: &ConnectionManager, job_id: &str) {
    send(
        redis,
        CANCEL_CHANNEL,
        job_id,
        "cancellation not published; workers poll for it",
    )
    .await;
}
const PREFIX: &str = "berth:events:";

pub fn channel(user_id: Uuid) -> String {
    format!("{PREFIX}{user_id}")
}

/// The user a channel belongs to.
pub fn user_of(channel: &str) -> Option<Uuid> {
    channel.strip_prefix(PREFIX)?.parse().ok()
}

pub async fn publish(redis: &ConnectionManager, user_id: Uuid, event: &RealtimeEvent) {
    send(
        redis,
        channel(user_id),
        event.to_json(),
        "realtime event not published",
    )
    .await;
}

/// What a job acts on, so a client can tell which server's or deployment's
/// view a job event updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobTargets {
    pub server_id: Option<Uuid>,
    pub deployment_id: Option<Uuid>,
}

/// Everything the realtime channel carries, as `{type, data}`: the one shape
/// of every event, whoever publishes it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum RealtimeEvent {
    /// A job's new state (on its owner's channel).
    Job {
        id: String,
        kind: String,
        state: String,
        attempts: i32,
        error: Option<String>,
        #[serde(flatten)]
        targets: JobTargets,
    },
    /// New lines of a job's log (on the job's topic).
    JobLog {
        #[serde(rename = "jobId")]
        job_id: String,
        lines: Vec<crate::joblog::LogLine>,
    },
    /// A notification (an alert, a changed host key) for its user.
    Notification {
        id: Option<Uuid>,
        kind: String,
        title: String,
        body: String,
        data: serde_json::Value,
        #[serde(rename = "createdAt")]
        created_at: chrono::DateTime<chrono::Utc>,
    },
    /// An administrator's announcement, to every open socket.
    Announcement {
        message: String,
        #[serde(rename = "createdAt")]
        created_at: chrono::DateTime<chrono::Utc>,
    },
}

impl RealtimeEvent {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("events serialize")
    }
}

/// A job's new state, as the WebSocket carries it.
pub fn job_event(
    job_id: &str,
    kind: &str,
    state: &str,
    attempts: i32,
    error: Option<&str>,
    targets: JobTargets,
) -> RealtimeEvent {
    RealtimeEvent::Job {
        id: job_id.to_owned(),
        kind: kind.to_owned(),
        state: state.to_owned(),
        attempts,
        error: error.map(str::to_owned),
        targets,
    }
}

/// Topics beyond "this user": a job's log, later a deployment's. Each api
/// process follows [`TOPIC_PATTERN`] and hands a topic's events only to
/// sockets that subscribed to it after the api checked they may read it.
pub const TOPIC_PATTERN: &str = "berth:topics:*";
const TOPIC_PREFIX: &str = "berth:topics:";

pub fn topic_channel(topic: &str) -> String {
    format!("{TOPIC_PREFIX}{topic}")
}

pub fn topic_of(channel: &str) -> Option<&str> {
    channel.strip_prefix(TOPIC_PREFIX)
}

/// The topic of a project's job events: every member may follow it.
pub fn project_topic(project_id: Uuid) -> String {
    format!("project:{project_id}")
}

/// Where the api says whose access to a project just narrowed, so every api
/// process drops the topics its sockets followed through it.
pub const ACCESS_CHANNEL: &str = "berth:access";

/// A narrowing of access: the sockets of `user` (everyone's when `None`)
/// lose what they followed through `project` (only `deployment`'s things,
/// when it is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    pub project: Uuid,
    pub user: Option<Uuid>,
    pub deployment: Option<Uuid>,
}

impl Revocation {
    /// The project is gone: everyone loses it.
    pub fn project(project: Uuid) -> Self {
        Self {
            project,
            user: None,
            deployment: None,
        }
    }

    /// `user` left or was removed.
    pub fn member(project: Uuid, user: Uuid) -> Self {
        Self {
            project,
            user: Some(user),
            deployment: None,
        }
    }

    /// `deployment` moved out of the project.
    pub fn deployment(project: Uuid, deployment: Uuid) -> Self {
        Self {
            project,
            user: None,
            deployment: Some(deployment),
        }
    }
}

pub async fn publish_revocation(redis: &ConnectionManager, revocation: &Revocation) {
    send(
        redis,
        ACCESS_CHANNEL,
        serde_json::to_string(revocation).expect("revocations serialize"),
        "access revocation not published",
    )
    .await;
}

/// The topic of a job's log.
pub fn job_topic(job_id: &str) -> String {
    format!("job:{job_id}")
}

pub async fn publish_topic(redis: &ConnectionManager, topic: &str, event: &RealtimeEvent) {
    send(
        redis,
        topic_channel(topic),
        event.to_json(),
        "realtime event not published",
    )
    .await;
}

/// Every api process hands what is published here to every open socket.
pub const BROADCAST_CHANNEL: &str = "berth:broadcast";

pub async fn publish_broadcast(redis: &ConnectionManager, event: &RealtimeEvent) {
    send(
        redis,
        BROADCAST_CHANNEL,
        event.to_json(),
        "announcement not published",
    )
    .await;
}

/// Every api process closes the sockets of the user published here at once:
/// the account was suspended or deleted.
pub const SIGNED_OUT_CHANNEL: &str = "berth:signed-out";

pub async fn publish_signed_out(redis: &ConnectionManager, user: Uuid) {
    // Each socket still re-checks its session within half a minute.
    send(
        redis,
        SIGNED_OUT_CHANNEL,
        user.to_string(),
        "sign-out not published",
    )
    .await;
}

/// A restore replaced the database and ended every connection to it: each
/// api process replaces the pooled connections opened before it heard this,
/// so no request meets a connection the restore cut.
pub const DATABASE_RESTORED_CHANNEL: &str = "berth:database-restored";

pub async fn publish_database_restored(redis: &ConnectionManager) {
    send(
        redis,
        DATABASE_RESTORED_CHANNEL,
        "restored",
        "the restore's end not published",
    )
    .await;
}
