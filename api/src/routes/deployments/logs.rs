//! A release's stored log (its job's: steps and command output), and the
//! live stream of a deployment's releases over a WebSocket: what is stored
//! first, then each new line, following each newer release as it comes.
//! The stream reads Postgres, where every worker writes, so it follows a
//! release whichever worker runs it and whichever api process serves it.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use uuid::Uuid;

use super::authorized;
use crate::access::Action;
use crate::auth::Principal;
use crate::envelope::{Envelope, Path, Query};
use crate::error::ApiError;
use crate::routes::jobs::{JobLogPage, LogQuery, log_page};
use crate::state::AppState;

/// How often a stream looks for new lines.
const STREAM_POLL: Duration = Duration::from_millis(150);

/// How often a stream asks again whether its reader may still read.
const ACCESS_RECHECK: Duration = Duration::from_secs(1);
/// Lines per read while catching up.
const STREAM_BATCH: i64 = 500;

/// A release's log: its steps and its commands' output, oldest first.
#[utoipa::path(get, path = "/deployments/{id}/releases/{number}/logs", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id"),
           ("number" = i32, Path, description = "Release number"), LogQuery), responses(
    (status = 200, description = "Log lines", body = JobLogPage),
    (status = 400, description = "A bad `after` or `limit`", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such deployment of yours, or no such release", body = crate::error::ErrorEnvelope)))]
pub async fn release_logs(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, number)): Path<(Uuid, i32)>,
    Query(query): Query<LogQuery>,
) -> Result<Envelope<JobLogPage>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    authorized(&mut conn, &principal, id, Action::Read).await?;
    let (after, limit) = query.checked()?;
    let job = release_job(&state, id, number)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no release v{number}")))?;
    Ok(Envelope::ok(
        log_page(&state, &job.0, after, limit, job.1).await?,
    ))
}

/// The release's job and whether it has finished.
async fn release_job(
    state: &AppState,
    id: Uuid,
    number: i32,
) -> Result<Option<(String, bool)>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT j.id, j.state IN ('succeeded', 'failed', 'cancelled') FROM releases r \
         JOIN jobs j ON j.id = r.job_id WHERE r.deployment_id = $1 AND r.number = $2",
    )
    .bind(id)
    .bind(number)
    .fetch_optional(&state.pool)
    .await?)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// The release to start from (default: the newest).
    #[param(minimum = 1)]
    release: Option<i32>,
}

/// Follow the deployment's release logs live. Messages are JSON:
/// `{type: "release", data: {release}}` when a release's lines begin,
/// `{type: "line", data: {release, seq, at, stream, line}}` for each line
/// (those stored first, then each as it comes), `{type: "end", data:
/// {release}}` when that release's job has finished; newer releases follow
/// on the same socket until it is closed.
#[utoipa::path(get, path = "/deployments/{id}/logs/stream", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id"), StreamQuery), responses(
    (status = 101, description = "WebSocket established"),
    (status = 403, description = "Another site's page", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope)))]
pub async fn logs_stream(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(query): Query<StreamQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    crate::realtime::require_same_origin(&state, &headers)?;
    let mut conn = state.pool.acquire().await?;
    authorized(&mut conn, &principal, id, Action::Read).await?;
    let start: Option<i32> = match query.release {
        Some(n) => Some(n),
        None => {
            sqlx::query_scalar("SELECT max(number) FROM releases WHERE deployment_id = $1")
                .bind(id)
                .fetch_one(&mut *conn)
                .await?
        }
    };
    Ok(upgrade
        .max_message_size(4096)
        .on_upgrade(move |socket| stream(state, socket, principal, id, start.unwrap_or(1))))
}

async fn stream(
    state: AppState,
    mut socket: WebSocket,
    principal: Principal,
    id: Uuid,
    mut release: i32,
) {
    let send = |kind: &str, data: serde_json::Value| {
        Message::Text(
            serde_json::json!({ "type": kind, "data": data })
                .to_string()
                .into(),
        )
    };
    let mut checked = std::time::Instant::now();
    let mut after = 0i64;
    let mut announced = false;
    let mut ended = false;
    loop {
        let job = release_job(&state, id, release).await.unwrap_or_default();
        if let Some((job_id, finished)) = job.filter(|_| !ended) {
            if !announced {
                announced = true;
                if socket
                    .send(send("release", serde_json::json!({ "release": release })))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let lines = berth_jobs::joblog::read(&state.pool, &job_id, after, STREAM_BATCH)
                .await
                .unwrap_or_default();
            for line in &lines {
                let data = serde_json::json!({ "release": release, "seq": line.seq, "at": line.at,
                    "stream": line.stream, "line": line.line });
                if socket.send(send("line", data)).await.is_err() {
                    return;
                }
                after = line.seq;
            }
            if lines.len() as i64 == STREAM_BATCH {
                continue;
            }
            if finished {
                // The lines written before the end are all read now.
                let rest = berth_jobs::joblog::read(&state.pool, &job_id, after, STREAM_BATCH)
                    .await
                    .unwrap_or_default();
                if !rest.is_empty() {
                    continue;
                }
                ended = true;
                if socket
                    .send(send("end", serde_json::json!({ "release": release })))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        if ended {
            let newer: Option<i32> = sqlx::query_scalar(
                "SELECT min(number) FROM releases WHERE deployment_id = $1 AND number > $2",
            )
            .bind(id)
            .bind(release)
            .fetch_one(&state.pool)
            .await
            .unwrap_or(None);
            if let Some(next) = newer {
                (release, after, announced, ended) = (next, 0, false, false);
                continue;
            }
        }
        // Access is asked again every second: a member removed from the
        // deployment's project stops reading within one.
        if checked.elapsed() >= ACCESS_RECHECK {
            if !still_readable(&state, &principal, id).await {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            checked = std::time::Instant::now();
        }
        tokio::select! {
            () = tokio::time::sleep(STREAM_POLL) => {}
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Whether `principal` may still read deployment `id` (a database hiccup
/// keeps the stream; only a refusal ends it).
async fn still_readable(state: &AppState, principal: &Principal, id: Uuid) -> bool {
    let Ok(mut conn) = state.pool.acquire().await else {
        return true;
    };
    !matches!(
        authorized(&mut conn, principal, id, Action::Read).await,
        Err(ApiError::NotFound(_) | ApiError::Forbidden(_))
    )
}
