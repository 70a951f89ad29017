//! SPEC §3.8: projects, roles, invitations, and the one access layer. The
//! matrix is derived from one table of every route that takes a resource
//! id; a documented route missing from it fails the test.

mod invites;
mod matrix;
mod membership;
mod table;
mod world;

use berth_e2e::TestApp;
use berth_e2e::accounts::{NewUser, Stack, access_token, create_user, get_as, send_as};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

async fn user(stack: &Stack, email: &'static str) -> (Uuid, String) {
    let id = create_user(&stack.db, NewUser::verified(email)).await;
    (id, access_token(&stack.app, email).await)
}

async fn api_token(app: &TestApp, session: &str, scopes: Value) -> (String, String) {
    let (status, body) = send_as(
        app,
        session,
        Method::POST,
        "/api/v1/tokens",
        json!({ "name": format!("t-{}", Uuid::new_v4().simple()), "scopes": scopes }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    (
        body["data"]["token"].as_str().unwrap().to_owned(),
        body["data"]["id"].as_str().unwrap().to_owned(),
    )
}

const ALL_SCOPES: [&str; 10] = [
    "servers:read",
    "servers:write",
    "deployments:read",
    "deployments:write",
    "domains:read",
    "domains:write",
    "notifications:read",
    "notifications:write",
    "projects:read",
    "projects:write",
];

/// `email` (signed in with `token`) accepts the invitation to it.
async fn accept_invitation(app: &TestApp, token: &str) -> Value {
    let (status, list) = get_as(app, token, "/api/v1/invitations").await;
    assert_eq!(status, 200, "{list}");
    let id = list["data"][0]["id"]
        .as_str()
        .expect("an invitation")
        .to_owned();
    let (status, answer) = send_as(
        app,
        token,
        Method::POST,
        &format!("/api/v1/invitations/{id}/accept"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer["data"].clone()
}

async fn invite(app: &TestApp, token: &str, project: &str, email: &str, role: &str) -> Value {
    let (status, body) = send_as(
        app,
        token,
        Method::POST,
        &format!("/api/v1/projects/{project}/invites"),
        json!({ "email": email, "role": role }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["data"].clone()
}

/// A server row as a validation would leave it: no job runs against it here.
async fn validated_server(stack: &Stack, owner: Uuid) -> String {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO servers (id, owner_user_id, name, host, port, username, auth_type, secret, secret_key_id, \
         host_key, status) VALUES ($1, $2, 'prod', '203.0.113.7', 22, 'deploy', 'password', '', '', \
         'SHA256:matrix', 'online')",
    )
    .bind(id)
    .bind(owner)
    .execute(&stack.db.pool)
    .await
    .unwrap();
    id.to_string()
}
