//! Job state in Postgres: durable enqueue (the job row, written in the caller's
//! transaction, is its own outbox), the worker-side state transitions, status
//! queries, metrics aggregates, pruning and the reconciler that keeps any job from
//! being stuck.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool, Row};
use ulid::Ulid;
use uuid::Uuid;

use crate::{JobPayload, Policies, Queue};

/// Upper bounds (seconds) of the job duration histogram.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.name() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A job to enqueue, with the resources it acts on (shown by `GET /jobs/{id}` and
/// used for owner checks).
#[derive(Debug, Clone)]
pub struct NewJob<P> {
    pub payload: P,
    pub owner_user_id: Option<Uuid>,
    pub server_id: Option<Uuid>,
    pub deployment_id: Option<Uuid>,
    /// While a job with this key is queued or running, enqueueing another with the
    /// same key returns the existing job instead (e.g. one pending probe per server).
    pub dedupe_key: Option<String>,
}

impl<P: JobPayload> NewJob<P> {
    pub fn new(payload: P) -> Self {
        Self {
            payload,
            owner_user_id: None,
            server_id: None,
            deployment_id: None,
            dedupe_key: None,
        }
    }

    pub fn owner(mut self, user_id: Uuid) -> Self {
        self.owner_user_id = Some(user_id);
        self
    }

    pub fn server(mut self, server_id: Uuid) -> Self {
        self.server_id = Some(server_id);
        self
    }

    pub fn deployment(mut self, deployment_id: Uuid) -> Self {
        self.deployment_id = Some(deployment_id);
        self
    }

    pub fn dedupe_key(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub id: String,
    pub queue: Queue,
    /// The delivery to push to Redis; `None` when a job with the same dedupe key was
    /// already pending and is returned instead.
    pub delivery_id: Option<String>,
}

impl Enqueued {
    pub fn created(&self) -> bool {
        self.delivery_id.is_some()
    }
}

/// A job as it is inserted: payload encoded, the queue's policy applied.
#[derive(Debug, Clone)]
pub struct JobRow {
    id: String,
    kind: &'static str,
    queue: Queue,
    payload: serde_json::Value,
    max_attempts: i32,
    timeout_ms: i64,
    owner_user_id: Option<Uuid>,
    server_id: Option<Uuid>,
    deployment_id: Option<Uuid>,
    dedupe_key: Option<String>,
    concurrency_key: Option<String>,
    supersedable: bool,
}

impl JobRow {
    pub fn new<P: JobPayload>(policies: &Policies, job: NewJob<P>) -> Result<Self, sqlx::Error> {
        let policy = policies.get(P::QUEUE);
        let max_attempts = policy.max_attempts.max(job.payload.min_attempts());
        Ok(Self {
            id: Ulid::generate().to_string(),
            kind: P::KIND,
            queue: P::QUEUE,
            payload: serde_json::to_value(&job.payload)
                .map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
            max_attempts: max_attempts as i32,
            timeout_ms: policy.timeout.as_millis() as i64,
            owner_user_id: job.owner_user_id,
            server_id: job.server_id,
            deployment_id: job.deployment_id,
            dedupe_key: job.dedupe_key,
            concurrency_key: job.payload.concurrency_key(),
            supersedable: job.payload.superseded_by_newer(),
        })
    }
}

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
    let mut columns = (
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
        Vec::with_capacity(rows.len()),
    );
    for row in &rows {
        columns.0.push(row.id.clone());
        columns.1.push(row.kind);
        columns.9.push(row.queue.name());
        columns.2.push(row.payload.clone());
        columns.3.push(row.max_attempts);
        columns.4.push(row.timeout_ms);
        columns.5.push(row.owner_user_id);
        columns.6.push(row.server_id);
        columns.7.push(row.deployment_id);
        columns.8.push(row.dedupe_key.clone());
        columns.10.push(row.concurrency_key.clone());
        columns.11.push(row.supersedable);
    }
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO jobs (id, kind, queue, payload, delivery_id, max_attempts, timeout_ms, \
                           owner_user_id, server_id, deployment_id, dedupe_key, concurrency_key, supersedable) \
         SELECT id, kind, queue, payload, id, max_attempts, timeout_ms, owner_user_id, server_id, deployment_id, \
                dedupe_key, concurrency_key, supersedable \
         FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::int[], $5::bigint[], \
                     $6::uuid[], $7::uuid[], $8::uuid[], $9::text[], $10::text[], $11::text[], $12::bool[]) \
              AS r(id, kind, payload, max_attempts, timeout_ms, owner_user_id, server_id, deployment_id, dedupe_key, \
                   queue, concurrency_key, supersedable) \
         ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND state IN ('queued', 'running') \
         DO NOTHING RETURNING id",
    )
    .bind(&columns.0)
    .bind(&columns.1)
    .bind(&columns.2)
    .bind(&columns.3)
    .bind(&columns.4)
    .bind(&columns.5)
    .bind(&columns.6)
    .bind(&columns.7)
    .bind(&columns.8)
    .bind(&columns.9)
    .bind(&columns.10)
    .bind(&columns.11)
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
        sqlx::query(
            "WITH n AS (SELECT key, max(id) AS id FROM unnest($1::text[], $2::text[]) AS n(key, id) GROUP BY key) \
             UPDATE jobs j SET state = 'cancelled', finished_at = now(), updated_at = now(), \
                 last_error = 'superseded by job ' || n.id \
             FROM n WHERE j.concurrency_key = n.key AND j.state = 'queued' AND j.supersedable \
               AND j.id < n.id",
        )
        .bind(&keys)
        .bind(&newest)
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
        sqlx::query_as(
            "SELECT dedupe_key, id FROM jobs \
             WHERE dedupe_key = ANY($1) AND state IN ('queued', 'running')",
        )
        .bind(&deduped)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
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
    sqlx::query("UPDATE jobs SET pushed_at = now() WHERE id = ANY($1) AND pushed_at IS NULL")
        .bind(job_ids)
        .execute(executor)
        .await?;
    Ok(())
}

