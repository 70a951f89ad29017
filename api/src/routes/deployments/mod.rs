//! SPEC §3.4: deployments and their releases. The api checks, stores and
//! enqueues; every build, switch and clean-up is a job of the `deploy` or
//! `rollback` queue (`berth-workers`' `deploy` module). Every route asks
//! [`crate::access::authorize`] first: a deployment is its owner's, and its
//! project members' as far as their role goes.

use axum::extract::State;
use berth_deployments::names;
use berth_deployments::settings::Settings;
use berth_deployments::state::{DeploymentStatus, ReleaseState};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::access::{self, Action, Grant, Resource};
use crate::auth::{Principal, Scope};
use crate::envelope::{Envelope, Page, PageQuery, Path, Query};
use crate::error::ApiError;
use crate::state::AppState;

mod actions;
mod create;
mod logs;
mod project;
mod releases;
mod runtime_logs;
mod secrets;
mod webhook;

pub use actions::*;
pub use create::*;
pub use logs::*;
pub use project::*;
pub use runtime_logs::*;
pub use secrets::*;
pub use webhook::*;

/// Where a deployment's code comes from.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceView {
    /// `git`, `github` (a synced repository, cloned with the linked
    /// account's token), `image` or `upload`.
    #[serde(rename = "type")]
    kind: String,
    /// `owner/name` of a `github` source.
    #[serde(skip_serializing_if = "Option::is_none")]
    repo: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repo_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
}

/// One release: what it was made from, how far it got, its steps' times.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseView {
    /// v1, v2…: 1, 2…
    number: i32,
    /// `create`, `redeploy`, `webhook` or `rollback`.
    trigger: String,
    /// The release a rollback runs again.
    rollback_of: Option<i32>,
    /// Its job (`GET /jobs/{jobId}`, and its log).
    job_id: Option<String>,
    /// A commit SHA, `sha256:…` of an archive, or an image digest.
    source_ref: Option<String>,
    image_tag: Option<String>,
    state: ReleaseState,
    /// The step it failed at: fetch, preflight, build, start, health, switch.
    failed_step: Option<String>,
    error: Option<String>,
    /// Its container's port on the server's loopback.
    port: Option<i32>,
    /// `[{name, startedAt, ms}]`, in order.
    #[schema(value_type = Vec<Object>)]
    steps: serde_json::Value,
    /// Its image is still there: it can be rolled back to.
    #[sqlx(rename = "rollbackable")]
    rollbackable: bool,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

pub(crate) const RELEASE_COLUMNS: &str = "number, trigger, rollback_of, job_id, source_ref, image_tag, \
    state, failed_step, error, port, steps, \
    (NOT image_pruned AND image_tag IS NOT NULL AND state IN ('live', 'superseded')) AS rollbackable, \
    created_at, started_at, finished_at";

/// How many releases a deployment's view lists (all are at `/releases`).
const RECENT_RELEASES: i64 = 10;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentView {
    id: Uuid,
    server_id: Uuid,
    /// The server it runs on, as every reader of the deployment may see it
    /// (project members see no more of a server than this).
    server: ServerSummary,
    project_id: Option<Uuid>,
    name: String,
    source: SourceView,
    settings: Settings,
    status: DeploymentStatus,
    /// Why, when a release failed or a control job did.
    status_reason: Option<String>,
    /// What nginx serves it at before any domain is attached.
    url: String,
    /// The release serving now.
    live_release: Option<i32>,
    /// The newest release (serving, or on its way, or failed).
    current_release: Option<ReleaseView>,
    /// The newest releases, newest first.
    releases: Vec<ReleaseView>,
    /// Domains attached to it (SPEC §3.5), by name.
    domains: Vec<crate::routes::domains::DomainView>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSummary {
    id: Uuid,
    name: String,
    /// `pending`, `online`, `offline` or `error`.
    status: String,
}

#[derive(sqlx::FromRow)]
pub(crate) struct DeploymentRow {
    pub id: Uuid,
    pub server_id: Uuid,
    pub project_id: Option<Uuid>,
    pub name: String,
    pub source_type: String,
    pub repo_url: Option<String>,
    pub branch: Option<String>,
    pub image: Option<String>,
    pub github_repo: Option<String>,
    pub settings: serde_json::Value,
    pub status: DeploymentStatus,
    pub status_reason: Option<String>,
    pub live_release: Option<i32>,
    pub server_host: String,
    pub hostname_base: Option<String>,
    pub build_slots: i32,
    pub server_name: String,
    pub server_status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "d.id, d.server_id, d.project_id, d.name, d.source_type, \
    d.repo_url, d.branch, d.image, d.github_repo, d.settings, d.status, d.status_reason, d.live_release, \
    s.host AS server_host, s.hostname_base, s.build_slots, s.name AS server_name, s.status AS server_status, \
    d.created_at, d.updated_at";

impl DeploymentRow {
    pub(crate) fn settings(&self) -> Result<Settings, ApiError> {
        serde_json::from_value(self.settings.clone())
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored settings unreadable: {e}")))
    }

    pub(crate) fn url(&self) -> String {
        format!(
            "http://{}/",
            names::generated_host(
                &self.name,
                self.id,
                &self.server_host,
                self.hostname_base.as_deref()
            )
        )
    }
}

/// The deployment `id` if the caller may do `action` to it (see [`access`]).
pub(crate) async fn authorized(
    conn: &mut PgConnection,
    principal: &Principal,
    id: Uuid,
    action: Action,
) -> Result<DeploymentRow, ApiError> {
    let grant = access::authorize(conn, principal, Resource::Deployment(id), action).await?;
    load(conn, &grant, false).await
}

/// [`authorized`], locked for the rest of the transaction: release numbers
/// and state changes of one deployment are decided one at a time.
pub(crate) async fn authorized_for_update(
    conn: &mut PgConnection,
    principal: &Principal,
    id: Uuid,
    action: Action,
) -> Result<DeploymentRow, ApiError> {
    let grant = access::authorize(conn, principal, Resource::Deployment(id), action).await?;
    load(conn, &grant, true).await
}

/// The deployment a grant is for, locked when `lock`.
pub(crate) async fn load(
    conn: &mut PgConnection,
    grant: &Grant,
    lock: bool,
) -> Result<DeploymentRow, ApiError> {
    let lock = if lock { "FOR UPDATE OF d" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM deployments d JOIN servers s ON s.id = d.server_id \
         WHERE d.id = $1 {lock}"
    ))
    .bind(grant.deployment_id().unwrap_or_else(|| grant.id()))
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::NotFound("no such deployment".into()))
}

