//! SPEC §3.3: the user's servers. Credentials are checked, sealed with
//! `BERTH_MASTER_KEY` (bound to the row and column) and never returned; every
//! connection happens in a job (`probe` queue), never in a request.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::access::{self, Action, Resource};
use crate::audit;
use crate::auth::sessions::Client;
use crate::auth::{Principal, Scope};
use crate::envelope::{Deleted, Envelope, Json, Page, PageQuery, Path, Query, user_page};
use crate::error::{ApiError, FieldError};
use crate::rate_limit::Limited;
use crate::state::AppState;
use crate::validate::{self, text_field};

mod input;
mod settings;
mod validation;

pub use input::ServerRequest;
pub use validation::*;

use input::*;
use settings::Settings;

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ServerView {
    id: Uuid,
    name: String,
    host: String,
    port: i32,
    username: String,
    /// `password` or `key`.
    auth_type: String,
    /// `SHA256:…` of the pinned host key.
    host_key: Option<String>,
    /// A different host key the server presented; re-pin it with `POST /servers/{id}/host-key`.
    host_key_offered: Option<String>,
    /// `pending`, `online`, `offline` or `error`.
    pub(crate) status: String,
    pub(crate) status_reason: Option<String>,
    os: Option<String>,
    arch: Option<String>,
    docker_version: Option<String>,
    nginx_version: Option<String>,
    validated_at: Option<DateTime<Utc>>,
    /// How many builds run on this server at once; more wait in line.
    build_slots: i32,
    /// Where Berth writes its nginx sites.
    nginx_conf_dir: String,
    /// nginx's main config file (`-c`), or `null` for nginx's own default.
    nginx_conf_file: Option<String>,
    http_port: i32,
    https_port: i32,
    /// Berth's directory on the server.
    data_dir: String,
    /// What deployments' generated host names end in; `null`: the address under `sslip.io`.
    hostname_base: Option<String>,
    /// Whether `nginx -t` passed with these settings at the last validation
    /// (`null` before one, or without nginx).
    nginx_config_ok: Option<bool>,
    /// What `nginx -t` said when it failed.
    nginx_config_error: Option<String>,
    pub(crate) last_probe_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const VIEW_COLUMNS: &str = "id, name, host, port, username, auth_type, host_key, host_key_offered, \
    status, status_reason, os, arch, docker_version, nginx_version, validated_at, build_slots, \
    nginx_conf_dir, nginx_conf_file, http_port, https_port, data_dir, hostname_base, \
    nginx_config_ok, nginx_config_error, last_probe_at, created_at, updated_at";

/// The server `id` if the caller may do `action` to it: only its owner may
/// (servers are never shared; see [`access`]).
pub(crate) async fn authorized(
    conn: &mut PgConnection,
    principal: &Principal,
    id: Uuid,
    action: Action,
) -> Result<ServerView, ApiError> {
    let grant = access::authorize(conn, principal, Resource::Server(id), action).await?;
    sqlx::query_as(&format!("SELECT {VIEW_COLUMNS} FROM servers WHERE id = $1"))
        .bind(grant.id())
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such server".into()))
}

/// Server `id`, if the caller may `action` it (only its owner may) and its
/// host key is pinned. Asked before anything of the request is looked at, so
/// another user's server answers 404 whatever the request holds.
pub(crate) async fn pinned_server(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
    action: Action,
) -> Result<berth_remote::Server, ApiError> {
    let mut conn = state.pool.acquire().await?;
    access::authorize(&mut conn, principal, Resource::Server(id), action).await?;
    drop(conn);
    let server = state
        .remote
        .load(id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such server".into()))?;
    if server.host_key.is_none() {
        return Err(ApiError::Conflict(
            "the server's host key is not pinned yet: validate the server first".into(),
        ));
    }
    Ok(server)
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerAccepted {
    server: ServerView,
    /// The validation job (`GET /jobs/{jobId}`).
    job_id: String,
}

/// Add a server; a validation job connects to it (202).
#[utoipa::path(post, path = "/servers", tag = "servers", request_body = ServerRequest, responses(
    (status = 202, description = "Stored; validation queued", body = ServerAccepted),
    (status = 400, description = "Invalid fields", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Needs servers:write", body = crate::error::ErrorEnvelope),
    (status = 429, description = "BERTH_RATE_LIMIT_SERVER_CREATE exceeded", body = crate::error::ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<ServerRequest>,
) -> Result<Limited<Envelope<ServerAccepted>>, ApiError> {
    principal.require(Scope::ServersWrite)?;
    let mut errors = Vec::new();
    let name = text_field("name", req.name.as_deref().unwrap_or(""), 100, &mut errors);
    let host = check_host_field(&state, req.host.as_deref().unwrap_or(""), &mut errors);
    let port = settings::port("port", req.port.unwrap_or(22), &mut errors);
    let username = check_username_field(req.username.as_deref().unwrap_or(""), &mut errors);
    let settings = Settings::check(&req, &mut errors);
    // A new server starts from the defaults (HTTP 80, HTTPS 443).
    errors.extend(settings.port_conflict((80, 443)));
    let credentials = credentials(&req, &mut errors);
    validate::finish(errors)?;
    let credentials = credentials.expect("checked");
    let decision = state
        .rate_limiter
        .enforce(
            "server_create",
            &principal.user_id().to_string(),
            state.config.server_create_rate_limit,
            "too many servers added recently; try again later",
        )
        .await?;
    let id = Uuid::new_v4();
    let mut tx = state.pool.begin().await?;
    sqlx::query(
        "INSERT INTO servers (id, owner_user_id, name, host, port, username, auth_type, secret, secret_key_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, '', '')",
    )
    .bind(id)
    .bind(principal.user_id())
    .bind(&name)
    .bind(&host)
    .bind(port)
    .bind(&username)
    .bind(credentials.auth_type)
    .execute(&mut *tx)
    .await?;
    settings.apply(&mut tx, id).await?;
    store_credentials(&mut tx, &state, id, &credentials).await?;
    let job = enqueue_validation(&mut tx, &state, &principal, id).await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "server.create",
            "server",
            id,
            serde_json::json!({ "name": name, "host": host, "port": port, "authType": credentials.auth_type,
                "settings": settings }),
        ),
    )
    .await?;
    let server = authorized(&mut tx, &principal, id, Action::Read).await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Limited(
        decision,
        Envelope::accepted(ServerAccepted {
            server,
            job_id: job.id,
        }),
    ))
}

/// The caller's servers.
#[utoipa::path(get, path = "/servers", tag = "servers", params(PageQuery), responses(
    (status = 200, description = "Servers, newest first", body = Page<ServerView>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageQuery>,
) -> Result<Envelope<Page<ServerView>>, ApiError> {
    principal.require(Scope::ServersRead)?;
    let page = user_page(
        &state.pool,
        &format!(
            "SELECT {VIEW_COLUMNS} FROM servers WHERE owner_user_id = $1 \
             ORDER BY created_at DESC, id OFFSET $2 LIMIT $3"
        ),
        "SELECT count(*) FROM servers WHERE owner_user_id = $1",
        principal.user_id(),
        page.validate()?,
    )
    .await?;
    Ok(Envelope::ok(page))
}

/// One server (never its credentials).
#[utoipa::path(get, path = "/servers/{id}", tag = "servers",
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 200, description = "The server", body = ServerView),
    (status = 404, description = "No such server of yours", body = crate::error::ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<ServerView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    Ok(Envelope::ok(
        authorized(&mut conn, &principal, id, Action::Read).await?,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerUpdated {
    server: ServerView,
    /// Set when a connection or nginx setting changed and the server is validated again.
    job_id: Option<String>,
}

/// Change a server. Changing how to reach it (host, port, username,
/// credentials) validates it again; a new host or port also drops the pinned
/// host key (it is another machine).
#[utoipa::path(patch, path = "/servers/{id}", tag = "servers", request_body = ServerRequest,
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 200, description = "Updated", body = ServerUpdated),
    (status = 400, description = "Invalid fields", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours", body = crate::error::ErrorEnvelope)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<ServerRequest>,
) -> Result<Envelope<ServerUpdated>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let current = authorized(&mut tx, &principal, id, Action::Operate).await?;
    let mut errors = Vec::new();
    let name = req
        .name
        .as_deref()
        .map(|n| text_field("name", n, 100, &mut errors));
    let host = req
        .host
        .as_deref()
        .map(|h| check_host_field(&state, h, &mut errors));
    let port = req.port.map(|p| settings::port("port", p, &mut errors));
    let settings = Settings::check(&req, &mut errors);
    let username = req
        .username
        .as_deref()
        .map(|u| check_username_field(u, &mut errors));
    let credentials =
        if req.auth_type.is_some() || req.password.is_some() || req.private_key.is_some() {
            credentials(&req, &mut errors)
        } else {
            None
        };
    if name.is_none()
        && host.is_none()
        && port.is_none()
        && username.is_none()
        && req.auth_type.is_none()
        && settings.is_empty()
    {
        errors.push(FieldError::new("body", "give at least one field to change"));
    }
    validate::finish(errors)?;
    let moved = host.as_ref().is_some_and(|h| *h != current.host)
        || port.is_some_and(|p| p != current.port);
    let reconnect =
        moved || username.as_ref().is_some_and(|u| *u != current.username) || credentials.is_some();
    // A new nginx setting is checked by validating again (`nginx -t` there).
    let revalidate = reconnect || settings.touches_nginx();
    sqlx::query(
        "UPDATE servers SET name = COALESCE($2, name), host = COALESCE($3, host), \
           port = COALESCE($4, port), username = COALESCE($5, username), \
           host_key = CASE WHEN $6 THEN NULL ELSE host_key END, \
           host_key_offered = CASE WHEN $6 THEN NULL ELSE host_key_offered END, \
           status = CASE WHEN $7 THEN 'pending' ELSE status END, \
           status_reason = CASE WHEN $7 THEN NULL ELSE status_reason END, \
           updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(&name)
    .bind(&host)
    .bind(port)
    .bind(&username)
    .bind(moved)
    .bind(reconnect)
    .execute(&mut *tx)
    .await?;
    settings.apply(&mut tx, id).await?;
    if let Some(credentials) = &credentials {
        store_credentials(&mut tx, &state, id, credentials).await?;
    }
    let job = if revalidate {
        Some(enqueue_validation(&mut tx, &state, &principal, id).await?)
    } else {
        None
    };
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "server.update",
            "server",
            id,
            serde_json::json!({ "name": name.is_some(), "host": host, "port": port,
                "username": username.is_some(), "credentials": credentials.is_some(),
                "settings": settings }),
        ),
    )
    .await?;
    let server = authorized(&mut tx, &principal, id, Action::Read).await?;
    tx.commit().await?;
    if let Some(job) = &job {
        state.jobs.dispatch(job).await;
    }
    Ok(Envelope::ok(ServerUpdated {
        server,
        job_id: job.map(|j| j.id),
    }))
}

/// Forget a server (its metrics go with it).
#[utoipa::path(delete, path = "/servers/{id}", tag = "servers",
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 200, description = "Deleted", body = Deleted),
    (status = 404, description = "No such server of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "It still has deployments", body = crate::error::ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<Deleted>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let server = authorized(&mut tx, &principal, id, Action::Manage).await?;
    let deployments: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deployments WHERE server_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    if deployments > 0 {
        return Err(ApiError::Conflict(format!(
            "the server has {deployments} deployment(s): delete them first (they leave containers and sites there)"
        )));
    }
    sqlx::query("DELETE FROM servers WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "server.delete",
            "server",
            id,
            serde_json::json!({ "name": server.name, "host": server.host }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(Deleted::DONE))
}
