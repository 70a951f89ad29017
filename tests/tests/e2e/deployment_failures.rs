//! A bad release never replaces a good one: a release whose health check
//! fails, one whose build fails and one cancelled mid-build each leave the
//! live release serving, marked with their step and reason. Deploys of one
//! deployment are serialized (a newer queued one supersedes an older one);
//! two deployments on a server with one build slot wait in line with their
//! positions shown.

use std::time::{Duration, Instant};

use berth_e2e::deploy::{AppRepo, DeployFleet};
use berth_e2e::eventually;
use reqwest::Method;
use serde_json::{Value, json};

async fn release(f: &DeployFleet, id: &str, number: i64) -> Value {
    let (_, releases) = f.get(&format!("/api/v1/deployments/{id}/releases")).await;
    releases["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["number"] == number)
        .cloned()
        .unwrap_or_else(|| panic!("no v{number}: {releases}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_and_cancelled_releases_leave_the_live_one_serving_and_deploys_wait_their_turn() {
    let f = DeployFleet::start().await;
    let repo = AppRepo::new(&f);
    let (id, url) = f
        .git_deployment(
            &repo,
            json!({"name": "api", "port": 8080, "drainSeconds": 0,
                   "healthCheck": {"path": "/", "retries": 5, "timeoutSeconds": 2}}),
        )
        .await;
    f.job_ok(f.redeploy(&id).await["jobId"].as_str().unwrap())
        .await;
    assert_eq!(f.through_nginx(&url, "/").await, Some((200, "v1\n".into())));

    // A release that never answers its health check.
    repo.commit("v-unhealthy", false);
    let bad = f.redeploy(&id).await;
    let job = f.job_end(bad["jobId"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed", "{job}");
    let r = release(&f, &id, bad["release"].as_i64().unwrap()).await;
    assert_eq!(
        (r["state"].as_str(), r["failedStep"].as_str()),
        (Some("failed"), Some("health")),
        "{r}"
    );
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("unhealthy after 5 checks"),
        "{r}"
    );
    let d = f.deployment(&id).await;
    assert_eq!(
        (d["status"].as_str(), d["liveRelease"].as_i64()),
        (Some("running"), Some(2)),
        "{d}"
    );
    assert!(
        d["statusReason"]
            .as_str()
            .unwrap()
            .contains("failed at health"),
        "{d}"
    );
    assert_eq!(f.through_nginx(&url, "/").await, Some((200, "v1\n".into())));
    eventually(
        Duration::from_secs(10),
        "the failed container to be removed",
        || async { f.containers_of(&id).await.len() == 1 },
    )
    .await;

    // A release that does not build.
    repo.commit_broken_build();
    let bad = f.redeploy(&id).await;
    f.job_end(bad["jobId"].as_str().unwrap()).await;
    let r = release(&f, &id, bad["release"].as_i64().unwrap()).await;
    assert_eq!(
        (r["state"].as_str(), r["failedStep"].as_str()),
        (Some("failed"), Some("build")),
        "{r}"
    );
    assert!(
        r["error"].as_str().unwrap().contains("docker build failed"),
        "{r}"
    );
    assert_eq!(f.through_nginx(&url, "/").await, Some((200, "v1\n".into())));

    // Cancel mid-build: stopped within 5 s, the live release untouched.
    repo.commit_with("v-slow", true, "RUN sleep 60");
    let slow = f.redeploy(&id).await;
    let number = slow["release"].as_i64().unwrap();
    eventually(
        Duration::from_secs(60),
        "the slow build to begin",
        || async {
            release(&f, &id, number).await["steps"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "preflight"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Two more while it builds: the newer supersedes the older in line.
    let second = f.redeploy(&id).await;
    let third = f.redeploy(&id).await;
    let cancel_started = Instant::now();
    let (status, body) = f
        .send(
            Method::POST,
            &format!("/api/v1/deployments/{id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        body["data"]["release"], number,
        "the running one is cancelled first"
    );
    let job = f.job_end(slow["jobId"].as_str().unwrap()).await;
    let took = cancel_started.elapsed();
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(took < Duration::from_secs(5), "cancelled in {took:?}");
    let r = release(&f, &id, number).await;
    assert_eq!(
        (r["state"].as_str(), r["failedStep"].as_str()),
        (Some("cancelled"), Some("build")),
        "{r}"
    );
    let superseded = f.fleet.job_state(second["jobId"].as_str().unwrap()).await;
    assert_eq!(superseded["state"], "cancelled", "{superseded}");
    assert_eq!(
        release(&f, &id, second["release"].as_i64().unwrap()).await["state"],
        "cancelled"
    );
    // The newest one runs (the slow build again) and is cancelled too.
    eventually(Duration::from_secs(60), "the newest to start", || async {
        f.fleet.job_state(third["jobId"].as_str().unwrap()).await["state"] == "running"
    })
    .await;
    let (status, _) = f
        .send(
            Method::POST,
            &format!("/api/v1/deployments/{id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202);
    f.job_end(third["jobId"].as_str().unwrap()).await;
    let d = f.deployment(&id).await;
    assert_eq!(
        (d["status"].as_str(), d["liveRelease"].as_i64()),
        (Some("running"), Some(2)),
        "{d}"
    );
    assert_eq!(f.through_nginx(&url, "/").await, Some((200, "v1\n".into())));
    assert_eq!(
        f.containers_of(&id).await.len(),
        1,
        "no container of a cancelled release"
    );
    let (status, _) = f
        .send(
            Method::POST,
            &format!("/api/v1/deployments/{id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "nothing on its way");

    // One build slot, two deployments: the second waits with its position.
    let (other_id, _) = f
        .git_deployment(
            &repo,
            json!({"name": "worker", "port": 8080, "drainSeconds": 0}),
        )
        .await;
    let busy = f.redeploy(&id).await;
    eventually(
        Duration::from_secs(60),
        "the first build to hold the slot",
        || async { f.fleet.job_state(busy["jobId"].as_str().unwrap()).await["state"] == "running" },
    )
    .await;
    let waiting = f.redeploy(&other_id).await;
    let job_id = waiting["jobId"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(30),
        "the second to show its place",
        || async {
            let job = f.fleet.job_state(&job_id).await;
            job["waitingFor"]
                .as_str()
                .is_some_and(|w| w.starts_with("a free slot of builds:"))
                && job["position"] == 1
        },
    )
    .await;
    repo.commit("v5", true);
    f.send(
        Method::POST,
        &format!("/api/v1/deployments/{id}/cancel"),
        json!({}),
    )
    .await;
    f.job_ok(&job_id).await;
    let d = f.deployment(&other_id).await;
    assert_eq!(d["status"], "running", "{d}");
}
