//! SPEC §3.2, signing in and out: CSRF tokens, password and passwordless
//! sign-in, the 2FA second step, refresh-token rotation, logout and
//! `GET /auth/me` (registration and password reset have modules of their own).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum_extra::extract::CookieJar;
use berth_jobs::store::{self, NewJob};
use berth_jobs::{EmailJob, EmailMessage};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit;
use crate::auth::codes::{self, CodeCheck, Purpose};
use crate::auth::sessions::{self, Client, Refreshed, SignInAnswer, SignedIn};
use crate::auth::tokens::token_hash;
use crate::auth::users::{self, UserRow, UserView};
use crate::auth::{self, Principal, REFRESH_COOKIE, Scope, totp};
use crate::envelope::{Envelope, Json};
use crate::error::ApiError;
use crate::rate_limit;
use crate::state::AppState;
use crate::validate::{self, email_field, secret_field, text_field};

const INVALID_CREDENTIALS: &str = "invalid email/username or password";

pub(crate) fn require_password_login(state: &AppState) -> Result<(), ApiError> {
    if state.config.auth.password_login {
        Ok(())
    } else {
        Err(ApiError::Forbidden("password sign-in is disabled".into()))
    }
}

fn require_email_code_login(state: &AppState) -> Result<(), ApiError> {
    if state.config.auth.email_code_login {
        Ok(())
    } else {
        Err(ApiError::Forbidden("email code sign-in is disabled".into()))
    }
}

/// Counts one mail of `purpose` to `email` against the per-recipient limit.
/// Each purpose has its own count, so someone who exhausts reset mails for
/// an address does not also stop its sign-in codes.
pub async fn limit_mail_to(state: &AppState, purpose: &str, email: &str) -> Result<(), ApiError> {
    rate_limit::enforce(
        &state.redis,
        "email_send",
        &format!("{purpose}:{}", email.to_lowercase()),
        state.config.auth.limits.email_send,
        "too many messages to this address; try again later",
    )
    .await
    .map(|_| ())
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CsrfToken {
    csrf_token: String,
}

/// Issue a CSRF token (cookie `csrf_token` and body). Bound to the caller's
/// session when signed in; send it back in `X-CSRF-Token` on unsafe requests.
#[utoipa::path(get, path = "/auth/csrf", tag = "auth", responses(
    (status = 200, description = "A token bound to the current session", body = CsrfToken),
    (status = 429, description = "BERTH_RATE_LIMIT_CSRF exceeded", body = crate::error::ErrorEnvelope)))]
