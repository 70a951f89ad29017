//! SPEC §3.1: job status. Users see their own jobs and those of the
//! deployments they may read (theirs, their projects'), administrators
//! everyone's. An API token sees only the kinds its scopes cover.

use axum::extract::State;
use berth_jobs::joblog::LogLine;
use berth_jobs::store::{self, JobFilter};
use berth_jobs::{JobRecord, JobState, Queue};
use serde::{Deserialize, Serialize};

use crate::access::{self, Action, Resource};
use crate::audit;
use crate::auth::sessions::Client;
use crate::auth::{Principal, Scope};
use crate::envelope::{Envelope, Page, PageQuery, Path, Query};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

fn needs_scope(queue: Queue, what: &str) -> ApiError {
    ApiError::Forbidden(format!(
        "this token needs the {} scope to see {what} jobs",
        access::queue_scopes(queue).0.name()
    ))
}

/// Everyone's jobs for administrators (with the `admin` scope on a token).
fn sees_all_owners(principal: &Principal) -> bool {
    principal.role().is_admin() && principal.allows(Scope::Admin)
}

/// The job `id` if the caller may do `action` to it (see [`access`]).
async fn visible_job(
    state: &AppState,
    principal: &Principal,
    id: &str,
    action: Action,
) -> Result<JobRecord, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let grant = access::authorize(&mut conn, principal, Resource::Job(id), action).await?;
    drop(conn);
    store::get(&state.pool, grant.job_id())
        .await?
        .ok_or_else(|| ApiError::NotFound("no such job".into()))
}

