//! An attacker cannot lock a victim out: password failures lock the attacker's
//! address, an account under attack is slowed rather than closed, one sign-in
//! method's limits leave the others alone, and second-factor guessing is
//! limited per account and reported to its owner.

use berth_e2e::accounts::{
    NewUser, PASSWORD, Stack, access_token, create_user, send_as, totp_code,
};
use reqwest::Method;
use serde_json::{Value, json};

fn from(address: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(address.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn sign_in(stack: &Stack, client: &reqwest::Client, password: &str) -> reqwest::Response {
    sign_in_as(stack, client, "victim@example.test", password).await
}

async fn sign_in_as(
    stack: &Stack,
    client: &reqwest::Client,
    identifier: &str,
    password: &str,
) -> reqwest::Response {
    client
        .post(stack.app.url("/api/v1/auth/login"))
        .json(&json!({"identifier": identifier, "password": password}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_from_one_address_do_not_lock_out_another() {
    let stack = Stack::start(&[("BERTH_RATE_LIMIT_LOGIN", "100/60")]).await;
    create_user(&stack.db, NewUser::verified("victim@example.test")).await;
    let attacker = from("127.0.0.2");
    for _ in 0..5 {
        assert_eq!(
            sign_in(&stack, &attacker, "wrong password!").await.status(),
            401
        );
    }
    // The attacker's address is locked, even with the right password...
    assert_eq!(sign_in(&stack, &attacker, PASSWORD).await.status(), 429);
    // ...the victim's is not.
    assert_eq!(
        sign_in(&stack, &from("127.0.0.1"), PASSWORD).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_under_attack_is_slowed_not_closed() {
    let stack = Stack::start(&[
        ("BERTH_RATE_LIMIT_LOGIN", "100/60"),
        ("BERTH_RATE_LIMIT_LOGIN_FAILURES_ACCOUNT", "6/900"),
        ("BERTH_RATE_LIMIT_LOGIN_SLOW_LANE", "1/60"),
    ])
    .await;
    create_user(&stack.db, NewUser::verified("victim@example.test")).await;
    for address in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let attacker = from(address);
        for _ in 0..2 {
            assert_eq!(
                sign_in(&stack, &attacker, "wrong password!").await.status(),
                401
            );
        }
    }
    // Over the ceiling: one attempt per slow-lane window, for anyone.
    let victim = from("127.0.0.1");
    assert_eq!(sign_in(&stack, &victim, PASSWORD).await.status(), 200);
    let res = sign_in(&stack, &victim, PASSWORD).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("slowed"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exhausting_reset_mails_leaves_sign_in_codes_working() {
    let stack = Stack::with_mail(&[("BERTH_RATE_LIMIT_EMAIL_SEND", "1/3600")]).await;
    create_user(&stack.db, NewUser::verified("victim@example.test")).await;
    let forgot = |_: ()| {
        stack
            .app
            .client
            .post(stack.app.url("/api/v1/auth/forgot-password"))
            .json(&json!({"email": "victim@example.test"}))
            .send()
    };
    assert_eq!(forgot(()).await.unwrap().status(), 200);
    assert_eq!(forgot(()).await.unwrap().status(), 429);
    let res = stack
        .app
        .client
        .post(stack.app.url("/api/v1/auth/email-code/send"))
        .json(&json!({"email": "victim@example.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let code = stack
        .mailed_code("victim@example.test", "sign-in code", 0)
        .await;
    let res = stack
        .app
        .client
        .post(stack.app.url("/api/v1/auth/email-code/verify"))
        .json(&json!({"email": "victim@example.test", "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
}

/// Turns on 2FA for a new user `email`, then answers wrong codes to fresh
/// challenges from six addresses (`first_octet` onwards); answers the statuses,
/// the security notices kept and the mails queued about them.
async fn guess_second_factors(
    stack: &Stack,
    email: &str,
    security_email: bool,
    first_octet: u8,
) -> (Vec<u16>, Vec<String>, i64) {
    let app = &stack.app;
    let id = create_user(&stack.db, NewUser::verified(email)).await;
    let token = access_token(app, email).await;
    let (status, _) = send_as(
        app,
        &token,
        Method::PUT,
        "/api/v1/profile/preferences",
        json!({"notifications": {"securityEmail": security_email}}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, body) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/auth/2fa/setup",
        json!({}),
    )
    .await;
    let secret = body["data"]["secret"].as_str().unwrap().to_owned();
    let (status, _) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/auth/2fa/enable",
        json!({"code": totp_code(&secret, 0)}),
    )
    .await;
    assert_eq!(status, 200);

    let mut statuses = Vec::new();
    for i in 0..6 {
        let client = from(&format!("127.0.0.{}", first_octet + i));
        let challenge: Value = sign_in_as(stack, &client, email, PASSWORD)
            .await
            .json()
            .await
            .unwrap();
        let challenge_id = challenge["data"]["challengeId"]
            .as_str()
            .unwrap()
            .to_owned();
        let res = client
            .post(app.url("/api/v1/auth/login/2fa"))
            .json(&json!({"challengeId": challenge_id, "code": "000000"}))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    let notices: Vec<String> = sqlx::query_scalar(
        "SELECT title FROM notifications WHERE user_id = $1 AND kind = 'security'",
    )
    .bind(id)
    .fetch_all(&stack.db.pool)
    .await
    .unwrap();
    let mails: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'email.send' AND owner_user_id = $1 \
         AND payload::text LIKE '%Repeated wrong sign-in codes%'",
    )
    .bind(id)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    (statuses, notices, mails)
}

#[tokio::test(flavor = "multi_thread")]
async fn second_factor_guessing_is_limited_per_account_and_reported() {
    let stack = Stack::start(&[
        ("BERTH_RATE_LIMIT_LOGIN", "100/60"),
        ("BERTH_RATE_LIMIT_CODE_ATTEMPTS", "100/60"),
        ("BERTH_RATE_LIMIT_SECOND_FACTOR_FAILURES", "4/900"),
    ])
    .await;
    // Fresh challenges from different addresses: the per-challenge and
    // per-address limits never trip, the per-account one does.
    let (statuses, notices, mails) =
        guess_second_factors(&stack, "victim@example.test", true, 10).await;
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429]);
    assert_eq!(notices, ["Repeated wrong sign-in codes"]);
    assert_eq!(mails, 1);
    // A user who chose no security mail still gets the notice in the app.
    let (statuses, notices, mails) =
        guess_second_factors(&stack, "quiet@example.test", false, 30).await;
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429]);
    assert_eq!(notices, ["Repeated wrong sign-in codes"]);
    assert_eq!(mails, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_tokens_reach_notifications_and_alert_rules_by_scope() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    create_user(&stack.db, NewUser::verified("ops@example.test")).await;
    let session = access_token(app, "ops@example.test").await;
    let token_with = |scopes: Value| {
        let session = session.clone();
        async move {
            let (status, body) = send_as(
                app,
                &session,
                Method::POST,
                "/api/v1/tokens",
                json!({"name": "t", "scopes": scopes}),
            )
            .await;
            assert_eq!(status, 201, "{body}");
            body["data"]["token"].as_str().unwrap().to_owned()
        }
    };
    let reader = token_with(json!(["notifications:read"])).await;
    let servers_only = token_with(json!(["servers:read"])).await;
    let rules = json!({"cpuThreshold": 80, "ramThreshold": 80, "diskThreshold": 80,
        "swapThreshold": 80, "emailAlerts": true, "browserAlerts": true, "realtimeAlerts": true});

    let (status, _) = berth_e2e::accounts::get_as(app, &reader, "/api/v1/notifications").await;
    assert_eq!(status, 200);
    let (status, _) = berth_e2e::accounts::get_as(app, &reader, "/api/v1/alerts/rules").await;
    assert_eq!(status, 200);
    let (status, body) = send_as(
        app,
        &reader,
        Method::PUT,
        "/api/v1/alerts/rules",
        rules.clone(),
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.to_string().contains("notifications:write"), "{body}");
    let (status, body) =
        berth_e2e::accounts::get_as(app, &servers_only, "/api/v1/notifications").await;
    assert_eq!(status, 403);
    assert!(body.to_string().contains("notifications:read"), "{body}");
    let writer = token_with(json!(["notifications:write"])).await;
    let (status, _) = send_as(app, &writer, Method::PUT, "/api/v1/alerts/rules", rules).await;
    assert_eq!(status, 200);
}
