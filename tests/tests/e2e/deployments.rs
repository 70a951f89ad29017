//! Deployments end to end (issue 10): a real app from a private git
//! repository (read with the deployment's own deploy key) built with podman
//! behind `docker` on an sshd test server and served by nginx; redeployed,
//! rolled back to v1's env, stopped, restarted and deleted, leaving nothing
//! of Berth's behind and the user's own container untouched.

use std::time::Duration;

use berth_e2e::accounts::{NewUser, access_token, create_user, get_as};
use berth_e2e::deploy::{AppRepo, DeployFleet};
use berth_e2e::eventually;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_git_app_is_built_served_redeployed_rolled_back_stopped_and_deleted() {
    let f = DeployFleet::start().await;
    let repo = AppRepo::new(&f);

    // The user's own container on the same server: never touched.
    let theirs = format!("users-own-{}", std::process::id());
    let started = f
        .fleet
        .sshd
        .podman()
        .args([
            "run",
            "-d",
            "--name",
            &theirs,
            berth_e2e::images::BUSYBOX,
            "sleep",
            "600",
        ])
        .output()
        .await
        .unwrap();
    assert!(started.status.success(), "{started:?}");

    let created = f
        .create(
            json!({"name": "web", "source": {"type": "git", "repoUrl": repo.url, "branch": "main"},
                       "port": 8080, "env": {"GREETING": "hello from v1"}, "drainSeconds": 1,
                       "healthCheck": {"path": "/index.html", "retries": 100}}),
        )
        .await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["deployment"]["source"]["type"], "git");
    let url = created["deployment"]["url"].as_str().unwrap().to_owned();
    assert!(
        url.ends_with(&format!("{}.sslip.io/", f.fleet.sshd.host(0))),
        "{url}"
    );
    // Private: the first attempt has no access until the deploy key is added.
    let first = f.job_end(created["jobId"].as_str().unwrap()).await;
    assert_eq!(first["state"], "failed", "{first}");
    let failed = f.deployment(&id).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["currentRelease"]["failedStep"], "fetch", "{failed}");
    assert!(
        failed["statusReason"]
            .as_str()
            .unwrap()
            .contains("v1 failed at fetch"),
        "{failed}"
    );

    f.authorize_deploy_key(&id).await;
    let second = f.redeploy(&id).await;
    assert_eq!(second["release"], 2);
    f.job_ok(second["jobId"].as_str().unwrap()).await;
    let live = f.deployment(&id).await;
    assert_eq!(
        (live["status"].as_str(), live["liveRelease"].as_i64()),
        (Some("running"), Some(2)),
        "{live}"
    );
    let steps: Vec<&str> = live["currentRelease"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for step in ["fetch", "preflight", "build", "start", "health", "switch"] {
        assert!(steps.contains(&step), "{step} timed: {steps:?}");
    }
    assert_eq!(
        live["currentRelease"]["sourceRef"].as_str().unwrap().len(),
        40
    );
    assert_eq!(f.through_nginx(&url, "/").await, Some((200, "v1\n".into())));
    assert_eq!(
        f.through_nginx(&url, "/greeting.txt").await,
        Some((200, "hello from v1\n".into()))
    );

    // The log of the release, the pre-flight, the env shown to its owner.
    let (status, log) = f
        .get(&format!("/api/v1/deployments/{id}/releases/2/logs"))
        .await;
    assert_eq!(status, 200, "{log}");
    let lines: Vec<&str> = log["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("building the image")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("hello from v1")),
        "an env value never reaches the log"
    );
    let (status, preflight) = f.get(&format!("/api/v1/deployments/{id}/preflight")).await;
    assert_eq!(status, 200, "{preflight}");
    assert_eq!(preflight["data"]["stack"], "dockerfile", "{preflight}");
    assert!(
        preflight["data"]["estimatedDisk"].as_u64().unwrap() > 0,
        "{preflight}"
    );
    let (_, env) = f.get(&format!("/api/v1/deployments/{id}/env")).await;
    assert_eq!(env["data"]["env"]["GREETING"], "hello from v1");
    let in_db: String =
        sqlx::query_scalar("SELECT env_sealed FROM deployments WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&f.fleet.stack.db.pool)
            .await
            .unwrap();
    assert!(!in_db.contains("hello"), "env is sealed at rest");

    // v3: new code and a new env.
    repo.commit("v3", true);
    let (status, body) = f
        .send(
            Method::PUT,
            &format!("/api/v1/deployments/{id}/env"),
            json!({"set": {"GREETING": " hello from v3 \"quoted\" $HOME 'single' #"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, bad) = f
        .send(
            Method::PUT,
            &format!("/api/v1/deployments/{id}/env"),
            json!({"set": {"1BAD": "x", "OK": "line\nbreak"}}),
        )
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(
        bad["error"]["details"].as_array().unwrap().len(),
        2,
        "{bad}"
    );
    f.job_ok(f.redeploy(&id).await["jobId"].as_str().unwrap())
        .await;
    assert_eq!(f.through_nginx(&url, "/").await, Some((200, "v3\n".into())));
    assert_eq!(
        f.through_nginx(&url, "/greeting.txt").await,
        Some((200, " hello from v3 \"quoted\" $HOME 'single' #\n".into())),
        "an env value reaches the app literally: no quoting, no expansion"
    );
    assert_eq!(
        f.containers_of(&id).await.len(),
        1,
        "the old container was stopped and removed after the drain"
    );

    // The live container's own output, followed over a WebSocket.
    let mut socket = berth_e2e::connect_ws_at(
        &f.fleet.stack.app.base,
        &format!("/api/v1/deployments/{id}/runtime-logs?tail=20"),
        &f.fleet.token,
    )
    .await;
    let first = berth_e2e::next_json(&mut socket, Duration::from_secs(20)).await;
    assert_eq!(first["type"], "line", "{first}");
    assert_eq!(first["data"]["line"], "app starting", "{first}");
    f.through_nginx(&url, "/greeting.txt").await;
    let followed = berth_e2e::next_json(&mut socket, Duration::from_secs(20)).await;
    assert_eq!(
        followed["type"], "line",
        "a request's log line follows: {followed}"
    );
    drop(socket);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
            "{}/api/v1/deployments/{id}/runtime-logs?tail=0",
            f.fleet.stack.app.base.replace("http://", "ws://")
        ))
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", f.fleet.token).parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => {
            assert_eq!(answer.status(), 400, "a bad tail is refused")
        }
        other => panic!("a bad tail is refused: {other:?}"),
    }

    // Rollback: v2's image and v2's env, no build.
    let rollback = f.act(&id, "rollback", json!({})).await;
    assert_eq!(rollback["release"], 4);
    f.job_ok(rollback["jobId"].as_str().unwrap()).await;
    assert_eq!(f.through_nginx(&url, "/").await, Some((200, "v1\n".into())));
    assert_eq!(
        f.through_nginx(&url, "/greeting.txt").await,
        Some((200, "hello from v1\n".into()))
    );
    let (_, releases) = f.get(&format!("/api/v1/deployments/{id}/releases")).await;
    let releases = releases["data"].as_array().unwrap().clone();
    assert_eq!(releases[0]["trigger"], "rollback");
    assert_eq!(releases[0]["rollbackOf"], 2);
    assert_eq!(releases[0]["state"], "live");
    assert!(
        !releases[0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "build"),
        "a rollback builds nothing"
    );
    assert_eq!(releases[1]["state"], "superseded");
    assert_eq!(releases[3]["state"], "failed");
    // The live release is not a rollback target; a failed one is refused.
    let (status, _) = f
        .send(
            Method::POST,
            &format!("/api/v1/deployments/{id}/rollback"),
            json!({"release": 4}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = f
        .send(
            Method::POST,
            &format!("/api/v1/deployments/{id}/rollback"),
            json!({"release": 1}),
        )
        .await;
    assert_eq!(status, 409);

    // The owner was told: the failure, the recovery, the rollback.
    let (_, notifications) = f.get("/api/v1/notifications?limit=50").await;
    let kinds: Vec<&str> = notifications["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "deployment_failed",
        "deployment_recovered",
        "deployment_rolled_back",
    ] {
        assert!(kinds.contains(&kind), "{kind}: {notifications}");
    }

    // Another user sees none of it.
    create_user(&f.fleet.stack.db, NewUser::verified("other@example.test")).await;
    let other = access_token(&f.fleet.stack.app, "other@example.test").await;
    for path in [
        "",
        "/releases",
        "/env",
        "/deploy-key",
        "/webhook",
        "/preflight",
    ] {
        let (status, body) = get_as(
            &f.fleet.stack.app,
            &other,
            &format!("/api/v1/deployments/{id}{path}"),
        )
        .await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (_, list) = get_as(&f.fleet.stack.app, &other, "/api/v1/deployments").await;
    assert_eq!(list["data"]["total"], 0);

    // A server with deployments is not deleted under them.
    let (status, _) = f
        .send(
            Method::DELETE,
            &format!("/api/v1/servers/{}", f.server_id),
            json!({}),
        )
        .await;
    assert_eq!(status, 409);

    // Stop takes the site down; restart brings it back.
    let stop = f.act(&id, "stop", json!({})).await;
    f.job_ok(stop["jobId"].as_str().unwrap()).await;
    assert_eq!(f.deployment(&id).await["status"], "stopped");
    let served = f.through_nginx(&url, "/").await;
    assert!(served.as_ref().is_none_or(|(s, _)| *s != 200), "{served:?}");
    let restart = f.act(&id, "restart", json!({})).await;
    f.job_ok(restart["jobId"].as_str().unwrap()).await;
    assert_eq!(f.deployment(&id).await["status"], "running");
    assert_eq!(f.through_nginx(&url, "/").await, Some((200, "v1\n".into())));

    // Delete: containers, site, images, release directories, then the record.
    assert!(!f.images_of(&id).await.is_empty());
    // Another deployment's image on the same server: not this one's to prune.
    let neighbour = uuid::Uuid::new_v4().to_string();
    let neighbour_image = format!("localhost/berth-neighbour:{}", &neighbour[..8]);
    let built = f
        .fleet
        .sshd
        .podman()
        .args(["build", "-q", "--label", "berth.managed=true", "--label"])
        .arg(format!("berth.deployment={neighbour}"))
        .args(["-t", &neighbour_image])
        .arg(f.dir.join("repo/work"))
        .output()
        .await
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let (status, body) = f
        .send(
            Method::DELETE,
            &format!("/api/v1/deployments/{id}"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    f.job_ok(body["data"]["jobId"].as_str().unwrap()).await;
    let (status, _) = f.get(&format!("/api/v1/deployments/{id}")).await;
    assert_eq!(status, 404);
    assert!(f.containers_of(&id).await.is_empty());
    assert!(
        f.images_of(&id).await.is_empty(),
        "{:?}",
        f.images_of(&id).await
    );
    assert_eq!(
        f.images_of(&neighbour).await.len(),
        1,
        "another deployment's image is untouched"
    );
    let _ = f
        .fleet
        .sshd
        .podman()
        .args(["rmi", &neighbour_image])
        .output()
        .await;
    assert!(!f.nginx.sites.join(format!("berth-{id}.conf")).exists());
    assert!(!f.data_dir.join("deployments").join(&id).exists());
    let running = tokio::process::Command::new("podman")
        .args(["inspect", "--format", "{{.State.Running}}", &theirs])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&running.stdout).trim(), "true");
    let _ = tokio::process::Command::new("podman")
        .args(["rm", "-f", &theirs])
        .output()
        .await;
    eventually(
        Duration::from_secs(5),
        "the server to be deletable",
        || async {
            f.send(
                Method::DELETE,
                &format!("/api/v1/servers/{}", f.server_id),
                json!({}),
            )
            .await
            .0 == 200
        },
    )
    .await;
}
