//! The relay: moves job deliveries that may not be in Redis yet (`pushed_at IS
//! NULL`, due) to Redis. Enqueuers push at once after their commit
//! ([`crate::JobClient::dispatch`]); this sweep is what guarantees delivery when
//! that push never happened (a crash, a Redis blip) and what starts delayed retries.
//!
//! Several relays may run (every api and worker process runs one); `FOR UPDATE
//! SKIP LOCKED` gives each row to one of them, and the row is marked pushed in the
//! transaction that saw the Redis push succeed. Pushing a delivery twice is
//! harmless: the push script stores a delivery id once, and `claim` runs a
//! delivery once.

use std::time::Duration;

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::Queue;
use crate::transport::{Delivery, push_jobs};

const BATCH: i64 = 500;

/// How often the sweep runs: how soon a retry that fell due reaches Redis.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// A fresh job was pushed by its enqueuer and is normally claimed (and so marked)
/// within milliseconds; the sweep leaves it alone this long rather than re-lock
/// and re-write every new row. A job whose immediate push failed waits this long.
pub const SWEEP_GRACE: Duration = Duration::from_secs(3);

pub struct Relay {
    pool: PgPool,
    redis: ConnectionManager,
}

impl Relay {
    pub fn new(pool: PgPool, redis: ConnectionManager) -> Self {
        Self { pool, redis }
    }

    /// Sweeps until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            match self.drain().await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    // The first failure and then every 20th, so an outage is
                    // visible without flooding the log.
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(error = %e, failures, "relay could not move deliveries to Redis");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    }

    /// Moves every due, unpushed delivery to Redis; returns how many.
    pub async fn drain(&mut self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let moved = self.relay_batch().await?;
            total += moved;
            if moved < BATCH as usize {
                return Ok(total);
            }
        }
    }

    async fn relay_batch(&mut self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query!(
            r#"SELECT delivery_id, id, queue AS "queue: Queue" FROM jobs
               WHERE state = 'queued' AND pushed_at IS NULL AND run_after <= now()
                 AND (attempts > 0 OR waiting_for IS NOT NULL
                      OR updated_at < now() - make_interval(secs => $2))
               ORDER BY run_after LIMIT $1 FOR UPDATE SKIP LOCKED"#,
            BATCH,
            SWEEP_GRACE.as_secs_f64(),
        )
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let deliveries: Vec<(Queue, Delivery)> = rows
            .into_iter()
            .map(|row| {
                (
                    row.queue,
                    Delivery {
                        job_id: row.id,
                        delivery_id: row.delivery_id,
                    },
                )
            })
            .collect();
        push_jobs(&mut self.redis, &deliveries).await?;
        let pushed: Vec<String> = deliveries.into_iter().map(|(_, d)| d.job_id).collect();
        crate::store::mark_pushed(&mut *tx, &pushed).await?;
        tx.commit().await?;
        Ok(pushed.len())
    }
}
