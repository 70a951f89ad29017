//! SPEC §3.7: the web terminal, a login shell on a PTY of a real sshd test
//! server, bridged to a WebSocket opened with a single-use token.

use std::time::Duration;

use berth_e2e::Socket;
use berth_e2e::accounts::{
    NewUser, access_token, create_user, get_as, send_as, signed_in_with_role,
};
use berth_e2e::fleet::Fleet;
use futures::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn terminal_token(fleet: &Fleet, token: &str, body: Value) -> (u16, Value) {
    send_as(
        &fleet.stack.app,
        token,
        Method::POST,
        "/api/v1/terminal/token",
        body,
    )
    .await
}

/// A terminal token for `server`, as its owner.
async fn token_for(fleet: &Fleet, server: &str) -> String {
    let (status, body) = terminal_token(fleet, &fleet.token, json!({ "serverId": server })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["expiresIn"], 30);
    body["data"]["token"].as_str().unwrap().to_owned()
}

/// `GET /terminal?{query}` as a browser would open it: no credential but
/// the token. Answers the socket, or the refused handshake's status.
async fn open(fleet: &Fleet, query: &str) -> Result<Socket, u16> {
    let url = format!(
        "{}/api/v1/terminal?{query}",
        fleet.stack.app.base.replace("http://", "ws://")
    );
    match tokio_tungstenite::connect_async(url).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("the handshake failed: {e}"),
    }
}

