//! SPEC §3.2 on real Postgres, Redis, SMTP (aiosmtpd) and the real email worker:
//! registration, sign-in, refresh rotation, CSRF, sessions, passwords, limits.

use std::time::Duration;

use berth_e2e::accounts::{
    Browser, NewUser, PASSWORD, Stack, access_token, audit_actions, create_user, field_errors,
    get_as, login, post, send_as,
};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn register_verify_by_mailed_code_then_sign_in_by_email_or_username() {
    let stack = Stack::with_mail(&[]).await;
    let app = &stack.app;

    // Every bad field at once, in the envelope.
    let (status, body) = post(
        app,
        "/api/v1/auth/register",
        json!({"email": "not-an-email", "password": "password1", "name": "", "username": "a b",
               "termsAccepted": false}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
    let fields = field_errors(&body);
    for field in ["email", "password", "name", "username", "termsAccepted"] {
        assert!(fields.contains(&field.to_owned()), "{field} in {body}");
    }
    assert!(body.to_string().contains("most common passwords"), "{body}");

    let register = json!({"email": "Ada@Example.test", "password": PASSWORD, "name": "Ada Lovelace",
                          "username": "ada", "termsAccepted": true});
    let (status, body) = post(app, "/api/v1/auth/register", register.clone()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["verificationRequired"], true);
    let status_now: Value = app.get("/api/v1/status").await.json().await.unwrap();
    assert_eq!(status_now["data"]["userSetupComplete"], true);

    // Same address (any case) or same username again: 409.
    let (status, _) = post(app, "/api/v1/auth/register", register.clone()).await;
    assert_eq!(status, 409);
    let (status, body) = post(
        app,
        "/api/v1/auth/register",
        json!({"email": "other@example.test", "password": PASSWORD, "name": "X", "username": "ADA",
               "termsAccepted": true}),
    )
    .await;
    assert_eq!(status, 409, "{body}");

    // Unverified: the right password is told to verify first; a wrong one learns nothing.
    let (status, body) = post(
        app,
        "/api/v1/auth/login",
        json!({"identifier": "ada@example.test", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("verify"),
        "{body}"
    );

    let code = stack
        .mailed_code("Ada@Example.test", "Verify your Berth account", 0)
        .await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, body) = post(
        app,
        "/api/v1/auth/verify-email",
        json!({"email": "ada@example.test", "otp": wrong}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4 attempts left"),
        "{body}"
    );

    let (status, body) = post(
        app,
        "/api/v1/auth/verify-email",
        json!({"email": "ada@example.test", "otp": code}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["user"]["emailVerified"], true);
    assert!(body["data"]["accessToken"].as_str().is_some());
    // A used code does not work again.
    let (status, _) = post(
        app,
        "/api/v1/auth/verify-email",
        json!({"email": "ada@example.test", "otp": code}),
    )
    .await;
    assert_eq!(status, 400);

    for identifier in ["ada", "ADA@example.TEST"] {
        let data = login(app, identifier, PASSWORD).await;
        assert_eq!(data["tokenType"], "Bearer");
        assert_eq!(data["expiresIn"], 900);
        let (status, me) = get_as(
            app,
            data["accessToken"].as_str().unwrap(),
            "/api/v1/auth/me",
        )
        .await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(me["data"]["user"]["username"], "ada");
        assert_eq!(me["data"]["role"], "user");
        assert_eq!(me["data"]["credential"], "session");
        let permissions = me["data"]["permissions"].as_array().unwrap();
        assert!(permissions.contains(&json!("servers:write")));
        assert!(!permissions.contains(&json!("admin")));
    }

    // The code travelled sealed: the job payload never holds it in the clear.
    let payloads: Vec<Value> =
        sqlx::query_scalar("SELECT payload FROM jobs WHERE kind = 'email.send'")
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
    assert!(!payloads.is_empty());
    assert!(payloads.iter().all(|p| !p.to_string().contains(&code)));
    let stored: String =
        sqlx::query_scalar("SELECT password_hash FROM users WHERE username = 'ada'")
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );

    let id: Uuid = sqlx::query_scalar("SELECT id FROM users WHERE username = 'ada'")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    let actions = audit_actions(&stack.db, id).await;
    for action in ["auth.register", "auth.verify_email", "auth.login"] {
        assert!(
            actions.contains(&action.to_owned()),
            "{action} in {actions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_codes_expire_run_out_of_attempts_and_resend_with_a_cooldown() {
    let stack = Stack::with_mail(&[("BERTH_RATE_LIMIT_OTP_RESEND", "1/2")]).await;
    let app = &stack.app;
    let email = "grace@example.test";
    let (status, _) = post(
        app,
        "/api/v1/auth/register",
        json!({"email": email, "password": PASSWORD, "name": "Grace", "termsAccepted": true}),
    )
    .await;
    assert_eq!(status, 201);
    let first = stack.mailed_code(email, "Verify", 0).await;

    // Expired.
    sqlx::query("UPDATE email_codes SET expires_at = now() - interval '1 second'")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    let (status, body) = post(
        app,
        "/api/v1/auth/verify-email",
        json!({"email": email, "otp": first}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid or expired"),
        "{body}"
    );

    // Resend: a new code; asking again at once is refused with Retry-After;
    // an unknown address gets the same answer as a known one.
    let (status, body) = post(app, "/api/v1/auth/resend-otp", json!({"email": email})).await;
    assert_eq!(status, 200, "{body}");
    let res = app
        .client
        .post(app.url("/api/v1/auth/resend-otp"))
        .json(&json!({"email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
    let (status, unknown) = post(
        app,
        "/api/v1/auth/resend-otp",
        json!({"email": "nobody@example.test"}),
    )
    .await;
    assert_eq!((status, &unknown), (200, &body));
    let second = stack.mailed_code(email, "Verify", 1).await;

    // Five wrong attempts use the code up: then even the right one is refused.
    let wrong = if second == "000000" {
        "111111"
    } else {
        "000000"
    };
    for _ in 0..5 {
        let (status, _) = post(
            app,
            "/api/v1/auth/verify-email",
            json!({"email": email, "otp": wrong}),
        )
        .await;
        assert_eq!(status, 400);
    }
    let (status, body) = post(
        app,
        "/api/v1/auth/verify-email",
        json!({"email": email, "otp": second}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid or expired")
    );

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, _) = post(app, "/api/v1/auth/resend-otp", json!({"email": email})).await;
    assert_eq!(status, 200);
    let third = stack.mailed_code(email, "Verify", 2).await;
    let (status, body) = post(
        app,
        "/api/v1/auth/verify-email",
        json!({"email": email, "otp": third}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_sign_ins_look_alike_and_lock_the_account_after_five() {
    let stack = Stack::start(&[("BERTH_RATE_LIMIT_LOGIN", "100/60")]).await;
    let app = &stack.app;
    let id = create_user(&stack.db, NewUser::verified("alan@example.test")).await;

    let wrong = post(
        app,
        "/api/v1/auth/login",
        json!({"identifier": "alan@example.test", "password": "wrong password!"}),
    )
    .await;
    let unknown = post(
        app,
        "/api/v1/auth/login",
        json!({"identifier": "nobody@example.test", "password": "wrong password!"}),
    )
    .await;
    assert_eq!(wrong.0, 401);
    assert_eq!(
        wrong, unknown,
        "the same answer whether or not the account exists"
    );

    for _ in 0..4 {
        let (status, _) = post(
            app,
            "/api/v1/auth/login",
            json!({"identifier": "alan@example.test", "password": "wrong password!"}),
        )
        .await;
        assert_eq!(status, 401);
    }
    // Five failures: now even the right password is refused for a while.
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"identifier": "alan@example.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((800..=900).contains(&retry), "{retry}");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(res.headers()["x-ratelimit-limit"], "5");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMIT_EXCEEDED");

    let actions = audit_actions(&stack.db, id).await;
    assert_eq!(
        actions.iter().filter(|a| *a == "auth.login_failed").count(),
        5,
        "{actions:?}"
    );
    let unknown_rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE action = 'auth.login_failed' AND actor_user_id IS NULL",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(unknown_rows, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn per_address_limits_answer_429_with_the_rate_limit_headers() {
    let stack = Stack::start(&[
        ("BERTH_RATE_LIMIT_LOGIN", "3/60"),
        ("BERTH_RATE_LIMIT_CSRF", "2/60"),
        ("BERTH_RATE_LIMIT_REGISTER", "1/60"),
    ])
    .await;
    let app = &stack.app;
    for remaining in [2, 1, 0] {
        let res = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({"identifier": "x@example.test", "password": "whatever123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["x-ratelimit-limit"], "3");
        assert_eq!(
            res.headers()["x-ratelimit-remaining"],
            remaining.to_string().as_str()
        );
        assert!(res.headers().contains_key("x-ratelimit-reset"));
    }
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"identifier": "x@example.test", "password": "whatever123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));

    for expected in [200, 200, 429] {
        assert_eq!(app.get("/api/v1/auth/csrf").await.status(), expected);
    }
    let register = json!({"email": "r@example.test", "password": PASSWORD, "name": "R", "termsAccepted": true});
    assert_eq!(
        post(app, "/api/v1/auth/register", register.clone()).await.0,
        201
    );
    assert_eq!(post(app, "/api/v1/auth/register", register).await.0, 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_rotates_and_a_reused_token_revokes_the_whole_session() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    let id = create_user(&stack.db, NewUser::verified("kay@example.test")).await;
    let first = login(app, "kay@example.test", PASSWORD).await;
    let old_refresh = first["refreshToken"].as_str().unwrap().to_owned();

    let (status, body) = post(
        app,
        "/api/v1/auth/refresh",
        json!({"refreshToken": old_refresh}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rotated = body["data"].clone();
    assert_ne!(rotated["refreshToken"], first["refreshToken"]);
    let new_access = rotated["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(get_as(app, &new_access, "/api/v1/auth/me").await.0, 200);

    // The old token comes back: theft is assumed, the family is revoked.
    let (status, body) = post(
        app,
        "/api/v1/auth/refresh",
        json!({"refreshToken": old_refresh}),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{body}"
    );
    assert_eq!(get_as(app, &new_access, "/api/v1/auth/me").await.0, 401);
    let (status, _) = post(
        app,
        "/api/v1/auth/refresh",
        json!({"refreshToken": rotated["refreshToken"]}),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        audit_actions(&stack.db, id)
            .await
            .contains(&"auth.refresh_reuse".to_owned())
    );

    // Garbage and missing tokens.
    assert_eq!(
        post(app, "/api/v1/auth/refresh", json!({"refreshToken": "nope"}))
            .await
            .0,
        401
    );
    let res = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "no refresh token is not signed in");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_family_has_an_absolute_lifetime() {
    let stack = Stack::start(&[("BERTH_SESSION_MAX_AGE_SECS", "2")]).await;
    let app = &stack.app;
    create_user(&stack.db, NewUser::verified("max@example.test")).await;
    let session = login(app, "max@example.test", PASSWORD).await;
    let (status, body) = post(
        app,
        "/api/v1/auth/refresh",
        json!({"refreshToken": session["refreshToken"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (status, _) = post(
        app,
        "/api/v1/auth/refresh",
        json!({"refreshToken": body["data"]["refreshToken"]}),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        get_as(
            app,
            session["accessToken"].as_str().unwrap(),
            "/api/v1/auth/me"
        )
        .await
        .0,
        401
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cookie_sessions_need_a_csrf_token_bound_to_the_session() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    create_user(&stack.db, NewUser::verified("eve@example.test")).await;
    create_user(&stack.db, NewUser::verified("bob@example.test")).await;

    let browser = Browser::new(
        app,
        "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0",
    );
    let res = browser.login("eve@example.test", PASSWORD).await;
    assert_eq!(res.status(), 200);
    let cookies: Vec<String> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let access = cookies
        .iter()
        .find(|c| c.starts_with("access_token="))
        .unwrap();
    let refresh = cookies
        .iter()
        .find(|c| c.starts_with("refresh_token="))
        .unwrap();
    let csrf = cookies
        .iter()
        .find(|c| c.starts_with("csrf_token="))
        .unwrap();
    for c in [access, refresh] {
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax"), "{c}");
        assert!(!c.contains("Secure"), "COOKIE_SECURE=false in tests: {c}");
    }
    assert!(refresh.contains("Path=/api/v1/auth"), "{refresh}");
    assert!(!csrf.contains("HttpOnly"), "the page reads it: {csrf}");

    // Safe methods need no token.
    assert_eq!(browser.get("/api/v1/auth/me").await.status(), 200);

    // Unsafe without the header, with a wrong one, with another session's: 403.
    let res = browser
        .client
        .post(browser.url("/api/v1/sessions/revoke-others"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("CSRF"),
        "{body}"
    );
    let res = browser
        .client
        .post(browser.url("/api/v1/sessions/revoke-others"))
        .header("x-csrf-token", "forged.token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let other = Browser::new(app, "curl/8");
    assert_eq!(
        other.login("bob@example.test", PASSWORD).await.status(),
        200
    );
    let bobs = other.cookie("/", "csrf_token").unwrap();
    let res = browser
        .client
        .post(browser.url("/api/v1/sessions/revoke-others"))
        .header("x-csrf-token", &bobs)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "a token of another session");

    // An anonymous token from GET /auth/csrf does not do; one fetched while
    // signed in does.
    let anonymous: Value = app.get("/api/v1/auth/csrf").await.json().await.unwrap();
    let res = browser
        .client
        .post(browser.url("/api/v1/sessions/revoke-others"))
        .header(
            "x-csrf-token",
            anonymous["data"]["csrfToken"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let fresh: Value = browser.get("/api/v1/auth/csrf").await.json().await.unwrap();
    assert_eq!(
        Some(fresh["data"]["csrfToken"].as_str().unwrap().to_owned()),
        browser.cookie("/", "csrf_token")
    );
    let res = browser
        .send(Method::POST, "/api/v1/sessions/revoke-others", json!({}))
        .await;
    assert_eq!(res.status(), 200);

    // A cross-site form post is refused before anything else.
    let res = browser
        .client
        .post(browser.url("/api/v1/auth/login"))
        .header("sec-fetch-site", "cross-site")
        .json(&json!({"identifier": "eve@example.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    // Cookie refresh needs the CSRF token too; with it, cookies rotate.
    let before = browser
        .cookie("/api/v1/auth/refresh", "refresh_token")
        .unwrap();
    let res = browser
        .client
        .post(browser.url("/api/v1/auth/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let res = browser
        .send(Method::POST, "/api/v1/auth/refresh", json!(null))
        .await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    assert_ne!(
        browser
            .cookie("/api/v1/auth/refresh", "refresh_token")
            .unwrap(),
        before
    );

    // Bearer requests need no CSRF token.
    let token = access_token(app, "eve@example.test").await;
    let (status, _) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/sessions/revoke-others",
        json!({}),
    )
    .await;
    assert_eq!(status, 200);

    // Logout clears the cookies and ends the session.
    assert_eq!(
        other
            .send(Method::POST, "/api/v1/auth/logout", json!({}))
            .await
            .status(),
        200
    );
    assert_eq!(other.get("/api/v1/auth/me").await.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_listed_and_revoked_and_a_revoked_token_stops_at_once() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    create_user(&stack.db, NewUser::verified("lin@example.test")).await;
    create_user(&stack.db, NewUser::verified("mo@example.test")).await;

    let firefox = Browser::new(
        app,
        "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0",
    );
    assert_eq!(
        firefox.login("lin@example.test", PASSWORD).await.status(),
        200
    );
    let phone = Browser::new(
        app,
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    );
    assert_eq!(
        phone.login("lin@example.test", PASSWORD).await.status(),
        200
    );
    let cli = access_token(app, "lin@example.test").await;

    let (status, body) = get_as(app, &cli, "/api/v1/sessions").await;
    assert_eq!(status, 200, "{body}");
    let items = body["data"]["items"].as_array().unwrap();
    assert_eq!(body["data"]["total"], 3);
    assert_eq!(items.iter().filter(|s| s["current"] == true).count(), 1);
    let desktop = items
        .iter()
        .find(|s| s["browser"] == "Firefox 131")
        .expect("firefox");
    assert_eq!(desktop["device"], "desktop");
    assert_eq!(desktop["os"], "Linux");
    assert_eq!(desktop["ip"], "127.0.0.1");
    let mobile = items
        .iter()
        .find(|s| s["device"] == "mobile")
        .expect("phone");
    assert!(mobile["lastActiveAt"].as_str().is_some());

    // Another user's session id: 404, and it stays alive.
    let mos = access_token(app, "mo@example.test").await;
    let phone_id = mobile["id"].as_str().unwrap();
    let (status, _) = send_as(
        app,
        &mos,
        Method::DELETE,
        &format!("/api/v1/sessions/{phone_id}"),
        json!(null),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(phone.get("/api/v1/auth/me").await.status(), 200);
    let (status, _) = send_as(
        app,
        &mos,
        Method::DELETE,
        "/api/v1/sessions/not-a-uuid",
        json!(null),
    )
    .await;
    assert_eq!(status, 400);

    // Revoked: the phone's very next request fails.
    let (status, _) = send_as(
        app,
        &cli,
        Method::DELETE,
        &format!("/api/v1/sessions/{phone_id}"),
        json!(null),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(phone.get("/api/v1/auth/me").await.status(), 401);
    let (status, _) = send_as(
        app,
        &cli,
        Method::DELETE,
        &format!("/api/v1/sessions/{phone_id}"),
        json!(null),
    )
    .await;
    assert_eq!(status, 404, "already revoked");

    let (status, body) = send_as(
        app,
        &cli,
        Method::POST,
        "/api/v1/sessions/revoke-others",
        json!({}),
    )
    .await;
    assert_eq!((status, body["data"]["revoked"].clone()), (200, json!(1)));
    assert_eq!(firefox.get("/api/v1/auth/me").await.status(), 401);
    let (_, body) = get_as(app, &cli, "/api/v1/sessions").await;
    assert_eq!(body["data"]["total"], 1);

    let (status, _) = send_as(app, &cli, Method::POST, "/api/v1/auth/logout", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(get_as(app, &cli, "/api/v1/auth/me").await.0, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn suspended_users_lose_their_sessions_at_once() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    let id = create_user(&stack.db, NewUser::verified("sus@example.test")).await;
    let token = access_token(app, "sus@example.test").await;
    sqlx::query("UPDATE users SET status = 'suspended' WHERE id = $1")
        .bind(id)
        .execute(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(get_as(app, &token, "/api/v1/auth/me").await.0, 401);
    let (status, body) = post(
        app,
        "/api/v1/auth/login",
        json!({"identifier": "sus@example.test", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("suspended")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forgotten_passwords_are_reset_by_a_single_use_mailed_link() {
    let stack = Stack::with_mail(&[]).await;
    let app = &stack.app;
    let id = create_user(&stack.db, NewUser::verified("rosa@example.test")).await;
    let before = access_token(app, "rosa@example.test").await;

    let known = post(
        app,
        "/api/v1/auth/forgot-password",
        json!({"email": "rosa@example.test"}),
    )
    .await;
    let unknown = post(
        app,
        "/api/v1/auth/forgot-password",
        json!({"email": "nobody@example.test"}),
    )
    .await;
    assert_eq!(known, unknown);
    assert_eq!(known.0, 200);
    let message = stack
        .smtp()
        .wait_for("rosa@example.test", "Reset your Berth password", 0)
        .await;
    let token = message
        .split("reset-password?token=")
        .nth(1)
        .expect("a link")
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 43, "{token}");
    assert_eq!(stack.smtp().count("nobody@example.test", "Reset"), 0);

    let (status, _) = post(
        app,
        "/api/v1/auth/reset-password",
        json!({"token": "bogus", "password": "a fine new password"}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = post(
        app,
        "/api/v1/auth/reset-password",
        json!({"token": token, "password": "iloveyou"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(field_errors(&body), vec!["password".to_owned()]);
    let (status, body) = post(
        app,
        "/api/v1/auth/reset-password",
        json!({"token": token, "password": "a fine new password"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(
        app,
        "/api/v1/auth/reset-password",
        json!({"token": token, "password": "another new password"}),
    )
    .await;
    assert_eq!(status, 400, "single use");

    assert_eq!(
        get_as(app, &before, "/api/v1/auth/me").await.0,
        401,
        "every session revoked"
    );
    let (status, _) = post(
        app,
        "/api/v1/auth/login",
        json!({"identifier": "rosa@example.test", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 401);
    login(app, "rosa@example.test", "a fine new password").await;

    // An expired link.
    post(
        app,
        "/api/v1/auth/forgot-password",
        json!({"email": "rosa@example.test"}),
    )
    .await;
    let message = stack
        .smtp()
        .wait_for("rosa@example.test", "Reset your Berth password", 1)
        .await;
    let token = message.split("reset-password?token=").nth(1).unwrap()[..43].to_owned();
    sqlx::query("UPDATE password_resets SET expires_at = now() - interval '1 second'")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    let (status, _) = post(
        app,
        "/api/v1/auth/reset-password",
        json!({"token": token, "password": "yet another password"}),
    )
    .await;
    assert_eq!(status, 400);

    let actions = audit_actions(&stack.db, id).await;
    assert!(
        actions.contains(&"auth.password_reset".to_owned()),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_the_password_needs_the_current_one_and_revokes_other_sessions() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    let id = create_user(&stack.db, NewUser::verified("ines@example.test")).await;
    let here = access_token(app, "ines@example.test").await;
    let elsewhere = access_token(app, "ines@example.test").await;

    let change = |current: &str, new: &str| json!({"currentPassword": current, "newPassword": new});
    let (status, body) = send_as(
        app,
        &here,
        Method::POST,
        "/api/v1/profile/password",
        change("wrong one!", "a brand new secret"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(field_errors(&body), vec!["currentPassword".to_owned()]);
    let (status, body) = send_as(
        app,
        &here,
        Method::POST,
        "/api/v1/profile/password",
        change(PASSWORD, "short"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(field_errors(&body), vec!["newPassword".to_owned()]);
    let (status, body) = send_as(
        app,
        &here,
        Method::POST,
        "/api/v1/profile/password",
        change(PASSWORD, "a brand new secret"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["sessionsRevoked"], 1);
    assert_eq!(get_as(app, &here, "/api/v1/auth/me").await.0, 200);
    assert_eq!(get_as(app, &elsewhere, "/api/v1/auth/me").await.0, 401);
    login(app, "ines@example.test", "a brand new secret").await;
    let actions = audit_actions(&stack.db, id).await;
    assert!(
        actions.contains(&"auth.password_change".to_owned()),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn passwordless_email_codes_sign_in_without_revealing_accounts() {
    let stack = Stack::with_mail(&[]).await;
    let app = &stack.app;
    create_user(&stack.db, NewUser::verified("noor@example.test")).await;

    let known = post(
        app,
        "/api/v1/auth/email-code/send",
        json!({"email": "noor@example.test"}),
    )
    .await;
    let unknown = post(
        app,
        "/api/v1/auth/email-code/send",
        json!({"email": "ghost@example.test"}),
    )
    .await;
    assert_eq!(known, unknown);
    assert_eq!(
        known,
        (200, json!({"success": true, "data": {"sent": true}}))
    );
    let code = stack
        .mailed_code("noor@example.test", "sign-in code", 0)
        .await;
    assert_eq!(stack.smtp().count("ghost@example.test", "code"), 0);

    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (status, _) = post(
        app,
        "/api/v1/auth/email-code/verify",
        json!({"email": "noor@example.test", "code": wrong}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(
        app,
        "/api/v1/auth/email-code/verify",
        json!({"email": "ghost@example.test", "code": code}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = post(
        app,
        "/api/v1/auth/email-code/verify",
        json!({"email": "noor@example.test", "code": code}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["accessToken"].is_string());
    let (status, _) = post(
        app,
        "/api/v1/auth/email-code/verify",
        json!({"email": "noor@example.test", "code": code}),
    )
    .await;
    assert_eq!(status, 400, "used");
}

#[tokio::test(flavor = "multi_thread")]
async fn providers_follow_configuration_and_disabled_methods_refuse() {
    let stack = Stack::start(&[
        ("BERTH_AUTH_EMAIL_CODE_ENABLED", "false"),
        ("BERTH_AUTH_PASSWORD_ENABLED", "false"),
    ])
    .await;
    let app = &stack.app;
    let body: Value = app
        .get("/api/v1/auth/providers")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["data"],
        json!({"password": false, "emailCode": false, "totp": true, "github": false, "google": false})
    );
    let (status, _) = post(
        app,
        "/api/v1/auth/email-code/send",
        json!({"email": "a@example.test"}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = post(
        app,
        "/api/v1/auth/login",
        json!({"identifier": "a@example.test", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(app.get("/api/v1/auth/oauth/github").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_expired_access_tokens_are_refused() {
    let stack = Stack::start(&[("BERTH_ACCESS_TOKEN_TTL_SECS", "1")]).await;
    let app = &stack.app;
    create_user(&stack.db, NewUser::verified("tok@example.test")).await;
    let token = access_token(app, "tok@example.test").await;
    assert_eq!(get_as(app, &token, "/api/v1/auth/me").await.0, 200);
    // Same claims, signature of another secret.
    let (head, rest) = token.split_once('.').unwrap();
    let (claims, _) = rest.split_once('.').unwrap();
    let forged = format!("{head}.{claims}.c2lnbmF0dXJl");
    let (status, body) = get_as(app, &forged, "/api/v1/auth/me").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");
    // alg: none.
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
    assert_eq!(get_as(app, &none, "/api/v1/auth/me").await.0, 401);
    tokio::time::sleep(Duration::from_millis(7000)).await;
    assert_eq!(
        get_as(app, &token, "/api/v1/auth/me").await.0,
        401,
        "expired (5 s leeway)"
    );
}
