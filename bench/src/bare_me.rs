//! The honest bound for `GET /auth/me`: a bare axum server doing the same
//! work per request and nothing else: verify the bearer JWT with the same
//! keys, run the same session-and-user query through sqlx with the same pool
//! settings, answer the user in the envelope. Run as a separate process
//! (`berth-bench bare-me-server`), like berth-api, on the same machine.

use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use berth_api::auth::LIVE_SESSION;
use berth_api::auth::tokens::JwtKeys;
use berth_api::auth::users::{USER_COLUMNS_OF_U, UserRow, UserView};
use serde_json::json;
use sqlx::PgPool;

#[derive(Clone)]
struct Bare {
    pool: PgPool,
    keys: std::sync::Arc<JwtKeys>,
    query: std::sync::Arc<String>,
}

#[derive(sqlx::FromRow)]
struct SessionUser {
    #[allow(dead_code)]
    session_last_used_at: chrono::DateTime<chrono::Utc>,
    #[sqlx(flatten)]
    user: UserRow,
}

async fn me(
    State(bare): State<Bare>,
    headers: HeaderMap,
) -> Result<axum::Json<serde_json::Value>, StatusCode> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(StatusCode::UNAUTHORIZED)?;
    let claims = bare.keys.verify(token).ok_or(StatusCode::UNAUTHORIZED)?;
    let row: SessionUser = sqlx::query_as(&bare.query)
        .bind(claims.sid)
        .bind(claims.sub)
        .fetch_optional(&bare.pool)
        .await
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
        .ok_or(StatusCode::UNAUTHORIZED)?;
    Ok(axum::Json(
        json!({ "success": true, "data": { "user": UserView::from(&row.user) } }),
    ))
}

/// Serves `GET /me` on `BENCH_BARE_ADDR` until killed.
pub async fn serve() -> anyhow::Result<()> {
    let addr = std::env::var("BENCH_BARE_ADDR").context("BENCH_BARE_ADDR")?;
    let secret = std::env::var("JWT_SECRET").context("JWT_SECRET")?;
    let connections: u32 = crate::setting("BERTH_DB_MAX_CONNECTIONS", 10);
    // The pool berth-api uses: no ping before each query, only after idling.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > Duration::from_secs(10) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .connect(&std::env::var("DATABASE_URL").context("DATABASE_URL")?)
        .await?;
    let bare = Bare {
        pool,
        keys: std::sync::Arc::new(JwtKeys::new(&secret.into(), Duration::from_secs(900))),
        query: std::sync::Arc::new(format!(
            "SELECT s.last_used_at AS session_last_used_at, {} FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = $1 AND s.user_id = $2 AND {LIVE_SESSION}",
            *USER_COLUMNS_OF_U
        )),
    };
    let app = axum::Router::new().route("/me", get(me)).with_state(bare);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
