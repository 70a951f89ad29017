//! Sessions: one per sign-in, each with a family of rotating refresh tokens.
//! A refresh token is exchanged once; presenting it again means it was stolen
//! (or the client is broken), so the whole session is revoked.

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::csrf::CSRF_COOKIE;
use super::tokens::{random_token, token_hash};
use super::users::{UserRow, UserView};
use super::{ACCESS_COOKIE, REFRESH_COOKIE};
use crate::audit::{self, AuditEntry, RequestId};
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::state::AppState;

/// Where the refresh cookie is sent: only to the routes that use it.
const REFRESH_COOKIE_PATH: &str = "/api/v1/auth";
/// A 2FA challenge lives this long and allows this many wrong codes.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(5 * 60);
pub const CHALLENGE_MAX_ATTEMPTS: i32 = 5;

/// Who is on the other end of a request: address, User-Agent, request id.
#[derive(Debug, Clone)]
pub struct Client {
    pub ip: IpAddr,
    pub user_agent: Option<String>,
    pub request_id: RequestId,
}

impl FromRequestParts<AppState> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, state).await?;
        let Ok(request_id) = RequestId::from_request_parts(parts, state).await;
        let user_agent = parts
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(512).collect());
        Ok(Self {
            ip,
            user_agent,
            request_id,
        })
    }
}

impl Client {
    /// An audit row of this request.
    pub fn audit(
        &self,
        actor_user_id: Option<Uuid>,
        action: &'static str,
        target_type: &'static str,
        target_id: impl ToString,
        details: serde_json::Value,
    ) -> AuditEntry<'_> {
        AuditEntry {
            actor_user_id,
            action,
            target_type,
            target_id: target_id.to_string(),
            client_ip: self.ip,
            request_id: &self.request_id,
            details,
        }
    }
}

pub struct IssuedTokens {
    pub session_id: Uuid,
    pub access_token: String,
    pub refresh_token: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Inserts a refresh token for `session_id` that expires after the configured
/// lifetime, never after the session itself.
async fn new_refresh_token(
    conn: &mut PgConnection,
    state: &AppState,
    session_id: Uuid,
    session_expires_at: DateTime<Utc>,
) -> Result<(String, Duration), ApiError> {
    let token = random_token();
    let expires_at =
        (Utc::now() + chrono_duration(state.config.auth.refresh_token_ttl)).min(session_expires_at);
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(token_hash(&token))
    .bind(session_id)
    .bind(expires_at)
    .execute(conn)
    .await?;
    let ttl = (expires_at - Utc::now()).to_std().unwrap_or_default();
    Ok((token, ttl))
}

pub async fn start(
    conn: &mut PgConnection,
    state: &AppState,
    user_id: Uuid,
    method: &str,
    client: &Client,
) -> Result<IssuedTokens, ApiError> {
    let session_id = Uuid::new_v4();
    let expires_at = Utc::now() + chrono_duration(state.config.auth.session_max_age);
    sqlx::query(
        "INSERT INTO sessions (id, user_id, auth_method, user_agent, client_ip, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(method)
    .bind(&client.user_agent)
    .bind(client.ip.to_string())
    .bind(expires_at)
    .execute(&mut *conn)
    .await?;
    let (refresh_token, refresh_ttl) =
        new_refresh_token(conn, state, session_id, expires_at).await?;
    Ok(IssuedTokens {
        session_id,
        access_token: state.jwt.issue(user_id, session_id)?,
        refresh_token,
        access_ttl: state.jwt.ttl(),
        refresh_ttl,
    })
}

pub enum Refreshed {
    Rotated {
        tokens: IssuedTokens,
        user_id: Uuid,
    },
    /// A rotated token came back: its session is now revoked.
    Reused {
        session_id: Uuid,
        user_id: Uuid,
    },
    Invalid,
}

pub async fn refresh(
    conn: &mut PgConnection,
    state: &AppState,
    token: &str,
    client: &Client,
) -> Result<Refreshed, ApiError> {
    let hash = token_hash(token);
    // One conditional UPDATE: of two concurrent uses of one token, one wins.
    let exchanged: Option<Uuid> = sqlx::query_scalar(
        "UPDATE refresh_tokens SET rotated_at = now() \
         WHERE token_hash = $1 AND rotated_at IS NULL AND expires_at > now() RETURNING session_id",
    )
    .bind(&hash)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(session_id) = exchanged else {
        let rotated: Option<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT s.id, s.user_id FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id \
             WHERE r.token_hash = $1 AND r.rotated_at IS NOT NULL",
        )
        .bind(&hash)
        .fetch_optional(&mut *conn)
        .await?;
        return Ok(match rotated {
            Some((session_id, user_id)) => {
                revoke(conn, user_id, session_id, "refresh_token_reuse").await?;
                Refreshed::Reused {
                    session_id,
                    user_id,
                }
            }
            None => Refreshed::Invalid,
        });
    };
    let session: Option<(Uuid, DateTime<Utc>)> = sqlx::query_as(&format!(
        "UPDATE sessions s SET last_used_at = now(), client_ip = $2 FROM users u \
         WHERE s.id = $1 AND u.id = s.user_id AND {} RETURNING s.user_id, s.expires_at",
        super::LIVE_SESSION
    ))
    .bind(session_id)
    .bind(client.ip.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some((user_id, expires_at)) = session else {
        return Ok(Refreshed::Invalid);
    };
    let (refresh_token, refresh_ttl) =
        new_refresh_token(conn, state, session_id, expires_at).await?;
    Ok(Refreshed::Rotated {
        tokens: IssuedTokens {
            session_id,
            access_token: state.jwt.issue(user_id, session_id)?,
            refresh_token,
            access_ttl: state.jwt.ttl(),
            refresh_ttl,
        },
        user_id,
    })
}

/// Revokes one of `user_id`'s sessions; false when there was no such live session.
pub async fn revoke(
    conn: &mut PgConnection,
    user_id: Uuid,
    session_id: Uuid,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $3 \
         WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(session_id)
    .bind(user_id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Revokes all of a user's sessions but `except`; returns how many.
pub async fn revoke_all(
    conn: &mut PgConnection,
    user_id: Uuid,
    except: Option<Uuid>,
    reason: &str,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $3 \
         WHERE user_id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR id <> $2)",
    )
    .bind(user_id)
    .bind(except)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

fn cookie(
    state: &AppState,
    name: &'static str,
    value: String,
    path: &'static str,
    ttl: Duration,
) -> Cookie<'static> {
    Cookie::build((name, value))
        .path(path)
        .http_only(name != CSRF_COOKIE)
        .same_site(SameSite::Lax)
        .secure(state.config.cookie_secure)
        .max_age(time_duration(ttl))
        .build()
}

fn time_duration(d: Duration) -> cookie::time::Duration {
    cookie::time::Duration::seconds(d.as_secs() as i64)
}

/// The access and refresh cookies, and a CSRF token bound to the session.
pub fn set_cookies(state: &AppState, jar: CookieJar, tokens: &IssuedTokens) -> CookieJar {
    let csrf = state.csrf.issue(Some(tokens.session_id));
    jar.add(cookie(
        state,
        ACCESS_COOKIE,
        tokens.access_token.clone(),
        "/",
        tokens.access_ttl,
    ))
    .add(cookie(
        state,
        REFRESH_COOKIE,
        tokens.refresh_token.clone(),
        REFRESH_COOKIE_PATH,
        tokens.refresh_ttl,
    ))
    .add(cookie(state, CSRF_COOKIE, csrf, "/", tokens.refresh_ttl))
}

pub fn clear_cookies(state: &AppState, jar: CookieJar) -> CookieJar {
    let gone = |name, path| {
        let mut c = cookie(state, name, String::new(), path, Duration::ZERO);
        c.make_removal();
        c
    };
    jar.add(gone(ACCESS_COOKIE, "/"))
        .add(gone(REFRESH_COOKIE, REFRESH_COOKIE_PATH))
        .add(gone(CSRF_COOKIE, "/"))
}

pub fn csrf_cookie(state: &AppState, jar: CookieJar, token: String) -> CookieJar {
    jar.add(cookie(
        state,
        CSRF_COOKIE,
        token,
        "/",
        state.config.auth.refresh_token_ttl,
    ))
}

/// A completed sign-in, for programs (browsers use the cookies).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedIn {
    pub user: UserView,
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub token_type: &'static str,
}

/// The answer to a first sign-in step.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SignInAnswer {
    SignedIn(SignedIn),
    #[serde(rename_all = "camelCase")]
    TwoFactorRequired {
        two_factor_required: bool,
        challenge_id: String,
    },
}

