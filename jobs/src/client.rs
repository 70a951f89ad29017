use std::time::Duration;

use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::batch::{BatchError, Batcher};
use crate::store::{self, Enqueued, JobRow, NewJob};
use crate::transport::{Delivery, push_jobs};
use crate::{JobPayload, Policies, Queue};

/// Concurrent standalone enqueues share one insert, and concurrent pushes one
/// Redis call, up to this many jobs.
const MAX_BATCH: usize = 64;

/// What the api and the scheduler enqueue through. Enqueues are written and pushed
/// in two pipelined stages, each batching whatever arrives while it is busy; no
/// stage lingers, since an enqueue is on a request's path.
#[derive(Clone)]
pub struct JobClient {
    policies: Policies,
    inserts: Batcher<JobRow, Enqueued>,
    pushes: Batcher<Enqueued, ()>,
}

impl JobClient {
    /// Needs a Tokio runtime: it starts the tasks that write the batches.
    pub fn new(pool: PgPool, redis: ConnectionManager, policies: Policies) -> Self {
        let inserts = Batcher::spawn(MAX_BATCH, Duration::ZERO, move |rows| {
            let pool = pool.clone();
            async move {
                let mut conn = pool.acquire().await?;
                store::insert(&mut conn, rows).await
            }
        });
        let pushes = Batcher::spawn(MAX_BATCH, Duration::ZERO, move |jobs: Vec<Enqueued>| {
            let redis = redis.clone();
            async move {
                push_now(redis, &jobs).await;
                Ok(vec![(); jobs.len()])
            }
        });
        Self {
            policies,
            inserts,
            pushes,
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
    /// next sweep, which pushes it anyway if this fails.
    pub async fn dispatch(&self, enqueued: &Enqueued) {
        if enqueued.created() {
            let _ = self.pushes.call(enqueued.clone()).await;
        }
    }
}

/// Pushes new jobs' deliveries to Redis. A failure only delays them: the relay's
/// sweep pushes (and marks) whatever is not marked pushed.
async fn push_now(mut redis: ConnectionManager, enqueued: &[Enqueued]) {
    let deliveries: Vec<(Queue, Delivery)> = enqueued
        .iter()
        .filter_map(|job| {
            let delivery_id = job.delivery_id.clone()?;
            Some((
                job.queue,
                Delivery {
                    job_id: job.id.clone(),
                    delivery_id,
                },
            ))
        })
        .collect();
    if let Err(e) = push_jobs(&mut redis, &deliveries).await {
        tracing::warn!(error = %e, jobs = deliveries.len(), "immediate push failed; the relay will push these jobs");
    }
}
