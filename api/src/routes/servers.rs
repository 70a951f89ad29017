//! SPEC §3.3: the user's servers. Credentials are checked, sealed with
//! `BERTH_MASTER_KEY` (bound to the row and column) and never returned; every
//! connection happens in a job (`probe` queue), never in a request.

use axum::extract::State;
use berth_jobs::store::{self, NewJob};
use berth_jobs::{Enqueued, ServerValidate};
use berth_secrets::server_secret_binding;
use berth_ssh::command::{check_host, check_username};
use berth_ssh::keys::inspect_private_key;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::audit;
use crate::auth::sessions::Client;
use crate::auth::{Principal, Scope};
use crate::envelope::{Envelope, Json, Page, PageQuery, Path, Query, user_page};
use crate::error::{ApiError, FieldError};
use crate::rate_limit::{self, Limited};
use crate::state::AppState;
use crate::validate::{self, text_field};

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
    pub(crate) last_probe_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const VIEW_COLUMNS: &str = "id, name, host, port, username, auth_type, host_key, host_key_offered, \
    status, status_reason, os, arch, docker_version, nginx_version, validated_at, build_slots, \
    last_probe_at, created_at, updated_at";

/// The caller's server, or 404 (also for another user's id).
pub(crate) async fn owned(
    conn: &mut PgConnection,
    principal: &Principal,
    id: Uuid,
) -> Result<ServerView, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {VIEW_COLUMNS} FROM servers WHERE id = $1 AND owner_user_id = $2"
    ))
    .bind(id)
    .bind(principal.user_id())
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::NotFound("no such server".into()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerRequest {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    name: Option<String>,
    /// An IP address or DNS name.
    #[schema(min_length = 1, max_length = 253)]
    host: Option<String>,
    /// 1–65535 (default 22).
    #[schema(minimum = 1, maximum = 65535)]
    port: Option<i64>,
    /// `[a-z_][a-z0-9_-]*`, at most 32.
    #[schema(pattern = "^[a-z_][a-z0-9_-]{0,31}$")]
    username: Option<String>,
    /// `password` or `key`.
    #[schema(pattern = "^(password|key)$")]
    auth_type: Option<String>,
    password: Option<String>,
    /// PEM or OpenSSH private key.
    private_key: Option<String>,
    /// For an encrypted private key.
    passphrase: Option<String>,
    /// How many builds run on the server at once, 1–16 (default 1).
    #[schema(minimum = 1, maximum = 16)]
    build_slots: Option<i64>,
}

/// Checked connection credentials.
struct Credentials {
    auth_type: &'static str,
    secret: String,
    passphrase: Option<String>,
}

fn check_secret_text(field: &str, value: &str, max: usize, errors: &mut Vec<FieldError>) {
    if value.is_empty() || value.len() > max || value.contains('\0') {
        errors.push(FieldError::new(field, format!("must be 1 to {max} bytes")));
    }
}

/// Exactly one of password or privateKey, matching authType; a key parses and
/// has its passphrase when encrypted.
fn credentials(req: &ServerRequest, errors: &mut Vec<FieldError>) -> Option<Credentials> {
    match req.auth_type.as_deref() {
        Some("password") => {
            if req.private_key.is_some() || req.passphrase.is_some() {
                errors.push(FieldError::new(
                    "privateKey",
                    "must be absent when authType is password",
                ));
            }
            let Some(password) = &req.password else {
                errors.push(FieldError::new(
                    "password",
                    "is required when authType is password",
                ));
                return None;
            };
            check_secret_text("password", password, 1024, errors);
            Some(Credentials {
                auth_type: "password",
                secret: password.clone(),
                passphrase: None,
            })
        }
        Some("key") => {
            if req.password.is_some() {
                errors.push(FieldError::new(
                    "password",
                    "must be absent when authType is key",
                ));
            }
            let Some(key) = &req.private_key else {
                errors.push(FieldError::new(
                    "privateKey",
                    "is required when authType is key",
                ));
                return None;
            };
            match inspect_private_key(key) {
                Ok(true) if req.passphrase.as_deref().is_none_or(str::is_empty) => {
                    errors.push(FieldError::new(
                        "passphrase",
                        "is required: the key is encrypted",
                    ));
                }
                Ok(_) => {}
                Err(refused) => errors.push(FieldError::new("privateKey", refused.rule)),
            }
            if let Some(passphrase) = &req.passphrase {
                check_secret_text("passphrase", passphrase, 1024, errors);
            }
            Some(Credentials {
                auth_type: "key",
                secret: format!("{}\n", key.trim()),
                passphrase: req.passphrase.clone().filter(|p| !p.is_empty()),
            })
        }
        _ => {
            errors.push(FieldError::new("authType", "must be password or key"));
            None
        }
    }
}

fn check_host_field(state: &AppState, host: &str, errors: &mut Vec<FieldError>) -> String {
    let host = host.trim().to_owned();
    if let Err(refused) = check_host(&host) {
        errors.push(FieldError::new("host", refused.rule));
    } else if let Ok(ip) = host.parse::<std::net::IpAddr>()
        && !berth_ssh::AddressPolicy::new(state.config.ssh.deny_networks.clone()).allows(ip)
    {
        errors.push(FieldError::new(
            "host",
            "is in a network Berth does not connect to (BERTH_SSH_DENY_NETWORKS)",
        ));
    }
    host
}

fn check_port(port: i64, errors: &mut Vec<FieldError>) -> i32 {
    if !(1..=65535).contains(&port) {
        errors.push(FieldError::new("port", "must be 1 to 65535"));
    }
    port as i32
}

fn check_build_slots(slots: i64, errors: &mut Vec<FieldError>) -> i32 {
    if !(1..=16).contains(&slots) {
        errors.push(FieldError::new("buildSlots", "must be 1–16"));
    }
    slots.clamp(1, 16) as i32
}

fn check_username_field(username: &str, errors: &mut Vec<FieldError>) -> String {
    if let Err(refused) = check_username(username) {
        errors.push(FieldError::new("username", refused.rule));
    }
    username.to_owned()
}

/// Seals the credentials into the row's `secret` and `passphrase` columns.
async fn store_credentials(
    conn: &mut PgConnection,
    state: &AppState,
    id: Uuid,
    credentials: &Credentials,
) -> Result<(), ApiError> {
    let row = id.to_string();
    let secret = state.keys.seal(
        credentials.secret.as_bytes(),
        server_secret_binding(&row, "secret"),
    );
    let passphrase = credentials.passphrase.as_ref().map(|p| {
        state
            .keys
            .seal(p.as_bytes(), server_secret_binding(&row, "passphrase"))
    });
    sqlx::query(
        "UPDATE servers SET auth_type = $2, secret = $3, passphrase = $4, secret_key_id = $5, \
         updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(credentials.auth_type)
    .bind(secret)
    .bind(passphrase)
    .bind(state.keys.current_key_id())
    .execute(conn)
    .await?;
    Ok(())
}

async fn enqueue_validation(
    conn: &mut PgConnection,
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<Enqueued, ApiError> {
    let job = NewJob::new(ServerValidate { server_id: id })
        .owner(principal.user_id())
        .server(id)
        .dedupe_key(format!("validate:{id}"));
    Ok(store::enqueue(conn, state.jobs.policies(), job).await?)
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
    let port = check_port(req.port.unwrap_or(22), &mut errors);
    let username = check_username_field(req.username.as_deref().unwrap_or(""), &mut errors);
    let build_slots = check_build_slots(req.build_slots.unwrap_or(1), &mut errors);
    let credentials = credentials(&req, &mut errors);
    validate::finish(errors)?;
    let credentials = credentials.expect("checked");
    let decision = rate_limit::enforce(
        &state.redis,
        "server_create",
        &principal.user_id().to_string(),
        state.config.server_create_rate_limit,
        "too many servers added recently; try again later",
    )
    .await?;
    let id = Uuid::new_v4();
    let mut tx = state.pool.begin().await?;
    sqlx::query(
        "INSERT INTO servers (id, owner_user_id, name, host, port, username, auth_type, secret, secret_key_id, \
                              build_slots) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, '', '', $8)",
    )
    .bind(id)
    .bind(principal.user_id())
    .bind(&name)
    .bind(&host)
    .bind(port)
    .bind(&username)
    .bind(credentials.auth_type)
    .bind(build_slots)
    .execute(&mut *tx)
    .await?;
    store_credentials(&mut tx, &state, id, &credentials).await?;
    let job = enqueue_validation(&mut tx, &state, &principal, id).await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "server.create",
            "server",
            id,
            serde_json::json!({ "name": name, "host": host, "port": port, "authType": credentials.auth_type }),
        ),
    )
    .await?;
    let server = owned(&mut tx, &principal, id).await?;
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
    principal.require(Scope::ServersRead)?;
    let mut conn = state.pool.acquire().await?;
    Ok(Envelope::ok(owned(&mut conn, &principal, id).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerUpdated {
    server: ServerView,
    /// Set when a connection setting changed and the server is validated again.
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
    principal.require(Scope::ServersWrite)?;
    let mut errors = Vec::new();
    let name = req
        .name
        .as_deref()
        .map(|n| text_field("name", n, 100, &mut errors));
    let host = req
        .host
        .as_deref()
        .map(|h| check_host_field(&state, h, &mut errors));
    let port = req.port.map(|p| check_port(p, &mut errors));
    let build_slots = req.build_slots.map(|n| check_build_slots(n, &mut errors));
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
        && build_slots.is_none()
    {
        errors.push(FieldError::new("body", "give at least one field to change"));
    }
    validate::finish(errors)?;
    let mut tx = state.pool.begin().await?;
    let current = owned(&mut tx, &principal, id).await?;
    let moved = host.as_ref().is_some_and(|h| *h != current.host)
        || port.is_some_and(|p| p != current.port);
    let reconnect =
        moved || username.as_ref().is_some_and(|u| *u != current.username) || credentials.is_some();
    sqlx::query(
        "UPDATE servers SET name = COALESCE($2, name), host = COALESCE($3, host), \
           port = COALESCE($4, port), username = COALESCE($5, username), \
           host_key = CASE WHEN $6 THEN NULL ELSE host_key END, \
           host_key_offered = CASE WHEN $6 THEN NULL ELSE host_key_offered END, \
           status = CASE WHEN $7 THEN 'pending' ELSE status END, \
           status_reason = CASE WHEN $7 THEN NULL ELSE status_reason END, \
           build_slots = COALESCE($8, build_slots), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(&name)
    .bind(&host)
    .bind(port)
    .bind(&username)
    .bind(moved)
    .bind(reconnect)
    .bind(build_slots)
    .execute(&mut *tx)
    .await?;
    if let Some(credentials) = &credentials {
        store_credentials(&mut tx, &state, id, credentials).await?;
    }
    let job = if reconnect {
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
                "buildSlots": build_slots }),
        ),
    )
    .await?;
    let server = owned(&mut tx, &principal, id).await?;
    tx.commit().await?;
    if let Some(job) = &job {
        state.jobs.dispatch(job).await;
    }
    Ok(Envelope::ok(ServerUpdated {
        server,
        job_id: job.map(|j| j.id),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ServerDeleted {
    deleted: bool,
}

/// Forget a server (its metrics go with it).
#[utoipa::path(delete, path = "/servers/{id}", tag = "servers",
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 200, description = "Deleted", body = ServerDeleted),
    (status = 404, description = "No such server of yours", body = crate::error::ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<ServerDeleted>, ApiError> {
    principal.require(Scope::ServersWrite)?;
    let mut tx = state.pool.begin().await?;
    let server = owned(&mut tx, &principal, id).await?;
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
    Ok(Envelope::ok(ServerDeleted { deleted: true }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobAccepted {
    job_id: String,
}

/// Validate the server again (202).
#[utoipa::path(post, path = "/servers/{id}/validate", tag = "servers",
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 202, description = "Validation queued", body = JobAccepted),
    (status = 404, description = "No such server of yours", body = crate::error::ErrorEnvelope),
    (status = 429, description = "BERTH_RATE_LIMIT_SERVER_VALIDATE exceeded", body = crate::error::ErrorEnvelope)))]
pub async fn validate_again(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Limited<Envelope<JobAccepted>>, ApiError> {
    principal.require(Scope::ServersWrite)?;
    let mut tx = state.pool.begin().await?;
    owned(&mut tx, &principal, id).await?;
    // Each validation holds an SSH slot of the probe queue: one user cannot
    // keep the queue busy by validating again and again.
    let decision = rate_limit::enforce(
        &state.redis,
        "server_validate",
        &principal.user_id().to_string(),
        state.config.server_validate_rate_limit,
        "too many validations recently; try again later",
    )
    .await?;
    let job = enqueue_validation(&mut tx, &state, &principal, id).await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "server.validate",
            "server",
            id,
            serde_json::json!({ "jobId": job.id }),
        ),
    )
    .await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Limited(
        decision,
        Envelope::accepted(JobAccepted { job_id: job.id }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Repin {
    /// The `hostKeyOffered` the owner checked and accepts.
    fingerprint: String,
}

/// Accept the host key the server now presents (after a reinstall, say), then
/// validate again. The fingerprint must be the one shown as `hostKeyOffered`.
#[utoipa::path(post, path = "/servers/{id}/host-key", tag = "servers", request_body = Repin,
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 202, description = "Re-pinned; validation queued", body = JobAccepted),
    (status = 400, description = "Not the offered key", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours", body = crate::error::ErrorEnvelope)))]
pub async fn repin(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<Repin>,
) -> Result<Envelope<JobAccepted>, ApiError> {
    principal.require(Scope::ServersWrite)?;
    let mut tx = state.pool.begin().await?;
    let server = owned(&mut tx, &principal, id).await?;
    if server.host_key_offered.as_deref() != Some(req.fingerprint.trim()) {
        return Err(ApiError::validation(vec![FieldError::new(
            "fingerprint",
            "must be the host key the server presented (hostKeyOffered)",
        )]));
    }
    sqlx::query(
        "UPDATE servers SET host_key = host_key_offered, host_key_offered = NULL, status = 'pending', \
         status_reason = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let job = enqueue_validation(&mut tx, &state, &principal, id).await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "server.host_key_repin",
            "server",
            id,
            serde_json::json!({ "old": server.host_key, "new": req.fingerprint.trim() }),
        ),
    )
    .await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Envelope::accepted(JobAccepted { job_id: job.id }))
}