pub(crate) async fn view(
    conn: &mut PgConnection,
    row: DeploymentRow,
) -> Result<DeploymentView, ApiError> {
    let releases: Vec<ReleaseView> = sqlx::query_as(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE deployment_id = $1 ORDER BY number DESC LIMIT $2"
    ))
    .bind(row.id)
    .bind(RECENT_RELEASES)
    .fetch_all(&mut *conn)
    .await?;
    let current_release = releases.first().cloned();
    let settings = row.settings()?;
    let url = row.url();
    let domains = crate::routes::domains::of_deployment(conn, row.id).await?;
    Ok(DeploymentView {
        id: row.id,
        server_id: row.server_id,
        server: ServerSummary {
            id: row.server_id,
            name: row.server_name,
            status: row.server_status,
        },
        project_id: row.project_id,
        settings,
        url,
        source: SourceView {
            kind: match row.github_repo {
                Some(_) => "github".into(),
                None => row.source_type,
            },
            repo: row.github_repo,
            repo_url: row.repo_url,
            branch: row.branch,
            image: row.image,
        },
        name: row.name,
        status: row.status,
        status_reason: row.status_reason,
        live_release: row.live_release,
        current_release,
        releases,
        domains,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentsQuery {
    /// Page number, from 1.
    #[param(minimum = 1)]
    page: Option<i64>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Only this project's deployments.
    project_id: Option<Uuid>,
}

/// The caller's deployments and those of their projects.
#[utoipa::path(get, path = "/deployments", tag = "deployments", params(DeploymentsQuery), responses(
    (status = 200, description = "Deployments, newest first", body = Page<DeploymentView>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(filter): Query<DeploymentsQuery>,
) -> Result<Envelope<Page<DeploymentView>>, ApiError> {
    principal.require(Scope::DeploymentsRead)?;
    let request = PageQuery {
        page: filter.page,
        limit: filter.limit,
    }
    .validate()?;
    let mut conn = state.pool.acquire().await?;
    let visible = |project: u8| {
        format!(
            "{} AND (${project}::uuid IS NULL OR d.project_id = ${project})",
            access::visible_deployments(1)
        )
    };
    let rows: Vec<DeploymentRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM deployments d JOIN servers s ON s.id = d.server_id \
         WHERE {} ORDER BY d.created_at DESC, d.id OFFSET $2 LIMIT $3",
        visible(4)
    ))
    .bind(principal.user_id())
    .bind(request.offset())
    .bind(request.limit)
    .bind(filter.project_id)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM deployments d WHERE {}",
        visible(2)
    ))
    .bind(principal.user_id())
    .bind(filter.project_id)
    .fetch_one(&mut *conn)
    .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        items.push(view(&mut conn, row).await?);
    }
    Ok(Envelope::ok(Page::new(items, request, total)))
}

/// One deployment: status, live release, recent releases, domains, `url`.
#[utoipa::path(get, path = "/deployments/{id}", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 200, description = "The deployment", body = DeploymentView),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<DeploymentView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let row = authorized(&mut conn, &principal, id, Action::Read).await?;
    Ok(Envelope::ok(view(&mut conn, row).await?))
}

pub use releases::*;
