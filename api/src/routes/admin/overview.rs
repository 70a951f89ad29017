//! The platform at a glance (`/admin/stats`) and every deployment
//! (`/admin/deployments`), which an administrator may delete.

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{like_pattern, platform};
use crate::access::Action;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{Binds, Envelope, Page, PageQuery, Path, Query, filtered_page};
use crate::error::ApiError;
use crate::routes::deployments::{ControlAccepted, delete_as_administrator};
use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserCounts {
    total: i64,
    active: i64,
    suspended: i64,
    administrators: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct JobCount {
    queue: String,
    state: String,
    count: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct LastBackup {
    id: Uuid,
    status: String,
    size_bytes: Option<i64>,
    created_at: DateTime<Utc>,
    verified_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformStats {
    users: UserCounts,
    /// Sessions neither revoked nor expired.
    active_sessions: i64,
    /// Servers by status.
    servers: BTreeMap<String, i64>,
    /// Deployments by status.
    deployments: BTreeMap<String, i64>,
    /// Jobs by queue and state (those still kept).
    jobs: Vec<JobCount>,
    last_backup: Option<LastBackup>,
}

/// Users, sessions, servers, deployments, jobs and the last backup.
#[utoipa::path(get, path = "/admin/stats", tag = "admin", responses(
    (status = 200, description = "Counts", body = PlatformStats),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope)))]
pub async fn stats(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Envelope<PlatformStats>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    platform(&mut conn, &principal, Action::Read).await?;
    let (total, active, suspended, administrators, active_sessions): (i64, i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status = 'active'), \
                    count(*) FILTER (WHERE status = 'suspended'), \
                    count(*) FILTER (WHERE role IN ('admin', 'super_admin')), \
                    (SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > now()) \
             FROM users",
        )
        .fetch_one(&mut *conn)
        .await?;
    let by_status = |table: &str| {
        format!("SELECT status::text, count(*) FROM {table} GROUP BY status ORDER BY status")
    };
    let servers: Vec<(String, i64)> = sqlx::query_as(&by_status("servers"))
        .fetch_all(&mut *conn)
        .await?;
    let deployments: Vec<(String, i64)> = sqlx::query_as(&by_status("deployments"))
        .fetch_all(&mut *conn)
        .await?;
    let jobs: Vec<JobCount> = sqlx::query_as(
        "SELECT queue, state, count(*) AS count FROM jobs GROUP BY queue, state ORDER BY queue, state",
    )
    .fetch_all(&mut *conn)
    .await?;
    let last_backup: Option<LastBackup> = sqlx::query_as(
        "SELECT id, status, size_bytes, created_at, verified_at FROM backups \
         ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Envelope::ok(PlatformStats {
        users: UserCounts {
            total,
            active,
            suspended,
            administrators,
        },
        active_sessions,
        servers: servers.into_iter().collect(),
        deployments: deployments.into_iter().collect(),
        jobs,
        last_backup,
    }))
}

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AdminDeployment {
    id: Uuid,
    name: String,
    status: String,
    owner_user_id: Uuid,
    owner_email: String,
    server_id: Uuid,
    server_name: String,
    project_id: Option<Uuid>,
    live_release: Option<i32>,
    created_at: DateTime<Utc>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AdminDeploymentsQuery {
    /// Part of the deployment's name or its owner's email.
    #[param(max_length = 100, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    search: Option<String>,
    /// One owner's deployments.
    owner_id: Option<Uuid>,
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// Every deployment on the platform, newest first.
#[utoipa::path(get, path = "/admin/deployments", tag = "admin", params(AdminDeploymentsQuery), responses(
    (status = 200, description = "A page of deployments", body = Page<AdminDeployment>),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope)))]
pub async fn list_deployments(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<AdminDeploymentsQuery>,
) -> Result<Envelope<Page<AdminDeployment>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    platform(&mut conn, &principal, Action::Read).await?;
    let page = PageQuery {
        page: query.page,
        limit: query.limit,
    }
    .validate()?;
    let search = like_pattern("search", query.search.as_deref())?;
    let deployments = filtered_page(
        &mut conn,
        "d.id, d.name, d.status::text AS status, d.owner_user_id, u.email AS owner_email, \
         d.server_id, s.name AS server_name, d.project_id, d.live_release, d.created_at",
        "FROM deployments d JOIN users u ON u.id = d.owner_user_id JOIN servers s ON s.id = d.server_id",
        "WHERE ($1::text IS NULL OR d.name ILIKE $1 OR u.email ILIKE $1) \
         AND ($2::uuid IS NULL OR d.owner_user_id = $2)",
        "d.created_at DESC, d.id",
        Binds::default().bind(search).bind(query.owner_id),
        page,
    )
    .await?;
    Ok(Envelope::ok(deployments))
}

/// Delete any deployment: the same job as its owner's delete (202).
#[utoipa::path(delete, path = "/admin/deployments/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 202, description = "Delete queued", body = ControlAccepted),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such deployment", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Being deleted already", body = crate::error::ErrorEnvelope)))]
pub async fn delete_deployment(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<ControlAccepted>, ApiError> {
    let grant = {
        let mut conn = state.pool.acquire().await?;
        platform(&mut conn, &principal, Action::Manage).await?
    };
    delete_as_administrator(&state, &principal, &client, &grant, id).await
}