/// Ends a successful first factor: a 2FA challenge when the user has 2FA on
/// (`second_factor_done` false), else a new session with its cookies. Audited
/// as `auth.login` with the method. The caller commits `conn`.
pub async fn complete_sign_in(
    conn: &mut PgConnection,
    state: &AppState,
    jar: CookieJar,
    user: &UserRow,
    method: &str,
    second_factor_done: bool,
    client: &Client,
) -> Result<(CookieJar, SignInAnswer), ApiError> {
    if user.totp_enabled && !second_factor_done {
        let challenge = random_token();
        sqlx::query(
            "INSERT INTO login_challenges (id_hash, user_id, auth_method, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash(&challenge))
        .bind(user.id)
        .bind(method)
        .bind(Utc::now() + chrono_duration(CHALLENGE_TTL))
        .execute(&mut *conn)
        .await?;
        audit::record(
            conn,
            client.audit(
                Some(user.id),
                "auth.login_challenge",
                "user",
                user.id,
                serde_json::json!({ "method": method }),
            ),
        )
        .await?;
        return Ok((
            jar,
            SignInAnswer::TwoFactorRequired {
                two_factor_required: true,
                challenge_id: challenge,
            },
        ));
    }
    let tokens = start(conn, state, user.id, method, client).await?;
    audit::record(
        conn,
        client.audit(
            Some(user.id),
            "auth.login",
            "session",
            tokens.session_id,
            serde_json::json!({ "method": method }),
        ),
    )
    .await?;
    let jar = set_cookies(state, jar, &tokens);
    Ok((jar, SignInAnswer::SignedIn(signed_in(user, tokens))))
}

pub fn signed_in(user: &UserRow, tokens: IssuedTokens) -> SignedIn {
    SignedIn {
        user: user.into(),
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        expires_in: tokens.access_ttl.as_secs(),
        token_type: "Bearer",
    }
}
