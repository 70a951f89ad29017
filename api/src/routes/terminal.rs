//! The web terminal (SPEC §3.7): `POST /terminal/token` gives a server's
//! owner a single-use token for 30 s, bound to their session and the server;
//! `GET /terminal?token=` upgrades to a WebSocket bridged to a login shell on
//! a PTY of the server, over the same kept SSH session and pinned host key
//! as every remote operation. A project role never grants a shell: only the
//! server's owner, signed in (not an API token), gets one.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::HeaderMap;
use axum::response::Response;
use berth_ssh::{MAX_TERMINAL_SIDE, Shell, ShellOutput};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::Action;
use crate::audit;
use crate::auth::sessions::Client;
use crate::auth::tokens::{random_token, token_hash};
use crate::auth::{Principal, principal_of_session};
use crate::envelope::{Envelope, Json, Query};
use crate::error::{ApiError, FieldError};
use crate::realtime::require_same_origin;
use crate::routes::servers::pinned_server;
use crate::state::AppState;

mod seats;

/// How long a terminal token may wait to be used.
const TOKEN_TTL: Duration = Duration::from_secs(30);

/// How often an open terminal checks that its session is still live (a
/// suspension closes it at once through the realtime hub).
const SESSION_RECHECK: Duration = Duration::from_secs(5);

/// A WebSocket ping this often keeps proxies from closing a quiet terminal.
const KEEPALIVE: Duration = Duration::from_secs(25);

/// The largest message a client may send: a paste of this much at once.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

const MAX_SIDE: i64 = MAX_TERMINAL_SIDE as i64;
const DEFAULT_COLS: u32 = 80;
const DEFAULT_ROWS: u32 = 24;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    server_id: Uuid,
    /// Columns of the terminal to open (1 to 1000; 80).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "crate::validate::whole_number")]
    cols: Option<i32>,
    /// Rows (1 to 1000; 24).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "crate::validate::whole_number")]
    rows: Option<i32>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TerminalToken {
    /// For `GET /terminal?token=`, once, within `expiresIn` seconds.
    token: String,
    expires_in: u64,
}

/// What a token stands for, kept in Redis (by the token's hash) until used.
#[derive(Serialize, Deserialize)]
struct Pending {
    user_id: Uuid,
    session_id: Uuid,
    server_id: Uuid,
    cols: u32,
    rows: u32,
}

fn token_key(token: &str) -> String {
    format!("berth:terminal-token:{}", token_hash(token))
}

fn check_side(field: &'static str, value: Option<i64>, default: u32) -> Result<u32, FieldError> {
    match value.unwrap_or(i64::from(default)) {
        v @ 1..=MAX_SIDE => Ok(v as u32),
        _ => Err(FieldError::new(
            field,
            format!("must be 1 to {MAX_TERMINAL_SIDE}"),
        )),
    }
}

/// The size asked for, each side checked.
fn terminal_size(
    cols: Option<i64>,
    rows: Option<i64>,
    default: (u32, u32),
) -> Result<(u32, u32), ApiError> {
    let cols = check_side("cols", cols, default.0);
    let rows = check_side("rows", rows, default.1);
    match (cols, rows) {
        (Ok(c), Ok(r)) => Ok((c, r)),
        (c, r) => Err(ApiError::validation(
            [c.err(), r.err()].into_iter().flatten().collect(),
        )),
    }
}

