//! The creator's protections, ownership transfer, and a removed member cut off.

use std::time::Duration;

use berth_e2e::accounts::{Stack, get_as, send_as};
use berth_e2e::{connect_ws, next_json, subscribe};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{accept_invitation, invite, user, validated_server};

#[tokio::test]
async fn the_creator_stays_and_ownership_moves_only_by_transfer() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    let (creator_id, creator) = user(&stack, "creator@example.com").await;
    let (admin_id, admin) = user(&stack, "second@example.com").await;
    let (_, project) = send_as(
        app,
        &creator,
        Method::POST,
        "/api/v1/projects",
        json!({ "name": "Ops" }),
    )
    .await;
    let project = project["data"]["id"].as_str().unwrap().to_owned();
    invite(app, &creator, &project, "second@example.com", "ADMIN").await;
    accept_invitation(app, &admin).await;
    let member = |id: Uuid| format!("/api/v1/projects/{project}/members/{id}");

    // An ADMIN cannot demote or remove the creator, nor take OWNER by a role change.
    let (status, body) = send_as(
        app,
        &admin,
        Method::PATCH,
        &member(creator_id),
        json!({ "role": "VIEWER" }),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = send_as(app, &admin, Method::DELETE, &member(creator_id), json!({})).await;
    assert_eq!(status, 409);
    let (status, _) = send_as(
        app,
        &admin,
        Method::PATCH,
        &member(admin_id),
        json!({ "role": "OWNER" }),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = send_as(
        app,
        &admin,
        Method::POST,
        &format!("/api/v1/projects/{project}/transfer"),
        json!({ "userId": admin_id }),
    )
    .await;
    assert_eq!(status, 403);

    // The creator hands it over: one OWNER, the creator now ADMIN and still protected.
    let (status, body) = send_as(
        app,
        &creator,
        Method::POST,
        &format!("/api/v1/projects/{project}/transfer"),
        json!({ "userId": admin_id }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["role"], "ADMIN");
    assert_eq!(body["data"]["ownerUserId"], admin_id.to_string());
    let (status, _) = send_as(
        app,
        &admin,
        Method::PATCH,
        &member(creator_id),
        json!({ "role": "DEVELOPER" }),
    )
    .await;
    assert_eq!(status, 409);
    let (status, _) = send_as(app, &admin, Method::DELETE, &member(admin_id), json!({})).await;
    assert_eq!(status, 409, "the OWNER cannot leave without handing over");
    let (status, _) = send_as(
        app,
        &creator,
        Method::DELETE,
        &format!("/api/v1/projects/{project}"),
        json!({}),
    )
    .await;
    assert_eq!(status, 403, "only the OWNER deletes");
    let (_, notes) = get_as(app, &admin, "/api/v1/notifications").await;
    assert!(
        notes["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["title"] == "You own the project Ops"),
        "{notes}"
    );
}

#[tokio::test]
async fn a_removed_member_stops_receiving_the_projects_events_at_once_and_never_sees_server_secrets()
 {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    let (owner_id, owner) = user(&stack, "boss@example.com").await;
    let (member_id, member) = user(&stack, "member@example.com").await;
    let (_, stayer) = user(&stack, "stayer@example.com").await;
    let (_, project) = send_as(
        app,
        &owner,
        Method::POST,
        "/api/v1/projects",
        json!({ "name": "Live" }),
    )
    .await;
    let project = project["data"]["id"].as_str().unwrap().to_owned();
    invite(app, &owner, &project, "member@example.com", "DEVELOPER").await;
    accept_invitation(app, &member).await;
    invite(app, &owner, &project, "stayer@example.com", "VIEWER").await;
    accept_invitation(app, &stayer).await;
    let server = validated_server(&stack, owner_id).await;
    let (status, created) = send_as(
        app,
        &owner,
        Method::POST,
        "/api/v1/deployments",
        json!({ "name": "api", "serverId": server, "projectId": project, "port": 3000,
                "source": { "type": "image", "image": "registry.example.com/live/api:2" } }),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let job = created["data"]["jobId"].as_str().unwrap().to_owned();

    // A member sees the deployment, its server's name and status, never its credentials.
    let deployment = created["data"]["deployment"]["id"].as_str().unwrap();
    let (status, seen) = get_as(app, &member, &format!("/api/v1/deployments/{deployment}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        seen["data"]["server"],
        json!({ "id": server, "name": "prod", "status": "online" })
    );
    let (status, _) = get_as(app, &member, &format!("/api/v1/servers/{server}")).await;
    assert_eq!(status, 404);
    let (_, listed) = get_as(app, &member, "/api/v1/deployments").await;
    assert_eq!(listed["data"]["total"], 1);
    let (_, jobs) = get_as(app, &member, "/api/v1/jobs").await;
    assert!(
        jobs["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == job.as_str()),
        "{jobs}"
    );
    let text = seen.to_string();
    for secret in ["password", "privateKey", "secret", "hostKey"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }

    let mut removed = connect_ws(&app.base, &member).await;
    let mut kept = connect_ws(&app.base, &stayer).await;
    for socket in [&mut removed, &mut kept] {
        assert_eq!(
            subscribe(socket, &format!("project:{project}")).await["type"],
            "subscribed"
        );
        assert_eq!(
            subscribe(socket, &format!("job:{job}")).await["type"],
            "subscribed"
        );
    }
    let event = |n: i32| {
        berth_jobs::events::job_event(
            &job,
            "deployment.deploy",
            "running",
            n,
            None,
            Default::default(),
        )
    };
    let topic = berth_jobs::events::project_topic(project.parse().unwrap());
    berth_jobs::events::publish_topic(&app.state.redis, &topic, &event(1)).await;
    for socket in [&mut removed, &mut kept] {
        assert_eq!(
            next_json(socket, Duration::from_secs(5)).await["data"]["attempts"],
            1
        );
    }

    let (status, body) = send_as(
        app,
        &owner,
        Method::DELETE,
        &format!("/api/v1/projects/{project}/members/{member_id}"),
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The next event, published right after, reaches only the member who stayed.
    berth_jobs::events::publish_topic(&app.state.redis, &topic, &event(2)).await;
    berth_jobs::events::publish_topic(
        &app.state.redis,
        &berth_jobs::events::job_topic(&job),
        &event(3),
    )
    .await;
    assert_eq!(
        next_json(&mut kept, Duration::from_secs(5)).await["data"]["attempts"],
        2
    );
    assert_eq!(
        next_json(&mut kept, Duration::from_secs(5)).await["data"]["attempts"],
        3
    );
    let mut after_removal = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(800), removed.next()).await
    {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            after_removal.push(serde_json::from_str::<Value>(text.as_str()).unwrap());
        }
    }
    assert!(
        after_removal.iter().all(|m| m["type"] != "job"),
        "{after_removal:?}"
    );
    let dropped: Vec<&str> = after_removal
        .iter()
        .filter(|m| m["type"] == "unsubscribed")
        .map(|m| m["data"]["topic"].as_str().unwrap())
        .collect();
    assert_eq!(dropped.len(), 2, "{after_removal:?}");
    assert_eq!(
        subscribe(&mut removed, &format!("project:{project}")).await["type"],
        "error"
    );
    let (status, _) = get_as(app, &member, &format!("/api/v1/jobs/{job}")).await;
    assert_eq!(status, 404);
    let (_, notes) = get_as(app, &member, "/api/v1/notifications").await;
    assert!(
        notes["data"]["items"][0]["title"]
            .as_str()
            .unwrap()
            .starts_with("You were removed"),
        "{notes}"
    );
}