/// The next status message (`ready`, `exit`, `error`), skipping output.
async fn next_status(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(15), socket.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

/// Terminal output until it holds `wanted` (15 s at most).
async fn output_until(socket: &mut Socket, wanted: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !seen.contains(wanted) {
        let frame = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("no {wanted:?} in the terminal; it showed {seen:?}"))
            .expect("the socket is open")
            .expect("a frame");
        match frame {
            Message::Binary(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Message::Text(text) => panic!("the terminal ended: {text}; it showed {seen:?}"),
            _ => {}
        }
    }
    seen
}

async fn type_line(socket: &mut Socket, line: &str) {
    socket
        .send(Message::Binary(format!("{line}\n").into_bytes().into()))
        .await
        .unwrap();
}

async fn audit_rows(fleet: &Fleet, server: &str) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT action, details FROM audit_logs WHERE target_id = $1 AND action LIKE 'terminal.%' \
         ORDER BY created_at, action DESC",
    )
    .bind(server)
    .fetch_all(&fleet.stack.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_typed_command_runs_resizes_reach_stty_and_the_session_is_audited() {
    let fleet = Fleet::start("probe", &[]).await;
    let server = fleet.onboard(0).await;
    let (status, body) = terminal_token(
        &fleet,
        &fleet.token,
        json!({ "serverId": server, "cols": 100, "rows": 30 }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["data"]["token"].as_str().unwrap().to_owned();

    // A plain GET is told it is no WebSocket, and does not spend the token.
    let plain = reqwest::get(format!(
        "{}/api/v1/terminal?token={token}",
        fleet.stack.app.base
    ))
    .await
    .unwrap();
    assert_eq!(plain.status(), 400);
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["details"][0]["field"], "upgrade", "{body}");
    assert_eq!(
        open(&fleet, &format!("token={token}&cols=0")).await.err(),
        Some(400)
    );

    let mut socket = open(&fleet, &format!("token={token}")).await.unwrap();
    assert_eq!(next_status(&mut socket).await["type"], "ready");
    // The marker is computed by the shell, so the echo of what was typed
    // does not satisfy the wait.
    type_line(&mut socket, "stty size; echo marker-$((6*7))").await;
    let shown = output_until(&mut socket, "marker-42").await;
    assert!(shown.contains("30 100"), "{shown:?}");
    socket
        .send(Message::Text(
            json!({ "type": "resize", "cols": 132, "rows": 43 })
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    type_line(&mut socket, "stty size; echo sized-$((1+1))").await;
    let shown = output_until(&mut socket, "sized-2").await;
    assert!(shown.contains("43 132"), "{shown:?}");
    // A resize out of range is refused on the socket, which stays open.
    socket
        .send(Message::Text(
            json!({ "type": "resize", "cols": 0, "rows": 43 })
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    assert_eq!(next_status(&mut socket).await["type"], "error");
    type_line(&mut socket, "exit 3").await;
    let exit = next_status(&mut socket).await;
    assert_eq!(exit["type"], "exit", "{exit}");
    assert_eq!(
        exit["data"]["reason"], "the shell exited with status 3",
        "{exit}"
    );

    // Used once.
    assert_eq!(
        open(&fleet, &format!("token={token}")).await.err(),
        Some(401)
    );
    assert_eq!(open(&fleet, "token=made-up").await.err(), Some(401));
    assert_eq!(open(&fleet, "").await.err(), Some(401));

    // Opened and closed, with the bytes each way and how long it lasted.
    let rows = audit_rows(&fleet, &server).await;
    let actions: Vec<&str> = rows.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(actions, ["terminal.opened", "terminal.closed"], "{rows:?}");
    let closed = &rows[1].1;
    assert!(closed["bytesIn"].as_u64().unwrap() >= 40, "{closed}");
    assert!(
        closed["bytesOut"].as_u64().unwrap() > closed["bytesIn"].as_u64().unwrap(),
        "{closed}"
    );
    assert!(closed["durationMs"].as_u64().is_some(), "{closed}");
    assert_eq!(closed["reason"], "the shell exited with status 3");

    // A token lapses: its lifetime is set in Redis, and once gone it opens nothing.
    let token = token_for(&fleet, &server).await;
    let key = format!(
        "berth:terminal-token:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()))
    );
    let mut redis = redis::Client::open(fleet.stack.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!((1..=30).contains(&ttl), "{ttl}");
    let _: () = redis::cmd("PEXPIRE")
        .arg(&key)
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        open(&fleet, &format!("token={token}")).await.err(),
        Some(401)
    );

    // Signing out (the token's session revoked) closes an open terminal.
    let token = token_for(&fleet, &server).await;
    let mut socket = open(&fleet, &format!("token={token}")).await.unwrap();
    assert_eq!(next_status(&mut socket).await["type"], "ready");
    let (status, _) = send_as(
        &fleet.stack.app,
        &fleet.token,
        Method::POST,
        "/api/v1/auth/logout",
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let exit = next_status(&mut socket).await;
    assert_eq!(exit["data"]["reason"], "the session was revoked", "{exit}");
}

#[tokio::test]
async fn only_the_owner_signed_in_gets_a_shell_and_limits_hold() {
    let fleet = Fleet::start(
        "probe",
        &[
            ("BERTH_TERMINAL_MAX_SESSIONS", "1"),
            ("BERTH_TERMINAL_IDLE_TIMEOUT_SECS", "3"),
        ],
    )
    .await;
    let server = fleet.onboard(0).await;
    let app = &fleet.stack.app;

    // Another user's server is no server of theirs; an API token gets no shell.
    create_user(&fleet.stack.db, NewUser::verified("eve@example.test")).await;
    let eve = access_token(app, "eve@example.test").await;
    let (status, body) = terminal_token(&fleet, &eve, json!({ "serverId": server })).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = send_as(
        app,
        &fleet.token,
        Method::POST,
        "/api/v1/tokens",
        json!({ "name": "ci", "scopes": ["servers:write"] }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let api_token = body["data"]["token"].as_str().unwrap().to_owned();
    let (status, body) = terminal_token(&fleet, &api_token, json!({ "serverId": server })).await;
    assert_eq!(status, 403, "{body}");
    // Sizes are checked.
    let (status, body) = terminal_token(
        &fleet,
        &fleet.token,
        json!({ "serverId": server, "cols": 0, "rows": 5000 }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let fields = berth_e2e::accounts::field_errors(&body);
    assert_eq!(fields, ["cols", "rows"], "{body}");

    // One terminal at a time: a second token is refused, and a token taken
    // before the first terminal opened finds no seat.
    let early = token_for(&fleet, &server).await;
    let first = token_for(&fleet, &server).await;
    let mut socket = open(&fleet, &format!("token={first}")).await.unwrap();
    assert_eq!(next_status(&mut socket).await["type"], "ready");
    let (status, body) = terminal_token(&fleet, &fleet.token, json!({ "serverId": server })).await;
    assert_eq!(status, 409, "{body}");
    let mut refused = open(&fleet, &format!("token={early}")).await.unwrap();
    let exit = next_status(&mut refused).await;
    assert_eq!(exit["type"], "exit", "{exit}");
    assert!(
        exit["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("as many as allowed"),
        "{exit}"
    );

    // Left alone, it closes after the idle timeout, and its seat is free again.
    let exit = next_status(&mut socket).await;
    assert_eq!(exit["data"]["reason"], "idle for 3 s", "{exit}");
    let token = token_for(&fleet, &server).await;

    // A suspension closes an open terminal at once.
    let (_, root) = signed_in_with_role(&fleet.stack, "root@example.test", "super_admin").await;
    let mut socket = open(&fleet, &format!("token={token}")).await.unwrap();
    assert_eq!(next_status(&mut socket).await["type"], "ready");
    let owner = fleet.owner().await;
    let (status, body) = send_as(
        app,
        &root,
        Method::PUT,
        &format!("/api/v1/admin/users/{owner}/status"),
        json!({ "status": "suspended" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Through the realtime hub, not the periodic session check.
    let exit = next_status(&mut socket).await;
    assert_eq!(
        exit["data"]["reason"], "the account was signed out",
        "{exit}"
    );
    let (status, _) = get_as(app, &fleet.token, "/api/v1/servers").await;
    assert_eq!(status, 401);
}
