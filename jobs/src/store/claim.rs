//! Claiming a delivery: the job's current delivery only, within its owner's
//! share of the queue, its concurrency key's turn and a slot of its pool.

use std::time::Duration;

use sqlx::PgPool;
use ulid::Ulid;
use uuid::Uuid;

use crate::Queue;

/// A delivery a worker may run: the job's current delivery, not finished.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub kind: String,
    pub payload: serde_json::Value,
    pub attempts: i32,
    pub max_attempts: i32,
    pub timeout: Duration,
    /// Told of the job's state changes (`events`).
    pub owner_user_id: Option<Uuid>,
    pub targets: crate::events::JobTargets,
    /// The job's log so far: its last line and its size.
    pub log_seq: i64,
    pub log_bytes: i64,
}

/// Marks the job running for this delivery and counts the attempt. Returns `None`
/// when the delivery is stale (the job finished, was cancelled, or was re-issued
/// under a newer delivery id), so a duplicate Redis delivery never runs. A job left
/// `running` by a crashed worker can be claimed again by the same delivery, which
/// is how apalis hands orphaned tasks back. No per-user share applies here; the
/// runtime claims through [`claim_many`] with its queue's [`Fairness`].
pub async fn claim(
    pool: &PgPool,
    job_id: &str,
    delivery_id: &str,
    worker: &str,
) -> Result<Option<Claimed>, sqlx::Error> {
    let mut claimed = claim_many(
        pool,
        worker,
        Fairness::UNBOUNDED,
        vec![(job_id.to_owned(), delivery_id.to_owned())],
    )
    .await?;
    Ok(claimed.remove(0))
}

/// How long a job waiting for its concurrency key is put back for at most:
/// the key's release makes the next in line due at once, so this only covers
/// a release that was missed.
const KEY_WAIT: Duration = Duration::from_secs(30);

/// How many running jobs of one kind a single owner may hold, and how long a
/// job over that share waits before it is offered again.
#[derive(Debug, Clone, Copy)]
pub struct Fairness {
    pub queue: Queue,
    pub per_user_running: usize,
    pub deferral: Duration,
}

impl Fairness {
    const UNBOUNDED: Fairness = Fairness {
        queue: Queue::Diagnostic,
        per_user_running: usize::MAX,
        deferral: Duration::ZERO,
    };
}

