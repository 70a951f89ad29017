use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::relay::push_delivery;
use crate::store::{self, Enqueued, NewJob};
use crate::{JobPayload, Policies};

/// What the api and the scheduler enqueue through.
#[derive(Clone)]
pub struct JobClient {
    pool: PgPool,
    redis: ConnectionManager,
    policies: Policies,
}

impl JobClient {
    pub fn new(pool: PgPool, redis: ConnectionManager, policies: Policies) -> Self {
        Self {
            pool,
            redis,
            policies,
        }
    }

    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// Enqueues a job that belongs to no other write, and starts it at once.
    /// For a job that belongs with other data, call [`store::enqueue`] on that
    /// transaction and, after commit, [`JobClient::dispatch`].
    pub async fn enqueue<P: JobPayload>(&self, job: NewJob<P>) -> Result<Enqueued, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let enqueued = store::enqueue(&mut conn, &self.policies, job).await?;
        drop(conn);
        self.dispatch(&enqueued).await;
        Ok(enqueued)
    }

    /// Pushes a committed job's delivery to Redis now rather than at the relay's
    /// next sweep. A failure only delays the job: the sweep pushes it.
    pub async fn dispatch(&self, enqueued: &Enqueued) {
        let Some(delivery_id) = &enqueued.delivery_id else {
            return;
        };
        let mut redis = self.redis.clone();
        if let Err(e) = push_delivery(&mut redis, enqueued.queue, &enqueued.id, delivery_id).await {
            tracing::warn!(job.id = %enqueued.id, error = %e, "immediate push failed; the relay will push the job");
        }
    }
}