pub async fn csrf(
    State(state): State<AppState>,
    jar: CookieJar,
    principal: Option<Principal>,
) -> (CookieJar, Envelope<CsrfToken>) {
    let session = principal.and_then(|p| p.session_id());
    let token = state.csrf.issue(session);
    let jar = sessions::csrf_cookie(&state, jar, token.clone());
    (jar, Envelope::ok(CsrfToken { csrf_token: token }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Providers {
    password: bool,
    email_code: bool,
    totp: bool,
    github: bool,
    google: bool,
}

/// Which sign-in methods are on.
#[utoipa::path(get, path = "/auth/providers", tag = "auth",
    responses((status = 200, description = "Sign-in methods", body = Providers)))]
pub async fn providers(State(state): State<AppState>) -> Envelope<Providers> {
    let auth = &state.config.auth;
    Envelope::ok(Providers {
        password: auth.password_login,
        email_code: auth.email_code_login,
        totp: true,
        github: auth.github.is_some(),
        google: auth.google.is_some(),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailRequest {
    #[schema(format = Email, max_length = 254)]
    pub(crate) email: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Sent {
    pub sent: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginRequest {
    /// Email address or username.
    identifier: String,
    password: String,
}

/// Sign in with a password. Answers `{user, accessToken, refreshToken, expiresIn}`
/// and sets cookies, or `{twoFactorRequired, challengeId}` when 2FA is on.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest, responses(
    (status = 200, description = "Signed in, or a 2FA challenge", body = SignInAnswer),
    (status = 401, description = "Wrong identifier or password (the same answer either way)", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Email not verified, or account suspended", body = crate::error::ErrorEnvelope),
    (status = 429, description = "Too many attempts from this address or on this account", body = crate::error::ErrorEnvelope)))]
pub async fn login(
    State(state): State<AppState>,
    client: Client,
    jar: CookieJar,
    Json(req): Json<LoginRequest>,
) -> Result<(CookieJar, Envelope<SignInAnswer>), ApiError> {
    require_password_login(&state)?;
    let mut errors = Vec::new();
    let identifier = text_field("identifier", &req.identifier, 254, &mut errors);
    secret_field(
        "password",
        &req.password,
        crate::auth::password::PASSWORD_MAX_CHARS,
        &mut errors,
    );
    validate::finish(errors)?;

    let user = users::by_identifier(&state.pool, &identifier).await?;
    // Failures are counted per account, or per identifier when there is none, so
    // the limit answers the same either way.
    let subject = match &user {
        Some(u) => u.id.to_string(),
        None => format!("unknown:{}", identifier.to_lowercase()),
    };
    let hash = user.as_ref().and_then(|u| u.password_hash.as_deref());
    if !auth::verify_password_limited(&state, &subject, client.ip, &req.password, hash).await? {
        let mut conn = state.pool.acquire().await?;
        audit::record(
            &mut conn,
            client.audit(
                user.as_ref().map(|u| u.id),
                "auth.login_failed",
                "user",
                user.as_ref().map(|u| u.id.to_string()).unwrap_or_default(),
                serde_json::json!({
                    "identifier": identifier.chars().take(100).collect::<String>(),
                    "reason": if user.is_some() { "wrong_password" } else { "unknown_account" },
                }),
            ),
        )
        .await?;
        return Err(ApiError::Unauthorized(INVALID_CREDENTIALS.into()));
    }
    let user = user.expect("a verified password belongs to a user");
    ensure_may_sign_in(&user)?;
    auth::clear_password_failures(&state, &subject, client.ip).await;
    let mut tx = state.pool.begin().await?;
    let (jar, answer) =
        sessions::complete_sign_in(&mut tx, &state, jar, &user, "password", false, &client).await?;
    tx.commit().await?;
    Ok((jar, Envelope::ok(answer)))
}

/// Told only to someone who proved the first factor.
fn ensure_may_sign_in(user: &UserRow) -> Result<(), ApiError> {
    if !user.is_active() {
        return Err(ApiError::Forbidden("this account is suspended".into()));
    }
    if !user.email_verified {
        return Err(ApiError::Forbidden(
            "verify your email address first: enter the code we sent, or ask for a new one \
             with POST /api/v1/auth/resend-otp"
                .into(),
        ));
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecondFactorRequest {
    challenge_id: String,
    /// A 6-digit TOTP code or a recovery code.
    code: String,
}

/// The second sign-in step when 2FA is on.
#[utoipa::path(post, path = "/auth/login/2fa", tag = "auth", request_body = SecondFactorRequest, responses(
    (status = 200, description = "Signed in", body = SignedIn),
    (status = 401, description = "Wrong, reused or expired code or challenge", body = crate::error::ErrorEnvelope)))]
pub async fn login_second_factor(
    State(state): State<AppState>,
    client: Client,
    jar: CookieJar,
    Json(req): Json<SecondFactorRequest>,
) -> Result<(CookieJar, Envelope<SignInAnswer>), ApiError> {
    let mut errors = Vec::new();
    secret_field("challengeId", &req.challenge_id, 128, &mut errors);
    secret_field("code", &req.code, 32, &mut errors);
    validate::finish(errors)?;
    let mut tx = state.pool.begin().await?;
    let challenge: Option<(Uuid, String)> = sqlx::query_as(
        "UPDATE login_challenges SET attempts = attempts + 1 \
         WHERE id_hash = $1 AND expires_at > now() AND attempts < $2 RETURNING user_id, auth_method",
    )
    .bind(token_hash(&req.challenge_id))
    .bind(sessions::CHALLENGE_MAX_ATTEMPTS)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user_id, method)) = challenge else {
        return Err(ApiError::Unauthorized(
            "the sign-in challenge is invalid or expired: sign in again".into(),
        ));
    };
    let user = users::by_id(&mut *tx, user_id)
        .await?
        .filter(|u| u.is_active() && u.totp_enabled)
        .ok_or_else(|| ApiError::Unauthorized("this account cannot sign in".into()))?;
    // Wrong codes are also limited per account, across challenges and
    // addresses: new challenges from many addresses cannot go on guessing.
    let limit = state.config.auth.limits.second_factor_failures;
    let account = user.id.to_string();
    rate_limit::ensure_below(
        &state.redis,
        "second_factor_failures",
        &account,
        limit,
        "too many wrong codes for this account; try again later",
    )
    .await?;
    let (kind, accepted) =
        totp::check_second_factor(&mut tx, &state.keys, user.id, &req.code).await?;
    if !accepted {
        let reached = match rate_limit::hit(&state.redis, "second_factor_failures", &account, limit)
            .await
        {
            Ok(decision) => decision.remaining == 0 && decision.allowed,
            Err(e) => {
                tracing::warn!(error = %e, "second-factor failure not counted: Redis unavailable");
                false
            }
        };
        let mail = if reached {
            notify_second_factor_guessing(&mut tx, &state, &user).await?
        } else {
            None
        };
        audit::record(
            &mut tx,
            client.audit(
                Some(user.id),
                "auth.login_failed",
                "user",
                user.id,
                serde_json::json!({ "reason": "second_factor", "kind": kind.name() }),
            ),
        )
        .await?;
        tx.commit().await?;
        if let Some(mail) = mail {
            state.jobs.dispatch(&mail).await;
        }
        return Err(ApiError::Unauthorized(
            "the code is wrong or was already used".into(),
        ));
    }
    sqlx::query("DELETE FROM login_challenges WHERE id_hash = $1")
        .bind(token_hash(&req.challenge_id))
        .execute(&mut *tx)
        .await?;
    let method = format!("{method}+{}", kind.name());
    let (jar, answer) =
        sessions::complete_sign_in(&mut tx, &state, jar, &user, &method, true, &client).await?;
    tx.commit().await?;
    Ok((jar, Envelope::ok(answer)))
}

/// Tells the user, in the app and (unless their preferences say not to) by
/// mail, that someone who knows their password is guessing second-factor codes.
async fn notify_second_factor_guessing(
    tx: &mut sqlx::PgConnection,
    state: &AppState,
    user: &UserRow,
) -> Result<Option<berth_jobs::store::Enqueued>, ApiError> {
    let title = "Repeated wrong sign-in codes".to_owned();
    let body = "Someone who knows your password entered many wrong two-factor codes. \
        Sign-in codes for your account are paused for a while. If this was not you, \
        change your password now."
        .to_owned();
    sqlx::query(
        "INSERT INTO notifications (id, user_id, kind, title, body, data) \
         VALUES ($1, $2, 'security', $3, $4, '{\"reason\": \"second_factor_guessing\"}')",
    )
    .bind(Uuid::new_v4())
    .bind(user.id)
    .bind(&title)
    .bind(&body)
    .execute(&mut *tx)
    .await?;
    let mail: Option<bool> =
        sqlx::query_scalar("SELECT email_security FROM user_preferences WHERE user_id = $1")
            .bind(user.id)
            .fetch_optional(&mut *tx)
            .await?;
    if mail == Some(false) {
        return Ok(None);
    }
    let job = NewJob::new(EmailJob {
        to: user.email.clone(),
        message: EmailMessage::Notification {
            recipient_name: user.name.clone(),
            title,
            body,
        },
    })
    .owner(user.id);
    Ok(Some(store::enqueue(tx, state.jobs.policies(), job).await?))
}

/// Mail a 6-digit sign-in code. Always answers success: whether an account
/// exists is not revealed.
#[utoipa::path(post, path = "/auth/email-code/send", tag = "auth", request_body = EmailRequest, responses(
    (status = 200, description = "Sent if the account exists", body = Sent),
    (status = 403, description = "Email code sign-in is disabled", body = crate::error::ErrorEnvelope),
    (status = 429, description = "Too many messages to this address", body = crate::error::ErrorEnvelope)))]
