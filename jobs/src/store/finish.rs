//! How an attempt ends: succeeded, failed, retried later, or deferred.

use std::time::Duration;

use sqlx::PgPool;
use ulid::Ulid;

pub async fn mark_succeeded(
    pool: &PgPool,
    job_id: &str,
    delivery_id: &str,
) -> Result<(), sqlx::Error> {
    mark_succeeded_many(pool, vec![(job_id.to_owned(), delivery_id.to_owned())]).await?;
    Ok(())
}

/// Marks many running deliveries succeeded in one statement.
pub async fn mark_succeeded_many(
    pool: &PgPool,
    deliveries: Vec<(String, String)>,
) -> Result<Vec<()>, sqlx::Error> {
    let (job_ids, delivery_ids): (Vec<String>, Vec<String>) = deliveries.iter().cloned().unzip();
    sqlx::query!("UPDATE jobs j SET state = 'succeeded', last_error = NULL, finished_at = now(), updated_at = now() \
         FROM unnest($1::text[], $2::text[]) AS d(id, delivery_id) \
         WHERE j.id = d.id AND j.delivery_id = d.delivery_id AND j.state = 'running'", &job_ids, &delivery_ids)
    .execute(pool)
    .await?;
    Ok(vec![(); deliveries.len()])
}

pub async fn mark_failed(
    pool: &PgPool,
    job_id: &str,
    delivery_id: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!("UPDATE jobs SET state = 'failed', last_error = $3, finished_at = now(), updated_at = now() \
         WHERE id = $1 AND delivery_id = $2 AND state = 'running'", job_id, delivery_id, error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Puts the job back in the queue under a new delivery id, due after `delay`;
/// the relay's sweep pushes it to Redis once due. Durable, unlike apalis' retry.
pub async fn schedule_retry(
    pool: &PgPool,
    job_id: &str,
    delivery_id: &str,
    error: &str,
    delay: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET state = 'queued', last_error = $3, delivery_id = $4, pushed_at = NULL, \
             run_after = now() + make_interval(secs => $5), worker = NULL, updated_at = now() \
         WHERE id = $1 AND delivery_id = $2 AND state = 'running'",
        job_id,
        delivery_id,
        error,
        Ulid::generate().to_string(),
        delay.as_secs_f64()
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives the attempt back and offers the job again after `after`: the handler
/// said "not now" (a busy server, a held slot), which is not a failure.
pub async fn defer(
    pool: &PgPool,
    job_id: &str,
    delivery_id: &str,
    reason: &str,
    after: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET state = 'queued', attempts = attempts - 1, waiting_for = $3, \
             delivery_id = $4, pushed_at = NULL, run_after = now() + make_interval(secs => $5), \
             worker = NULL, updated_at = now() \
         WHERE id = $1 AND delivery_id = $2 AND state = 'running'",
        job_id,
        delivery_id,
        reason,
        Ulid::generate().to_string(),
        after.as_secs_f64()
    )
    .execute(pool)
    .await?;
    Ok(())
}
