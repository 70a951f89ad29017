//! Periodic clean-up driven by `berth-scheduler`.

use std::time::Duration;

use apalis_core::backend::Vacuum;
use apalis_redis::RedisStorage;
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::transport::{Delivery, apalis_config};
use crate::{Queue, store};

/// Postgres is the record of every job; Redis keeps a finished delivery's task
/// data only this long.
pub const REDIS_TASK_RETENTION: Duration = Duration::from_secs(3600);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub redis_tasks: u64,
}

/// Deletes finished jobs older than `retention` (their outcomes stay counted in
/// the metrics) and finished task data in Redis older than an hour. apalis'
/// `vacuum()` is never used: it also deletes tasks waiting for a retry.
pub async fn prune(
    pool: &PgPool,
    redis: &ConnectionManager,
    retention: Duration,
) -> anyhow::Result<Pruned> {
    let jobs = store::prune(pool, retention).await?;
    let mut redis_tasks = 0u64;
    for queue in Queue::ALL {
        let config = apalis_config(queue);
        let mut storage =
            RedisStorage::<Delivery, _>::new(redis.clone()).with_config(config.clone());
        redis_tasks += storage.vacuum_before(REDIS_TASK_RETENTION).await? as u64;
        // The done and dead sets only list ids, are never read by apalis' fetch,
        // and would otherwise grow forever.
        let mut conn = redis.clone();
        redis::cmd("UNLINK")
            .arg(config.done_jobs_set())
            .arg(config.dead_jobs_set())
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(Pruned { jobs, redis_tasks })
}
