//! SPEC §3.3 health and metrics: what the probes of a user's server recorded.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::Action;
use crate::auth::Principal;
use crate::envelope::{Envelope, Path, Query};
use crate::error::{ApiError, FieldError};
use crate::routes::servers::authorized;
use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct HealthSample {
    #[sqlx(rename = "at")]
    timestamp: DateTime<Utc>,
    #[sqlx(rename = "cpu_percent")]
    cpu_usage: f32,
    #[sqlx(rename = "memory_percent")]
    memory_usage: f32,
    #[sqlx(rename = "swap_percent")]
    swap_usage: f32,
    #[sqlx(rename = "disk_percent")]
    disk_usage: f32,
    load1: f32,
    load5: f32,
    load15: f32,
    uptime_secs: i64,
    docker_running: bool,
    #[sqlx(rename = "containers")]
    active_containers: i32,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerHealth {
    status: String,
    status_reason: Option<String>,
    last_probe_at: Option<DateTime<Utc>>,
    /// The latest probe; `null` before the first.
    latest: Option<HealthSample>,
}

/// The server's state and its latest probe.
#[utoipa::path(get, path = "/servers/{id}/health", tag = "servers",
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 200, description = "Latest probe", body = ServerHealth),
    (status = 404, description = "No such server of yours", body = crate::error::ErrorEnvelope)))]
pub async fn health(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<ServerHealth>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let server = authorized(&mut conn, &principal, id, Action::Read).await?;
    let latest: Option<HealthSample> = sqlx::query_as(
        "SELECT at, cpu_percent, memory_percent, swap_percent, disk_percent, load1, load5, load15, \
         uptime_secs, docker_running, containers FROM server_metrics WHERE server_id = $1 \
         ORDER BY at DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Envelope::ok(ServerHealth {
        status: server.status,
        status_reason: server.status_reason,
        last_probe_at: server.last_probe_at,
        latest,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// RFC 3339; default: an hour before `to`.
    from: Option<DateTime<Utc>>,
    /// RFC 3339; default: now.
    to: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct MetricPoint {
    timestamp: DateTime<Utc>,
    cpu_usage: f32,
    memory_usage: f32,
    disk_usage: f32,
    swap_usage: f32,
    active_containers: i32,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricSeries {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    /// 0 for raw samples; else each point averages a bucket this long
    /// (maxima for containers).
    bucket_seconds: i64,
    points: Vec<MetricPoint>,
}

/// Longest range served, and the most points returned (longer ranges are
/// averaged into buckets).
const MAX_RANGE_DAYS: i64 = 31;
const MAX_POINTS: i64 = 500;

/// The probe history between `from` and `to`, downsampled for long ranges.
#[utoipa::path(get, path = "/servers/{id}/metrics", tag = "servers",
    params(("id" = Uuid, Path, description = "Server id"), MetricsQuery), responses(
    (status = 200, description = "The series", body = MetricSeries),
    (status = 400, description = "Bad range", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours", body = crate::error::ErrorEnvelope)))]
pub async fn metrics(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(query): Query<MetricsQuery>,
) -> Result<Envelope<MetricSeries>, ApiError> {
    // The range is checked first: it says nothing about the server.
    let mut errors = Vec::new();
    let to = crate::validate::timestamp_field("to", query.to, &mut errors);
    let from = crate::validate::timestamp_field("from", query.from, &mut errors);
    crate::validate::finish(errors)?;
    let to = to.unwrap_or_else(Utc::now);
    let from = from.unwrap_or(to - chrono::Duration::hours(1));
    if from >= to {
        return Err(ApiError::validation(vec![FieldError::new(
            "from",
            "must be before to",
        )]));
    }
    if to - from > chrono::Duration::days(MAX_RANGE_DAYS) {
        return Err(ApiError::validation(vec![FieldError::new(
            "from",
            format!("the range may span at most {MAX_RANGE_DAYS} days"),
        )]));
    }
    let mut conn = state.pool.acquire().await?;
    authorized(&mut conn, &principal, id, Action::Read).await?;
    // Probes come once a minute: more than MAX_POINTS minutes is averaged.
    let span = (to - from).num_seconds();
    let bucket_seconds = if span / 60 > MAX_POINTS {
        (span / MAX_POINTS).max(60)
    } else {
        0
    };
    let points: Vec<MetricPoint> = if bucket_seconds == 0 {
        sqlx::query_as(
            "SELECT at AS timestamp, cpu_percent AS cpu_usage, memory_percent AS memory_usage, \
             disk_percent AS disk_usage, swap_percent AS swap_usage, containers AS active_containers \
             FROM server_metrics WHERE server_id = $1 AND at >= $2 AND at <= $3 ORDER BY at",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .fetch_all(&mut *conn)
        .await?
    } else {
        sqlx::query_as(
            "SELECT date_bin(make_interval(secs => $4), at, $2) AS timestamp, \
               avg(cpu_percent)::real AS cpu_usage, avg(memory_percent)::real AS memory_usage, \
               avg(disk_percent)::real AS disk_usage, avg(swap_percent)::real AS swap_usage, \
               max(containers) AS active_containers \
             FROM server_metrics WHERE server_id = $1 AND at >= $2 AND at <= $3 \
             GROUP BY 1 ORDER BY 1",
        )
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(bucket_seconds as f64)
        .fetch_all(&mut *conn)
        .await?
    };
    Ok(Envelope::ok(MetricSeries {
        from,
        to,
        bucket_seconds,
        points,
    }))
}
