//! Who is calling: a signed-in session (access JWT in the `access_token` cookie
//! or `Authorization: Bearer`) or an API token, and what they may do.
//!
//! Every authenticated request checks its session (or token) in Postgres, so a
//! revoked session, a suspended or deleted user, or a deleted token stops
//! working on the very next request. Cookie-authenticated unsafe requests must
//! carry a valid CSRF token; bearer requests are exempt.

pub mod codes;
pub mod csrf;
pub mod password;
pub mod sessions;
pub mod tokens;
pub mod totp;
pub mod user_agent;
pub mod users;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum_extra::extract::CookieJar;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::state::AppState;
use tokens::API_TOKEN_PREFIX;
use users::{Role, USER_COLUMNS_OF_U, UserRow};

pub const ACCESS_COOKIE: &str = "access_token";
pub const REFRESH_COOKIE: &str = "refresh_token";

/// What an API token may be allowed to do. `…:write` includes `…:read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Scope {
    #[serde(rename = "servers:read")]
    ServersRead,
    #[serde(rename = "servers:write")]
    ServersWrite,
    #[serde(rename = "deployments:read")]
    DeploymentsRead,
    #[serde(rename = "deployments:write")]
    DeploymentsWrite,
    #[serde(rename = "domains:read")]
    DomainsRead,
    #[serde(rename = "domains:write")]
    DomainsWrite,
    /// Notifications and alert rules.
    #[serde(rename = "notifications:read")]
    NotificationsRead,
    #[serde(rename = "notifications:write")]
    NotificationsWrite,
    /// Projects, their members and invitations.
    #[serde(rename = "projects:read")]
    ProjectsRead,
    #[serde(rename = "projects:write")]
    ProjectsWrite,
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 11] = [
        Scope::ServersRead,
        Scope::ServersWrite,
        Scope::DeploymentsRead,
        Scope::DeploymentsWrite,
        Scope::DomainsRead,
        Scope::DomainsWrite,
        Scope::NotificationsRead,
        Scope::NotificationsWrite,
        Scope::ProjectsRead,
        Scope::ProjectsWrite,
        Scope::Admin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::ServersRead => "servers:read",
            Scope::ServersWrite => "servers:write",
            Scope::DeploymentsRead => "deployments:read",
            Scope::DeploymentsWrite => "deployments:write",
            Scope::DomainsRead => "domains:read",
            Scope::DomainsWrite => "domains:write",
            Scope::NotificationsRead => "notifications:read",
            Scope::NotificationsWrite => "notifications:write",
            Scope::ProjectsRead => "projects:read",
            Scope::ProjectsWrite => "projects:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == s)
    }

    /// The write scope that includes this read scope.
    fn write_of(self) -> Option<Scope> {
        match self {
            Scope::ServersRead => Some(Scope::ServersWrite),
            Scope::DeploymentsRead => Some(Scope::DeploymentsWrite),
            Scope::DomainsRead => Some(Scope::DomainsWrite),
            Scope::NotificationsRead => Some(Scope::NotificationsWrite),
            Scope::ProjectsRead => Some(Scope::ProjectsWrite),
            _ => None,
        }
    }

    /// Everything a user with `role` may do: all resource scopes, and `admin`
    /// for administrators.
    pub fn for_role(role: Role) -> Vec<Scope> {
        Scope::ALL
            .into_iter()
            .filter(|s| *s != Scope::Admin || role.is_admin())
            .collect()
    }
}

#[derive(Debug, Clone)]
pub enum Credential {
    Session { session_id: Uuid },
    ApiToken { token_id: Uuid, scopes: Vec<Scope> },
}

/// An authenticated caller. Cheap to clone: it is kept in the request's
/// extensions for every extractor that asks for it.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: std::sync::Arc<UserRow>,
    pub credential: Credential,
}

impl Principal {
    pub fn user_id(&self) -> Uuid {
        self.user.id
    }

    pub fn role(&self) -> Role {
        self.user.role()
    }

    /// What this caller may do: the user's permissions, narrowed to the token's
    /// scopes for an API token (a demoted user's token loses `admin` at once).
    pub fn permissions(&self) -> Vec<Scope> {
        let of_role = Scope::for_role(self.role());
        match &self.credential {
            Credential::Session { .. } => of_role,
            Credential::ApiToken { scopes, .. } => of_role
                .into_iter()
                .filter(|s| scopes.contains(s) || s.write_of().is_some_and(|w| scopes.contains(&w)))
                .collect(),
        }
    }

    pub fn allows(&self, scope: Scope) -> bool {
        self.permissions().contains(&scope)
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.allows(scope) {
            return Ok(());
        }
        Err(ApiError::Forbidden(format!(
            "this needs the {} permission",
            scope.name()
        )))
    }

