//! `GET /api/v1/ws`: the signed-in user's realtime channel (SPEC §3.6):
//! notifications and job state changes, and the topics a socket subscribes
//! to (a job's log), each checked against what the user may read. Each api process keeps one Redis
//! pub/sub connection subscribed to every user's channel
//! (`berth_jobs::events`) and hands each event only to the sockets of the
//! user it was published for, so events reach the user whichever api process
//! their socket is on, and never another user.

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use uuid::Uuid;

use crate::access::{self, Action, Relation, Resource};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

mod hub;

pub use berth_jobs::events::Revocation;
pub use hub::Hub;
use hub::Through;

/// Tells every api process that access narrowed (after the change committed):
/// their sockets drop what they followed through it before any later event.
pub async fn revoke(state: &AppState, revocation: Revocation) {
    berth_jobs::events::publish_revocation(&state.redis, &revocation).await;
}

/// Closes every socket of `user` on every api process (after the change
/// committed): their account was suspended or deleted.
pub async fn sign_out(state: &AppState, user: Uuid) {
    berth_jobs::events::publish_signed_out(&state.redis, user).await;
}

/// How often an open socket re-checks that its session is still valid.
const SESSION_RECHECK: Duration = Duration::from_secs(30);

/// The largest message a client may send.
const MAX_CLIENT_MESSAGE: usize = 4096;

/// A browser's socket must come from Berth's own page: cookies are sent with
/// cross-site WebSocket handshakes, so the Origin is checked (every
/// WebSocket route calls this).
pub(crate) fn require_same_origin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let same = match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None => true,
        Some(origin) => {
            let public = url::Url::parse(&state.config.public_url).ok();
            let origin = url::Url::parse(origin).ok();
            match (public, origin) {
                (Some(p), Some(o)) => p.origin() == o.origin(),
                _ => false,
            }
        }
    };
    if !same {
        return Err(ApiError::Forbidden(
            "WebSockets from another site's page are refused".into(),
        ));
    }
    Ok(())
}

/// Open the realtime channel (cookie or bearer session). Messages are JSON:
/// `{type: "notification" | "job", data}`.
#[utoipa::path(get, path = "/ws", tag = "alerts", responses(
    (status = 101, description = "WebSocket established"),
    (status = 401, description = "Not signed in", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Another site's page, or an API token", body = crate::error::ErrorEnvelope)))]
pub async fn ws(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let session_id = principal.require_session()?;
    require_same_origin(&state, &headers)?;
    // Clients only send short subscribe messages.
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve(state, socket, principal, session_id)))
}

/// May `principal` follow `topic`: `job:<id>` (a job's log) or
/// `project:<id>` (the job events of a project's deployments)? Answers
/// through which project membership, when it is not their own.
async fn may_follow(
    state: &AppState,
    principal: &Principal,
    topic: &str,
) -> Result<Option<Through>, ApiError> {
    let resource = if let Some(job_id) = topic.strip_prefix("job:") {
        Resource::Job(job_id)
    } else if let Some(project) = topic.strip_prefix("project:") {
        let id = project
            .parse()
            .map_err(|_| ApiError::NotFound("unknown topic".into()))?;
        Resource::Project(id)
    } else {
        return Err(ApiError::NotFound("unknown topic".into()));
    };
    let mut conn = state.pool.acquire().await?;
    let grant = access::authorize(&mut conn, principal, resource, Action::Read).await?;
    Ok(match (grant.relation(), grant.project_id()) {
        (Relation::Member(_), Some(project)) => Some(Through {
            project,
            deployment: grant.deployment_id(),
        }),
        _ => None,
    })
}

/// What a client may send: follow a topic, `job:<id>` (a job's log) or
/// `project:<id>` (a project's job events).
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    Subscribe { topic: String },
}

/// Checks and takes a client's message; answers what to send back.
async fn handle(state: &AppState, principal: &Principal, socket_id: u64, text: &str) -> String {
    let answer = |kind: &str, data: serde_json::Value| {
        serde_json::json!({ "type": kind, "data": data }).to_string()
    };
    let Ok(ClientMessage::Subscribe { topic }) = serde_json::from_str::<ClientMessage>(text) else {
        return answer(
            "error",
            serde_json::json!({ "message": "expected {\"type\": \"subscribe\", \"topic\": \"job:<id>\"}" }),
        );
    };
    let allowed = may_follow(state, principal, &topic).await;
    match allowed {
        Ok(through) if state.hub.subscribe(socket_id, topic.clone(), through) => {
            answer("subscribed", serde_json::json!({ "topic": topic }))
        }
        Ok(_) => answer(
            "error",
            serde_json::json!({ "topic": topic, "message": "this socket follows too many topics" }),
        ),
        // Another user's job and no such job answer alike.
        Err(_) => answer(
            "error",
            serde_json::json!({ "topic": topic, "message": "no such topic of yours" }),
        ),
    }
}

async fn serve(state: AppState, mut socket: WebSocket, principal: Principal, session_id: Uuid) {
    let user_id = principal.user_id();
    let (id, mut events) = state.hub.register(user_id);
    let mut recheck = tokio::time::interval(SESSION_RECHECK);
    recheck.tick().await;
    loop {
        tokio::select! {
            event = events.recv() => {
                // Ended by the hub: too slow a reader, or signed out.
                let Some(event) = event else {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                };
                if socket.send(Message::Text(event.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(Message::Text(text))) => {
                    let reply = handle(&state, &principal, id, text.as_str()).await;
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
            },
            _ = recheck.tick() => {
                // A database hiccup keeps the socket; only a dead session closes it.
                let alive = crate::auth::session_is_live(&state.pool, user_id, session_id)
                    .await
                    .unwrap_or(true);
                if !alive {
                    let _ = socket.send(Message::Close(None)).await;
                    break;
                }
                // A revocation lost on the way is caught here.
                for (topic, _) in state.hub.followed_through(id) {
                    if matches!(may_follow(&state, &principal, &topic).await, Err(ApiError::NotFound(_) | ApiError::Forbidden(_))) {
                        state.hub.unsubscribe(id, &topic);
                    }
                }
            }
        }
    }
    state.hub.unregister(id);
}