/// One job.
#[utoipa::path(get, path = "/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "Job id (ULID)")), responses(
    (status = 200, description = "The job", body = JobRecord),
    (status = 403, description = "The token's scopes do not cover this kind of job", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such job of yours", body = crate::error::ErrorEnvelope)))]
pub async fn get_job(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Envelope<JobRecord>, ApiError> {
    Ok(Envelope::ok(
        visible_job(&state, &principal, &id, Action::Read).await?,
    ))
}

/// Cancels a job: a queued one at once (200, `cancelled`), a running one by
/// telling its worker, which stops its remote commands (202; it ends
/// `cancelled` within seconds).
#[utoipa::path(post, path = "/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "Job id (ULID)")), responses(
    (status = 200, description = "Cancelled before it started", body = JobRecord),
    (status = 202, description = "Running: its worker is stopping it", body = JobRecord),
    (status = 403, description = "The token's scopes do not cover this kind of job", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such job of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The job already finished", body = crate::error::ErrorEnvelope)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<String>,
) -> Result<Envelope<JobRecord>, ApiError> {
    let job = visible_job(&state, &principal, &id, Action::Operate).await?;
    let mut tx = state.pool.begin().await?;
    let reason = format!("cancelled by {}", principal.user.email);
    let outcome = store::cancel(&mut tx, &id, &reason).await?;
    let running = match outcome {
        store::CancelOutcome::Cancelled => false,
        store::CancelOutcome::Requested => true,
        store::CancelOutcome::Finished => {
            return Err(ApiError::Conflict(format!(
                "the job already finished ({})",
                job.state.name()
            )));
        }
        store::CancelOutcome::NotFound => return Err(ApiError::NotFound("no such job".into())),
    };
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "job.cancel",
            "job",
            &id,
            serde_json::json!({ "kind": job.kind, "wasRunning": running }),
        ),
    )
    .await?;
    tx.commit().await?;
    if running {
        berth_jobs::events::publish_cancel(&state.redis, &id).await;
    }
    let job = store::get(&state.pool, &id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such job".into()))?;
    Ok(if running {
        Envelope::accepted(job)
    } else {
        Envelope::ok(job)
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Lines after this sequence number (0: from the start).
    #[param(minimum = 0)]
    after: Option<i64>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// A page of a job's log.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobLogPage {
    items: Vec<LogLine>,
    /// Pass as `after` for the next page (or to follow the log by polling).
    next_after: i64,
    /// Lines were dropped past the job's log cap.
    truncated: bool,
    /// The job has finished: no more lines will come.
    finished: bool,
}

/// A job's log: its steps and its commands' output, oldest first. Follow it
/// live over the WebSocket (`{"type": "subscribe", "topic": "job:<id>"}`).
#[utoipa::path(get, path = "/jobs/{id}/logs", tag = "jobs",
    params(("id" = String, Path, description = "Job id (ULID)"), LogQuery), responses(
    (status = 200, description = "Log lines", body = JobLogPage),
    (status = 400, description = "A bad `after` or `limit`", body = crate::error::ErrorEnvelope),
    (status = 403, description = "The token's scopes do not cover this kind of job", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such job of yours", body = crate::error::ErrorEnvelope)))]
pub async fn job_logs(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Envelope<JobLogPage>, ApiError> {
    let (after, limit) = query.checked()?;
    let job = visible_job(&state, &principal, &id, Action::Read).await?;
    Ok(Envelope::ok(
        log_page(&state, &id, after, limit, job.state.is_terminal()).await?,
    ))
}

impl LogQuery {
    /// `after` and `limit`, checked (defaults 0 and 500).
    pub(crate) fn checked(&self) -> Result<(i64, i64), ApiError> {
        let after = self.after.unwrap_or(0);
        let limit = self.limit.unwrap_or(500);
        let mut details = Vec::new();
        if after < 0 {
            details.push(FieldError::new("after", "must be at least 0"));
        }
        if !(1..=1000).contains(&limit) {
            details.push(FieldError::new("limit", "must be between 1 and 1000"));
        }
        if !details.is_empty() {
            return Err(ApiError::validation(details));
        }
        Ok((after, limit))
    }
}

/// A page of job `id`'s log (the caller checked it may be read).
pub(crate) async fn log_page(
    state: &AppState,
    id: &str,
    after: i64,
    limit: i64,
    finished: bool,
) -> Result<JobLogPage, ApiError> {
    let items = berth_jobs::joblog::read(&state.pool, id, after, limit).await?;
    let truncated: bool = sqlx::query_scalar("SELECT log_truncated FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&state.pool)
        .await?;
    Ok(JobLogPage {
        next_after: items.last().map_or(after, |l| l.seq),
        items,
        truncated,
        finished,
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// A job kind, e.g. `server.validate`, `server.probe`, `email.send`.
    #[param(schema_with = job_kind_schema)]
    kind: Option<String>,
    /// A queue: deploy, rollback, ssl, probe, backup, email, alerts, diagnostic.
    queue: Option<Queue>,
    /// queued, running, succeeded, failed or cancelled.
    state: Option<JobState>,
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// Every kind of the catalog, as the document's enum of `kind`.
fn job_kind_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(berth_jobs::kinds::CATALOG.iter().map(|k| k.name)))
        .build()
}

/// A page of jobs, and the kinds left out because the caller's token does not
/// cover them (so an empty page is not mistaken for "no jobs").
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobsPage {
    #[serde(flatten)]
    page: Page<JobRecord>,
    /// Kinds this API token may not see, each with the scope it would need;
    /// empty for a signed-in session.
    hidden_kinds: Vec<HiddenKind>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HiddenKind {
    kind: &'static str,
    queue: Queue,
    needs_scope: String,
}

/// Jobs, newest first.
#[utoipa::path(get, path = "/jobs", tag = "jobs", params(JobsQuery), responses(
    (status = 200, description = "A page of jobs", body = JobsPage),
    (status = 400, description = "Unknown kind, queue or state", body = crate::error::ErrorEnvelope),
    (status = 403, description = "The token's scopes do not cover this kind of job", body = crate::error::ErrorEnvelope)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<JobsQuery>,
) -> Result<Envelope<JobsPage>, ApiError> {
    let page = PageQuery {
        page: query.page,
        limit: query.limit,
    }
    .validate()?;
    let (visible, hidden): (Vec<Queue>, Vec<Queue>) = Queue::ALL
        .into_iter()
        .partition(|q| access::may_see_queue(&principal, *q));
    let kind = match query.kind.as_deref() {
        Some(name) => Some(berth_jobs::kinds::find(name).ok_or_else(|| {
            let known: Vec<&str> = berth_jobs::kinds::CATALOG.iter().map(|k| k.name).collect();
            ApiError::validation(vec![FieldError::new(
                "kind",
                format!("unknown job kind; known: {}", known.join(", ")),
            )])
        })?),
        None => None,
    };
    for queue in kind.map(|k| k.queue).into_iter().chain(query.queue) {
        if !visible.contains(&queue) {
            return Err(needs_scope(
                queue,
                query.kind.as_deref().unwrap_or(queue.name()),
            ));
        }
    }
    let queues = match query.queue {
        Some(queue) => vec![queue],
        None => visible,
    };
    let filter = JobFilter {
        visible_to: (!sees_all_owners(&principal)).then(|| principal.user_id()),
        queues: Some(queues),
        kind: kind.map(|k| k.name.to_owned()),
        state: query.state,
        id: None,
    };
    let (items, total) = store::list(&state.pool, &filter, page.offset(), page.limit).await?;
    Ok(Envelope::ok(JobsPage {
        page: Page::new(items, page, total),
        hidden_kinds: berth_jobs::kinds::CATALOG
            .iter()
            .filter(|k| hidden.contains(&k.queue))
            .map(|k| HiddenKind {
                kind: k.name,
                queue: k.queue,
                needs_scope: access::queue_scopes(k.queue).0.name().to_owned(),
            })
            .collect(),
    }))
}
