//! SPEC §3.2, signing in and out: CSRF tokens, password and passwordless
//! sign-in, the 2FA second step, refresh-token rotation, logout and
//! `GET /auth/me` (registration and password reset have modules of their own).

use axum::extract::State;
use axum_extra::extract::CookieJar;
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::auth::sessions::{self, Client, SignInAnswer};
use crate::auth::users::{self, UserRow, UserView};
use crate::auth::{self, Principal, Scope};
use crate::envelope::{Envelope, Json};
use crate::error::ApiError;
use crate::state::AppState;
use crate::validate::{self, secret_field, text_field};

mod email_code;
mod second_factor;
mod session_tokens;

pub use email_code::*;
pub use second_factor::*;
pub use session_tokens::*;

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
    state
        .rate_limiter
        .enforce(
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
