//! Upkeep: the aggregates behind `/metrics`, pruning, and reconciling jobs
//! no worker will finish.

use std::time::Duration;

use sqlx::PgPool;
use ulid::Ulid;

use super::*;

/// One row of the job aggregates behind `/metrics`: jobs of a kind in a state, and
/// for finished ones their duration bucket (index into [`DURATION_BUCKETS`] as
/// Postgres' `width_bucket` counts: 0 below the first bound); -1 for unfinished.
#[derive(Debug, Clone)]
pub struct JobStat {
    pub kind: String,
    /// `None` for the totals pruning folded in (kept per kind only).
    pub queue: Option<String>,
    pub state: String,
    pub bucket: i32,
    pub jobs: i64,
    pub duration_seconds_sum: f64,
}

/// Live jobs plus the totals folded in by pruning, so the finished counters never
/// go down when old rows are deleted.
pub async fn stats(pool: &PgPool) -> Result<Vec<JobStat>, sqlx::Error> {
    sqlx::query_as!(
        JobStat,
        r#"
        SELECT kind AS "kind!", queue, state AS "state!", bucket AS "bucket!", SUM(n)::bigint AS "jobs!",
               SUM(s)::float8 AS "duration_seconds_sum!" FROM (
            SELECT kind, queue, state,
                   CASE WHEN finished_at IS NULL THEN -1
                        ELSE width_bucket(COALESCE(EXTRACT(EPOCH FROM finished_at - started_at)::float8, 0), $1::float8[])
                   END AS bucket,
                   count(*) AS n,
                   COALESCE(SUM(EXTRACT(EPOCH FROM finished_at - started_at)::float8), 0) AS s
            FROM jobs GROUP BY 1, 2, 3, 4
            UNION ALL
            SELECT kind, NULL, outcome, bucket, finished, duration_seconds_sum FROM job_outcome_totals
        ) AS all_jobs
        GROUP BY 1, 2, 3, 4
        "#,
        &DURATION_BUCKETS[..],
    )
    .fetch_all(pool)
    .await
}

/// Deletes finished jobs (and schedule ticks) older than `retention`, folding the
/// deleted jobs into `job_outcome_totals` in the same statement. Works in bounded
/// batches so a large backlog never holds long locks. Returns jobs deleted.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    const BATCH: i64 = 5000;
    let mut deleted = 0u64;
    loop {
        let n: i64 = sqlx::query_scalar!(r#"
            WITH doomed AS (
                SELECT id FROM jobs
                WHERE finished_at < now() - make_interval(secs => $1)
                ORDER BY id LIMIT $3
                FOR UPDATE SKIP LOCKED
            ), gone AS (
                DELETE FROM jobs j USING doomed d WHERE j.id = d.id
                RETURNING j.kind, j.state,
                    COALESCE(EXTRACT(EPOCH FROM j.finished_at - j.started_at)::float8, 0) AS secs
            ), folded AS (
                INSERT INTO job_outcome_totals AS t (kind, outcome, bucket, finished, duration_seconds_sum)
                SELECT kind, state, width_bucket(secs, $2::float8[]), count(*), SUM(secs)
                FROM gone GROUP BY 1, 2, 3
                ON CONFLICT (kind, outcome, bucket) DO UPDATE
                SET finished = t.finished + EXCLUDED.finished,
                    duration_seconds_sum = t.duration_seconds_sum + EXCLUDED.duration_seconds_sum
            )
            SELECT count(*) AS "deleted!" FROM gone
            "#, retention.as_secs_f64(), &DURATION_BUCKETS[..], BATCH)
        .fetch_one(pool)
        .await?;
        deleted += n as u64;
        if n < BATCH {
            break;
        }
    }
    sqlx::query!(
        "DELETE FROM schedule_ticks WHERE tick < now() - make_interval(secs => $1)",
        retention.as_secs_f64()
    )
    .execute(pool)
    .await?;
    Ok(deleted)
}

/// What the reconciler did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    pub requeued: u64,
}

/// Finds jobs no worker will ever finish and re-issues them:
/// - `running` longer than their timeout plus `grace`: the worker died and its Redis
///   task was lost;
/// - `queued`, pushed to Redis but untouched for `lost_after`: the delivery was
///   lost (e.g. Redis restarted without persistence).
///
/// Re-issuing gives a new delivery id, so a late original delivery is refused by
/// [`claim`] and the job still runs once per attempt. A job already at its cap
/// is re-issued too and fails at its next claim, in a worker, the one place a
/// job fails: so its queue's failure hook hears of it (a server whose
/// validation died there is not left `pending`).
pub async fn reconcile(
    pool: &PgPool,
    grace: Duration,
    lost_after: Duration,
) -> Result<Reconciled, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let stuck: Vec<String> = sqlx::query_scalar!(
        r#"
        SELECT id FROM jobs
        WHERE (state = 'running'
               AND started_at < now() - make_interval(secs => timeout_ms / 1000.0 + $1::float8))
           OR (state = 'queued' AND pushed_at IS NOT NULL
               AND updated_at < now() - make_interval(secs => $2))
        LIMIT 1000
        FOR UPDATE SKIP LOCKED
        "#,
        grace.as_secs_f64(),
        lost_after.as_secs_f64()
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut outcome = Reconciled::default();
    for id in stuck {
        sqlx::query!(
            "UPDATE jobs SET state = 'queued', delivery_id = $2, pushed_at = NULL, worker = NULL, \
                 updated_at = now() WHERE id = $1",
            &id,
            Ulid::generate().to_string()
        )
        .execute(&mut *tx)
        .await?;
        outcome.requeued += 1;
    }
    // A job whose cancellation was asked for while it ran, and that is back
    // in the queue (its worker died or retried it first), is not run again.
    sqlx::query!(
        "UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now() \
         WHERE state = 'queued' AND cancel_requested_at IS NOT NULL"
    )
    .execute(&mut *tx)
    .await?;
    // A claim that took a key or a slot but lost its row to a concurrent
    // change (a cancel between the two) leaves it with a job that is not
    // running. (A job put back holding its key while it waits for a slot
    // loses that key here too; it is still first in the key's line and takes
    // it again at its next claim.)
    sqlx::query!(
        "DELETE FROM job_keys k USING jobs j WHERE j.id = k.job_id AND j.state <> 'running'"
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM job_slots s USING jobs j WHERE j.id = s.job_id AND j.state <> 'running'"
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(outcome)
}
