//! What an outside probe threw at the HTTP layer: panics, hostile dates, NUL
//! bytes, arrays for objects, foreign content types, made-up methods, slow and
//! idle connections.

use std::time::Duration;

use berth_e2e::accounts::{NewUser, Stack, access_token, create_user, get_as};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn assert_envelope(body: &Value, code: &str) {
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["error"]["code"], json!(code), "{body}");
}

fn detail<'a>(body: &'a Value, field: &str) -> &'a str {
    body["error"]["details"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["field"] == field))
        .and_then(|d| d["message"].as_str())
        .unwrap_or_else(|| panic!("no detail for {field}: {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_handler_answers_500_in_the_envelope() {
    let stack = Stack::start(&[]).await;
    async fn boom() -> String {
        panic!("a handler bug")
    }
    let routes = axum::Router::new().route("/boom", axum::routing::get(boom));
    let app = berth_api::with_http_layers(routes, stack.app.state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(berth_api::http_server::serve(
        listener,
        app,
        stack.app.state.config.http,
        shutdown.clone(),
    ));
    let res = reqwest::get(format!("http://{addr}/boom")).await.unwrap();
    assert_eq!(res.status(), 500);
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.unwrap();
    assert_envelope(&body, "INTERNAL_ERROR");
    assert!(!body.to_string().contains("a handler bug"), "{body}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_values_are_400s_with_field_details() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    create_user(&stack.db, NewUser::verified("ada@example.test")).await;
    let token = access_token(app, "ada@example.test").await;
    let server = uuid::Uuid::new_v4();

    // The date that used to drop the connection, and dates that parse but
    // lie outside what Postgres and date arithmetic handle.
    for (to, expected) in [
        ("-262143-01-01T00:00:00Z", "1970"),
        ("0100-01-01T00:00:00Z", "1970"),
        ("9999-12-31T23:59:59Z", "must be before"),
    ] {
        let (status, body) = get_as(
            app,
            &token,
            &format!("/api/v1/servers/{server}/metrics?to={to}&from=9999-12-31T23:59:59Z"),
        )
        .await;
        assert_eq!(status, 400, "{to}: {body}");
        assert!(body.to_string().contains(expected), "{to}: {body}");
    }
    let (status, body) = get_as(
        app,
        &token,
        &format!("/api/v1/servers/{server}/metrics?from=yesterday"),
    )
    .await;
    assert_eq!(status, 400);
    assert!(detail(&body, "from").contains("RFC 3339"), "{body}");

    // Framework text never reaches the message: the parameter and its format do.
    let (status, body) = get_as(app, &token, "/api/v1/servers?page=abc").await;
    assert_eq!(status, 400);
    assert_eq!(detail(&body, "page"), "must be a whole number", "{body}");
    let (status, body) = get_as(app, &token, "/api/v1/servers/not-a-uuid").await;
    assert_eq!(status, 400);
    assert_eq!(detail(&body, "id"), "must be a UUID", "{body}");
    let (status, body) = get_as(app, &token, "/api/v1/jobs?state=exploded").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        !body.to_string().contains("Failed to deserialize"),
        "{body}"
    );

    // NUL in a path, a query or a JSON string.
    for path in [
        "/api/v1/servers/%00",
        "/api/v1/notifications?unreadOnly=%00",
    ] {
        let (status, body) = get_as(app, &token, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_envelope(&body, "VALIDATION_ERROR");
    }
    let res = app
        .client
        .post(app.url("/api/v1/contact"))
        .header("content-type", "application/json")
        .body(r#"{"name":"A\u0000da","email":"a@b.test","subject":"s","message":"m"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_envelope(&res.json().await.unwrap(), "VALIDATION_ERROR");

    // An array where an object is expected is not mapped by position.
    let res = app
        .client
        .post(app.url("/api/v1/contact"))
        .header("content-type", "application/json")
        .body(r#"["Ada","a@b.test","s","m"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(detail(&body, "body"), "must be a JSON object");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM contact_messages")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cross_site_form_cannot_log_a_browser_out() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    create_user(&stack.db, NewUser::verified("ada@example.test")).await;
    let browser = berth_e2e::accounts::Browser::new(app, "Mozilla/5.0 Firefox/130.0");
    assert_eq!(
        browser
            .login("ada@example.test", berth_e2e::accounts::PASSWORD)
            .await
            .status(),
        200
    );
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let res = browser
            .client
            .post(browser.url("/api/v1/auth/refresh"))
            .header("content-type", content_type)
            .body("refreshToken=x")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{content_type}");
        assert!(
            res.headers().get_all("set-cookie").iter().next().is_none(),
            "{content_type} must not touch the cookies"
        );
    }
    assert!(
        browser
            .cookie("/api/v1/auth/refresh", "refresh_token")
            .is_some()
    );
    assert_eq!(browser.get("/api/v1/auth/me").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_carries_security_headers_and_methods_cannot_mint_labels() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    for path in ["/api/v1/health/live", "/api/v1/no/such/route"] {
        let res = app.get(path).await;
        let headers = res.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert!(headers.contains_key("content-security-policy"), "{path}");
    }
    for i in 0..30 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        let res = app
            .client
            .request(method, app.url("/api/v1/health/live"))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_client_error());
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains("MADEUP"), "made-up methods became labels");
    assert!(metrics.contains("method=\"OTHER\""), "{metrics}");
}

/// Reads until the server closes the connection; true if it did within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_connections_are_closed() {
    let stack = Stack::start(&[("BERTH_HTTP_HEADER_TIMEOUT_SECS", "1")]).await;
    let app = &stack.app;
    let addr = app.base.trim_start_matches("http://").to_owned();

    // Never finishes its headers; sends nothing at all; idles after an answer.
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial
        .write_all(b"GET /api/v1/health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /api/v1/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for (name, stream) in [
        ("partial headers", &mut partial),
        ("silent", &mut silent),
        ("idle keep-alive", &mut idle),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "{name} connection stayed open"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn open_connections_are_capped() {
    let stack = Stack::start(&[("BERTH_HTTP_MAX_CONNECTIONS", "3")]).await;
    let app = &stack.app;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // Three silent connections take every slot (accepted in order); a fourth
    // client is served only once one of them goes.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    let waiting = reqwest::Client::new()
        .get(app.url("/api/v1/health/live"))
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(
        waiting.is_err(),
        "a fourth connection was served past the cap"
    );
    drop(held);
    let res = reqwest::Client::new()
        .get(app.url("/api/v1/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}
