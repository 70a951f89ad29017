//! `GET /api/v1/ws`: the signed-in user's realtime channel (SPEC §3.6):
//! notifications and job state changes. Each api process keeps one Redis
//! pub/sub connection subscribed to every user's channel
//! (`berth_jobs::events`) and hands each event only to the sockets of the
//! user it was published for, so events reach the user whichever api process
//! their socket is on, and never another user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// How often an open socket re-checks that its session is still valid.
const SESSION_RECHECK: Duration = Duration::from_secs(30);
/// Events a slow socket may fall behind by before it is closed.
const SOCKET_BUFFER: usize = 256;

type Sockets = HashMap<Uuid, Vec<(u64, mpsc::Sender<String>)>>;

/// The local sockets of each user.
#[derive(Clone, Default)]
pub struct Hub {
    sockets: Arc<Mutex<Sockets>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl Hub {
    fn register(&self, user_id: Uuid) -> (u64, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(SOCKET_BUFFER);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.sockets
            .lock()
            .expect("hub lock")
            .entry(user_id)
            .or_default()
            .push((id, tx));
        (id, rx)
    }

    fn unregister(&self, user_id: Uuid, id: u64) {
        let mut sockets = self.sockets.lock().expect("hub lock");
        if let Some(list) = sockets.get_mut(&user_id) {
            list.retain(|(socket, _)| *socket != id);
            if list.is_empty() {
                sockets.remove(&user_id);
            }
        }
    }

    /// Hands `event` to `user_id`'s sockets; a socket too far behind is dropped.
    fn deliver(&self, user_id: Uuid, event: &str) {
        let mut sockets = self.sockets.lock().expect("hub lock");
        if let Some(list) = sockets.get_mut(&user_id) {
            list.retain(|(_, tx)| tx.try_send(event.to_owned()).is_ok());
        }
    }

    /// Follows every user's channel until `shutdown`, reconnecting after errors.
    pub async fn run(self, redis_url: String, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let subscribed = async {
                let client = redis::Client::open(redis_url.as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.psubscribe(berth_jobs::events::PATTERN).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match subscribed.await {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(200);
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            message = messages.next() => {
                                let Some(message) = message else { break };
                                let Some(user) = berth_jobs::events::user_of(message.get_channel_name()) else {
                                    continue;
                                };
                                if let Ok(payload) = message.get_payload::<String>() {
                                    self.deliver(user, &payload);
                                }
                            }
                        }
                    }
                    tracing::warn!("realtime subscription ended; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, "realtime subscription failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

/// A browser's socket must come from Berth's own page: cookies are sent with
/// cross-site WebSocket handshakes, so the Origin is checked.
fn same_origin(state: &AppState, headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None => true,
        Some(origin) => {
            let public = url::Url::parse(&state.config.public_url).ok();
            let origin = url::Url::parse(origin).ok();
            match (public, origin) {
                (Some(p), Some(o)) => p.origin() == o.origin(),
                _ => false,
            }
        }
    }
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
    if !same_origin(&state, &headers) {
        return Err(ApiError::Forbidden(
            "WebSockets from another site's page are refused".into(),
        ));
    }
    let user_id = principal.user_id();
    Ok(upgrade.on_upgrade(move |socket| serve(state, socket, user_id, session_id)))
}

async fn serve(state: AppState, mut socket: WebSocket, user_id: Uuid, session_id: Uuid) {
    let (id, mut events) = state.hub.register(user_id);
    let mut recheck = tokio::time::interval(SESSION_RECHECK);
    recheck.tick().await;
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                if socket.send(Message::Text(event.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
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
            }
        }
    }
    state.hub.unregister(user_id, id);
}
