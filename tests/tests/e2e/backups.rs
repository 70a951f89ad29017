//! SPEC §3.9: backups of Berth's own database, proven by a restore into a
//! scratch database, and a restore over the live one that brings the old
//! rows back and leaves Berth serving.

use std::time::{Duration, Instant};

use berth_e2e::accounts::{NewUser, Stack, access_token, create_user, get_as, send_as};
use berth_e2e::{BerthProcess, TestApp, scratch_dir};
use reqwest::Method;
use serde_json::{Value, json};

/// `GET path` until `done` says so (60 s at most).
async fn until(app: &TestApp, token: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get_as(app, token, path).await;
        if status == 200 && done(&body["data"]) {
            return body["data"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{path} never got there: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn project_names(app: &TestApp, token: &str) -> Vec<String> {
    let (status, body) = get_as(app, token, "/api/v1/projects").await;
    assert_eq!(status, 200, "{body}");
    body["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn new_project(app: &TestApp, token: &str, name: &str) {
    let (status, body) = send_as(
        app,
        token,
        Method::POST,
        "/api/v1/projects",
        json!({ "name": name }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_verified_backup_restores_the_old_rows_and_a_damaged_one_is_refused() {
    let dir = scratch_dir("backups").join("backups");
    let dir_text = dir.display().to_string();
    let stack = Stack::start(&[("BERTH_BACKUP_DIR", dir_text.as_str())]).await;
    let _worker = BerthProcess::spawn("berth-worker", &["--queues", "backup,email"], &stack.env);
    let app = &stack.app;
    create_user(
        &stack.db,
        NewUser {
            role: "super_admin",
            ..NewUser::verified("root@example.com")
        },
    )
    .await;
    create_user(
        &stack.db,
        NewUser {
            role: "admin",
            ..NewUser::verified("ops@example.com")
        },
    )
    .await;
    create_user(&stack.db, NewUser::verified("user@example.com")).await;
    let root = access_token(app, "root@example.com").await;
    let ops = access_token(app, "ops@example.com").await;
    let user = access_token(app, "user@example.com").await;
    new_project(app, &root, "kept").await;

    // A user may not; an administrator may back up.
    let (status, _) = send_as(app, &user, Method::POST, "/api/v1/admin/backups", json!({})).await;
    assert_eq!(status, 403);
    let (status, taken) =
        send_as(app, &ops, Method::POST, "/api/v1/admin/backups", json!({})).await;
    assert_eq!(status, 202, "{taken}");
    let id = taken["data"]["backup"]["id"].as_str().unwrap().to_owned();
    let backup = until(app, &ops, &format!("/api/v1/admin/backups/{id}"), |b| {
        assert_ne!(b["status"], "failed", "{b}");
        b["status"] == "verified"
    })
    .await;
    assert_eq!(backup["sha256"].as_str().unwrap().len(), 64);
    assert!(backup["sizeBytes"].as_i64().unwrap() > 0);
    assert_eq!(backup["tableRows"]["projects"], 1, "{backup}");
    let file = dir.join(backup["fileName"].as_str().unwrap());
    assert_eq!(
        std::fs::metadata(&file).unwrap().len() as i64,
        backup["sizeBytes"].as_i64().unwrap()
    );

    // A change made after the backup.
    new_project(app, &root, "made later").await;
    assert_eq!(project_names(app, &root).await.len(), 2);

    // Only a super admin restores, with the backup's id typed again.
    let restore = format!("/api/v1/admin/backups/{id}/restore");
    let (status, _) = send_as(app, &ops, Method::POST, &restore, json!({ "confirm": id })).await;
    assert_eq!(status, 403);
    let (status, body) = send_as(
        app,
        &root,
        Method::POST,
        &restore,
        json!({ "confirm": "yes" }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "confirm");
    let (status, accepted) =
        send_as(app, &root, Method::POST, &restore, json!({ "confirm": id })).await;
    assert_eq!(status, 202, "{accepted}");
    let job = accepted["data"]["jobId"].as_str().unwrap().to_owned();
    let safety = accepted["data"]["safetyBackupId"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = until(app, &root, &format!("/api/v1/jobs/{job}"), |j| {
        j["state"] != "queued" && j["state"] != "running"
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");

    // The change is gone, the old rows are back, and Berth serves: reads,
    // writes (the project role type is the restored schema's), the record.
    assert_eq!(project_names(app, &root).await, vec!["kept".to_owned()]);
    new_project(app, &root, "after the restore").await;
    let (_, list) = get_as(app, &root, "/api/v1/admin/backups").await;
    let listed: Vec<&str> = list["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&id.as_str()) && listed.contains(&safety.as_str()),
        "{list}"
    );
    let safety = until(
        app,
        &root,
        &format!("/api/v1/admin/backups/{safety}"),
        |b| b["status"] == "verified",
    )
    .await;
    assert_eq!(safety["trigger"], "pre_restore");
    assert_eq!(
        safety["tableRows"]["projects"], 2,
        "the safety backup holds the later change"
    );
    let (_, audit) = get_as(
        app,
        &root,
        "/api/v1/admin/audit-logs?action=backup.&limit=100",
    )
    .await;
    let actions: Vec<&str> = audit["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for action in ["backup.restore", "backup.restored"] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }

    // A damaged file is refused before anything is touched.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let (status, accepted) =
        send_as(app, &root, Method::POST, &restore, json!({ "confirm": id })).await;
    assert_eq!(status, 202, "{accepted}");
    let job = accepted["data"]["jobId"].as_str().unwrap().to_owned();
    let refused = until(app, &root, &format!("/api/v1/jobs/{job}"), |j| {
        j["state"] != "queued" && j["state"] != "running"
    })
    .await;
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("nothing touched"),
        "{refused}"
    );
    assert_eq!(project_names(app, &root).await.len(), 2);
}
