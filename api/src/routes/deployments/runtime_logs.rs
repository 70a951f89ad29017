//! `WS /deployments/{id}/runtime-logs?tail=`: the live container's own
//! output (`docker logs --follow`), over SSH from the api (request-scoped by
//! nature, like the terminal), as JSON messages. The remote command ends
//! when the socket closes; lines a slow client cannot take are dropped and
//! counted, so a chatty app cannot grow the api's memory.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use berth_deployments::names;
use berth_ssh::{Arg, ShellCommand, Stream};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::authorized;
use crate::access::Action;
use crate::auth::Principal;
use crate::envelope::{Path, Query};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

/// Lines waiting for a slow client at most.
const BUFFERED_LINES: usize = 1024;
/// How long one follow may last.
const MAX_FOLLOW: Duration = Duration::from_secs(12 * 3600);

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RuntimeLogsQuery {
    /// Lines of the past to start with (1–5000, default 200).
    #[param(minimum = 1, maximum = 5000)]
    tail: Option<u32>,
}

/// Follow the live release's container output. Messages are JSON:
/// `{type: "line", data: {stream: "stdout"|"stderr", line}}`, then
/// `{type: "end", data: {reason, dropped}}` when the container's log ends
/// or the server is lost.
#[utoipa::path(get, path = "/deployments/{id}/runtime-logs", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id"), RuntimeLogsQuery), responses(
    (status = 101, description = "WebSocket established"),
    (status = 400, description = "A bad `tail`", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Another site's page", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "No release is live", body = crate::error::ErrorEnvelope)))]
pub async fn runtime_logs(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
    Query(query): Query<RuntimeLogsQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    crate::realtime::require_same_origin(&state, &headers)?;
    let tail = query.tail.unwrap_or(200);
    if !(1..=5000).contains(&tail) {
        return Err(ApiError::validation(vec![FieldError::new(
            "tail",
            "must be 1 to 5000",
        )]));
    }
    let mut conn = state.pool.acquire().await?;
    let row = authorized(&mut conn, &principal, id, Action::Read).await?;
    let live = row
        .live_release
        .ok_or_else(|| ApiError::Conflict("no release is live".into()))?;
    let server = state
        .remote
        .load(row.server_id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such server".into()))?;
    let container = Arg::name(&names::container_name(id, live))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?;
    Ok(upgrade
        .max_message_size(4096)
        .on_upgrade(move |socket| follow(state, socket, server, container, tail)))
}

fn message(kind: &str, data: serde_json::Value) -> Message {
    Message::Text(
        serde_json::json!({ "type": kind, "data": data })
            .to_string()
            .into(),
    )
}

async fn follow(
    state: AppState,
    mut socket: WebSocket,
    server: berth_remote::Server,
    container: Arg,
    tail: u32,
) {
    let session = match state.remote.session(&server).await {
        Ok(session) => session,
        Err(e) => {
            let reason = format!("cannot reach the server: {}", e.code());
            let _ = socket
                .send(message(
                    "end",
                    serde_json::json!({ "reason": reason, "dropped": 0 }),
                ))
                .await;
            return;
        }
    };
    let cancel = CancellationToken::new();
    let (lines, mut incoming_lines) =
        tokio::sync::mpsc::channel::<(Stream, String)>(BUFFERED_LINES);
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = dropped.clone();
    let command = ShellCommand::new("docker logs --follow --tail")
        .arg(&Arg::number(u64::from(tail)))
        .raw("--")
        .arg(&container);
    let run = session.exec_streaming(&command, MAX_FOLLOW, &cancel, move |stream, line| {
        if lines.try_send((stream, line.to_owned())).is_err() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    tokio::pin!(run);
    let ended = loop {
        tokio::select! {
            line = incoming_lines.recv() => {
                let Some((stream, line)) = line else { continue };
                let stream = match stream { Stream::Stdout => "stdout", Stream::Stderr => "stderr" };
                if socket.send(message("line", serde_json::json!({ "stream": stream, "line": line }))).await.is_err() {
                    break None;
                }
            }
            done = &mut run => {
                break Some(match done {
                    Ok(output) => format!("the container's log ended (exit status {})", output.exit_status),
                    Err(e) => format!("the server was lost: {}", e.code()),
                });
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                Some(Ok(_)) => {}
            },
        }
    };
    cancel.cancel();
    if let Some(reason) = ended {
        while let Ok((stream, line)) = incoming_lines.try_recv() {
            let stream = match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            };
            let _ = socket
                .send(message(
                    "line",
                    serde_json::json!({ "stream": stream, "line": line }),
                ))
                .await;
        }
        let dropped = dropped.load(std::sync::atomic::Ordering::Relaxed);
        let _ = socket
            .send(message(
                "end",
                serde_json::json!({ "reason": reason, "dropped": dropped }),
            ))
            .await;
    }
}
