//! The users and resources the matrix calls on.

use berth_e2e::TestApp;
use berth_e2e::accounts::{Stack, access_token, get_as, send_as};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use super::table::Who;
use super::{ALL_SCOPES, accept_invitation, api_token, invite, user, validated_server};

/// The users and resources the matrix calls on.
pub(super) struct World {
    pub(super) stack: Stack,
    tokens: Vec<(Who, String)>,
    user_ids: Vec<(&'static str, Uuid)>,
    project: String,
    server: String,
    deployment: String,
    domain: String,
    job: String,
    notification: String,
    upload: String,
    session: String,
    spare_token: String,
    spare_member: String,
    invite_to_revoke: String,
    invitation_to_nobody: String,
}

impl World {
    pub(super) fn token(&self, who: Who) -> &str {
        &self.tokens.iter().find(|(w, _)| *w == who).unwrap().1
    }

    fn user(&self, name: &str) -> Uuid {
        self.user_ids.iter().find(|(n, _)| *n == name).unwrap().1
    }

    pub(super) fn app(&self) -> &TestApp {
        &self.stack.app
    }

    /// `template` with this world's ids.
    pub(super) fn path(&self, template: &str) -> String {
        let id = if template.starts_with("/projects/") {
            &self.project
        } else if template.starts_with("/deployments/") {
            &self.deployment
        } else if template.starts_with("/jobs/") {
            &self.job
        } else if template.starts_with("/domains/") {
            &self.domain
        } else if template.starts_with("/servers/") || template.starts_with("/files/") {
            &self.server
        } else if template.starts_with("/notifications/") {
            &self.notification
        } else if template.starts_with("/uploads/") {
            &self.upload
        } else if template.starts_with("/sessions/") {
            &self.session
        } else if template.starts_with("/tokens/") {
            &self.spare_token
        } else if template.starts_with("/invitations/") {
            &self.invitation_to_nobody
        } else if template.starts_with("/admin/") {
            // Refused before any lookup: whose id it is does not matter.
            &self.deployment
        } else {
            panic!("no id for {template}")
        };
        format!(
            "/api/v1{}",
            template
                .replace("{id}", id)
                .replace("{userId}", &self.spare_member)
                .replace("{inviteId}", &self.invite_to_revoke)
                .replace("{number}", "1")
        )
    }