pub async fn email_code_send(
    State(state): State<AppState>,
    Json(req): Json<EmailRequest>,
) -> Result<Envelope<Sent>, ApiError> {
    require_email_code_login(&state)?;
    let mut errors = Vec::new();
    let email = email_field("email", &req.email, &mut errors);
    validate::finish(errors)?;
    limit_mail_to(&state, "login_code", &email).await?;
    let mut tx = state.pool.begin().await?;
    if let Some(user) = users::by_email(&mut *tx, &email)
        .await?
        .filter(UserRow::is_active)
    {
        let mail = codes::issue(&mut tx, &state, &user, Purpose::Login).await?;
        tx.commit().await?;
        state.jobs.dispatch(&mail).await;
    }
    Ok(Envelope::ok(Sent { sent: true }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailCodeRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    code: String,
}

/// Sign in with a mailed code; answers like `/auth/login`. An unverified
/// account becomes verified, and loses any password set before its address was
/// proven (someone else may have chosen it).
#[utoipa::path(post, path = "/auth/email-code/verify", tag = "auth", request_body = EmailCodeRequest, responses(
    (status = 200, description = "Signed in, or a 2FA challenge", body = SignInAnswer),
    (status = 400, description = "Wrong, expired or used code", body = crate::error::ErrorEnvelope)))]