/// A single-use token for a terminal on one of your servers (valid 30 s,
/// bound to this session).
#[utoipa::path(post, path = "/terminal/token", tag = "terminal", request_body = TokenRequest, responses(
    (status = 200, description = "The token", body = TerminalToken),
    (status = 400, description = "Invalid size", body = crate::error::ErrorEnvelope),
    (status = 403, description = "An API token (a terminal needs a signed-in session)", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Not validated yet, or as many terminals open as allowed", body = crate::error::ErrorEnvelope)))]
pub async fn create_token(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<TokenRequest>,
) -> Result<Envelope<TerminalToken>, ApiError> {
    let session_id = principal.require_session()?;
    let (cols, rows) = terminal_size(
        req.cols.map(i64::from),
        req.rows.map(i64::from),
        (DEFAULT_COLS, DEFAULT_ROWS),
    )?;
    pinned_server(&state, &principal, req.server_id, Action::Operate).await?;
    let limit = state.config.terminal.max_per_user;
    if seats::open(&state.redis, principal.user_id()).await? >= limit {
        return Err(seats::full(limit));
    }
    let token = random_token();
    let pending = Pending {
        user_id: principal.user_id(),
        session_id,
        server_id: req.server_id,
        cols,
        rows,
    };
    let _: () = redis::cmd("SET")
        .arg(token_key(&token))
        .arg(serde_json::to_string(&pending).map_err(|e| ApiError::Internal(e.into()))?)
        .arg("EX")
        .arg(TOKEN_TTL.as_secs())
        .query_async(&mut state.redis.clone())
        .await?;
    Ok(Envelope::ok(TerminalToken {
        token,
        expires_in: TOKEN_TTL.as_secs(),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TerminalQuery {
    /// From `POST /terminal/token`; used once.
    token: Option<String>,
    /// Overrides the token's size (1 to 1000).
    #[param(minimum = 1, maximum = 1000)]
    cols: Option<u32>,
    #[param(minimum = 1, maximum = 1000)]
    rows: Option<u32>,
}

/// Open a terminal: binary frames are the terminal's bytes both ways; the
/// client sends `{"type":"resize","cols":…,"rows":…}` as text; the server
/// sends `{"type":"ready"}` once the shell runs and `{"type":"exit",
/// "data":{"reason"}}` before it closes.
#[utoipa::path(get, path = "/terminal", tag = "terminal", params(TerminalQuery), responses(
    (status = 101, description = "WebSocket established"),
    (status = 400, description = "Invalid size, or not a WebSocket request (the token is not spent)", body = crate::error::ErrorEnvelope),
    (status = 401, description = "Unknown, used or expired token, or the session ended", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Another site's page", body = crate::error::ErrorEnvelope),
    (status = 404, description = "The server is no longer yours", body = crate::error::ErrorEnvelope)))]
pub async fn open(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    Query(query): Query<TerminalQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    require_same_origin(&state, &headers)?;
    let used_up = || {
        ApiError::Unauthorized(
            "the terminal token is unknown, used or expired: ask for a new one".into(),
        )
    };
    let token = query.token.filter(|t| !t.is_empty()).ok_or_else(used_up)?;
    // Checked before the token is spent.
    terminal_size(
        query.cols.map(i64::from),
        query.rows.map(i64::from),
        (DEFAULT_COLS, DEFAULT_ROWS),
    )?;
    // A plain GET does not spend the token either: it is told what it is not.
    let Ok(upgrade) = upgrade else {
        let exists: bool = redis::cmd("EXISTS")
            .arg(token_key(&token))
            .query_async(&mut state.redis.clone())
            .await?;
        if !exists {
            return Err(used_up());
        }
        return Err(ApiError::validation(vec![FieldError::new(
            "upgrade",
            "the terminal is a WebSocket: open it with an Upgrade: websocket request",
        )]));
    };
    // Taken and deleted at once: a second use finds nothing.
    let stored: Option<String> = redis::cmd("GETDEL")
        .arg(token_key(&token))
        .query_async(&mut state.redis.clone())
        .await?;
    let pending: Pending = stored
        .and_then(|s| serde_json::from_str(&s).ok())
        .ok_or_else(used_up)?;
    let principal = principal_of_session(&state.pool, pending.user_id, pending.session_id).await?;
    let size = terminal_size(
        query.cols.map(i64::from),
        query.rows.map(i64::from),
        (pending.cols, pending.rows),
    )?;
    let server = pinned_server(&state, &principal, pending.server_id, Action::Operate).await?;
    Ok(upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            let bridge = Bridge {
                state,
                client,
                principal,
                session_id: pending.session_id,
                server,
            };
            bridge.run(socket, size).await;
        }))
}

/// What the client may send as text.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control {
    Resize { cols: u32, rows: u32 },
}

fn status_message(kind: &str, data: serde_json::Value) -> Message {
    Message::Text(
        serde_json::json!({ "type": kind, "data": data })
            .to_string()
            .into(),
    )
}

struct Bridge {
    state: AppState,
    client: Client,
    principal: Principal,
    session_id: Uuid,
    server: berth_remote::Server,
}

/// What went through an open terminal.
#[derive(Default)]
struct Traffic {
    bytes_in: u64,
    bytes_out: u64,
}