/// What `GET /jobs/{id}` shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    pub id: String,
    /// What the job does, e.g. `server.validate`.
    pub kind: String,
    /// Which workers run it, e.g. `probe`.
    pub queue: Queue,
    pub state: JobState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub error: Option<String>,
    /// Why a queued job is not running yet, when it waits for something.
    pub waiting_for: Option<String>,
    /// When its cancellation was asked for while it ran.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub owner_user_id: Option<Uuid>,
    pub server_id: Option<Uuid>,
    pub deployment_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub run_after: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

const RECORD_COLUMNS: &str = "id, kind, queue, state, attempts, max_attempts, last_error, waiting_for, cancel_requested_at, worker, \
    owner_user_id, server_id, deployment_id, created_at, run_after, started_at, finished_at, updated_at";

fn record_from_row(row: &sqlx::postgres::PgRow) -> Result<JobRecord, sqlx::Error> {
    let queue: String = row.try_get("queue")?;
    let state: String = row.try_get("state")?;
    let decode = |column: &str, value: &str| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unexpected value {value:?}").into(),
    };
    Ok(JobRecord {
        kind: row.try_get("kind")?,
        queue: queue.parse().map_err(|_| decode("queue", &queue))?,
        state: JobState::parse(&state).ok_or_else(|| decode("state", &state))?,
        id: row.try_get("id")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        error: row.try_get("last_error")?,
        waiting_for: row.try_get("waiting_for")?,
        cancel_requested_at: row.try_get("cancel_requested_at")?,
        worker: row.try_get("worker")?,
        owner_user_id: row.try_get("owner_user_id")?,
        server_id: row.try_get("server_id")?,
        deployment_id: row.try_get("deployment_id")?,
        created_at: row.try_get("created_at")?,
        run_after: row.try_get("run_after")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub async fn get(pool: &PgPool, id: &str) -> Result<Option<JobRecord>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {RECORD_COLUMNS} FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(record_from_row).transpose()
}

/// Filters of `GET /jobs`; `owner` is set for everyone but admins, `queues`
/// to what the caller may see.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub owner_user_id: Option<Uuid>,
    pub queues: Option<Vec<Queue>>,
    pub kind: Option<String>,
    pub state: Option<JobState>,
}