pub async fn email_code_verify(
    State(state): State<AppState>,
    client: Client,
    jar: CookieJar,
    Json(req): Json<EmailCodeRequest>,
) -> Result<(CookieJar, Envelope<SignInAnswer>), ApiError> {
    require_email_code_login(&state)?;
    let mut errors = Vec::new();
    let email = email_field("email", &req.email, &mut errors);
    secret_field("code", &req.code, 16, &mut errors);
    validate::finish(errors)?;
    let mut tx = state.pool.begin().await?;
    let Some(user) = users::by_email(&mut *tx, &email)
        .await?
        .filter(UserRow::is_active)
    else {
        return Err(CodeCheck::Invalid.refusal("code"));
    };
    let check = codes::check(&mut tx, &state, user.id, Purpose::Login, &req.code).await?;
    if check != CodeCheck::Accepted {
        audit::record(
            &mut tx,
            client.audit(
                Some(user.id),
                "auth.login_failed",
                "user",
                user.id,
                serde_json::json!({ "reason": "wrong_email_code" }),
            ),
        )
        .await?;
        tx.commit().await?;
        return Err(check.refusal("code"));
    }
    let user = users::mark_email_proven(&mut tx, user).await?;
    let (jar, answer) =
        sessions::complete_sign_in(&mut tx, &state, jar, &user, "email_code", false, &client)
            .await?;
    tx.commit().await?;
    Ok((jar, Envelope::ok(answer)))
}

/// A JSON body that may be absent.
fn optional_body<T: DeserializeOwned>(body: &Bytes) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null" {
        return Ok(None);
    }
    crate::envelope::json_object(body).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Exchange a refresh token (cookie, or body `{refreshToken}`) for new tokens.
