//! SPEC §3.3 probes and §3.6 alerts, notifications and the realtime WebSocket,
//! against real sshd servers, a real worker and a real SMTP listener.

use std::time::Duration;

use berth_e2e::accounts::{NewUser, access_token, create_user, get_as, send_as};
use berth_e2e::fleet::Fleet;
use berth_e2e::{BerthProcess, eventually};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn notifications(fleet: &Fleet) -> Vec<Value> {
    let (status, body) = get_as(
        &fleet.stack.app,
        &fleet.token,
        "/api/v1/notifications?limit=100",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"]["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_store_plausible_values_and_alerts_fire_once_and_clear_once() {
    let fleet = Fleet::start("probe,email", &[]).await;
    let app = &fleet.stack.app;

    // Defaults until changed; bad thresholds refused.
    let (_, rules) = get_as(app, &fleet.token, "/api/v1/alerts/rules").await;
    assert_eq!(rules["data"]["cpuThreshold"], 90.0);
    assert_eq!(rules["data"]["emailAlerts"], true);
    let (status, _) = send_as(
        app,
        &fleet.token,
        Method::PUT,
        "/api/v1/alerts/rules",
        json!({"diskThreshold": 0}),
    )
    .await;
    assert_eq!(status, 400);
    // Any disk is more than 1 % full: the disk alert must fire; CPU, memory
    // and swap are kept quiet (a busy test machine could raise them).
    // Set before onboarding: the validation takes the first sample.
    fleet
        .set_alert_rules(
            json!({"diskThreshold": 1, "cpuThreshold": 100, "ramThreshold": 100, "swapThreshold": 100}),
        )
        .await;
    let id = fleet.onboard(0).await;

    let job = fleet.probe(&id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let (status, health) = get_as(app, &fleet.token, &format!("/api/v1/servers/{id}/health")).await;
    assert_eq!(status, 200, "{health}");
    let latest = &health["data"]["latest"];
    for field in ["cpuUsage", "memoryUsage", "diskUsage", "swapUsage"] {
        let v = latest[field].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&v), "{field} = {v}");
    }
    assert!(latest["memoryUsage"].as_f64().unwrap() > 0.0);
    assert!(latest["diskUsage"].as_f64().unwrap() > 0.0);
    assert!(latest["uptimeSecs"].as_i64().unwrap() > 0);
    assert!(latest["load1"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        latest["dockerRunning"], true,
        "podman answers docker info: {latest}"
    );
    assert!(latest["activeContainers"].as_i64().unwrap() >= 0);
    assert_eq!(health["data"]["status"], "online");

    let alerts = notifications(&fleet).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["kind"], "alert_raised");
    assert_eq!(alerts[0]["data"]["metric"], "disk");
    assert_eq!(alerts[0]["data"]["serverId"], id.as_str());

    // Still breached: no second notification.
    fleet.probe(&id).await;
    assert_eq!(notifications(&fleet).await.len(), 1);
    // Cleared once.
    fleet.set_alert_rules(json!({"diskThreshold": 100})).await;
    fleet.probe(&id).await;
    fleet.probe(&id).await;
    let alerts = notifications(&fleet).await;
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(alerts[0]["kind"], "alert_cleared");

    // Mailed too (emailAlerts), through the email queue.
    let smtp = fleet.stack.smtp();
    smtp.wait_for("ops@example.test", "disk at", 0).await;
    smtp.wait_for("ops@example.test", "disk back to", 0).await;

    // The series: five samples in the last hour (validation's and four
    // probes'); a long range is bucketed.
    let (status, series) =
        get_as(app, &fleet.token, &format!("/api/v1/servers/{id}/metrics")).await;
    assert_eq!(status, 200, "{series}");
    assert_eq!(series["data"]["points"].as_array().unwrap().len(), 5);
    assert_eq!(series["data"]["bucketSeconds"], 0);
    let from = (chrono::Utc::now() - chrono::Duration::days(30)).to_rfc3339();
    let (_, long) = get_as(
        app,
        &fleet.token,
        &format!("/api/v1/servers/{id}/metrics?from={}", urlencode(&from)),
    )
    .await;
    assert!(
        long["data"]["bucketSeconds"].as_i64().unwrap() >= 3600,
        "{long}"
    );
    assert_eq!(long["data"]["points"].as_array().unwrap().len(), 1);
    let (status, _) = get_as(
        app,
        &fleet.token,
        &format!(
            "/api/v1/servers/{id}/metrics?from={}",
            urlencode("2001-01-01T00:00:00Z")
        ),
    )
    .await;
    assert_eq!(status, 400, "more than 31 days");
}

fn urlencode(value: &str) -> String {
    value.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_server_goes_offline_once_and_comes_back_once() {
    let mut fleet = Fleet::start("probe", &[]).await;
    fleet.quiet_alerts().await;
    let id = fleet.onboard(0).await;
    fleet.probe(&id).await;
    assert!(notifications(&fleet).await.is_empty());

    fleet.sshd.stop().await;
    let job = fleet.probe(&id).await;
    assert_eq!(job["state"], "failed");
    assert!(
        job["error"].as_str().unwrap().starts_with("UNREACHABLE"),
        "{job}"
    );
    let server = fleet.server(&id).await;
    assert_eq!(server["status"], "offline");
    assert!(
        server["statusReason"]
            .as_str()
            .unwrap()
            .contains("UNREACHABLE")
    );
    fleet.probe(&id).await;
    let alerts = notifications(&fleet).await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["kind"], "server_offline");

    fleet.sshd.resume().await;
    fleet.probe(&id).await;
    let alerts = notifications(&fleet).await;
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0]["kind"], "server_online");
    assert_eq!(fleet.server(&id).await["status"], "online");

    // Preferences: no recovery notices, then no status notices at all.
    let set_choices = |choices: Value| {
        send_as(
            &fleet.stack.app,
            &fleet.token,
            Method::PUT,
            "/api/v1/profile/preferences",
            json!({ "notifications": choices }),
        )
    };
    let (status, body) = set_choices(json!({"recoveries": false})).await;
    assert_eq!(status, 200, "{body}");
    fleet.sshd.stop().await;
    fleet.probe(&id).await;
    fleet.sshd.resume().await;
    fleet.probe(&id).await;
    let kinds: Vec<Value> = notifications(&fleet)
        .await
        .iter()
        .map(|n| n["kind"].clone())
        .collect();
    assert_eq!(kinds, ["server_offline", "server_online", "server_offline"]);
    let (status, _) = set_choices(json!({"serverStatus": false})).await;
    assert_eq!(status, 200);
    fleet.sshd.stop().await;
    fleet.probe(&id).await;
    fleet.sshd.resume().await;
    fleet.probe(&id).await;
    assert_eq!(notifications(&fleet).await.len(), 3);
    assert_eq!(fleet.server(&id).await["status"], "online");
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_are_listed_read_and_deleted_by_their_owner_only() {
    let mut fleet = Fleet::start("probe", &[]).await;
    fleet.quiet_alerts().await;
    let app = &fleet.stack.app;
    let id = fleet.onboard(0).await;
    fleet.probe(&id).await;
    fleet.sshd.stop().await;
    fleet.probe(&id).await;
    fleet.sshd.resume().await;
    fleet.probe(&id).await;
    let all = notifications(&fleet).await;
    assert_eq!(all.len(), 2);
    let first = all[0]["id"].as_str().unwrap().to_owned();

    create_user(&fleet.stack.db, NewUser::verified("eve@example.test")).await;
    let eve = access_token(app, "eve@example.test").await;
    assert_eq!(
        send_as(
            app,
            &eve,
            Method::PATCH,
            &format!("/api/v1/notifications/{first}/read"),
            json!(null)
        )
        .await
        .0,
        404
    );
    assert_eq!(
        send_as(
            app,
            &eve,
            Method::DELETE,
            &format!("/api/v1/notifications/{first}"),
            json!(null)
        )
        .await
        .0,
        404
    );
    let (_, theirs) = get_as(app, &eve, "/api/v1/notifications").await;
    assert_eq!(theirs["data"]["total"], 0);

    let (status, read) = send_as(
        app,
        &fleet.token,
        Method::PATCH,
        &format!("/api/v1/notifications/{first}/read"),
        json!(null),
    )
    .await;
    assert_eq!(status, 200, "{read}");
    assert!(read["data"]["readAt"].is_string());
    let (_, unread) = get_as(app, &fleet.token, "/api/v1/notifications?unreadOnly=true").await;
    assert_eq!(unread["data"]["total"], 1);
    let (_, all_read) = send_as(
        app,
        &fleet.token,
        Method::POST,
        "/api/v1/notifications/read-all",
        json!({}),
    )
    .await;
    assert_eq!(all_read["data"]["updated"], 1);
    let (_, unread) = get_as(app, &fleet.token, "/api/v1/notifications?unreadOnly=true").await;
    assert_eq!(unread["data"]["total"], 0);
    assert_eq!(
        send_as(
            app,
            &fleet.token,
            Method::DELETE,
            &format!("/api/v1/notifications/{first}"),
            json!(null)
        )
        .await
        .0,
        200
    );
    assert_eq!(notifications(&fleet).await.len(), 1);
}

