//! Reading jobs: one job's record, and pages of them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
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

/// Filters of `GET /jobs`; `owner` is set for everyone but admins, `queues`
/// to what the caller may see.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub id: Option<String>,
    /// Jobs this user may see: their own, and those of deployments that are
    /// theirs or in a project they are a member of.
    pub visible_to: Option<Uuid>,
    pub queues: Option<Vec<Queue>>,
    pub kind: Option<String>,
    pub state: Option<JobState>,
}

/// Jobs matching `filter`, newest first. A queued job's `position` is its
/// place in the line it waits in: its concurrency key's while another job
/// holds the key or an earlier one waits for it, else its slot pool's
/// (counting only jobs ahead that could take a slot).
async fn select(
    pool: &PgPool,
    filter: &JobFilter,
    offset: i64,
    limit: i64,
) -> Result<Vec<JobRecord>, sqlx::Error> {
    sqlx::query_as!(
        JobRecord,
        r#"SELECT id, kind, queue AS "queue: Queue", state AS "state: JobState", attempts, max_attempts,
                  last_error AS error, waiting_for, cancel_requested_at, worker, owner_user_id, server_id,
                  deployment_id, created_at, run_after, started_at, finished_at, updated_at,
                  CASE WHEN state <> 'queued' THEN NULL
                       WHEN concurrency_key IS NOT NULL
                            AND NOT EXISTS (SELECT 1 FROM job_keys k WHERE k.job_id = jobs.id)
                            AND (EXISTS (SELECT 1 FROM job_keys k WHERE k.key = jobs.concurrency_key)
                                 OR EXISTS (SELECT 1 FROM jobs o WHERE o.concurrency_key = jobs.concurrency_key
                                            AND o.state = 'queued' AND o.id < jobs.id))
                       THEN 1 + (SELECT count(*) FROM jobs o WHERE o.concurrency_key = jobs.concurrency_key
                                 AND o.state = 'queued' AND o.id < jobs.id)
                       WHEN slot_pool IS NOT NULL
                            AND NOT EXISTS (SELECT 1 FROM job_slots s WHERE s.job_id = jobs.id)
                       THEN 1 + (SELECT count(*) FROM jobs o WHERE o.slot_pool = jobs.slot_pool
                                 AND o.state = 'queued' AND o.id < jobs.id
                                 AND NOT EXISTS (SELECT 1 FROM job_slots s WHERE s.job_id = o.id)
                                 AND (o.concurrency_key IS NULL OR NOT EXISTS
                                      (SELECT 1 FROM job_keys k WHERE k.key = o.concurrency_key
                                       AND k.job_id <> o.id)))
                  END::int AS position
           FROM jobs
           WHERE ($1::text IS NULL OR id = $1) AND ($2::uuid IS NULL OR owner_user_id = $2 OR deployment_id IN
                  (SELECT d.id FROM deployments d WHERE d.owner_user_id = $2 OR d.project_id IN
                     (SELECT m.project_id FROM project_members m WHERE m.user_id = $2)))
             AND ($3::text[] IS NULL OR queue = ANY($3)) AND ($4::text IS NULL OR state = $4)
             AND ($5::text IS NULL OR kind = $5)
           ORDER BY id DESC OFFSET $6 LIMIT $7"#,
        filter.id.as_deref(),
        filter.visible_to,
        filter.queues.as_ref().map(|q| q.iter().map(|q| q.name().to_owned()).collect::<Vec<_>>()) as Option<Vec<String>>,
        filter.state.map(JobState::name),
        filter.kind.as_deref(),
        offset,
        limit,
    )
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, id: &str) -> Result<Option<JobRecord>, sqlx::Error> {
    let filter = JobFilter {
        id: Some(id.to_owned()),
        ..JobFilter::default()
    };
    Ok(select(pool, &filter, 0, 1).await?.pop())
}

/// One page of jobs, newest first, and the total matching the filter.
pub async fn list(
    pool: &PgPool,
    filter: &JobFilter,
    offset: i64,
    limit: i64,
) -> Result<(Vec<JobRecord>, i64), sqlx::Error> {
    let records = select(pool, filter, offset, limit).await?;
    let total = sqlx::query_scalar!(
        r#"SELECT count(*) AS "total!" FROM jobs
           WHERE ($1::text IS NULL OR id = $1) AND ($2::uuid IS NULL OR owner_user_id = $2 OR deployment_id IN
                  (SELECT d.id FROM deployments d WHERE d.owner_user_id = $2 OR d.project_id IN
                     (SELECT m.project_id FROM project_members m WHERE m.user_id = $2)))
             AND ($3::text[] IS NULL OR queue = ANY($3)) AND ($4::text IS NULL OR state = $4)
             AND ($5::text IS NULL OR kind = $5)"#,
        filter.id.as_deref(),
        filter.visible_to,
        filter
            .queues
            .as_ref()
            .map(|q| q.iter().map(|q| q.name().to_owned()).collect::<Vec<_>>())
            as Option<Vec<String>>,
        filter.state.map(JobState::name),
        filter.kind.as_deref(),
    )
    .fetch_one(pool)
    .await?;
    Ok((records, total))
}