/// [`claim`] for many deliveries in one statement; one answer per delivery, in
/// order. The same delivery twice in one call is claimed once.
pub async fn claim_many(
    pool: &PgPool,
    worker: &str,
    fairness: Fairness,
    deliveries: Vec<(String, String)>,
) -> Result<Vec<Option<Claimed>>, sqlx::Error> {
    let (job_ids, delivery_ids): (Vec<String>, Vec<String>) = deliveries.iter().cloned().unzip();
    let fresh: Vec<String> = deliveries
        .iter()
        .map(|_| Ulid::generate().to_string())
        .collect();
    // `over`: queued jobs whose owner already runs `per_user_running` jobs of
    // this queue, counting those earlier in this batch. `waiting`: keyed jobs
    // whose key another job holds, or that are not first in their key's line.
    // `slot_waiting`: jobs naming a slot pool whose free slots go to those
    // ahead of them in the pool's line (jobs waiting for a key do not count as
    // ahead: they could not use a slot). All are put back under a new
    // delivery id, due later, without using an attempt; a key's or a slot's
    // release makes the next in its line due at once. A job may be put back
    // holding its key while it waits for a slot: it was first in that line.
    // `started_at` is the clock, not `now()`: the key insert may wait for the
    // previous holder's release to commit, and the start is after that wait.
    let rows = sqlx::query!("WITH d AS (SELECT DISTINCT ON (id, delivery_id) id, delivery_id, fresh \
                    FROM unnest($1::text[], $2::text[], $4::text[]) AS d(id, delivery_id, fresh)), \
         cand AS (SELECT j.id, d.fresh, j.owner_user_id, \
                         row_number() OVER (PARTITION BY j.owner_user_id ORDER BY j.id) AS nth \
                  FROM jobs j JOIN d ON j.id = d.id AND j.delivery_id = d.delivery_id \
                  WHERE j.state = 'queued' AND j.owner_user_id IS NOT NULL), \
         busy AS (SELECT owner_user_id, count(*) AS running FROM jobs \
                  WHERE queue = $5 AND state = 'running' \
                    AND owner_user_id IN (SELECT owner_user_id FROM cand) \
                  GROUP BY owner_user_id), \
         over AS (SELECT cand.id, cand.fresh FROM cand LEFT JOIN busy USING (owner_user_id) \
                  WHERE COALESCE(busy.running, 0) + cand.nth > $6), \
         keyed AS (SELECT j.id, d.fresh, j.concurrency_key AS key, j.state \
                   FROM jobs j JOIN d ON j.id = d.id AND j.delivery_id = d.delivery_id \
                   WHERE j.state IN ('queued', 'running') AND j.concurrency_key IS NOT NULL \
                     AND j.id NOT IN (SELECT id FROM over)), \
         in_line AS (SELECT k.id, k.key FROM keyed k WHERE k.state = 'queued' AND NOT EXISTS \
                     (SELECT 1 FROM jobs o WHERE o.concurrency_key = k.key AND o.state = 'queued' \
                        AND o.id < k.id)), \
         took AS (INSERT INTO job_keys (key, job_id) \
                  SELECT DISTINCT ON (key) key, id FROM in_line ORDER BY key, id \
                  ON CONFLICT (key) DO NOTHING RETURNING job_id), \
         holds AS (SELECT k.id FROM keyed k JOIN job_keys h ON h.key = k.key AND h.job_id = k.id), \
         waiting AS (SELECT id, fresh, key FROM keyed WHERE state = 'queued' \
                     AND id NOT IN (SELECT job_id FROM took) AND id NOT IN (SELECT id FROM holds)), \
         slotted AS (SELECT j.id, d.fresh, j.slot_pool AS pool, j.slot_capacity AS cap, j.state \
                     FROM jobs j JOIN d ON j.id = d.id AND j.delivery_id = d.delivery_id \
                     WHERE j.state IN ('queued', 'running') AND j.slot_pool IS NOT NULL \
                       AND j.id NOT IN (SELECT id FROM over)), \
         slot_want AS (SELECT s.id, s.fresh, s.pool, s.cap, \
                              (SELECT count(*) FROM jobs o WHERE o.slot_pool = s.pool AND o.state = 'queued' \
                                 AND o.id < s.id AND NOT EXISTS (SELECT 1 FROM job_slots x WHERE x.job_id = o.id) \
                                 AND (o.concurrency_key IS NULL OR NOT EXISTS \
                                      (SELECT 1 FROM job_keys k WHERE k.key = o.concurrency_key AND k.job_id <> o.id)) \
                              ) AS ahead \
                       FROM slotted s WHERE s.state = 'queued' \
                         AND NOT EXISTS (SELECT 1 FROM job_slots h WHERE h.job_id = s.id) \
                         AND s.id NOT IN (SELECT id FROM waiting)), \
         free AS (SELECT p.pool, p.cap, n AS slot, \
                         row_number() OVER (PARTITION BY p.pool, p.cap ORDER BY n) AS nth \
                  FROM (SELECT DISTINCT pool, cap FROM slot_want) p, generate_series(0, p.cap - 1) AS n \
                  WHERE NOT EXISTS (SELECT 1 FROM job_slots h WHERE h.pool = p.pool AND h.slot = n)), \
         slot_took AS (INSERT INTO job_slots (pool, slot, job_id) \
                       SELECT w.pool, f.slot, w.id FROM slot_want w \
                       JOIN free f ON f.pool = w.pool AND f.cap = w.cap AND f.nth = w.ahead + 1 \
                       ON CONFLICT DO NOTHING RETURNING job_id), \
         slot_waiting AS (SELECT id, fresh, pool FROM slot_want \
                          WHERE id NOT IN (SELECT job_id FROM slot_took)), \
         held_back AS (SELECT id, fresh, $7::float8 AS secs, \
                              'its owner''s other jobs hold this queue''s share' AS why FROM over \
                       UNION ALL \
                       SELECT id, fresh, $8::float8, 'its turn on ' || key FROM waiting \
                       UNION ALL \
                       SELECT id, fresh, $8::float8, 'a free slot of ' || pool FROM slot_waiting), \
         deferred AS (UPDATE jobs j SET delivery_id = b.fresh, pushed_at = NULL, waiting_for = b.why, \
                          run_after = now() + make_interval(secs => b.secs), updated_at = now() \
                      FROM held_back b WHERE j.id = b.id RETURNING j.id) \
         UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, started_at = clock_timestamp(), waiting_for = NULL, \
             worker = $3, pushed_at = COALESCE(j.pushed_at, now()), updated_at = now() \
         FROM d \
         WHERE j.id = d.id AND j.delivery_id = d.delivery_id AND j.state IN ('queued', 'running') \
           AND j.cancel_requested_at IS NULL AND j.id NOT IN (SELECT id FROM deferred) \
         RETURNING j.id, j.delivery_id, j.kind, j.payload, j.attempts, j.max_attempts, j.timeout_ms, \
             j.owner_user_id, j.server_id, j.deployment_id, j.log_seq, j.log_bytes", &job_ids, &delivery_ids, worker, &fresh, fairness.queue.name(), i64::try_from(fairness.per_user_running).unwrap_or(i64::MAX), fairness.deferral.as_secs_f64(), KEY_WAIT.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let mut claimed = std::collections::HashMap::new();
    for row in rows {
        claimed.insert(
            (row.id, row.delivery_id),
            Claimed {
                kind: row.kind,
                payload: row.payload,
                attempts: row.attempts,
                max_attempts: row.max_attempts,
                timeout: Duration::from_millis(row.timeout_ms.max(1) as u64),
                owner_user_id: row.owner_user_id,
                targets: crate::events::JobTargets {
                    server_id: row.server_id,
                    deployment_id: row.deployment_id,
                },
                log_seq: row.log_seq,
                log_bytes: row.log_bytes,
            },
        );
    }
    // `remove` hands a claim to the first asker only.
    Ok(deliveries.iter().map(|key| claimed.remove(key)).collect())
}
