//! SPEC §3.2, the signed-in user's own account: profile, password change,
//! sessions, TOTP 2FA, API tokens and account deletion. Everything that changes
//! the account needs a signed-in session (not an API token), and is audited.

use axum::extract::State;
use axum_extra::extract::CookieJar;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::audit;
use crate::auth::codes::{self, CodeCheck, Purpose};
use crate::auth::password::{PASSWORD_MAX_CHARS, check_new_password, hash_password};
use crate::auth::sessions::{self, Client};
use crate::auth::tokens::{new_api_token, token_hash};
use crate::auth::user_agent::{self, Device};
use crate::auth::users::{self, UserRow, UserView};
use crate::auth::{Principal, Scope, clear_password_failures, totp, verify_password_limited};
use crate::envelope::{Envelope, Json, Page, PageQuery, Path, Query, user_page};
use crate::error::{ApiError, FieldError};
use crate::routes::auth::{Sent, limit_mail_to};
use crate::state::AppState;
use crate::validate::{self, secret_field, text_field, username_field};

const MAX_TOKENS_PER_USER: i64 = 50;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkedProvider {
    provider: String,
    email: Option<String>,
    linked_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(flatten)]
    user: UserView,
    has_password: bool,
    linked_providers: Vec<LinkedProvider>,
}

async fn profile_of(state: &AppState, user: &UserRow) -> Result<Profile, ApiError> {
    let linked: Vec<(String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT provider, email, created_at FROM oauth_identities WHERE user_id = $1 ORDER BY provider",
    )
    .bind(user.id)
    .fetch_all(&state.pool)
    .await?;
    Ok(Profile {
        user: user.into(),
        has_password: user.password_hash.is_some(),
        linked_providers: linked
            .into_iter()
            .map(|(provider, email, linked_at)| LinkedProvider {
                provider,
                email,
                linked_at,
            })
            .collect(),
    })
}

/// The caller's profile: name, username, avatar, linked providers, verification state.
#[utoipa::path(get, path = "/profile", tag = "account", responses(
    (status = 200, description = "The profile", body = Profile),
    (status = 401, description = "Not signed in", body = crate::error::ErrorEnvelope)))]
pub async fn get_profile(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Envelope<Profile>, ApiError> {
    Ok(Envelope::ok(profile_of(&state, &principal.user).await?))
}

/// `null` and absent differ: `Some(None)` clears a field, `None` leaves it.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileUpdate {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable = false, min_length = 1, max_length = 100, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    name: Option<Option<String>>,
    /// 3 to 30 of `[a-zA-Z0-9_-]`; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^[a-zA-Z0-9_-]{3,30}$")]
    username: Option<Option<String>>,
    /// An http(s) URL; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2048, pattern = r"^https?://[A-Za-z0-9.-]{1,253}(:[0-9]{1,4})?(/[!-~]*)?$")]
    avatar_url: Option<Option<String>>,
}

