//! An invitation by real mail, to an address that has no account yet.

use berth_e2e::accounts::{Stack, get_as, send_as};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use super::{invite, user};

#[tokio::test]
async fn an_invite_by_mail_is_accepted_after_sign_up_and_works_once() {
    let stack = Stack::with_mail(&[]).await;
    let app = &stack.app;
    let (_, owner) = user(&stack, "lead@example.com").await;
    let (_, project) = send_as(
        app,
        &owner,
        Method::POST,
        "/api/v1/projects",
        json!({ "name": "Docs" }),
    )
    .await;
    let project = project["data"]["id"].as_str().unwrap().to_owned();

    // Bad input is refused with the field named, and nothing is stored.
    let (status, body) = send_as(
        app,
        &owner,
        Method::POST,
        &format!("/api/v1/projects/{project}/invites"),
        json!({ "email": "not-an-address", "role": "OWNER" }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let fields = berth_e2e::accounts::field_errors(&body);
    assert_eq!(fields, ["email", "role"]);

    // An address with no account yet; invited twice, the second replaces the first.
    invite(app, &owner, &project, "newcomer@example.com", "VIEWER").await;
    let second = invite(app, &owner, &project, "Newcomer@Example.com", "DEVELOPER").await;
    assert_eq!(second["email"], "newcomer@example.com");
    let (_, members) = get_as(app, &owner, &format!("/api/v1/projects/{project}/members")).await;
    let invites = members["data"]["invites"].as_array().unwrap();
    assert_eq!(invites.len(), 1, "{members}");
    assert_eq!(invites[0]["role"], "DEVELOPER");
    stack
        .smtp()
        .wait_for("newcomer@example.com", "invited you to Docs", 1)
        .await;
    let id = second["id"].as_str().unwrap();
    let link = format!("/invitations/{id}?token=");
    let mail = stack
        .smtp()
        .messages()
        .into_iter()
        .map(|m| {
            m.replace("=\r\n", "")
                .replace("=\n", "")
                .replace("=3D", "=")
        })
        .find(|m| m.contains(&link))
        .expect("the second invite's mail");
    let token = mail
        .split(&link)
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_')
        .next()
        .unwrap()
        .to_owned();

    // Signs up later with that address, verifies it by the mailed code.
    let (status, body) = berth_e2e::accounts::post(
        app,
        "/api/v1/auth/register",
        json!({ "email": "newcomer@example.com", "password": berth_e2e::accounts::PASSWORD,
                "name": "Newcomer", "termsAccepted": true }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let code = stack
        .mailed_code("newcomer@example.com", "Verify your Berth account", 0)
        .await;
    let (status, verified) = berth_e2e::accounts::post(
        app,
        "/api/v1/auth/verify-email",
        json!({ "email": "newcomer@example.com", "otp": code }),
    )
    .await;
    assert_eq!(status, 200, "{verified}");
    let newcomer = verified["data"]["accessToken"].as_str().unwrap().to_owned();
    let (_, list) = get_as(app, &newcomer, "/api/v1/invitations").await;
    assert_eq!(list["data"][0]["projectName"], "Docs");
    let (status, body) = send_as(
        app,
        &newcomer,
        Method::POST,
        &format!("/api/v1/invitations/{id}/accept"),
        json!({ "token": "wrong" }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = send_as(
        app,
        &newcomer,
        Method::POST,
        &format!("/api/v1/invitations/{id}/accept"),
        json!({ "token": token }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["role"], "DEVELOPER");
    // Single use.
    let (status, _) = send_as(
        app,
        &newcomer,
        Method::POST,
        &format!("/api/v1/invitations/{id}/accept"),
        json!({ "token": token }),
    )
    .await;
    assert_eq!(status, 404);
    let (_, projects) = get_as(app, &newcomer, "/api/v1/projects").await;
    assert_eq!(projects["data"]["items"][0]["role"], "DEVELOPER");

    // A declined invite is gone; an expired one cannot be accepted.
    let (_, other) = user(&stack, "other@example.com").await;
    let declined = invite(app, &owner, &project, "other@example.com", "VIEWER").await;
    let (status, _) = send_as(
        app,
        &other,
        Method::POST,
        &format!(
            "/api/v1/invitations/{}/decline",
            declined["id"].as_str().unwrap()
        ),
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, list) = get_as(app, &other, "/api/v1/invitations").await;
    assert_eq!(list["data"], json!([]));
    let expired = invite(app, &owner, &project, "other@example.com", "VIEWER").await;
    sqlx::query(
        "UPDATE project_invites SET expires_at = now() - interval '1 second' WHERE id = $1",
    )
    .bind(Uuid::parse_str(expired["id"].as_str().unwrap()).unwrap())
    .execute(&stack.db.pool)
    .await
    .unwrap();
    let (status, body) = send_as(
        app,
        &other,
        Method::POST,
        &format!(
            "/api/v1/invitations/{}/accept",
            expired["id"].as_str().unwrap()
        ),
        json!({}),
    )
    .await;
    assert_eq!(status, 409, "{body}");

    // The invited user with an account got an in-app notification too.
    let (_, notes) = get_as(app, &other, "/api/v1/notifications").await;
    assert!(
        notes["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["kind"] == "project"),
        "{notes}"
    );
}
