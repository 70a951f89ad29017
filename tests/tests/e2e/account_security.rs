//! TOTP 2FA, API tokens and their scopes, job visibility, profile and account
//! deletion.

use berth_e2e::accounts::{
    Browser, NewUser, PASSWORD, Stack, access_token, audit_actions, create_user, get_as, login,
    post, send_as, totp_code,
};
use berth_jobs::store::{self, NewJob};
use berth_jobs::{DiagnosticJob, EmailJob, EmailMessage};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn totp_two_factor_with_replay_protection_and_single_use_recovery_codes() {
    let stack = Stack::start(&[("BERTH_RATE_LIMIT_LOGIN", "100/60")]).await;
    let app = &stack.app;
    let id = create_user(&stack.db, NewUser::verified("tess@example.test")).await;
    let token = access_token(app, "tess@example.test").await;

    let (status, body) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/auth/2fa/enable",
        json!({"code": "123456"}),
    )
    .await;
    assert_eq!(status, 400, "no setup yet: {body}");
    let (status, body) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/auth/2fa/setup",
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let secret = body["data"]["secret"].as_str().unwrap().to_owned();
    let uri = body["data"]["otpauthUri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/Berth:tess%40example.test?"),
        "{uri}"
    );
    assert!(
        uri.contains(&format!("secret={secret}")) && uri.contains("issuer=Berth"),
        "{uri}"
    );

    // Sealed at rest, bound to the row.
    let stored: String = sqlx::query_scalar("SELECT totp_pending_secret FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert!(
        stored.starts_with("v1.") && !stored.contains(&secret),
        "{stored}"
    );

    let (status, _) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/auth/2fa/enable",
        json!({"code": totp_code(&secret, -10)}),
    )
    .await;
    assert_eq!(status, 400, "an old code");
    // Codes are taken one step early and one late so a step boundary during the
    // test changes nothing.
    let enable_code = totp_code(&secret, -1);
    let next = totp_code(&secret, 1);
    let (status, body) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/auth/2fa/enable",
        json!({"code": enable_code}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let recovery: Vec<String> =
        serde_json::from_value(body["data"]["recoveryCodes"].clone()).unwrap();
    assert_eq!(recovery.len(), 10);
    let stored_codes: Vec<String> =
        sqlx::query_scalar("SELECT code_hash FROM recovery_codes WHERE user_id = $1")
            .bind(id)
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
    assert_eq!(stored_codes.len(), 10);
    assert!(
        stored_codes.iter().all(|h| !recovery.contains(h)),
        "stored hashed"
    );
    let (status, _) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/auth/2fa/setup",
        json!({}),
    )
    .await;
    assert_eq!(status, 409);

    // Sign-in now takes a second step.
    let first = login(app, "tess@example.test", PASSWORD).await;
    assert_eq!(first["twoFactorRequired"], true);
    assert!(first.get("accessToken").is_none());
    let challenge = first["challengeId"].as_str().unwrap().to_owned();

    // The code that enabled 2FA is of an accepted step: replaying it fails.
    let (status, body) = post(
        app,
        "/api/v1/auth/login/2fa",
        json!({"challengeId": challenge, "code": enable_code}),
    )
    .await;
    assert_eq!(status, 401, "replayed step: {body}");
    let (status, body) = post(
        app,
        "/api/v1/auth/login/2fa",
        json!({"challengeId": challenge, "code": next}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["data"]["accessToken"].is_string());
    // The challenge is spent; the same code on a new challenge is a replay.
    let (status, _) = post(
        app,
        "/api/v1/auth/login/2fa",
        json!({"challengeId": challenge, "code": next}),
    )
    .await;
    assert_eq!(status, 401);
    let again = login(app, "tess@example.test", PASSWORD).await["challengeId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = post(
        app,
        "/api/v1/auth/login/2fa",
        json!({"challengeId": again, "code": next}),
    )
    .await;
    assert_eq!(status, 401, "a code never works twice");

    // Recovery codes work once, in any case and with spaces.
    let loose = recovery[0].to_uppercase().replace('-', " ");
    let (status, body) = post(
        app,
        "/api/v1/auth/login/2fa",
        json!({"challengeId": again, "code": loose}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let third = login(app, "tess@example.test", PASSWORD).await["challengeId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = post(
        app,
        "/api/v1/auth/login/2fa",
        json!({"challengeId": third, "code": recovery[0]}),
    )
    .await;
    assert_eq!(status, 401, "recovery code used up");

    // A challenge allows five attempts.
    for _ in 0..4 {
        let (status, _) = post(
            app,
            "/api/v1/auth/login/2fa",
            json!({"challengeId": third, "code": "000000"}),
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, body) = post(
        app,
        "/api/v1/auth/login/2fa",
        json!({"challengeId": third, "code": recovery[1]}),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("challenge"),
        "{body}"
    );

    // Disabling needs the password and a code.
    let (status, _) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/auth/2fa/disable",
        json!({"password": "wrong password", "code": recovery[2]}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/auth/2fa/disable",
        json!({"password": PASSWORD, "code": "999999"}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/auth/2fa/disable",
        json!({"password": PASSWORD, "code": recovery[2]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(login(app, "tess@example.test", PASSWORD).await["accessToken"].is_string());

    let actions = audit_actions(&stack.db, id).await;
    for action in [
        "auth.2fa_enable",
        "auth.login_challenge",
        "auth.2fa_disable",
        "auth.login_failed",
    ] {
        assert!(
            actions.contains(&action.to_owned()),
            "{action} in {actions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_tokens_do_only_what_their_scopes_allow() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    let user = create_user(&stack.db, NewUser::verified("tom@example.test")).await;
    create_user(&stack.db, NewUser::verified("una@example.test")).await;
    let session = access_token(app, "tom@example.test").await;

    let create = |body: Value| send_as(app, &session, Method::POST, "/api/v1/tokens", body);
    let (status, body) = create(json!({"name": "ci", "scopes": ["servers:fly"]})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = create(json!({"name": "ci", "scopes": []})).await;
    assert_eq!(status, 400);
    let (status, _) = create(
        json!({"name": "ci", "scopes": ["servers:read"], "expiresAt": "2001-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = create(json!({"name": "ci", "scopes": ["admin"]})).await;
    assert_eq!(status, 403, "not an admin: {body}");

    let (status, body) =
        create(json!({"name": "ci", "scopes": ["servers:write", "servers:write"]})).await;
    assert_eq!(status, 201, "{body}");
    let token = body["data"]["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("berth_pat_"));
    assert_eq!(body["data"]["scopes"], json!(["servers:write"]));
    let token_id = body["data"]["id"].as_str().unwrap().to_owned();

    // Listed without the token itself; stored hashed.
    let (_, list) = get_as(app, &session, "/api/v1/tokens").await;
    assert_eq!(list["data"]["total"], 1);
    assert!(!list.to_string().contains(&token));
    assert_eq!(list["data"]["items"][0]["prefix"], token[..16]);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM api_tokens WHERE token_hash = $1")
        .bind(&token)
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    let (status, me) = get_as(app, &token, "/api/v1/auth/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["data"]["credential"], "api_token");
    assert_eq!(
        me["data"]["permissions"],
        json!(["servers:read", "servers:write"])
    );

    // Account management needs a session.
    let (status, body) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/tokens",
        json!({"name": "x", "scopes": ["servers:read"]}),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(get_as(app, &token, "/api/v1/sessions").await.0, 403);
    assert_eq!(
        send_as(
            app,
            &token,
            Method::POST,
            "/api/v1/profile/password",
            json!({"currentPassword": PASSWORD, "newPassword": "something else entirely"})
        )
        .await
        .0,
        403
    );

    // Jobs: only the kinds the scopes cover.
    let mut conn = stack.db.pool.acquire().await.unwrap();
    let policies = app.state.jobs.policies().clone();
    let mail = store::enqueue(
        &mut conn,
        &policies,
        NewJob::new(EmailJob {
            to: "tom@example.test".into(),
            message: EmailMessage::TestMessage {
                recipient_name: "Tom".into(),
            },
        })
        .owner(user),
    )
    .await
    .unwrap();
    let (status, _) = get_as(app, &token, &format!("/api/v1/jobs/{}", mail.id)).await;
    assert_eq!(status, 403, "an email job needs the admin scope");
    let (status, _) = get_as(app, &token, "/api/v1/jobs?kind=email.send").await;
    assert_eq!(status, 403);
    let (status, _) = get_as(app, &token, "/api/v1/jobs?queue=email").await;
    assert_eq!(status, 403);
    let (status, body) = get_as(app, &token, "/api/v1/jobs").await;
    assert_eq!(
        (status, body["data"]["total"].clone()),
        (200, json!(0)),
        "{body}"
    );
    // The empty page says what it left out, and why.
    let hidden = body["data"]["hiddenKinds"].as_array().unwrap();
    assert!(
        hidden.contains(&json!({"kind": "email.send", "queue": "email", "needsScope": "admin"})),
        "{body}"
    );
    assert!(
        !hidden.iter().any(|h| h["queue"] == "probe"),
        "servers:write covers probes: {body}"
    );
    let (status, body) = get_as(app, &session, &format!("/api/v1/jobs/{}", mail.id)).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = get_as(app, &session, "/api/v1/jobs").await;
    assert_eq!(
        body["data"]["hiddenKinds"],
        json!([]),
        "a session sees every kind"
    );
    assert_eq!(body["data"]["total"], 1);

    // Used: last-used time recorded. Another user's token id: 404.
    let last_used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM api_tokens WHERE id = $1::uuid")
            .bind(&token_id)
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
    assert!(last_used.is_some());
    let una = access_token(app, "una@example.test").await;
    let (status, _) = send_as(
        app,
        &una,
        Method::DELETE,
        &format!("/api/v1/tokens/{token_id}"),
        json!(null),
    )
    .await;
    assert_eq!(status, 404);

    // Expired tokens stop; revoked tokens stop.
    sqlx::query("UPDATE api_tokens SET expires_at = now() - interval '1 second'")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(get_as(app, &token, "/api/v1/auth/me").await.0, 401);
    sqlx::query("UPDATE api_tokens SET expires_at = NULL")
        .execute(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(get_as(app, &token, "/api/v1/auth/me").await.0, 200);
    let (status, _) = send_as(
        app,
        &session,
        Method::DELETE,
        &format!("/api/v1/tokens/{token_id}"),
        json!(null),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(get_as(app, &token, "/api/v1/auth/me").await.0, 401);
    let actions = audit_actions(&stack.db, user).await;
    assert!(
        actions.contains(&"token.create".to_owned())
            && actions.contains(&"token.revoke".to_owned()),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_are_visible_to_their_owner_and_admins_only() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    let owner = create_user(&stack.db, NewUser::verified("own@example.test")).await;
    create_user(&stack.db, NewUser::verified("other@example.test")).await;
    create_user(
        &stack.db,
        NewUser {
            role: "admin",
            ..NewUser::verified("root@example.test")
        },
    )
    .await;
    let mut ids = Vec::new();
    let mut conn = stack.db.pool.acquire().await.unwrap();
    let policies = app.state.jobs.policies().clone();
    for sleep_ms in [1, 2] {
        let job = store::enqueue(
            &mut conn,
            &policies,
            NewJob::new(DiagnosticJob::sleeping(sleep_ms)).owner(owner),
        )
        .await
        .unwrap();
        ids.push(job.id);
    }
    let own = access_token(app, "own@example.test").await;
    let other = access_token(app, "other@example.test").await;
    let admin = access_token(app, "root@example.test").await;

    let (status, body) = get_as(app, &own, &format!("/api/v1/jobs/{}", ids[0])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["kind"], "diagnostic.sleep");
    assert_eq!(body["data"]["queue"], "diagnostic");
    assert_eq!(body["data"]["state"], "queued");
    assert_eq!(body["data"]["attempts"], 0);
    assert!(body["data"]["createdAt"].is_string());
    assert_eq!(
        get_as(app, &other, &format!("/api/v1/jobs/{}", ids[0]))
            .await
            .0,
        404
    );
    assert_eq!(
        get_as(app, &admin, &format!("/api/v1/jobs/{}", ids[0]))
            .await
            .0,
        200
    );
    assert_eq!(get_as(app, &own, "/api/v1/jobs/01NOSUCHJOB").await.0, 404);

    let (_, body) = get_as(
        app,
        &own,
        "/api/v1/jobs?kind=diagnostic.sleep&state=queued&limit=1",
    )
    .await;
    assert_eq!(body["data"]["total"], 2);
    assert_eq!(body["data"]["items"].as_array().unwrap().len(), 1);
    assert_eq!(
        body["data"]["items"][0]["id"],
        ids[1].as_str(),
        "newest first"
    );
    let (_, body) = get_as(app, &own, "/api/v1/jobs?state=failed").await;
    assert_eq!(body["data"]["total"], 0);
    let (_, body) = get_as(app, &other, "/api/v1/jobs").await;
    assert_eq!(body["data"]["total"], 0);
    let (_, body) = get_as(app, &admin, "/api/v1/jobs").await;
    assert_eq!(body["data"]["total"], 2);
    let (_, body) = get_as(app, &own, "/api/v1/jobs?queue=diagnostic").await;
    assert_eq!(body["data"]["total"], 2);
    let (_, body) = get_as(app, &own, "/api/v1/jobs?kind=server.probe").await;
    assert_eq!(
        body["data"]["total"], 0,
        "a kind filters by kind, not queue"
    );
    let (status, body) = get_as(app, &own, "/api/v1/jobs?kind=nonsense").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("server.validate"),
        "known kinds listed: {body}"
    );
    // The old queue-as-kind names are queues now, not kinds.
    assert_eq!(
        get_as(app, &own, "/api/v1/jobs?kind=diagnostic").await.0,
        400
    );
    assert_eq!(get_as(app, &own, "/api/v1/jobs?state=done").await.0, 400);
    assert_eq!(app.get("/api/v1/jobs").await.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn profile_updates_and_account_deletion() {
    let stack = Stack::with_mail(&[]).await;
    let app = &stack.app;
    let id = create_user(&stack.db, NewUser::verified("zoe@example.test")).await;
    create_user(
        &stack.db,
        NewUser {
            username: Some("taken"),
            ..NewUser::verified("yan@example.test")
        },
    )
    .await;
    let token = access_token(app, "zoe@example.test").await;

    let (status, body) = get_as(app, &token, "/api/v1/profile").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["email"], "zoe@example.test");
    assert_eq!(body["data"]["hasPassword"], true);
    assert_eq!(body["data"]["linkedProviders"], json!([]));

    let patch = |body: Value| send_as(app, &token, Method::PATCH, "/api/v1/profile", body);
    // Nothing to change: the profile as it is.
    let (status, unchanged) = patch(json!({})).await;
    assert_eq!(
        (status, &unchanged["data"]["email"]),
        (200, &json!("zoe@example.test"))
    );
    assert_eq!(
        patch(json!({"name": null})).await.0,
        400,
        "a name cannot be removed"
    );
    assert_eq!(patch(json!({"username": "TAKEN"})).await.0, 409);
    assert_eq!(
        patch(json!({"avatarUrl": "javascript:alert(1)"})).await.0,
        400
    );
    assert_eq!(
        patch(json!({"role": "admin"})).await.0,
        400,
        "unknown fields are refused"
    );
    let (status, body) = patch(
        json!({"name": "Zoë", "username": "zoe", "avatarUrl": "https://img.example.test/z.png"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["username"], "zoe");
    assert_eq!(body["data"]["name"], "Zoë");
    let (_, body) = patch(json!({"avatarUrl": null})).await;
    assert_eq!(body["data"]["avatarUrl"], Value::Null);
    assert_eq!(body["data"]["username"], "zoe", "untouched");

    // Deletion needs exactly one confirmation, and the right one.
    let delete = |body: Value| send_as(app, &token, Method::DELETE, "/api/v1/account", body);
    assert_eq!(delete(json!({})).await.0, 400);
    assert_eq!(delete(json!({"password": "not my password"})).await.0, 400);
    let (status, _) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/account/delete-code",
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let code = stack
        .mailed_code("zoe@example.test", "Confirm deleting", 0)
        .await;
    let mut conn = stack.db.pool.acquire().await.unwrap();
    let policies = app.state.jobs.policies().clone();
    store::enqueue(
        &mut conn,
        &policies,
        NewJob::new(DiagnosticJob::sleeping(1)).owner(id),
    )
    .await
    .unwrap();
    let (status, body) = delete(json!({"code": code})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get_as(app, &token, "/api/v1/auth/me").await.0, 401);
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM users WHERE id = $1) + (SELECT count(*) FROM jobs WHERE owner_user_id = $1) \
         + (SELECT count(*) FROM sessions WHERE user_id = $1)",
    )
    .bind(id)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "owned rows cascade");
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_logs WHERE action = 'account.delete' AND target_id = $1",
    )
    .bind(id.to_string())
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(kept, 1, "the audit row outlives the account");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_super_admin_cannot_delete_their_account() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    create_user(
        &stack.db,
        NewUser {
            role: "super_admin",
            ..NewUser::verified("boss@example.test")
        },
    )
    .await;
    let browser = Browser::new(app, "test");
    assert_eq!(
        browser.login("boss@example.test", PASSWORD).await.status(),
        200
    );
    let res = browser
        .send(
            Method::DELETE,
            "/api/v1/account",
            json!({"password": PASSWORD}),
        )
        .await;
    assert_eq!(res.status(), 409);
    let (status, me) = get_as(
        app,
        &access_token(app, "boss@example.test").await,
        "/api/v1/auth/me",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        me["data"]["permissions"]
            .as_array()
            .unwrap()
            .contains(&json!("admin"))
    );
}