    /// Account management (passwords, 2FA, tokens, sessions) needs a signed-in
    /// session: an API token cannot widen or prolong its own access.
    pub fn require_session(&self) -> Result<Uuid, ApiError> {
        match self.credential {
            Credential::Session { session_id, .. } => Ok(session_id),
            Credential::ApiToken { .. } => Err(ApiError::Forbidden(
                "this needs a signed-in session, not an API token".into(),
            )),
        }
    }

    pub fn session_id(&self) -> Option<Uuid> {
        match self.credential {
            Credential::Session { session_id, .. } => Some(session_id),
            Credential::ApiToken { .. } => None,
        }
    }
}

/// Verifies a password under the failure limits of `subject` (an account, or
/// an unknown identifier). Failures lock the pair (account, client address)
/// after `BERTH_RATE_LIMIT_LOGIN_FAILURES`, so an attacker who fails for a
/// victim's address locks out only their own address. Past the per-account
/// ceiling (`BERTH_RATE_LIMIT_LOGIN_FAILURES_ACCOUNT`, failures from any
/// address) attempts on the account are slowed to one per
/// `BERTH_RATE_LIMIT_LOGIN_SLOW_LANE`, never refused for good. `hash` `None`
/// verifies against a dummy hash (false, in the same time).
pub async fn verify_password_limited(
    state: &AppState,
    subject: &str,
    client_ip: std::net::IpAddr,
    password: &str,
    hash: Option<&str>,
) -> Result<bool, ApiError> {
    use crate::rate_limit;
    let limits = state.config.auth.limits;
    let pair = format!("{subject}:{}", rate_limit::address_subject(client_ip));
    state
        .rate_limiter
        .ensure_below(
            "login_failures",
            &pair,
            limits.login_failures,
            "too many wrong passwords for this account from your address; try again later",
        )
        .await?;
    if state
        .rate_limiter
        .at_limit(
            "login_failures_account",
            subject,
            limits.login_failures_account,
        )
        .await
    {
        state
            .rate_limiter
            .enforce(
                "login_slow_lane",
                subject,
                limits.login_slow_lane,
                "this account is under attack and sign-ins are slowed; try again in a few seconds",
            )
            .await?;
    }
    if password::verify_password(password, hash).await? {
        return Ok(true);
    }
    for (scope, key, limit) in [
        ("login_failures", pair.as_str(), limits.login_failures),
        (
            "login_failures_account",
            subject,
            limits.login_failures_account,
        ),
    ] {
        if let Err(e) = state.rate_limiter.hit(scope, key, limit).await {
            tracing::warn!(error = %e, "password failure not counted: Redis unavailable");
        }
    }
    Ok(false)
}

/// Forgets the failed password attempts of `subject` from `client_ip` (after
/// a success there).
pub async fn clear_password_failures(state: &AppState, subject: &str, client_ip: std::net::IpAddr) {
    let pair = format!(
        "{subject}:{}",
        crate::rate_limit::address_subject(client_ip)
    );
    state.rate_limiter.reset("login_failures", &pair).await;
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        let principal = if let Some(token) = bearer(&parts.headers).map(str::to_owned) {
            let token = token.as_str();
            if token.starts_with(API_TOKEN_PREFIX) {
                api_token(state, token).await?
            } else {
                session(state, parts, token).await?
            }
        } else {
            // Cookies are parsed only for callers without a bearer token.
            let jar = CookieJar::from_headers(&parts.headers);
            let Some(cookie) = jar.get(ACCESS_COOKIE) else {
                return Err(ApiError::unauthenticated());
            };
            let principal = session(state, parts, cookie.value()).await?;
            if is_unsafe(&parts.method) {
                let session_id = principal.session_id().expect("a session credential");
                check_csrf(state, &parts.headers, &jar, session_id)?;
            }
            principal
        };
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// `Option<Principal>`: `None` for anonymous callers and for credentials that
/// do not verify (routes that work either way, like `GET /auth/csrf`).
impl OptionalFromRequestParts<AppState> for Principal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(
            <Principal as FromRequestParts<AppState>>::from_request_parts(parts, state)
                .await
                .ok(),
        )
    }
}

pub fn check_csrf(
    state: &AppState,
    headers: &HeaderMap,
    jar: &CookieJar,
    session_id: Uuid,
) -> Result<(), ApiError> {
    let header = headers
        .get(csrf::CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::Forbidden(
                "missing CSRF token: send the csrf_token cookie's value in X-CSRF-Token".into(),
            )
        })?;
    let cookie = jar.get(csrf::CSRF_COOKIE).map(|c| c.value()).unwrap_or("");
    if !state.csrf.verify(session_id, header, cookie) {
        return Err(ApiError::Forbidden(
            "invalid CSRF token: get a new one from GET /api/v1/auth/csrf".into(),
        ));
    }
    Ok(())
}

