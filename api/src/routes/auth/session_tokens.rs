//! Keeping a session: refresh-token rotation and logout.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum_extra::extract::CookieJar;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit;
use crate::auth::sessions::{self, Client, Refreshed, SignedIn};
use crate::auth::tokens::token_hash;
use crate::auth::users::{self};
use crate::auth::{self, Principal, REFRESH_COOKIE};
use crate::envelope::Envelope;
use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body that may be absent.
pub(super) fn optional_body<T: DeserializeOwned>(body: &Bytes) -> Result<Option<T>, ApiError> {
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