/// `AVATAR_URL_PATTERN` checked by hand (the schema states the same), then
/// parsed: an http(s) URL with an ASCII host name or address, an optional
/// port and printable ASCII after it.
fn avatar_field(value: &str, errors: &mut Vec<FieldError>) -> String {
    let shape_ok = || {
        let rest = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"))?;
        let end = rest.find([':', '/']).unwrap_or(rest.len());
        let (host, rest) = rest.split_at(end);
        let host_ok = (1..=253).contains(&host.len())
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        let (port, path) = match rest.strip_prefix(':') {
            Some(after) => {
                let end = after.find('/').unwrap_or(after.len());
                (Some(&after[..end]), &after[end..])
            }
            None => (None, rest),
        };
        let port_ok = port
            .is_none_or(|p| (1..=4).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
        let path_ok = path.is_empty()
            || (path.starts_with('/') && path.bytes().all(|b| (b'!'..=b'~').contains(&b)));
        Some(host_ok && port_ok && path_ok)
    };
    let ok = value.len() <= 2048
        && shape_ok() == Some(true)
        && url::Url::parse(value).is_ok_and(|u| u.host().is_some());
    if !ok {
        errors.push(FieldError::new(
            "avatarUrl",
            "must be an http(s) URL with an ASCII host, of at most 2048 characters",
        ));
    }
    value.to_owned()
}

/// Update name, username or avatar; fields left out keep their value.
#[utoipa::path(patch, path = "/profile", tag = "account", request_body = ProfileUpdate, responses(
    (status = 200, description = "The updated profile", body = Profile),
    (status = 400, description = "Invalid fields", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Username taken", body = crate::error::ErrorEnvelope)))]
pub async fn update_profile(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<ProfileUpdate>,
) -> Result<Envelope<Profile>, ApiError> {
    principal.require_session()?;
    let mut errors = Vec::new();
    let name = req.name.as_ref().map(|n| match n {
        Some(n) => text_field("name", n, 100, &mut errors),
        None => {
            errors.push(FieldError::new("name", "must not be null"));
            String::new()
        }
    });
    let username = req.username.as_ref().map(|u| {
        u.as_deref()
            .map(|u| username_field("username", u, &mut errors))
    });
    let avatar = req
        .avatar_url
        .as_ref()
        .map(|a| a.as_deref().map(|a| avatar_field(a, &mut errors)));
    validate::finish(errors)?;
    if name.is_none() && username.is_none() && avatar.is_none() {
        // Nothing to change (a PATCH of `{}`): the profile as it is.
        return Ok(Envelope::ok(profile_of(&state, &principal.user).await?));
    }
    let mut tx = state.pool.begin().await?;
    if let Some(Some(username)) = &username {
        let taken: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($1) AND id <> $2)",
        )
        .bind(username)
        .bind(principal.user_id())
        .fetch_one(&mut *tx)
        .await?;
        if taken {
            return Err(ApiError::Conflict("this username is taken".into()));
        }
    }
    let user: UserRow = sqlx::query_as(&format!(
        "UPDATE users SET name = COALESCE($2, name), \
           username = CASE WHEN $3 THEN $4 ELSE username END, \
           avatar_url = CASE WHEN $5 THEN $6 ELSE avatar_url END, updated_at = now() \
         WHERE id = $1 RETURNING {}",
        users::USER_COLUMNS
    ))
    .bind(principal.user_id())
    .bind(&name)
    .bind(username.is_some())
    .bind(username.clone().flatten())
    .bind(avatar.is_some())
    .bind(avatar.clone().flatten())
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user.id),
            "profile.update",
            "user",
            user.id,
            serde_json::json!({ "name": name.is_some(), "username": username.is_some(), "avatarUrl": avatar.is_some() }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(profile_of(&state, &user).await?))
}

/// Checks the caller's password, counting failures against the same
/// per-account limit as sign-in. `field` names it in the error.
async fn confirm_password(
    state: &AppState,
    user: &UserRow,
    password: &str,
    field: &str,
    client: &Client,
) -> Result<(), ApiError> {
    let subject = user.id.to_string();
    let hash = user.password_hash.as_deref();
    if verify_password_limited(state, &subject, client.ip, password, hash).await? {
        clear_password_failures(state, &subject, client.ip).await;
        return Ok(());
    }
    let mut conn = state.pool.acquire().await?;
    audit::record(
        &mut conn,
        client.audit(
            Some(user.id),
            "auth.password_confirm_failed",
            "user",
            user.id,
            serde_json::json!({ "field": field }),
        ),
    )
    .await?;
    Err(ApiError::validation(vec![FieldError::new(
        field, "is wrong",
    )]))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(min_length = 1, max_length = 128)]
    current_password: String,
    /// 8 to 128 characters, not among the most common passwords.
    #[schema(min_length = 8, max_length = 128)]
    new_password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordChanged {
    sessions_revoked: u64,
}

/// Change the password; every other session is revoked.
#[utoipa::path(post, path = "/profile/password", tag = "account", request_body = PasswordChange, responses(
    (status = 200, description = "Changed", body = PasswordChanged),
    (status = 400, description = "Wrong current password, or a refused new one", body = crate::error::ErrorEnvelope),
    (status = 403, description = "API tokens cannot change passwords", body = crate::error::ErrorEnvelope)))]
pub async fn change_password(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<PasswordChange>,
) -> Result<Envelope<PasswordChanged>, ApiError> {
    let session_id = principal.require_session()?;
    let user = &principal.user;
    let mut errors = Vec::new();
    secret_field(
        "currentPassword",
        &req.current_password,
        PASSWORD_MAX_CHARS,
        &mut errors,
    );
    validate::finish(errors)?;
    if user.password_hash.is_none() {
        return Err(ApiError::bad_request(
            "this account has no password yet: set one with /auth/forgot-password",
        ));
    }
    check_new_password("newPassword", &req.new_password)?;
    if req.new_password == req.current_password {
        return Err(ApiError::validation(vec![FieldError::new(
            "newPassword",
            "must differ from the current password",
        )]));
    }
    confirm_password(
        &state,
        user,
        &req.current_password,
        "currentPassword",
        &client,
    )
    .await?;
    let hash = hash_password(&req.new_password).await?;
    let mut tx = state.pool.begin().await?;
    sqlx::query(
        "UPDATE users SET password_hash = $2, password_changed_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(user.id)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    let revoked =
        sessions::revoke_all(&mut tx, user.id, Some(session_id), "password_change").await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user.id),
            "auth.password_change",
            "user",
            user.id,
            serde_json::json!({ "sessionsRevoked": revoked }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(PasswordChanged {
        sessions_revoked: revoked,
    }))
}

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
    revoked: u64,
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

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TotpSetup {
    /// Base32, for typing into an authenticator app.
    secret: String,
    otpauth_uri: String,
}