/// One page of jobs, newest first, and the total matching the filter.
pub async fn list(
    pool: &PgPool,
    filter: &JobFilter,
    offset: i64,
    limit: i64,
) -> Result<(Vec<JobRecord>, i64), sqlx::Error> {
    let condition = "($1::uuid IS NULL OR owner_user_id = $1) \
        AND ($2::text[] IS NULL OR queue = ANY($2)) AND ($3::text IS NULL OR state = $3) \
        AND ($4::text IS NULL OR kind = $4)";
    let queues: Option<Vec<&str>> = filter
        .queues
        .as_ref()
        .map(|k| k.iter().map(|q| q.name()).collect());
    let rows = sqlx::query(&format!(
        "SELECT {RECORD_COLUMNS} FROM jobs WHERE {condition} ORDER BY id DESC \
         OFFSET $5 LIMIT $6"
    ))
    .bind(filter.owner_user_id)
    .bind(&queues)
    .bind(filter.state.map(JobState::name))
    .bind(&filter.kind)
    .bind(offset)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM jobs WHERE {condition}"))
        .bind(filter.owner_user_id)
        .bind(&queues)
        .bind(filter.state.map(JobState::name))
        .bind(&filter.kind)
        .fetch_one(pool)
        .await?;
    let records = rows.iter().map(record_from_row).collect::<Result<_, _>>()?;
    Ok((records, total))
}

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
    let state: Option<String> = sqlx::query_scalar(
        "WITH queued AS (UPDATE jobs SET state = 'cancelled', last_error = $2, finished_at = now(), \
                             updated_at = now() WHERE id = $1 AND state = 'queued' RETURNING 'cancelled'::text AS s), \
              running AS (UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, now()), \
                             last_error = $2, updated_at = now() \
                          WHERE id = $1 AND state = 'running' RETURNING 'requested'::text AS s) \
         SELECT s FROM queued UNION ALL SELECT s FROM running \
         UNION ALL SELECT 'finished' FROM jobs WHERE id = $1 AND state NOT IN ('queued', 'running') \
         LIMIT 1",
    )
    .bind(id)
    .bind(reason)
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
    sqlx::query_scalar(
        "SELECT id FROM jobs WHERE id = ANY($1) AND state = 'running' AND cancel_requested_at IS NOT NULL",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// A running job its worker stopped because it was cancelled.
pub async fn mark_cancelled(
    pool: &PgPool,
    job_id: &str,
    delivery_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(), \
             last_error = COALESCE(last_error, 'cancelled') \
         WHERE id = $1 AND delivery_id = $2 AND state = 'running'",
    )
    .bind(job_id)
    .bind(delivery_id)
    .execute(pool)
    .await?;
    Ok(())
}

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
    // Both are put back under a new delivery id, due later, without using an
    // attempt; a key's release makes the next in its line due at once.
    let rows = sqlx::query(
        "WITH d AS (SELECT DISTINCT ON (id, delivery_id) id, delivery_id, fresh \
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
         held_back AS (SELECT id, fresh, $7::float8 AS secs, \
                              'its owner''s other jobs hold this queue''s share' AS why FROM over \
                       UNION ALL \
                       SELECT id, fresh, $8::float8, 'its turn on ' || key FROM waiting), \
         deferred AS (UPDATE jobs j SET delivery_id = b.fresh, pushed_at = NULL, waiting_for = b.why, \
                          run_after = now() + make_interval(secs => b.secs), updated_at = now() \
                      FROM held_back b WHERE j.id = b.id RETURNING j.id) \
         UPDATE jobs j SET state = 'running', attempts = j.attempts + 1, started_at = now(), waiting_for = NULL, \
             worker = $3, pushed_at = COALESCE(j.pushed_at, now()), updated_at = now() \
         FROM d \
         WHERE j.id = d.id AND j.delivery_id = d.delivery_id AND j.state IN ('queued', 'running') \
           AND j.cancel_requested_at IS NULL AND j.id NOT IN (SELECT id FROM deferred) \
         RETURNING j.id, j.delivery_id, j.kind, j.payload, j.attempts, j.max_attempts, j.timeout_ms, \
             j.owner_user_id, j.server_id, j.deployment_id, j.log_seq, j.log_bytes",
    )
    .bind(&job_ids)
    .bind(&delivery_ids)
    .bind(worker)
    .bind(&fresh)
    .bind(fairness.queue.name())
    .bind(i64::try_from(fairness.per_user_running).unwrap_or(i64::MAX))
    .bind(fairness.deferral.as_secs_f64())
    .bind(KEY_WAIT.as_secs_f64())
    .fetch_all(pool)
    .await?;
    let mut claimed = std::collections::HashMap::new();
    for row in rows {
        let key: (String, String) = (row.try_get("id")?, row.try_get("delivery_id")?);
        claimed.insert(
            key,
            Claimed {
                kind: row.try_get("kind")?,
                payload: row.try_get("payload")?,
                attempts: row.try_get("attempts")?,
                max_attempts: row.try_get("max_attempts")?,
                timeout: Duration::from_millis(row.try_get::<i64, _>("timeout_ms")?.max(1) as u64),
                owner_user_id: row.try_get("owner_user_id")?,
                targets: crate::events::JobTargets {
                    server_id: row.try_get("server_id")?,
                    deployment_id: row.try_get("deployment_id")?,
                },
                log_seq: row.try_get("log_seq")?,
                log_bytes: row.try_get("log_bytes")?,
            },
        );
    }
    // `remove` hands a claim to the first asker only.
    Ok(deliveries.iter().map(|key| claimed.remove(key)).collect())
}

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
    sqlx::query(
        "UPDATE jobs j SET state = 'succeeded', last_error = NULL, finished_at = now(), updated_at = now() \
         FROM unnest($1::text[], $2::text[]) AS d(id, delivery_id) \
         WHERE j.id = d.id AND j.delivery_id = d.delivery_id AND j.state = 'running'",
    )
    .bind(&job_ids)
    .bind(&delivery_ids)
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
    sqlx::query(
        "UPDATE jobs SET state = 'failed', last_error = $3, finished_at = now(), updated_at = now() \
         WHERE id = $1 AND delivery_id = $2 AND state = 'running'",
    )
    .bind(job_id)
    .bind(delivery_id)
    .bind(error)
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
    sqlx::query(
        "UPDATE jobs SET state = 'queued', last_error = $3, delivery_id = $4, pushed_at = NULL, \
             run_after = now() + make_interval(secs => $5), worker = NULL, updated_at = now() \
         WHERE id = $1 AND delivery_id = $2 AND state = 'running'",
    )
    .bind(job_id)
    .bind(delivery_id)
    .bind(error)
    .bind(Ulid::generate().to_string())
    .bind(delay.as_secs_f64())
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
    sqlx::query(
        "UPDATE jobs SET state = 'queued', attempts = attempts - 1, waiting_for = $3, \
             delivery_id = $4, pushed_at = NULL, run_after = now() + make_interval(secs => $5), \
             worker = NULL, updated_at = now() \
         WHERE id = $1 AND delivery_id = $2 AND state = 'running'",
    )
    .bind(job_id)
    .bind(delivery_id)
    .bind(reason)
    .bind(Ulid::generate().to_string())
    .bind(after.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

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
    let rows = sqlx::query(
        r#"
        SELECT kind, queue, state, bucket, SUM(n)::bigint AS jobs, SUM(s)::float8 AS duration_sum FROM (
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
    )
    .bind(&DURATION_BUCKETS[..])
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(JobStat {
                kind: row.try_get("kind")?,
                queue: row.try_get("queue")?,
                state: row.try_get("state")?,
                bucket: row.try_get("bucket")?,
                jobs: row.try_get("jobs")?,
                duration_seconds_sum: row.try_get("duration_sum")?,
            })
        })
        .collect()
}

