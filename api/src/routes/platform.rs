//! SPEC §3.1: health, readiness, status, public stats, metrics, the OpenAPI document.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_config::ExposeSecret;
use berth_jobs::Queue;
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::envelope::Envelope;
use crate::error::ApiError;
use crate::state::AppState;

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, utoipa::ToSchema)]
pub struct Liveness {
    status: &'static str,
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/health/live", tag = "platform",
    responses((status = 200, description = "The process is running", body = Liveness)))]
pub async fn live() -> Envelope<Liveness> {
    Envelope::ok(Liveness { status: "ok" })
}

#[derive(Serialize, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Up,
    Down,
}

async fn database_state(state: &AppState) -> ServiceState {
    let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
    match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
        Ok(Ok(_)) => ServiceState::Up,
        _ => ServiceState::Down,
    }
}

async fn redis_state(state: &AppState) -> ServiceState {
    let mut conn = state.redis.clone();
    let ping = redis::cmd("PING");
    match tokio::time::timeout(CHECK_TIMEOUT, ping.query_async::<String>(&mut conn)).await {
        Ok(Ok(_)) => ServiceState::Up,
        _ => ServiceState::Down,
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    database: ServiceState,
    redis: ServiceState,
}

/// 200 when Postgres and Redis answer, else 503 naming what is down.
#[utoipa::path(get, path = "/health/ready", tag = "platform", responses(
    (status = 200, description = "Postgres and Redis answer", body = Readiness),
    (status = 503, description = "A backing service is down", body = crate::error::ErrorEnvelope)))]
pub async fn ready(State(state): State<AppState>) -> Result<Envelope<Readiness>, ApiError> {
    let (database, redis) = tokio::join!(database_state(&state), redis_state(&state));
    if database == ServiceState::Up && redis == ServiceState::Up {
        return Ok(Envelope::ok(Readiness { database, redis }));
    }
    let down: Vec<&str> = [(database, "database"), (redis, "redis")]
        .into_iter()
        .filter(|(s, _)| *s == ServiceState::Down)
        .map(|(_, name)| name)
        .collect();
    Err(ApiError::ServiceUnavailable(format!(
        "not ready: {} down",
        down.join(" and ")
    )))
}

#[derive(Serialize, Default, utoipa::ToSchema)]
pub struct QueueDepth {
    queued: i64,
    running: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    api: ServiceState,
    database: ServiceState,
    redis: ServiceState,
    /// Jobs waiting and running per queue; absent while Postgres is down.
    queues: Option<BTreeMap<String, QueueDepth>>,
}

/// The state of the api, Postgres, Redis and every queue.
#[utoipa::path(get, path = "/health", tag = "platform",
    responses((status = 200, description = "Component states", body = Health)))]
pub async fn health(State(state): State<AppState>) -> Envelope<Health> {
    let (database, redis) = tokio::join!(database_state(&state), redis_state(&state));
    let queues = if database == ServiceState::Up {
        let rows: Result<Vec<(String, String, i64)>, _> = sqlx::query_as(
            "SELECT kind, state, count(*) FROM jobs WHERE state IN ('queued', 'running') GROUP BY 1, 2",
        )
        .fetch_all(&state.pool)
        .await;
        rows.ok().map(|rows| {
            let mut queues: BTreeMap<String, QueueDepth> = Queue::ALL
                .iter()
                .map(|q| (q.name().to_owned(), QueueDepth::default()))
                .collect();
            for (kind, job_state, n) in rows {
                let depth = queues.entry(kind).or_default();
                if job_state == "queued" {
                    depth.queued = n;
                } else {
                    depth.running = n;
                }
            }
            queues
        })
    } else {
        None
    };
    Envelope::ok(Health {
        api: ServiceState::Up,
        database,
        redis,
        queues,
    })
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    user_setup_complete: bool,
}

/// Whether the first user exists yet.
#[utoipa::path(get, path = "/status", tag = "platform",
    responses((status = 200, description = "Set-up state", body = Status)))]
pub async fn status(State(state): State<AppState>) -> Result<Envelope<Status>, ApiError> {
    let user_setup_complete: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users)")
        .fetch_one(&state.pool)
        .await?;
    Ok(Envelope::ok(Status {
        user_setup_complete,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PublicStats {
    users: i64,
    servers: i64,
    deployments: i64,
}

/// Counts for the landing page.
#[utoipa::path(get, path = "/stats/public", tag = "platform",
    responses((status = 200, description = "Counts", body = PublicStats)))]
pub async fn public_stats(
    State(state): State<AppState>,
) -> Result<Envelope<PublicStats>, ApiError> {
    let (users, servers, deployments): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM servers), (SELECT count(*) FROM deployments)",
    )
    .fetch_one(&state.pool)
    .await?;
    Ok(Envelope::ok(PublicStats {
        users,
        servers,
        deployments,
    }))
}

/// Prometheus text. Needs `Authorization: Bearer $METRICS_TOKEN` when that is set.
#[utoipa::path(get, path = "/metrics", tag = "platform", responses(
    (status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
    (status = 401, description = "Missing or wrong metrics token", body = crate::error::ErrorEnvelope)))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.config.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let matches: bool = given
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes())
            .into();
        if !matches {
            return Err(ApiError::unauthenticated());
        }
    }
    let body = state.metrics.render(&state.pool).await;
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// This document: the machine-readable contract of every route.
#[utoipa::path(get, path = "/openapi.json", tag = "platform",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi(Extension(doc): Extension<Arc<serde_json::Value>>) -> Response {
    axum::Json(doc.as_ref()).into_response()
}