/// Start turning on 2FA: a new secret, not active until `/auth/2fa/enable`.
#[utoipa::path(post, path = "/auth/2fa/setup", tag = "account", responses(
    (status = 200, description = "A new secret", body = TotpSetup),
    (status = 409, description = "2FA is already on", body = crate::error::ErrorEnvelope)))]
pub async fn totp_setup(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Envelope<TotpSetup>, ApiError> {
    principal.require_session()?;
    if principal.user.totp_enabled {
        return Err(ApiError::Conflict(
            "two-factor authentication is already on: disable it first".into(),
        ));
    }
    let secret = totp::generate(&principal.user.email)?;
    let sealed = totp::seal(
        &state.keys,
        principal.user_id(),
        "totp_pending_secret",
        &secret.raw,
    );
    sqlx::query("UPDATE users SET totp_pending_secret = $2 WHERE id = $1")
        .bind(principal.user_id())
        .bind(sealed)
        .execute(&state.pool)
        .await?;
    Ok(Envelope::ok(TotpSetup {
        secret: secret.base32,
        otpauth_uri: secret.otpauth_uri,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TotpEnable {
    /// The current 6-digit code from the authenticator app.
    #[schema(pattern = "^[0-9]{6}$")]
    code: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryCodes {
    /// Shown once. Each works once in place of a TOTP code.
    recovery_codes: Vec<String>,
}

/// Turn 2FA on by proving the authenticator works; answers 10 recovery codes.
#[utoipa::path(post, path = "/auth/2fa/enable", tag = "account", request_body = TotpEnable, responses(
    (status = 200, description = "2FA is on", body = RecoveryCodes),
    (status = 400, description = "Wrong code, or no setup started", body = crate::error::ErrorEnvelope),
    (status = 409, description = "2FA is already on", body = crate::error::ErrorEnvelope)))]
pub async fn totp_enable(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<TotpEnable>,
) -> Result<Envelope<RecoveryCodes>, ApiError> {
    principal.require_session()?;
    let user_id = principal.user_id();
    let mut tx = state.pool.begin().await?;
    let (enabled, pending): (bool, Option<String>) = sqlx::query_as(
        "SELECT totp_enabled, totp_pending_secret FROM users WHERE id = $1 FOR UPDATE",
    )
    .bind(user_id)
    .fetch_one(&mut *tx)
    .await?;
    if enabled {
        return Err(ApiError::Conflict(
            "two-factor authentication is already on".into(),
        ));
    }
    let pending = pending.ok_or_else(|| {
        ApiError::bad_request("no 2FA setup in progress: start with POST /auth/2fa/setup")
    })?;
    let raw = totp::open(&state.keys, user_id, "totp_pending_secret", &pending)?;
    let Some(step) = totp::matching_step(&raw, &req.code)? else {
        return Err(ApiError::validation(vec![FieldError::new(
            "code",
            "is wrong: enter the current code from your authenticator app",
        )]));
    };
    sqlx::query(
        "UPDATE users SET totp_secret = $2, totp_pending_secret = NULL, totp_enabled = true, \
         totp_last_step = $3, updated_at = now() WHERE id = $1",
    )
    .bind(user_id)
    .bind(totp::seal(&state.keys, user_id, "totp_secret", &raw))
    .bind(step)
    .execute(&mut *tx)
    .await?;
    let codes = totp::new_recovery_codes();
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let hashes: Vec<String> = codes.iter().map(|c| totp::recovery_code_hash(c)).collect();
    sqlx::query("INSERT INTO recovery_codes (code_hash, user_id) SELECT unnest($1::text[]), $2")
        .bind(&hashes)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user_id),
            "auth.2fa_enable",
            "user",
            user_id,
            serde_json::json!({}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(RecoveryCodes {
        recovery_codes: codes,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TotpDisable {
    /// Required when the account has a password.
    password: Option<String>,
    /// A current TOTP code or a recovery code.
    code: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TotpDisabled {
    two_factor_enabled: bool,
}

/// Turn 2FA off: needs the password and a code.
#[utoipa::path(post, path = "/auth/2fa/disable", tag = "account", request_body = TotpDisable, responses(
    (status = 200, description = "2FA is off", body = TotpDisabled),
    (status = 400, description = "Wrong password or code, or 2FA is not on", body = crate::error::ErrorEnvelope)))]
pub async fn totp_disable(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<TotpDisable>,
) -> Result<Envelope<TotpDisabled>, ApiError> {
    principal.require_session()?;
    let user = &principal.user;
    if !user.totp_enabled {
        return Err(ApiError::bad_request("two-factor authentication is not on"));
    }
    let mut errors = Vec::new();
    secret_field("code", &req.code, 32, &mut errors);
    if user.password_hash.is_some() {
        secret_field(
            "password",
            req.password.as_deref().unwrap_or(""),
            PASSWORD_MAX_CHARS,
            &mut errors,
        );
    }
    validate::finish(errors)?;
    if user.password_hash.is_some() {
        confirm_password(
            &state,
            user,
            req.password.as_deref().unwrap_or(""),
            "password",
            &client,
        )
        .await?;
    }
    let mut tx = state.pool.begin().await?;
    let (_, accepted) = totp::check_second_factor(&mut tx, &state.keys, user.id, &req.code).await?;
    if !accepted {
        return Err(ApiError::validation(vec![FieldError::new(
            "code",
            "is wrong or was already used",
        )]));
    }
    sqlx::query(
        "UPDATE users SET totp_enabled = false, totp_secret = NULL, totp_pending_secret = NULL, \
         totp_last_step = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(user.id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user.id),
            "auth.2fa_disable",
            "user",
            user.id,
            serde_json::json!({}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(TotpDisabled {
        two_factor_enabled: false,
    }))
}

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

/// Mail a 6-digit code that confirms deleting the account (for accounts
/// without a password, or instead of it).
#[utoipa::path(post, path = "/account/delete-code", tag = "account", responses(
    (status = 200, description = "Sent", body = Sent),
    (status = 429, description = "Too many messages to this address", body = crate::error::ErrorEnvelope)))]
pub async fn account_delete_code(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Envelope<Sent>, ApiError> {
    principal.require_session()?;
    limit_mail_to(&state, "account_delete", &principal.user.email).await?;
    let mut tx = state.pool.begin().await?;
    let mail = codes::issue(&mut tx, &state, &principal.user, Purpose::DeleteAccount).await?;
    tx.commit().await?;
    state.jobs.dispatch(&mail).await;
    Ok(Envelope::ok(Sent { sent: true }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccountDeletion {
    /// The account's password…
    password: Option<String>,
    /// …or the code from `POST /account/delete-code`.
    code: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Deleted {
    deleted: bool,
}

/// Delete the caller's account and everything it owns.
#[utoipa::path(delete, path = "/account", tag = "account", request_body = AccountDeletion, responses(
    (status = 200, description = "Deleted; cookies cleared", body = Deleted),
    (status = 400, description = "Missing or wrong confirmation", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The last super admin cannot delete their account", body = crate::error::ErrorEnvelope)))]
pub async fn delete_account(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    jar: CookieJar,
    Json(req): Json<AccountDeletion>,
) -> Result<(CookieJar, Envelope<Deleted>), ApiError> {
    principal.require_session()?;
    let user = &principal.user;
    let mut tx = state.pool.begin().await?;
    match (req.password.as_deref(), req.code.as_deref()) {
        (Some(password), None) => {
            let mut errors = Vec::new();
            secret_field("password", password, PASSWORD_MAX_CHARS, &mut errors);
            validate::finish(errors)?;
            confirm_password(&state, user, password, "password", &client).await?;
        }
        (None, Some(code)) => {
            let check =
                codes::check(&mut tx, &state, user.id, Purpose::DeleteAccount, code).await?;
            if check != CodeCheck::Accepted {
                tx.commit().await?;
                return Err(check.refusal("code"));
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "confirm with exactly one of password or code (POST /account/delete-code sends one)",
            ));
        }
    }
    if user.role() == users::Role::SuperAdmin {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM users WHERE role = 'super_admin' AND status = 'active' AND id <> $1",
        )
        .bind(user.id)
        .fetch_one(&mut *tx)
        .await?;
        if others == 0 {
            return Err(ApiError::Conflict(
                "the last super admin cannot delete their account: make another super admin first"
                    .into(),
            ));
        }
    }
    audit::record(
        &mut tx,
        client.audit(
            Some(user.id),
            "account.delete",
            "user",
            user.id,
            serde_json::json!({ "email": user.email }),
        ),
    )
    .await?;
    // Owned servers, deployments, sessions, tokens and jobs go with the row
    // (ON DELETE CASCADE); the audit row stays, its actor set to NULL.
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((
        sessions::clear_cookies(&state, jar),
        Envelope::ok(Deleted { deleted: true }),
    ))
}