/// A token works once: presenting a used one revokes its whole session.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body(content = Option<RefreshRequest>), responses(
    (status = 200, description = "New tokens", body = SignedIn),
    (status = 401, description = "Invalid, expired or reused token", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Cookie refresh without a valid CSRF token", body = crate::error::ErrorEnvelope)))]
pub async fn refresh(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    jar: CookieJar,
    body: Bytes,
) -> Result<(CookieJar, Envelope<SignedIn>), (CookieJar, ApiError)> {
    let cleared = sessions::clear_cookies(&state, jar.clone());
    let outcome = async {
        let from_body = optional_body::<RefreshRequest>(&body)?.map(|r| r.refresh_token);
        let (token, via_cookie) = match from_body {
            Some(token) => (token, false),
            None => match jar.get(REFRESH_COOKIE) {
                Some(c) => (c.value().to_owned(), true),
                // No credential at all is "not signed in", not a malformed request.
                None => {
                    return Err(ApiError::Unauthorized(
                        "no refresh token: send {refreshToken} or the refresh_token cookie".into(),
                    ));
                }
            },
        };
        if via_cookie {
            let session: Option<Uuid> =
                sqlx::query_scalar("SELECT session_id FROM refresh_tokens WHERE token_hash = $1")
                    .bind(token_hash(&token))
                    .fetch_optional(&state.pool)
                    .await?;
            let session = session.ok_or_else(ApiError::unauthenticated)?;
            auth::check_csrf(&state, &headers, &jar, session)?;
        }
        let mut tx = state.pool.begin().await?;
        match sessions::refresh(&mut tx, &state, &token, &client).await? {
            Refreshed::Rotated { tokens, user_id } => {
                let user = users::by_id(&mut *tx, user_id)
                    .await?
                    .ok_or_else(ApiError::unauthenticated)?;
                tx.commit().await?;
                let jar = sessions::set_cookies(&state, jar.clone(), &tokens);
                Ok((jar, Envelope::ok(sessions::signed_in(&user, tokens))))
            }
            Refreshed::Reused {
                session_id,
                user_id,
            } => {
                audit::record(
                    &mut tx,
                    client.audit(
                        Some(user_id),
                        "auth.refresh_reuse",
                        "session",
                        session_id,
                        serde_json::json!({ "revoked": true }),
                    ),
                )
                .await?;
                tx.commit().await?;
                tracing::warn!(%session_id, "refresh token reused: session revoked");
                Err(ApiError::Unauthorized(
                    "this refresh token was already used, so its session has been revoked: sign in again"
                        .into(),
                ))
            }
            Refreshed::Invalid => Err(ApiError::Unauthorized(
                "the refresh token is invalid or expired: sign in again".into(),
            )),
        }
    }
    .await;
    outcome.map_err(|e| match e {
        ApiError::Unauthorized(_) => (cleared, e),
        other => (CookieJar::new(), other),
    })
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoggedOut {
    logged_out: bool,
}

/// Revoke this session and clear the cookies.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", responses(
    (status = 200, description = "Signed out", body = LoggedOut),
    (status = 401, description = "Not signed in", body = crate::error::ErrorEnvelope)))]
pub async fn logout(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    jar: CookieJar,
) -> Result<(CookieJar, Envelope<LoggedOut>), ApiError> {
    let session_id = principal.require_session()?;
    let mut tx = state.pool.begin().await?;
    sessions::revoke(&mut tx, principal.user_id(), session_id, "logout").await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "auth.logout",
            "session",
            session_id,
            serde_json::json!({}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok((
        sessions::clear_cookies(&state, jar),
        Envelope::ok(LoggedOut { logged_out: true }),
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    user: UserView,
    role: users::Role,
    permissions: Vec<Scope>,
    /// `session` or `api_token`.
    credential: &'static str,
}

/// The caller: user, role, and what this credential may do.
#[utoipa::path(get, path = "/auth/me", tag = "auth", responses(
    (status = 200, description = "The caller", body = Me),
    (status = 401, description = "Not signed in", body = crate::error::ErrorEnvelope)))]
pub async fn me(principal: Principal) -> Envelope<Me> {
    Envelope::ok(Me {
        user: principal.user.as_ref().into(),
        role: principal.role(),
        permissions: principal.permissions(),
        credential: match principal.credential {
            auth::Credential::Session { .. } => "session",
            auth::Credential::ApiToken { .. } => "api_token",
        },
    })
}
