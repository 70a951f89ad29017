//! The platform's maintenance mode, a Redis key every api process reads on
//! each write: while it is set, writes answer 503 and reads keep working. A
//! restore sets it with an expiry past its job's timeout, so a worker that
//! dies mid-restore cannot leave the platform read-only for good.

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

const KEY: &str = "berth:maintenance";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// Shown to callers whose writes are refused.
    pub reason: String,
    /// The job that set it.
    pub job_id: String,
    pub since: DateTime<Utc>,
}

pub async fn enter(
    redis: &ConnectionManager,
    maintenance: &Maintenance,
    expires_after: std::time::Duration,
) -> redis::RedisResult<()> {
    let value = serde_json::to_string(maintenance).expect("maintenance serializes");
    redis::cmd("SET")
        .arg(KEY)
        .arg(value)
        .arg("PX")
        .arg(expires_after.as_millis().max(1) as u64)
        .query_async(&mut redis.clone())
        .await
}

/// Ends the maintenance `job_id` began (one another job began is left).
pub async fn leave(redis: &ConnectionManager, job_id: &str) -> redis::RedisResult<()> {
    if current(redis).await?.is_some_and(|m| m.job_id == job_id) {
        redis::cmd("DEL")
            .arg(KEY)
            .query_async::<i64>(&mut redis.clone())
            .await?;
    }
    Ok(())
}

pub async fn current(redis: &ConnectionManager) -> redis::RedisResult<Option<Maintenance>> {
    let value: Option<String> = redis::cmd("GET")
        .arg(KEY)
        .query_async(&mut redis.clone())
        .await?;
    Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
}
