use std::time::Duration;

use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::batch::{BatchError, Batcher};
use crate::relay::push_delivery;
use crate::store::{self, Enqueued, JobRow, NewJob};
use crate::{JobPayload, Policies};

/// Concurrent standalone enqueues share one insert, up to this many rows.
const MAX_ENQUEUE_BATCH: usize = 64;

/// What the api and the scheduler enqueue through.
#[derive(Clone)]
pub struct JobClient {
    redis: ConnectionManager,
    policies: Policies,
    inserts: Batcher<JobRow, Enqueued>,
}

impl JobClient {
    /// Needs a Tokio runtime: it starts the task that writes batched enqueues.
    pub fn new(pool: PgPool, redis: ConnectionManager, policies: Policies) -> Self {
        // No linger: an enqueue is on a request's path.
        let inserts = Batcher::spawn(MAX_ENQUEUE_BATCH, Duration::ZERO, move |rows| {
            let pool = pool.clone();
            async move {
                let mut conn = pool.acquire().await?;
                store::insert(&mut conn, rows).await
            }
        });
        Self {
            redis,
            policies,
            inserts,
        }
    }

    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// Enqueues a job that belongs to no other write, and starts it at once. It is
    /// durable when this returns. For a job that belongs with other data, call
    /// [`store::enqueue`] in that transaction and, after commit, [`JobClient::dispatch`].
    pub async fn enqueue<P: JobPayload>(&self, job: NewJob<P>) -> Result<Enqueued, BatchError> {
        let row = JobRow::new(&self.policies, job)?;
        let enqueued = self.inserts.call(row).await?;
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