impl Bridge {
    async fn run(self, mut socket: WebSocket, (cols, rows): (u32, u32)) {
        let user_id = self.principal.user_id();
        let limit = self.state.config.terminal.max_per_user;
        let seat = match seats::take(&self.state.redis, user_id, limit).await {
            Ok(Some(seat)) => seat,
            Ok(None) => {
                return close(socket, close_code::POLICY, &seats::full(limit).to_string()).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "terminal seats unavailable");
                return close(
                    socket,
                    close_code::ERROR,
                    "the terminal is unavailable; try again",
                )
                .await;
            }
        };
        let shell = match self.open_shell(cols, rows).await {
            Ok(shell) => shell,
            Err(reason) => {
                seat.release(&self.state.redis).await;
                return close(socket, close_code::ERROR, &reason).await;
            }
        };
        let started = Instant::now();
        self.audit(
            "terminal.opened",
            serde_json::json!({ "serverId": self.server.id, "cols": cols, "rows": rows }),
        )
        .await;
        let mut traffic = Traffic::default();
        let reason = self.bridge(&mut socket, shell, &seat, &mut traffic).await;
        seat.release(&self.state.redis).await;
        let _ = socket
            .send(status_message(
                "exit",
                serde_json::json!({ "reason": reason }),
            ))
            .await;
        let _ = socket.send(Message::Close(None)).await;
        self.audit(
            "terminal.closed",
            serde_json::json!({
                "serverId": self.server.id,
                "durationMs": started.elapsed().as_millis() as u64,
                "bytesIn": traffic.bytes_in,
                "bytesOut": traffic.bytes_out,
                "reason": reason,
            }),
        )
        .await;
    }

    async fn open_shell(&self, cols: u32, rows: u32) -> Result<Shell, String> {
        let session = self
            .state
            .remote
            .session(&self.server)
            .await
            .map_err(|e| format!("cannot reach the server: {e}"))?;
        session
            .open_shell(cols, rows)
            .await
            .map_err(|e| format!("the server gave no shell: {e}"))
    }

    /// Moves bytes until one side ends; answers why it ended.
    async fn bridge(
        &self,
        socket: &mut WebSocket,
        mut shell: Shell,
        seat: &seats::Seat,
        traffic: &mut Traffic,
    ) -> String {
        let state = &self.state;
        let idle_timeout = state.config.terminal.idle_timeout;
        // Registered like every socket of the user's: a suspension or
        // deletion ends `signed_out` on every api process at once.
        let (hub_id, mut signed_out) = state.hub.register(self.principal.user_id());
        let _ = socket
            .send(status_message("ready", serde_json::json!({})))
            .await;
        let mut recheck = tokio::time::interval(SESSION_RECHECK);
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        let mut heartbeat = tokio::time::interval(seats::HEARTBEAT);
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let reason = loop {
            tokio::select! {
                output = shell.output() => match output {
                    ShellOutput::Data(bytes) => {
                        traffic.bytes_out += bytes.len() as u64;
                        idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                        if socket.send(Message::Binary(bytes.into())).await.is_err() {
                            break "the browser went away".to_owned();
                        }
                    }
                    ShellOutput::Ended(status) => {
                        break match status {
                            Some(code) => format!("the shell exited with status {code}"),
                            None => "the shell ended".to_owned(),
                        };
                    }
                },
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Binary(bytes))) => {
                        traffic.bytes_in += bytes.len() as u64;
                        idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                        if let Err(e) = shell.input(&bytes).await {
                            break format!("the server was lost: {e}");
                        }
                    }
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<Control>(&text) {
                        Ok(Control::Resize { cols, rows }) => {
                            if let Err(e) = shell.resize(cols, rows).await {
                                let _ = socket
                                    .send(status_message("error", serde_json::json!({ "message": e.to_string() })))
                                    .await;
                            }
                        }
                        Err(_) => {
                            let _ = socket
                                .send(status_message(
                                    "error",
                                    serde_json::json!({ "message": "expected {\"type\": \"resize\", \"cols\": …, \"rows\": …}; keystrokes go in binary frames" }),
                                ))
                                .await;
                        }
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        break "the browser closed the terminal".to_owned();
                    }
                    Some(Ok(_)) => {}
                },
                event = signed_out.recv() => {
                    if event.is_none() {
                        break "the account was signed out".to_owned();
                    }
                }
                _ = recheck.tick() => {
                    let live = crate::auth::session_is_live(&state.pool, self.principal.user_id(), self.session_id)
                        .await
                        .unwrap_or(true);
                    if !live {
                        break "the session was revoked".to_owned();
                    }
                }
                _ = keepalive.tick() => {
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        break "the browser went away".to_owned();
                    }
                }
                _ = heartbeat.tick() => seat.refresh(&state.redis).await,
                _ = &mut idle => {
                    break format!("idle for {} s", idle_timeout.as_secs());
                }
            }
        };
        state.hub.unregister(hub_id);
        shell.close().await;
        reason
    }

    async fn audit(&self, action: &'static str, details: serde_json::Value) {
        let entry = self.client.audit(
            Some(self.principal.user_id()),
            action,
            "server",
            self.server.id,
            details,
        );
        if let Err(e) = audit::record_alone(&self.state.pool, entry).await {
            tracing::error!(error = %e, action, "a terminal's audit row was not written");
        }
    }
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(status_message(
            "exit",
            serde_json::json!({ "reason": reason }),
        ))
        .await;
    // A close frame's reason is at most 123 bytes.
    // Whole characters only: `String::truncate` panics inside one (the
    // reasons hold `×` and quoted paths).
    let mut short = String::new();
    for c in reason.chars().take(60) {
        if short.len() + c.len_utf8() > 120 {
            break;
        }
        short.push(c);
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: short.into(),
        })))
        .await;
}
