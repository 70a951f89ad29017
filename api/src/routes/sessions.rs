//! SPEC §3.2 sessions: the signed-in user's devices, and revoking them.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::{self, Client};
use crate::auth::user_agent::{self, Device};
use crate::envelope::{Envelope, Page, PageQuery, Path, Query};
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    id: Uuid,
    #[serde(flatten)]
    device: Device,
    ip: Option<String>,
    auth_method: String,
    created_at: DateTime<Utc>,
    last_active_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// The session this request was made with.
    current: bool,
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: Uuid,
    user_agent: Option<String>,
    client_ip: Option<String>,
    auth_method: String,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// The caller's live sessions, most recently active first.
#[utoipa::path(get, path = "/sessions", tag = "account", params(PageQuery), responses(
    (status = 200, description = "Live sessions", body = Page<SessionView>)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageQuery>,
) -> Result<Envelope<Page<SessionView>>, ApiError> {
    let current = principal.require_session()?;
    let page = page.validate()?;
    let live = "user_id = $1 AND revoked_at IS NULL AND expires_at > now()";
    let rows: Vec<SessionRow> = sqlx::query_as(&format!(
        "SELECT id, user_agent, client_ip, auth_method, created_at, last_used_at, expires_at \
         FROM sessions WHERE {live} ORDER BY last_used_at DESC, id OFFSET $2 LIMIT $3"
    ))
    .bind(principal.user_id())
    .bind(page.offset())
    .bind(page.limit)
    .fetch_all(&state.pool)
    .await?;
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM sessions WHERE {live}"))
        .bind(principal.user_id())
        .fetch_one(&state.pool)
        .await?;
    let items = rows
        .into_iter()
        .map(|r| SessionView {
            id: r.id,
            device: user_agent::describe(r.user_agent.as_deref()),
            ip: r.client_ip,
            auth_method: r.auth_method,
            created_at: r.created_at,
            last_active_at: r.last_used_at,
            expires_at: r.expires_at,
            current: r.id == current,
        })
        .collect();
    Ok(Envelope::ok(Page::new(items, page, total)))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Revoked {
    pub(crate) revoked: u64,
}

/// Revoke one of the caller's sessions (its access token stops working at once).
#[utoipa::path(delete, path = "/sessions/{id}", tag = "account",
    params(("id" = Uuid, Path, description = "Session id")), responses(
    (status = 200, description = "Revoked", body = Revoked),
    (status = 404, description = "No such live session of yours", body = crate::error::ErrorEnvelope)))]
pub async fn revoke_session(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<Revoked>, ApiError> {
    principal.require_session()?;
    let mut tx = state.pool.begin().await?;
    if !sessions::revoke(&mut tx, principal.user_id(), id, "revoked_by_user").await? {
        return Err(ApiError::NotFound("no such session".into()));
    }
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "session.revoke",
            "session",
            id,
            serde_json::json!({}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(Revoked { revoked: 1 }))
}

/// Revoke every session of the caller but this one.
#[utoipa::path(post, path = "/sessions/revoke-others", tag = "account", responses(
    (status = 200, description = "How many were revoked", body = Revoked)))]
pub async fn revoke_other_sessions(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
) -> Result<Envelope<Revoked>, ApiError> {
    let current = principal.require_session()?;
    let mut tx = state.pool.begin().await?;
    let revoked = sessions::revoke_all(
        &mut tx,
        principal.user_id(),
        Some(current),
        "revoked_by_user",
    )
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "session.revoke_others",
            "user",
            principal.user_id(),
            serde_json::json!({ "revoked": revoked }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(Revoked { revoked }))
}
