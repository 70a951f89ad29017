//! Writing jobs: enqueue in the caller's transaction, batched inserts with
//! dedupe and superseding, and marking deliveries pushed.

use sqlx::PgConnection;
use uuid::Uuid;

use super::*;
use crate::JobPayload;

/// Writes the job on the caller's connection, which should be inside the
/// transaction that writes the data the job belongs to: both commit or neither
/// does. The row is its own outbox (`pushed_at IS NULL`): after commit, hand the
/// result to [`crate::JobClient::dispatch`] to start it at once; the relay's sweep
/// pushes it anyway if that never happens.
pub async fn enqueue<P: JobPayload>(
    conn: &mut PgConnection,
    policies: &Policies,
    job: NewJob<P>,
) -> Result<Enqueued, sqlx::Error> {
    let row = JobRow::new(policies, job)?;
    let mut enqueued = insert(conn, vec![row]).await?;
    Ok(enqueued.remove(0))
}

/// Inserts jobs in one statement; one answer per row, in order. A row whose dedupe
/// key is held by a pending job (or by an earlier row of the same call) answers
/// with that job instead.
pub async fn insert(
    conn: &mut PgConnection,
    rows: Vec<JobRow>,
) -> Result<Vec<Enqueued>, sqlx::Error> {
    // One array per column, bound in the order of the `unnest` below.
    fn column<'r, T>(rows: &'r [JobRow], field: impl Fn(&'r JobRow) -> T) -> Vec<T> {
        rows.iter().map(field).collect()
    }
    let inserted: Vec<String> = sqlx::query_scalar!("INSERT INTO jobs (id, kind, queue, payload, delivery_id, max_attempts, timeout_ms, \
                           owner_user_id, server_id, deployment_id, dedupe_key, concurrency_key, supersedable, \
                           slot_pool, slot_capacity) \
         SELECT id, kind, queue, payload, id, max_attempts, timeout_ms, owner_user_id, server_id, deployment_id, \
                dedupe_key, concurrency_key, supersedable, slot_pool, slot_capacity \
         FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::int[], $5::bigint[], \
                     $6::uuid[], $7::uuid[], $8::uuid[], $9::text[], $10::text[], $11::text[], $12::bool[], \
                     $13::text[], $14::int[]) \
              AS r(id, kind, payload, max_attempts, timeout_ms, owner_user_id, server_id, deployment_id, dedupe_key, \
                   queue, concurrency_key, supersedable, slot_pool, slot_capacity) \
         ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('queued', 'running') \
         DO NOTHING RETURNING id",
        &column(&rows, |r| r.id.as_str()) as &[&str],
        &column(&rows, |r| r.kind) as &[&str],
        &column(&rows, |r| &r.payload) as &[&serde_json::Value],
        &column(&rows, |r| r.max_attempts) as &[i32],
        &column(&rows, |r| r.timeout_ms) as &[i64],
        &column(&rows, |r| r.owner_user_id) as &[Option<Uuid>],
        &column(&rows, |r| r.server_id) as &[Option<Uuid>],
        &column(&rows, |r| r.deployment_id) as &[Option<Uuid>],
        &column(&rows, |r| r.dedupe_key.as_deref()) as &[Option<&str>],
        &column(&rows, |r| r.queue.name()) as &[&str],
        &column(&rows, |r| r.concurrency_key.as_deref()) as &[Option<&str>],
        &column(&rows, |r| r.supersedable) as &[bool],
        &column(&rows, |r| r.slot_pool.as_deref()) as &[Option<&str>],
        &column(&rows, |r| r.slot_capacity) as &[Option<i32>],
    )
    .fetch_all(&mut *conn)
    .await?;
    let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
    // A new keyed job supersedes the older queued ones of its key that said
    // a newer one may (the newest row of a key in this call wins).
    let (keys, newest): (Vec<String>, Vec<String>) = rows
        .iter()
        .filter(|r| inserted.contains(&r.id))
        .filter_map(|r| Some((r.concurrency_key.clone()?, r.id.clone())))
        .unzip();
    if !keys.is_empty() {
        sqlx::query!("WITH n AS (SELECT key, max(id) AS id FROM unnest($1::text[], $2::text[]) AS n(key, id) GROUP BY key) \
             UPDATE jobs j SET state = 'cancelled', finished_at = now(), updated_at = now(), \
                 last_error = 'superseded by job ' || n.id \
             FROM n WHERE j.concurrency_key = n.key AND j.state = 'queued' AND j.supersedable \
               AND j.id < n.id", &keys, &newest)
        .execute(&mut *conn)
        .await?;
    }
    let deduped: Vec<String> = rows
        .iter()
        .filter(|r| !inserted.contains(&r.id))
        .filter_map(|r| r.dedupe_key.clone())
        .collect();
    let existing: std::collections::HashMap<String, String> = if deduped.is_empty() {
        Default::default()
    } else {
        sqlx::query!(
            r#"SELECT dedupe_key AS "dedupe_key!", id FROM jobs
               WHERE dedupe_key = ANY($1) AND state IN ('queued', 'running')"#,
            &deduped,
        )
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|r| (r.dedupe_key, r.id))
        .collect()
    };
    rows.into_iter()
        .map(|row| {
            if inserted.contains(&row.id) {
                return Ok(Enqueued {
                    delivery_id: Some(row.id.clone()),
                    id: row.id,
                    queue: row.queue,
                });
            }
            let key = row.dedupe_key.unwrap_or_default();
            let id = existing.get(&key).cloned().ok_or_else(|| {
                // The pending job finished between the insert and the lookup.
                sqlx::Error::Protocol(format!(
                    "job with dedupe key {key:?} vanished; enqueue again"
                ))
            })?;
            Ok(Enqueued {
                id,
                queue: row.queue,
                delivery_id: None,
            })
        })
        .collect()
}

/// Records that these jobs' current deliveries are in Redis.
pub async fn mark_pushed<'c, E>(executor: E, job_ids: &[String]) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    sqlx::query!(
        "UPDATE jobs SET pushed_at = now() WHERE id = ANY($1) AND pushed_at IS NULL",
        job_ids
    )
    .execute(executor)
    .await?;
    Ok(())
}