/// Deletes finished jobs (and schedule ticks) older than `retention`, folding the
/// deleted jobs into `job_outcome_totals` in the same statement. Works in bounded
/// batches so a large backlog never holds long locks. Returns jobs deleted.
pub async fn prune(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    const BATCH: i64 = 5000;
    let mut deleted = 0u64;
    loop {
        let n: i64 = sqlx::query_scalar(
            r#"
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
            SELECT count(*) FROM gone
            "#,
        )
        .bind(retention.as_secs_f64())
        .bind(&DURATION_BUCKETS[..])
        .bind(BATCH)
        .fetch_one(pool)
        .await?;
        deleted += n as u64;
        if n < BATCH {
            break;
        }
    }
    sqlx::query("DELETE FROM schedule_ticks WHERE tick < now() - make_interval(secs => $1)")
        .bind(retention.as_secs_f64())
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
    let stuck: Vec<String> = sqlx::query_scalar(
        r#"
        SELECT id FROM jobs
        WHERE (state = 'running'
               AND started_at < now() - make_interval(secs => timeout_ms / 1000.0 + $1))
           OR (state = 'queued' AND pushed_at IS NOT NULL
               AND updated_at < now() - make_interval(secs => $2))
        LIMIT 1000
        FOR UPDATE SKIP LOCKED
        "#,
    )
    .bind(grace.as_secs_f64())
    .bind(lost_after.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    let mut outcome = Reconciled::default();
    for id in stuck {
        sqlx::query(
            "UPDATE jobs SET state = 'queued', delivery_id = $2, pushed_at = NULL, worker = NULL, \
                 updated_at = now() WHERE id = $1",
        )
        .bind(&id)
        .bind(Ulid::generate().to_string())
        .execute(&mut *tx)
        .await?;
        outcome.requeued += 1;
    }
    // A job whose cancellation was asked for while it ran, and that is back
    // in the queue (its worker died or retried it first), is not run again.
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now() \
         WHERE state = 'queued' AND cancel_requested_at IS NOT NULL",
    )
    .execute(&mut *tx)
    .await?;
    // A claim that took a key but lost its row to a concurrent change (a
    // cancel between the two) leaves the key with a job that is not running.
    sqlx::query(
        "DELETE FROM job_keys k USING jobs j WHERE j.id = k.job_id AND j.state <> 'running'",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(outcome)
}