/// When a session (`s`) of a user (`u`) may still be used: not revoked, not
/// past its lifetime, its user active. Every session check uses this.
pub const LIVE_SESSION: &str =
    "s.revoked_at IS NULL AND s.expires_at > now() AND u.status = 'active'";

/// Whether `session_id` is still a live session of `user_id` (for long-lived
/// connections that outlast the request that authenticated them).
pub async fn session_is_live(
    pool: &sqlx::PgPool,
    user_id: Uuid,
    session_id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.id = $1 AND s.user_id = $2 AND {LIVE_SESSION})"
    ))
    .bind(session_id)
    .bind(user_id)
    .fetch_one(pool)
    .await
}

/// Every authenticated request runs one of these: built once, not per request.
static SESSION_USER_QUERY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT s.last_used_at AS session_last_used_at, {} FROM sessions s JOIN users u ON u.id = s.user_id \
         WHERE s.id = $1 AND s.user_id = $2 AND {LIVE_SESSION}",
        *USER_COLUMNS_OF_U
    )
});
static TOKEN_USER_QUERY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT t.id AS token_id, t.scopes AS token_scopes, t.last_used_at AS token_last_used_at, {} \
         FROM api_tokens t JOIN users u ON u.id = t.user_id \
         WHERE t.token_hash = $1 AND (t.expires_at IS NULL OR t.expires_at > now()) \
           AND u.status = 'active'",
        *USER_COLUMNS_OF_U
    )
});

async fn session(state: &AppState, parts: &mut Parts, token: &str) -> Result<Principal, ApiError> {
    let claims = state
        .jwt
        .verify(token)
        .ok_or_else(ApiError::unauthenticated)?;
    let row: Option<SessionUser> = sqlx::query_as(&SESSION_USER_QUERY)
        .bind(claims.sid)
        .bind(claims.sub)
        .fetch_optional(&state.pool)
        .await?;
    let Some(SessionUser {
        session_last_used_at: last_used_at,
        user,
    }) = row
    else {
        return Err(ApiError::unauthenticated());
    };
    // Last activity is kept to the minute: one write per session per minute,
    // not one per request.
    if Utc::now() - last_used_at > chrono::Duration::seconds(60) {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        sqlx::query("UPDATE sessions SET last_used_at = now(), client_ip = $2 WHERE id = $1")
            .bind(claims.sid)
            .bind(ip.to_string())
            .execute(&state.pool)
            .await?;
    }
    Ok(Principal {
        user: user.into(),
        credential: Credential::Session {
            session_id: claims.sid,
        },
    })
}

/// The caller a live session stands for, for a connection authenticated
/// by something else that names the session (a terminal's one-time token):
/// 401 once the session or its user is no longer live.
pub async fn principal_of_session(
    pool: &sqlx::PgPool,
    user_id: Uuid,
    session_id: Uuid,
) -> Result<Principal, ApiError> {
    let row: Option<SessionUser> = sqlx::query_as(&SESSION_USER_QUERY)
        .bind(session_id)
        .bind(user_id)
        .fetch_optional(pool)
        .await?;
    let row = row.ok_or_else(ApiError::unauthenticated)?;
    Ok(Principal {
        user: row.user.into(),
        credential: Credential::Session { session_id },
    })
}

#[derive(sqlx::FromRow)]
struct SessionUser {
    session_last_used_at: DateTime<Utc>,
    #[sqlx(flatten)]
    user: UserRow,
}

#[derive(sqlx::FromRow)]
struct TokenUser {
    token_id: Uuid,
    token_scopes: Vec<String>,
    token_last_used_at: Option<DateTime<Utc>>,
    #[sqlx(flatten)]
    user: UserRow,
}

async fn api_token(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let row: Option<TokenUser> = sqlx::query_as(&TOKEN_USER_QUERY)
        .bind(tokens::token_hash(token))
        .fetch_optional(&state.pool)
        .await?;
    let Some(row) = row else {
        return Err(ApiError::unauthenticated());
    };
    if row
        .token_last_used_at
        .is_none_or(|t| Utc::now() - t > chrono::Duration::seconds(60))
    {
        sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
            .bind(row.token_id)
            .execute(&state.pool)
            .await?;
    }
    Ok(Principal {
        user: row.user.into(),
        credential: Credential::ApiToken {
            token_id: row.token_id,
            scopes: row
                .token_scopes
                .iter()
                .filter_map(|s| Scope::parse(s))
                .collect(),
        },
    })
}
