//! SPEC §3.9: administrators. The role rules (a user is refused, admin
//! roles are a super admin's to give, an admin never acts on a super admin,
//! the last super admin stays), a suspension that cuts a live session, its
//! socket and its API token at once, the audit log's filters, a broadcast
//! reaching notifications and open sockets, contact messages, and the
//! maintenance mode a restore puts the api in.

use std::time::Duration;

use berth_e2e::accounts::{
    NewUser, Stack, access_token, create_user, get_as, post, send_as, signed_in_with_role,
};
use berth_e2e::{connect_ws, next_json};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

fn items(body: &Value) -> &Vec<Value> {
    body["data"]["items"].as_array().unwrap()
}

async fn set_role(stack: &Stack, token: &str, id: Uuid, role: &str) -> (u16, Value) {
    send_as(
        &stack.app,
        token,
        Method::PUT,
        &format!("/api/v1/admin/users/{id}/role"),
        json!({ "role": role }),
    )
    .await
}

async fn set_status(stack: &Stack, token: &str, id: Uuid, status: &str) -> (u16, Value) {
    send_as(
        &stack.app,
        token,
        Method::PUT,
        &format!("/api/v1/admin/users/{id}/status"),
        json!({ "status": status }),
    )
    .await
}

/// The socket ends (a close frame, or the stream's end) within `within`.
async fn closed(socket: &mut berth_e2e::Socket, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn administrators_follow_the_role_rules_and_a_suspension_cuts_access_at_once() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    let (root_id, root) = signed_in_with_role(&stack, "root@example.com", "super_admin").await;
    let (ops_id, ops) = signed_in_with_role(&stack, "ops@example.com", "admin").await;
    let (user_id, user) = signed_in_with_role(&stack, "user@example.com", "user").await;
    let other_id = create_user(&stack.db, NewUser::verified("other@example.com")).await;

    // A user is refused every admin route, and told why.
    for path in [
        "/api/v1/admin/users",
        "/api/v1/admin/stats",
        "/api/v1/admin/audit-logs",
        "/api/v1/admin/contact",
        "/api/v1/admin/backups",
        "/api/v1/admin/deployments",
    ] {
        let (status, body) = get_as(app, &user, path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(body["error"]["code"], "FORBIDDEN", "{body}");
    }

    // Search and filters.
    let (status, found) = get_as(app, &ops, "/api/v1/admin/users?search=USER%40example").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(items(&found).len(), 1, "{found}");
    assert_eq!(items(&found)[0]["email"], "user@example.com");
    let (_, admins) = get_as(app, &ops, "/api/v1/admin/users?role=admin").await;
    assert_eq!(items(&admins).len(), 1, "{admins}");
    assert_eq!(items(&admins)[0]["id"], ops_id.to_string());
    let (status, bad) = get_as(app, &ops, "/api/v1/admin/users?role=god").await;
    assert_eq!(status, 400, "{bad}");
    let (_, detail) = get_as(app, &ops, &format!("/api/v1/admin/users/{user_id}")).await;
    assert_eq!(detail["data"]["activeSessions"], 1, "{detail}");
    assert!(detail["data"]["lastSignInAt"].is_string(), "{detail}");
    assert_eq!(detail["data"]["servers"], json!([]));
    let (status, _) = get_as(
        app,
        &ops,
        &format!("/api/v1/admin/users/{}", Uuid::new_v4()),
    )
    .await;
    assert_eq!(status, 404);
    let (status, stats) = get_as(app, &ops, "/api/v1/admin/stats").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["data"]["users"]["total"], 4, "{stats}");
    assert_eq!(stats["data"]["users"]["administrators"], 2, "{stats}");

    // Admin roles are a super admin's to give and take.
    let (status, body) = set_role(&stack, &ops, user_id, "admin").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = set_role(&stack, &ops, ops_id, "user").await;
    assert_eq!(status, 403, "{body}");
    // An admin never acts on a super admin.
    let (status, body) = set_status(&stack, &ops, root_id, "suspended").await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = send_as(
        app,
        &ops,
        Method::DELETE,
        &format!("/api/v1/admin/users/{root_id}"),
        json!(null),
    )
    .await;
    assert_eq!(status, 403);
    // The last super admin stays one, and active.
    let (status, body) = set_role(&stack, &root, root_id, "admin").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "CONFLICT");
    let (status, body) = set_status(&stack, &root, root_id, "suspended").await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = set_role(&stack, &root, user_id, "admin").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["role"], "admin");
    let (status, body) = set_role(&stack, &root, user_id, "user").await;
    assert_eq!(status, 200, "{body}");

    // A suspension: the live session's next request, its socket and its API
    // token are refused at once, and sign-in is refused.
    let (status, created) = send_as(
        app,
        &user,
        Method::POST,
        "/api/v1/tokens",
        json!({ "name": "ci", "scopes": ["servers:read"] }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let api_token = created["data"]["token"].as_str().unwrap().to_owned();
    assert_eq!(get_as(app, &api_token, "/api/v1/servers").await.0, 200);
    let mut socket = connect_ws(&app.base, &user).await;
    let (status, body) = set_status(&stack, &ops, user_id, "suspended").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "suspended");
    assert_eq!(body["data"]["activeSessions"], 0, "{body}");
    assert_eq!(get_as(app, &user, "/api/v1/auth/me").await.0, 401);
    assert_eq!(get_as(app, &api_token, "/api/v1/servers").await.0, 401);
    assert!(
        closed(&mut socket, Duration::from_secs(5)).await,
        "the suspended user's socket stayed open"
    );
    let (status, _) = post(
        app,
        "/api/v1/auth/login",
        json!({ "identifier": "user@example.com", "password": berth_e2e::accounts::PASSWORD }),
    )
    .await;
    assert!(
        status == 401 || status == 403,
        "a suspended sign-in: {status}"
    );
    let (_, suspended) = get_as(app, &ops, "/api/v1/admin/users?status=suspended").await;
    assert_eq!(items(&suspended).len(), 1, "{suspended}");
    let (status, _) = set_status(&stack, &ops, user_id, "active").await;
    assert_eq!(status, 200);
    access_token(app, "user@example.com").await;

    // Deletion cascades as the account's own does; one's own is refused here.
    let (status, _) = send_as(
        app,
        &root,
        Method::DELETE,
        &format!("/api/v1/admin/users/{root_id}"),
        json!(null),
    )
    .await;
    assert_eq!(status, 409);
    let (status, body) = send_as(
        app,
        &ops,
        Method::DELETE,
        &format!("/api/v1/admin/users/{other_id}"),
        json!(null),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["deleted"], true);
    let (status, _) = get_as(app, &ops, &format!("/api/v1/admin/users/{other_id}")).await;
    assert_eq!(status, 404);

    // The audit log: by actor, by action (exact or a prefix), by target
    // type, by time; newest first.
    let (status, by_ops) = get_as(
        app,
        &root,
        &format!("/api/v1/admin/audit-logs?userId={ops_id}&action=admin.&limit=100"),
    )
    .await;
    assert_eq!(status, 200, "{by_ops}");
    let actions: Vec<&str> = items(&by_ops)
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "admin.user_delete",
            "admin.user_status",
            "admin.user_status"
        ],
        "{by_ops}"
    );
    assert!(
        items(&by_ops)
            .iter()
            .all(|a| a["actorUserId"] == ops_id.to_string())
    );
    let (_, roles) = get_as(
        app,
        &root,
        "/api/v1/admin/audit-logs?action=admin.user_role&targetType=user",
    )
    .await;
    assert_eq!(items(&roles).len(), 2, "{roles}");
    assert_eq!(items(&roles)[0]["details"]["to"], "user", "newest first");
    let (_, none) = get_as(
        app,
        &root,
        "/api/v1/admin/audit-logs?to=2000-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(items(&none).len(), 0, "{none}");
    let (_, recent) = get_as(
        app,
        &root,
        "/api/v1/admin/audit-logs?from=2000-01-01T00:00:00Z&targetType=user&limit=1",
    )
    .await;
    // Two role changes, two status changes, one deletion.
    assert_eq!(recent["data"]["total"], 5, "{recent}");
    assert_eq!(items(&recent).len(), 1);
    let (status, body) = get_as(app, &root, "/api/v1/admin/audit-logs?action=DROP%20TABLE").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broadcast_reaches_everyone_and_contact_messages_are_kept() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    let (_, ops) = signed_in_with_role(&stack, "ops@example.com", "admin").await;
    let (_, user) = signed_in_with_role(&stack, "user@example.com", "user").await;

    let mut socket = connect_ws(&app.base, &user).await;
    let (status, body) = send_as(
        app,
        &user,
        Method::POST,
        "/api/v1/admin/broadcast",
        json!({ "message": "hi" }),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = send_as(
        app,
        &ops,
        Method::POST,
        "/api/v1/admin/broadcast",
        json!({ "message": "  " }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let message = "Maintenance window tonight at 22:00 UTC";
    let (status, body) = send_as(
        app,
        &ops,
        Method::POST,
        "/api/v1/admin/broadcast",
        json!({ "message": message }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["recipients"], 2);
    let event = next_json(&mut socket, Duration::from_secs(5)).await;
    assert_eq!(event["type"], "announcement", "{event}");
    assert_eq!(event["data"]["message"], message);
    let (_, notes) = get_as(app, &user, "/api/v1/notifications").await;
    let announcement = items(&notes)
        .iter()
        .find(|n| n["kind"] == "announcement")
        .unwrap_or_else(|| panic!("no announcement in {notes}"));
    assert_eq!(announcement["body"], message);
    let (_, audit) = get_as(app, &ops, "/api/v1/admin/audit-logs?action=admin.broadcast").await;
    assert_eq!(items(&audit)[0]["details"]["recipients"], 2, "{audit}");

    // The contact form's messages: listed, filtered, marked.
    let (status, body) = post(
        app,
        "/api/v1/contact",
        json!({ "name": "Ann", "email": "ann@example.org", "subject": "Pricing", "message": "Hello" }),
    )
    .await;
    assert!(
        status == 200 || status == 201 || status == 202,
        "{status} {body}"
    );
    let (status, listed) = get_as(app, &ops, "/api/v1/admin/contact?status=new").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(items(&listed).len(), 1, "{listed}");
    let id = items(&listed)[0]["id"].as_str().unwrap().to_owned();
    let (status, marked) = send_as(
        app,
        &ops,
        Method::PUT,
        &format!("/api/v1/admin/contact/{id}"),
        json!({ "status": "replied" }),
    )
    .await;
    assert_eq!(status, 200, "{marked}");
    assert_eq!(marked["data"]["status"], "replied");
    let (_, fresh) = get_as(app, &ops, "/api/v1/admin/contact?status=new").await;
    assert_eq!(items(&fresh).len(), 0, "{fresh}");
    let (status, body) = send_as(
        app,
        &ops,
        Method::PUT,
        &format!("/api/v1/admin/contact/{id}"),
        json!({ "status": "spam" }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = send_as(
        app,
        &ops,
        Method::PUT,
        &format!("/api/v1/admin/contact/{}", Uuid::new_v4()),
        json!({ "status": "read" }),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn in_maintenance_writes_answer_503_and_reads_still_work() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    let (_, user) = signed_in_with_role(&stack, "user@example.com", "user").await;
    let redis = berth_jobs::redis_conn::connect(&stack.redis.url())
        .await
        .unwrap();
    // What the restore job sets, through the same module.
    let maintenance = berth_jobs::maintenance_mode::Maintenance {
        reason: "Berth is restoring a backup of its database".into(),
        job_id: "test-restore".into(),
        since: chrono::Utc::now(),
    };
    berth_jobs::maintenance_mode::enter(&redis, &maintenance, Duration::from_secs(60))
        .await
        .unwrap();
    let res = reqwest::Client::new()
        .post(app.url("/api/v1/projects"))
        .bearer_auth(&user)
        .json(&json!({ "name": "during" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("retry-after").is_some());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restoring a backup"),
        "{body}"
    );
    let (status, _) = get_as(app, &user, "/api/v1/projects").await;
    assert_eq!(status, 200, "reads keep working");
    berth_jobs::maintenance_mode::leave(&redis, "another-job")
        .await
        .unwrap();
    let (status, _) = send_as(
        app,
        &user,
        Method::POST,
        "/api/v1/projects",
        json!({ "name": "still" }),
    )
    .await;
    assert_eq!(status, 503, "only the job that set it ends it");
    berth_jobs::maintenance_mode::leave(&redis, "test-restore")
        .await
        .unwrap();
    let (status, body) = send_as(
        app,
        &user,
        Method::POST,
        "/api/v1/projects",
        json!({ "name": "after" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}
