//! SPEC §3.2 API tokens: scoped, shown once, stored hashed, optional expiry.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit;
use crate::auth::sessions::Client;
use crate::auth::tokens::{new_api_token, token_hash};
use crate::auth::{Principal, Scope};
use crate::envelope::{Envelope, Json, Page, PageQuery, Path, Query, user_page};
use crate::error::{ApiError, FieldError};
use crate::routes::sessions::Revoked;
use crate::state::AppState;
use crate::validate::{self, text_field};

const MAX_TOKENS_PER_USER: i64 = 50;

#[derive(Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    id: Uuid,
    name: String,
    /// The token's first characters, to tell tokens apart.
    #[sqlx(rename = "token_prefix")]
    prefix: String,
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

const TOKEN_COLUMNS: &str = "id, name, token_prefix, scopes, expires_at, last_used_at, created_at";

/// The caller's API tokens (never the tokens themselves).
#[utoipa::path(get, path = "/tokens", tag = "account", params(PageQuery), responses(
    (status = 200, description = "API tokens", body = Page<TokenView>)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageQuery>,
) -> Result<Envelope<Page<TokenView>>, ApiError> {
    principal.require_session()?;
    let page = user_page(
        &state.pool,
        &format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE user_id = $1 \
             ORDER BY created_at DESC, id OFFSET $2 LIMIT $3"
        ),
        "SELECT count(*) FROM api_tokens WHERE user_id = $1",
        principal.user_id(),
        page.validate()?,
    )
    .await?;
    Ok(Envelope::ok(page))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewToken {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    name: String,
    /// At least one of `servers:read|write`, `deployments:read|write`,
    /// `domains:read|write`, `notifications:read|write`, `admin`
    /// (administrators only).
    #[schema(value_type = Vec<crate::auth::Scope>, min_items = 1)]
    scopes: Vec<String>,
    /// Optional; in the future, at most a year away.
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    /// Shown this once; only its hash is stored.
    token: String,
    #[serde(flatten)]
    view: TokenView,
}

/// Create an API token. The token is in this answer only.
#[utoipa::path(post, path = "/tokens", tag = "account", request_body = NewToken, responses(
    (status = 201, description = "Created", body = CreatedToken),
    (status = 400, description = "Invalid fields", body = crate::error::ErrorEnvelope),
    (status = 403, description = "A scope beyond the user's role, or called with an API token", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The per-account number of tokens is reached", body = crate::error::ErrorEnvelope)))]
pub async fn create_token(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<NewToken>,
) -> Result<Envelope<CreatedToken>, ApiError> {
    principal.require_session()?;
    let mut errors = Vec::new();
    let name = text_field("name", &req.name, 100, &mut errors);
    let mut scopes: Vec<Scope> = Vec::new();
    for raw in &req.scopes {
        match Scope::parse(raw) {
            Some(scope) if !scopes.contains(&scope) => scopes.push(scope),
            Some(_) => {}
            None => errors.push(FieldError::new(
                "scopes",
                format!(
                    "unknown scope {raw:?}; known: {}",
                    Scope::ALL.map(Scope::name).join(", ")
                ),
            )),
        }
    }
    if req.scopes.is_empty() {
        errors.push(FieldError::new("scopes", "give at least one scope"));
    }
    if let Some(at) = req.expires_at {
        let now = Utc::now();
        if at <= now + chrono::Duration::minutes(1) || at > now + chrono::Duration::days(366) {
            errors.push(FieldError::new(
                "expiresAt",
                "must be in the future and at most a year away",
            ));
        }
    }
    validate::finish(errors)?;
    if let Some(beyond) = scopes.iter().find(|s| !principal.allows(**s)) {
        return Err(ApiError::Forbidden(format!(
            "your role does not have the {} permission",
            beyond.name()
        )));
    }
    let mut tx = state.pool.begin().await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE user_id = $1")
        .bind(principal.user_id())
        .fetch_one(&mut *tx)
        .await?;
    if count >= MAX_TOKENS_PER_USER {
        return Err(ApiError::Conflict(format!(
            "at most {MAX_TOKENS_PER_USER} tokens per account: revoke some first"
        )));
    }
    let token = new_api_token();
    let names: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
    let view: TokenView = sqlx::query_as(&format!(
        "INSERT INTO api_tokens (id, user_id, name, token_hash, token_prefix, scopes, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {TOKEN_COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(principal.user_id())
    .bind(&name)
    .bind(token_hash(&token))
    .bind(token.chars().take(16).collect::<String>())
    .bind(&names)
    .bind(req.expires_at)
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "token.create",
            "api_token",
            view.id,
            serde_json::json!({ "name": name, "scopes": names }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::created(CreatedToken { token, view }))
}

/// Revoke (delete) one of the caller's API tokens.
#[utoipa::path(delete, path = "/tokens/{id}", tag = "account",
    params(("id" = Uuid, Path, description = "Token id")), responses(
    (status = 200, description = "Revoked", body = Revoked),
    (status = 404, description = "No such token of yours", body = crate::error::ErrorEnvelope)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<Revoked>, ApiError> {
    principal.require_session()?;
    let mut tx = state.pool.begin().await?;
    let deleted = sqlx::query("DELETE FROM api_tokens WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(principal.user_id())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(ApiError::NotFound("no such token".into()));
    }
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "token.revoke",
            "api_token",
            id,
            serde_json::json!({}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(Revoked { revoked: 1 }))
}
