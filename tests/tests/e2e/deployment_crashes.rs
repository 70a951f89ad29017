//! Crash safety: the worker SIGKILLed during a build, during a health check
//! and right after the switch. Each time another worker runs the job again
//! (after the heartbeat window), it ends with the release live, nothing is
//! left `building` or `starting`, the site serves, and exactly one
//! container of the deployment is left.

use std::time::Duration;

use berth_e2e::deploy::{AppRepo, DeployFleet};
use berth_e2e::eventually;
use serde_json::{Value, json};

async fn releases(f: &DeployFleet, id: &str) -> Vec<Value> {
    let (_, body) = f.get(&format!("/api/v1/deployments/{id}/releases")).await;
    body["data"].as_array().unwrap().clone()
}

/// Waits until the newest release is at `step` (or, with `None`, live).
async fn wait_until(f: &DeployFleet, id: &str, step: Option<&str>) {
    eventually(
        // Generous: CI runs every deployment test at once on two cores.
        Duration::from_secs(300),
        &format!("the release at {step:?}"),
        || async {
            let newest = releases(f, id).await[0].clone();
            // A release that ended is never going to reach the step: say why.
            assert!(
                !matches!(newest["state"].as_str(), Some("failed" | "cancelled")),
                "the release ended before the kill: {newest}"
            );
            match step {
                Some(step) => {
                    newest["steps"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|s| s["name"] == step)
                        || (step == "health"
                            && newest["state"] == "starting"
                            && newest["port"].is_i64())
                }
                None => newest["state"] == "live",
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_at_any_step_leaves_a_consistent_deployment() {
    let mut f = DeployFleet::start_with(&[
        ("BERTH_WORKER_HEARTBEAT_MS", "1000".into()),
        ("BERTH_WORKER_MISSED_HEARTBEATS", "3".into()),
    ])
    .await;
    let repo = AppRepo::new(&f);
    let (id, url) = f
        .git_deployment(
            &repo,
            json!({"name": "sturdy", "port": 8080, "drainSeconds": 4,
                   "healthCheck": {"path": "/index.html", "retries": 100}}),
        )
        .await;
    f.job_ok(f.redeploy(&id).await["jobId"].as_str().unwrap())
        .await;

    for when in ["build", "health", "after the switch"] {
        // What the release is, and the step to be at when the worker dies.
        let (version, step) = match when {
            "build" => {
                repo.commit_with("during-build", true, "RUN sleep 6");
                ("during-build", Some("preflight"))
            }
            "health" => {
                repo.commit_slow_start("during-health", 6);
                ("during-health", Some("health"))
            }
            _ => {
                repo.commit("after-switch", true);
                ("after-switch", None)
            }
        };
        let job_id = f.redeploy(&id).await["jobId"].as_str().unwrap().to_owned();
        wait_until(&f, &id, step).await;
        if step == Some("preflight") {
            // Into the build's sleep.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        f.fleet.kill_and_replace_worker();
        let job = f.job_end(&job_id).await;
        assert_eq!(job["state"], "succeeded", "killed {when}: {job}");
        assert!(
            job["attempts"].as_i64().unwrap() >= 2,
            "killed {when}, run again: {job}"
        );
        eventually(Duration::from_secs(60), "nothing on its way", || async {
            releases(&f, &id).await.iter().all(|r| {
                !matches!(
                    r["state"].as_str(),
                    Some("queued" | "building" | "starting")
                )
            })
        })
        .await;
        let d = f.deployment(&id).await;
        assert_eq!(d["status"], "running", "killed {when}: {d}");
        assert_eq!(
            f.through_nginx(&url, "/").await,
            Some((200, format!("{version}\n"))),
            "killed {when}"
        );
        assert_eq!(
            f.containers_of(&id).await.len(),
            1,
            "killed {when}: one container left, no orphan"
        );
        let live: Vec<Value> = releases(&f, &id)
            .await
            .into_iter()
            .filter(|r| r["state"] == "live")
            .collect();
        assert_eq!(live.len(), 1, "killed {when}: one live release");
    }
}
