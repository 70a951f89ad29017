//! Cancelling: a queued job at once, a running one by asking its worker.

use sqlx::{PgConnection, PgPool};

/// What a cancellation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued: it is `cancelled` now, and never runs.
    Cancelled,
    /// It is running: its worker is asked to stop it (and its remote
    /// commands); it ends `cancelled` once stopped.
    Requested,
    /// It had already finished.
    Finished,
    NotFound,
}

/// Cancels a job: a queued one at once (a delivery of it already in Redis is
/// refused by [`claim`]), a running one by asking its worker.
pub async fn cancel(
    conn: &mut PgConnection,
    id: &str,
    reason: &str,
) -> Result<CancelOutcome, sqlx::Error> {
    let state: Option<String> = sqlx::query_scalar!("WITH queued AS (UPDATE jobs SET state = 'cancelled', last_error = $2, finished_at = now(), \
                             updated_at = now() WHERE id = $1 AND state = 'queued' RETURNING 'cancelled'::text AS s), \
              running AS (UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, now()), \
                             last_error = $2, updated_at = now() \
                          WHERE id = $1 AND state = 'running' RETURNING 'requested'::text AS s) \
         SELECT s AS \"s!\" FROM queued UNION ALL SELECT s FROM running \
         UNION ALL SELECT 'finished' FROM jobs WHERE id = $1 AND state NOT IN ('queued', 'running') \
         LIMIT 1", id, reason)
    .fetch_optional(conn)
    .await?;
    Ok(match state.as_deref() {
        Some("cancelled") => CancelOutcome::Cancelled,
        Some("requested") => CancelOutcome::Requested,
        Some(_) => CancelOutcome::Finished,
        None => CancelOutcome::NotFound,
    })
}

/// Of `ids` (jobs running here), those whose cancellation was asked for.
pub async fn cancel_requested(pool: &PgPool, ids: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!("SELECT id FROM jobs WHERE id = ANY($1) AND state = 'running' AND cancel_requested_at IS NOT NULL", ids)
    .fetch_all(pool)
    .await
}

/// A running job its worker stopped because it was cancelled.
pub async fn mark_cancelled(
    pool: &PgPool,
    job_id: &str,
    delivery_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(), \
             last_error = COALESCE(last_error, 'cancelled') \
         WHERE id = $1 AND delivery_id = $2 AND state = 'running'",
        job_id,
        delivery_id
    )
    .execute(pool)
    .await?;
    Ok(())
}