use berth_e2e::connect_ws;

#[tokio::test(flavor = "multi_thread")]
async fn the_websocket_carries_the_users_events_and_nobody_elses() {
    let mut fleet = Fleet::start("probe", &[]).await;
    fleet.quiet_alerts().await;
    let app = &fleet.stack.app;
    let id = fleet.onboard(0).await;
    fleet.probe(&id).await;

    // A second api process: events cross processes through Redis.
    let mut env = fleet.stack.env.clone();
    let port = berth_e2e::free_port();
    env.insert("BERTH_API_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("BERTH_RUN_MIGRATIONS".into(), "false".into());
    let other_api = BerthProcess::spawn("berth-api", &[], &env);
    let other_base = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(30), "second api ready", || async {
        reqwest::get(format!("{other_base}/api/v1/health/ready"))
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;

    create_user(&fleet.stack.db, NewUser::verified("eve@example.test")).await;
    let eve = access_token(app, "eve@example.test").await;
    let mut mine = connect_ws(&other_base, &fleet.token).await;
    let mut theirs = connect_ws(&app.base, &eve).await;

    // Refusals: no credential; a page of another site with a cookie session.
    let anonymous = tokio_tungstenite::connect_async(format!(
        "{}/api/v1/ws",
        app.base.replace("http://", "ws://")
    ))
    .await;
    assert!(anonymous.is_err());
    let mut cross_site = format!("{}/api/v1/ws", app.base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    cross_site.headers_mut().insert(
        "authorization",
        format!("Bearer {}", fleet.token).parse().unwrap(),
    );
    cross_site
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(cross_site).await.is_err());

    fleet.sshd.stop().await;
    fleet.probe(&id).await;

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|e: &Value| e["type"] == "notification") {
        let message = tokio::time::timeout_at(deadline, mine.next())
            .await
            .expect("an event within 20 s")
            .unwrap()
            .unwrap();
        if let Ok(text) = message.into_text() {
            seen.push(serde_json::from_str(&text).unwrap());
        }
    }
    let notification = seen.iter().find(|e| e["type"] == "notification").unwrap();
    assert_eq!(notification["data"]["kind"], "server_offline");
    assert!(
        seen.iter().any(|e| e["type"] == "job"
            && e["data"]["kind"] == "server.probe"
            && e["data"]["serverId"] == id.as_str()
            && e["data"]["deploymentId"].is_null()),
        "job state changes too, naming their server: {seen:?}"
    );
    // The other user's socket got nothing.
    let nothing = tokio::time::timeout(Duration::from_secs(2), theirs.next()).await;
    assert!(
        nothing.is_err(),
        "another user's socket received {nothing:?}"
    );
    drop(other_api);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_probes_every_server_without_piling_up() {
    let fleet = Fleet::start("probe", &[]).await;
    fleet.quiet_alerts().await;
    let ids = [fleet.onboard(0).await, fleet.onboard(1).await];
    let mut env = fleet.stack.env.clone();
    env.insert("BERTH_SCHEDULE_PROBE".into(), "* * * * * *".into());
    let scheduler = BerthProcess::spawn("berth-scheduler", &[], &env);
    let pool = fleet.stack.db.pool.clone();
    eventually(Duration::from_secs(30), "three samples of each server", || {
        let pool = pool.clone();
        async move {
            let counts: Vec<i64> = sqlx::query_scalar(
                "SELECT count(m.at) FROM servers s LEFT JOIN server_metrics m ON m.server_id = s.id GROUP BY s.id",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            counts.len() == 2 && counts.iter().all(|c| *c >= 3)
        }
    })
    .await;

    // A server whose probes cannot run (no worker now) gets one pending probe,
    // not one per tick.
    fleet.worker.signal(nix::sys::signal::Signal::SIGKILL);
    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in &ids {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE kind = 'server.probe' AND server_id = $1::uuid AND state IN ('queued', 'running')",
        )
        .bind(id)
        .fetch_one(&fleet.stack.db.pool)
        .await
        .unwrap();
        assert!(pending <= 1, "{pending} pending probes for {id}");
    }
    assert!(
        scheduler.output().contains("probes enqueued"),
        "{}",
        scheduler.output()
    );
    drop(scheduler);
}