    /// A body each route accepts from an allowed caller (or refuses only
    /// after authorization).
    pub(super) fn body(&self, method: &Method, template: &str) -> Value {
        match (method.as_str(), template) {
            ("PATCH", "/projects/{id}") => json!({ "description": "the shop" }),
            ("POST", "/projects/{id}/invites") => {
                json!({ "email": "later@example.com", "role": "VIEWER" })
            }
            ("PATCH", "/projects/{id}/members/{userId}") => json!({ "role": "VIEWER" }),
            ("POST", "/projects/{id}/transfer") => json!({ "userId": self.user("owner") }),
            ("PUT", "/deployments/{id}/env") => json!({ "set": { "GREETING": "hello" } }),
            ("PUT", "/deployments/{id}/project") => json!({ "projectId": self.project }),
            ("PATCH", "/servers/{id}") => json!({ "name": "renamed" }),
            ("POST", "/servers/{id}/host-key") => json!({ "fingerprint": "SHA256:matrix" }),
            ("POST", "/files/{id}/create") => {
                json!({ "path": "/nonexistent/matrix", "type": "file" })
            }
            ("PUT", "/files/{id}/save") => json!({ "path": "/nonexistent/matrix", "content": "" }),
            ("PUT", "/files/{id}/rename") => {
                json!({ "oldPath": "/nonexistent/a", "newPath": "/nonexistent/b" })
            }
            ("DELETE", "/files/{id}/delete") => json!({ "paths": ["/nonexistent/matrix"] }),
            ("PUT", "/files/{id}/copy") => {
                json!({ "srcPath": "/nonexistent/a", "dstPath": "/nonexistent/b" })
            }
            ("POST", "/files/{id}/compress") => {
                json!({ "parentDir": "/nonexistent", "paths": ["a"], "archiveName": "a.zip" })
            }
            ("POST", "/files/{id}/decompress") => {
                json!({ "zipFilePath": "/nonexistent/a.zip", "destDir": "/nonexistent" })
            }
            ("PUT", "/admin/users/{id}/role") => json!({ "role": "user" }),
            ("PUT", "/admin/users/{id}/status") => json!({ "status": "active" }),
            ("PUT", "/admin/contact/{id}") => json!({ "status": "read" }),
            ("POST", "/admin/backups/{id}/restore") => json!({ "confirm": self.deployment }),
            _ => json!({}),
        }
    }
}

pub(super) async fn world() -> World {
    let stack = Stack::with_mail(&[]).await;
    let (owner_id, owner) = user(&stack, "owner@example.com").await;
    let (admin_id, admin) = user(&stack, "admin@example.com").await;
    let (developer_id, developer) = user(&stack, "dev@example.com").await;
    let (viewer_id, viewer) = user(&stack, "viewer@example.com").await;
    let (spare_id, spare) = user(&stack, "spare@example.com").await;
    let (_, outsider) = user(&stack, "outsider@example.com").await;
    let app = &stack.app;

    let (status, project) = send_as(
        app,
        &owner,
        Method::POST,
        "/api/v1/projects",
        json!({ "name": "Shop" }),
    )
    .await;
    assert_eq!(status, 201, "{project}");
    assert_eq!(project["data"]["role"], "OWNER");
    let project = project["data"]["id"].as_str().unwrap().to_owned();
    for (token, email, role) in [
        (&admin, "admin@example.com", "ADMIN"),
        (&developer, "dev@example.com", "DEVELOPER"),
        (&viewer, "viewer@example.com", "VIEWER"),
        (&spare, "spare@example.com", "VIEWER"),
    ] {
        invite(app, &owner, &project, email, role).await;
        assert_eq!(accept_invitation(app, token).await["role"], role);
    }
    let invite_to_revoke =
        invite(app, &owner, &project, "nobody@example.com", "VIEWER").await["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let invitation_to_nobody = invite(app, &owner, &project, "nobody-else@example.com", "VIEWER")
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let server = validated_server(&stack, owner_id).await;
    let (status, created) = send_as(
        app,
        &owner,
        Method::POST,
        "/api/v1/deployments",
        json!({ "name": "web", "serverId": server, "projectId": project, "port": 8080,
                "source": { "type": "image", "image": "registry.example.com/shop/web:1" } }),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let deployment = created["data"]["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = created["data"]["jobId"].as_str().unwrap().to_owned();
    let (status, domain) = send_as(
        app,
        &owner,
        Method::POST,
        "/api/v1/domains",
        json!({ "deploymentId": deployment, "domainName": "shop.example.com" }),
    )
    .await;
    assert_eq!(status, 202, "{domain}");
    let domain = domain["data"]["domain"]["id"].as_str().unwrap().to_owned();

    let (_, notifications) = get_as(app, &developer, "/api/v1/notifications").await;
    let notification = notifications["data"]["items"][0]["id"]
        .as_str()
        .expect("the invite's notification")
        .to_owned();
    let upload = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO uploads (id, user_id, content_type, original_name, size, width, height, sha256, data) \
         VALUES ($1, $2, 'image/png', 'a.png', 1, 1, 1, 'x', '\\x00')",
    )
    .bind(upload)
    .bind(developer_id)
    .execute(&stack.db.pool)
    .await
    .unwrap();
    // A second session of the DEVELOPER, revoked by the matrix (not the one it calls with).
    let second = access_token(app, "dev@example.com").await;
    let (_, sessions) = get_as(app, &second, "/api/v1/sessions").await;
    let session = sessions["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let all: Value = ALL_SCOPES.into();
    let (with_scope, _) = api_token(app, &developer, all.clone()).await;
    let (without_scope, _) = api_token(app, &developer, json!(["servers:read"])).await;
    let (outsider_token, _) = api_token(app, &outsider, all).await;
    let (_, spare_token) = api_token(app, &developer, json!(["servers:read"])).await;
    World {
        tokens: vec![
            (Who::Owner, owner),
            (Who::Admin, admin),
            (Who::Developer, developer),
            (Who::Viewer, viewer),
            (Who::Outsider, outsider),
            (Who::TokenWithScope, with_scope),
            (Who::TokenWithoutScope, without_scope),
            (Who::OutsiderToken, outsider_token),
        ],
        user_ids: vec![
            ("owner", owner_id),
            ("admin", admin_id),
            ("developer", developer_id),
            ("viewer", viewer_id),
        ],
        project,
        server,
        deployment,
        domain,
        job,
        notification,
        upload: upload.to_string(),
        session,
        spare_token,
        spare_member: spare_id.to_string(),
        invite_to_revoke,
        invitation_to_nobody,
        stack,
    }
}
