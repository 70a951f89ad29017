use berth_e2e::{TestApp, TestDb, TestRedis, base_env};
use serde_json::{Value, json};

async fn app() -> (TestApp, TestDb, TestRedis) {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let mut env = base_env(&db, &redis);
    env.insert("BERTH_MAX_JSON_BODY_BYTES".into(), "8192".into());
    env.insert("BERTH_RATE_LIMIT_CONTACT".into(), "100/60".into());
    (TestApp::spawn(env).await, db, redis)
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["success"], json!(false), "{body}");
    assert_eq!(body["error"]["code"], json!(code), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_methods_answer_in_the_envelope() {
    let (app, _db, _redis) = app().await;

    let res = app.get("/api/v1/no/such/route").await;
    assert_eq!(res.status(), 404);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(request_id.len(), 36, "a generated UUID: {request_id}");
    assert_error(&res.json().await.unwrap(), "NOT_FOUND");

    let res = app
        .client
        .delete(app.url("/api/v1/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    // RFC 9110: a 405 says which methods the route has, envelope or not.
    assert_eq!(res.headers()["allow"], "GET,HEAD");
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_error(&res.json().await.unwrap(), "NOT_FOUND");

    // A caller's plain request id is kept; an unsafe one is replaced.
    let res = app
        .client
        .get(app.url("/api/v1/health/live"))
        .header("x-request-id", "trace-abc_123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-abc_123");
    let res = app
        .client
        .get(app.url("/api/v1/health/live"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(res.headers()["x-request-id"], "bad id with spaces");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body, json!({"success": true, "data": {"status": "ok"}}));
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_validated_with_field_details() {
    let (app, db, _redis) = app().await;
    let contact = app.url("/api/v1/contact");

    let res = app
        .client
        .post(&contact)
        .json(&json!({"name": "", "email": "not-an-address", "subject": "Hi", "message": "x".repeat(5001)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_error(&body, "VALIDATION_ERROR");
    let fields = berth_e2e::accounts::field_errors(&body);
    assert_eq!(fields, ["name", "message", "email"]);

    // Malformed JSON, a wrong type, an unknown field, no content type.
    for (raw, content_type) in [
        ("{\"name\": ", "application/json"),
        (
            "{\"name\": 5, \"email\": \"a@b.test\", \"subject\": \"s\", \"message\": \"m\"}",
            "application/json",
        ),
        (
            "{\"name\": \"n\", \"email\": \"a@b.test\", \"subject\": \"s\", \"message\": \"m\", \"admin\": true}",
            "application/json",
        ),
        ("{}", "text/plain"),
    ] {
        let res = app
            .client
            .post(&contact)
            .header("content-type", content_type)
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{raw}");
        assert_error(&res.json().await.unwrap(), "VALIDATION_ERROR");
    }

    let res = app
        .client
        .post(&contact)
        .json(&json!({"name": "Ada", "email": "ada@example.test", "subject": "Hi", "message": "x".repeat(9000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_error(&res.json().await.unwrap(), "PAYLOAD_TOO_LARGE");

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM contact_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing is written for a refused request");

    let res = app
        .client
        .post(&contact)
        .json(&json!({"name": " Ada ", "email": "ada@example.test", "subject": "Hello", "message": "Line one\nLine two"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["success"], json!(true));
    let id = body["data"]["id"].as_str().unwrap();
    // Audited once, with the request's id; refused requests changed nothing.
    let audit: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT action, target_id, client_ip, request_id FROM audit_logs")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        audit,
        [(
            "contact.create".to_owned(),
            id.to_owned(),
            "127.0.0.1".to_owned(),
            request_id
        )]
    );
    let (name, ip): (String, String) =
        sqlx::query_as("SELECT name, client_ip FROM contact_messages WHERE id::text = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(name, "Ada");
    assert_eq!(ip, "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread")]
async fn openapi_documents_every_route() {
    let (app, _db, _redis) = app().await;
    let res = app.get("/api/v1/openapi.json").await;
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<String> = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let expected = [
        "DELETE /api/v1/account",
        "DELETE /api/v1/admin/backups/{id}",
        "DELETE /api/v1/admin/deployments/{id}",
        "DELETE /api/v1/admin/users/{id}",
        "DELETE /api/v1/deployments/{id}",
        "DELETE /api/v1/domains/{id}",
        "DELETE /api/v1/files/{id}/delete",
        "DELETE /api/v1/github",
        "DELETE /api/v1/notifications/{id}",
        "DELETE /api/v1/projects/{id}",
        "DELETE /api/v1/projects/{id}/invites/{inviteId}",
        "DELETE /api/v1/projects/{id}/members/{userId}",
        "DELETE /api/v1/servers/{id}",
        "DELETE /api/v1/sessions/{id}",
        "DELETE /api/v1/tokens/{id}",
        "DELETE /api/v1/uploads/{id}",
        "GET /api/v1/admin/audit-logs",
        "GET /api/v1/admin/backups",
        "GET /api/v1/admin/backups/{id}",
        "GET /api/v1/admin/backups/{id}/download",
        "GET /api/v1/admin/contact",
        "GET /api/v1/admin/deployments",
        "GET /api/v1/admin/stats",
        "GET /api/v1/admin/users",
        "GET /api/v1/admin/users/{id}",
        "GET /api/v1/alerts/rules",
        "GET /api/v1/auth/csrf",
        "GET /api/v1/auth/me",
        "GET /api/v1/auth/oauth/{provider}",
        "GET /api/v1/auth/oauth/{provider}/callback",
        "GET /api/v1/auth/providers",
        "GET /api/v1/deployments",
        "GET /api/v1/deployments/{id}",
        "GET /api/v1/deployments/{id}/deploy-key",
        "GET /api/v1/deployments/{id}/env",
        "GET /api/v1/deployments/{id}/logs/stream",
        "GET /api/v1/deployments/{id}/preflight",
        "GET /api/v1/deployments/{id}/releases",
        "GET /api/v1/deployments/{id}/releases/{number}/logs",
        "GET /api/v1/deployments/{id}/runtime-logs",
        "GET /api/v1/deployments/{id}/webhook",
        "GET /api/v1/domains",
        "GET /api/v1/domains/{id}",
        "GET /api/v1/files/{id}/download",
        "GET /api/v1/files/{id}/info",
        "GET /api/v1/files/{id}/list",
        "GET /api/v1/files/{id}/properties",
        "GET /api/v1/files/{id}/read",
        "GET /api/v1/files/{id}/search",
        "GET /api/v1/github/repos",
        "GET /api/v1/health",
        "GET /api/v1/health/live",
        "GET /api/v1/health/ready",
        "GET /api/v1/invitations",
        "GET /api/v1/jobs",
        "GET /api/v1/jobs/{id}",
        "GET /api/v1/jobs/{id}/logs",
        "GET /api/v1/notifications",
        "GET /api/v1/openapi.json",
        "GET /api/v1/profile",
        "GET /api/v1/profile/preferences",
        "GET /api/v1/projects",
        "GET /api/v1/projects/{id}",
        "GET /api/v1/projects/{id}/members",
        "GET /api/v1/servers",
        "GET /api/v1/servers/{id}",
        "GET /api/v1/servers/{id}/health",
        "GET /api/v1/servers/{id}/metrics",
        "GET /api/v1/sessions",
        "GET /api/v1/stats/public",
        "GET /api/v1/status",
        "GET /api/v1/terminal",
        "GET /api/v1/tokens",
        "GET /api/v1/uploads/{id}",
        "GET /api/v1/ws",
        "GET /metrics",
        "PATCH /api/v1/notifications/{id}/read",
        "PATCH /api/v1/profile",
        "PATCH /api/v1/projects/{id}",
        "PATCH /api/v1/projects/{id}/members/{userId}",
        "PATCH /api/v1/servers/{id}",
        "POST /api/v1/account/delete-code",
        "POST /api/v1/admin/backups",
        "POST /api/v1/admin/backups/{id}/restore",
        "POST /api/v1/admin/broadcast",
        "POST /api/v1/auth/2fa/disable",
        "POST /api/v1/auth/2fa/enable",
        "POST /api/v1/auth/2fa/setup",
        "POST /api/v1/auth/email-code/send",
        "POST /api/v1/auth/email-code/verify",
        "POST /api/v1/auth/forgot-password",
        "POST /api/v1/auth/login",
        "POST /api/v1/auth/login/2fa",
        "POST /api/v1/auth/logout",
        "POST /api/v1/auth/refresh",
        "POST /api/v1/auth/register",
        "POST /api/v1/auth/resend-otp",
        "POST /api/v1/auth/reset-password",
        "POST /api/v1/auth/verify-email",
        "POST /api/v1/contact",
        "POST /api/v1/deployments",
        "POST /api/v1/deployments/upload",
        "POST /api/v1/deployments/{id}/cancel",
        "POST /api/v1/deployments/{id}/redeploy",
        "POST /api/v1/deployments/{id}/restart",
        "POST /api/v1/deployments/{id}/rollback",
        "POST /api/v1/deployments/{id}/stop",
        "POST /api/v1/deployments/{id}/webhook/rotate",
        "POST /api/v1/domains",
        "POST /api/v1/domains/{id}/ssl",
        "POST /api/v1/files/{id}/compress",
        "POST /api/v1/files/{id}/create",
        "POST /api/v1/files/{id}/decompress",
        "POST /api/v1/files/{id}/upload",
        "POST /api/v1/github/repos/sync",
        "POST /api/v1/invitations/{id}/accept",
        "POST /api/v1/invitations/{id}/decline",
        "POST /api/v1/jobs/{id}/cancel",
        "POST /api/v1/notifications/read-all",
        "POST /api/v1/profile/password",
        "POST /api/v1/projects",
        "POST /api/v1/projects/{id}/invites",
        "POST /api/v1/projects/{id}/transfer",
        "POST /api/v1/servers",
        "POST /api/v1/servers/{id}/host-key",
        "POST /api/v1/servers/{id}/validate",
        "POST /api/v1/sessions/revoke-others",
        "POST /api/v1/terminal/token",
        "POST /api/v1/tokens",
        "POST /api/v1/uploads",
        "POST /api/v1/webhooks/github",
        "PUT /api/v1/admin/contact/{id}",
        "PUT /api/v1/admin/users/{id}/role",
        "PUT /api/v1/admin/users/{id}/status",
        "PUT /api/v1/alerts/rules",
        "PUT /api/v1/deployments/{id}/env",
        "PUT /api/v1/deployments/{id}/project",
        "PUT /api/v1/files/{id}/copy",
        "PUT /api/v1/files/{id}/rename",
        "PUT /api/v1/files/{id}/save",
        "PUT /api/v1/profile/preferences",
    ];
    assert_eq!(documented, expected);

    // Shared parts: servers, security schemes, unique operation ids, the
    // envelope around every 2xx JSON body, and error answers.
    assert_eq!(doc["servers"][0]["url"], json!(app.base));
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["securitySchemes"]["cookie"].is_object());
    let mut ids = std::collections::HashSet::new();
    let mut secured = Vec::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            let route = format!("{} {path}", method.to_uppercase());
            let id = op["operationId"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "duplicate operationId {id}");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("500"), "{route}");
            for (status, response) in responses {
                if let Some(schema) = response.pointer("/content/application~1json/schema")
                    && status.starts_with('2')
                    && route != "GET /api/v1/openapi.json"
                {
                    assert_eq!(
                        schema["required"],
                        json!(["success", "data"]),
                        "{route} {status}"
                    );
                }
            }
            // Secured: every alternative names a scheme (`{}` would let anyone in).
            if op["security"].as_array().is_some_and(|s| {
                !s.is_empty()
                    && s.iter()
                        .all(|r| r.as_object().is_some_and(|o| !o.is_empty()))
            }) {
                assert!(responses.contains_key("401"), "{route}");
                secured.push(route);
            }
        }
    }
    assert!(secured.contains(&"GET /api/v1/servers".to_owned()));
    assert!(!secured.contains(&"POST /api/v1/auth/login".to_owned()));

    // Every documented route is routed: the router's own fallback never answers.
    for entry in &documented {
        let (method, path) = entry.split_once(' ').unwrap();
        let res = app
            .client
            .request(method.parse().unwrap(), app.url(path))
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert!(
            status != 404 || body["error"]["message"] != "no route matches this path",
            "{entry} is documented but not routed"
        );
        assert_ne!(status, 405, "{entry} is documented with another method");
        // A route documented as needing credentials refuses a request without.
        if secured.contains(entry) {
            assert_eq!(status, 401, "{entry} is documented as secured: {body}");
        }
    }

    // The interactive reference is served by Berth itself, script included.
    let page = app.get("/api/docs").await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("/api/v1/openapi.json") && html.contains("/api/docs/redoc.standalone.js")
    );
    assert!(!html.contains("https://"), "no outside assets");
    let script = app.get("/api/docs/redoc.standalone.js").await;
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(script.bytes().await.unwrap().len() > 500_000);
}

fn header(res: &reqwest::Response, name: &str) -> u64 {
    res.headers()[name].to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_contact_form_is_rate_limited_per_address() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let mut env = base_env(&db, &redis);
    env.insert("BERTH_RATE_LIMIT_CONTACT".into(), "3/60".into());
    let app = TestApp::spawn(env).await;
    let message =
        json!({"name": "Ada", "email": "ada@example.test", "subject": "Hi", "message": "Hello"});
    let post = |client: &reqwest::Client| {
        client
            .post(app.url("/api/v1/contact"))
            .json(&message)
            .send()
    };

    for remaining in [2, 1, 0] {
        let res = post(&app.client).await.unwrap();
        assert_eq!(res.status(), 201);
        assert_eq!(header(&res, "x-ratelimit-limit"), 3);
        assert_eq!(header(&res, "x-ratelimit-remaining"), remaining);
        assert!((1..=60).contains(&header(&res, "x-ratelimit-reset")));
        assert!(res.headers().get("retry-after").is_none());
    }
    let res = post(&app.client).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "x-ratelimit-remaining"), 0);
    assert!((1..=60).contains(&header(&res, "retry-after")));
    assert_error(&res.json().await.unwrap(), "RATE_LIMIT_EXCEEDED");

    // A forwarded-for header is not believed unless BERTH_TRUST_PROXY is set.
    let res = app
        .client
        .post(app.url("/api/v1/contact"))
        .header("x-forwarded-for", "198.51.100.9")
        .json(&message)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);

    // Another address has its own allowance.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let res = post(&other).await.unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(header(&res, "x-ratelimit-remaining"), 2);

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM contact_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 4, "refused messages are not stored");
}

/// Every public route the document says can answer 429 sends the
/// `X-RateLimit-*` headers on an ordinary answer too, so a client can pace
/// itself before it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn documented_rate_limits_send_their_headers() {
    let (app, _db, _redis) = app().await;
    let doc: Value = app.get("/api/v1/openapi.json").await.json().await.unwrap();
    let mut checked = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let public = operation["security"] == json!([]);
            if operation["responses"].get("429").is_none() || !public {
                continue;
            }
            let url = app.url(path);
            let res = match method.as_str() {
                "get" => app.client.get(url).send().await.unwrap(),
                "post" => app.client.post(url).json(&json!({})).send().await.unwrap(),
                other => panic!("a limited {other} route: extend this test"),
            };
            assert!(
                res.headers().contains_key("x-ratelimit-limit")
                    && res.headers().contains_key("x-ratelimit-remaining")
                    && res.headers().contains_key("x-ratelimit-reset"),
                "{method} {path} answered {} without rate-limit headers",
                res.status()
            );
            checked.push(format!("{method} {path}"));
        }
    }
    // The public limited routes: contact, csrf and the sign-in family.
    assert!(checked.len() >= 11, "{checked:?}");
}
