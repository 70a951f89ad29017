//! Reading jobs: one job's record, and pages of them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use super::*;
use crate::Queue;

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
    /// A queued job's place in the line it waits in (its concurrency key's,
    /// or its slot pool's): 1 is next.
    pub position: Option<i32>,
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
    owner_user_id, server_id, deployment_id, created_at, run_after, started_at, finished_at, updated_at, \
    CASE WHEN state <> 'queued' THEN NULL \
         WHEN concurrency_key IS NOT NULL AND NOT EXISTS (SELECT 1 FROM job_keys k WHERE k.job_id = jobs.id) \
              AND (EXISTS (SELECT 1 FROM job_keys k WHERE k.key = jobs.concurrency_key) \
                   OR EXISTS (SELECT 1 FROM jobs o WHERE o.concurrency_key = jobs.concurrency_key \
                              AND o.state = 'queued' AND o.id < jobs.id)) \
         THEN 1 + (SELECT count(*) FROM jobs o WHERE o.concurrency_key = jobs.concurrency_key \
                   AND o.state = 'queued' AND o.id < jobs.id) \
         WHEN slot_pool IS NOT NULL AND NOT EXISTS (SELECT 1 FROM job_slots s WHERE s.job_id = jobs.id) \
         THEN 1 + (SELECT count(*) FROM jobs o WHERE o.slot_pool = jobs.slot_pool AND o.state = 'queued' \
                   AND o.id < jobs.id AND NOT EXISTS (SELECT 1 FROM job_slots s WHERE s.job_id = o.id) \
                   AND (o.concurrency_key IS NULL OR NOT EXISTS \
                        (SELECT 1 FROM job_keys k WHERE k.key = o.concurrency_key AND k.job_id <> o.id))) \
    END::int AS position";

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
        position: row.try_get("position")?,
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
