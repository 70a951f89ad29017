//! Part 7: deployments on a real sshd test server (podman behind `docker`,
//! a private nginx), driven through the api as a user would:
//! - a deploy's total time from the request to live, and Berth's own
//!   overhead in it (total minus the build, the container's start and the
//!   health-check wait; bound: 1 s), step by step;
//! - failed requests while it redeploys and rolls back under two client
//!   loops going flat out (bound: 0), with the request rate reached;
//! - a rollback's time from the request to live, no rebuild (bound: 10 s);
//! - how late a release's log line reaches a client of its log stream.

use std::time::{Duration, Instant};

use berth_e2e::deploy::{AppRepo, DeployFleet};
use berth_e2e::load::{Load, LoadReport};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::{Setup, median};

async fn release_job(f: &DeployFleet, id: &str, path: &str) -> anyhow::Result<(i64, String)> {
    let accepted = f.act(id, path, json!({})).await;
    let job = accepted["jobId"].as_str().unwrap_or_default().to_owned();
    let done = f.job_end(&job).await;
    anyhow::ensure!(done["state"] == "succeeded", "{path}: {done}");
    Ok((accepted["release"].as_i64().unwrap_or_default(), job))
}

async fn release(f: &DeployFleet, id: &str, number: i64) -> anyhow::Result<Value> {
    let (_, body) = f.get(&format!("/api/v1/deployments/{id}/releases")).await;
    body["data"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["number"] == number).cloned())
        .ok_or_else(|| anyhow::anyhow!("no v{number}"))
}

fn seconds_between(release: &Value, from: &str, to: &str) -> f64 {
    let at = |k: &str| {
        release[k]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    match (at(from), at(to)) {
        (Some(a), Some(b)) => (b - a).num_milliseconds() as f64 / 1000.0,
        _ => f64::NAN,
    }
}

fn step_ms(release: &Value, name: &str) -> f64 {
    release["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == name)
        .map(|s| s["ms"].as_f64().unwrap_or(0.0))
        .sum()
}

fn under_load(what: &str, report: &LoadReport, count: usize) {
    println!(
        "   {what}: {} failed requests of {} (bound 0), {:.0} requests/s reached \
         (kept-alive: {} answered, {} sent again after a reload closed an idle connection; \
         new connections: {}), over {count} in {:.0} s",
        report.failed(),
        report.answered(),
        report.per_second(),
        report.kept_alive.ok,
        report.kept_alive.retried,
        report.new_connections.ok,
        report.elapsed.as_secs_f64()
    );
}

pub async fn deploys(_setup: &Setup) -> anyhow::Result<()> {
    let switches: usize = crate::setting("BENCH_DEPLOY_SWITCHES", 20);
    let samples: usize = crate::setting("BENCH_DEPLOY_SAMPLES", 5);
    let f = DeployFleet::start().await;
    f.fleet.quiet_alerts().await;
    let repo = AppRepo::new(&f);
    let created = f
        .create(
            json!({"name": "bench", "source": {"type": "git", "repoUrl": repo.url},
                       "port": 8080, "drainSeconds": 1,
                       "healthCheck": {"path": "/index.html", "retries": 60}}),
        )
        .await;
    let id = created["deployment"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let url = created["deployment"]["url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let host = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    f.job_end(created["jobId"].as_str().unwrap_or_default())
        .await;
    f.authorize_deploy_key(&id).await;
    release_job(&f, &id, "redeploy").await?;

    println!("7. Deployments on a real sshd server (podman behind docker, nginx), through the api");
    let (mut totals, mut overheads) = (Vec::new(), Vec::new());
    let mut parts: Vec<(&str, Vec<f64>)> =
        ["fetch", "preflight", "build", "start", "health", "switch"]
            .into_iter()
            .map(|s| (s, Vec::new()))
            .collect();
    for n in 0..samples {
        repo.commit(&format!("sample-{n}"), true);
        let (number, _) = release_job(&f, &id, "redeploy").await?;
        let r = release(&f, &id, number).await?;
        let total = seconds_between(&r, "createdAt", "finishedAt");
        let excluded =
            (step_ms(&r, "build") + step_ms(&r, "start") + step_ms(&r, "health")) / 1000.0;
        totals.push(total);
        overheads.push(total - excluded);
        for (name, values) in &mut parts {
            values.push(step_ms(&r, name));
        }
    }
    println!(
        "   deploy to live (median of {samples}): {:.2} s in all; Berth's overhead {:.2} s (bound 1 s) \
         = total minus build, container start and health check",
        median(totals),
        median(overheads)
    );
    println!(
        "   steps (median ms): {}",
        parts
            .into_iter()
            .map(|(name, values)| format!("{name} {:.0}", median(values)))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Log line latency over the release log stream.
    let ws_url = format!(
        "{}/api/v1/deployments/{id}/logs/stream",
        f.fleet.stack.app.base.replace("http://", "ws://")
    );
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url)?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", f.fleet.token).parse()?,
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    repo.commit("logged", true);
    let wanted = f.redeploy(&id).await["release"]
        .as_i64()
        .unwrap_or_default();
    let mut delays = Vec::new();
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_secs(60), socket.next()).await
        else {
            break;
        };
        let Ok(text) = message.into_text() else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).unwrap_or_default();
        if event["type"] == "line"
            && event["data"]["release"] == wanted
            && let Some(at) = event["data"]["at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        {
            {
                delays.push(
                    (chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_milliseconds() as f64,
                );
            }
        }
        if event["type"] == "end" && event["data"]["release"] == wanted {
            break;
        }
    }
    let _ = socket.close(None).await;
    if !delays.is_empty() {
        let count = delays.len();
        println!(
            "   release log line to a stream client: median {:.0} ms over {count} lines",
            median(delays)
        );
    }

    let site = format!("http://127.0.0.1:{}/", f.http_port);
    let load = Load::start(&site, &host, None, Duration::ZERO);
    for n in 0..switches {
        repo.commit(&format!("loaded-{n}"), true);
        release_job(&f, &id, "redeploy").await?;
    }
    under_load("redeploys", &load.stop().await, switches);

    let load = Load::start(&site, &host, None, Duration::ZERO);
    let mut rollbacks = Vec::new();
    for _ in 0..switches {
        let (number, _) = release_job(&f, &id, "rollback").await?;
        let r = release(&f, &id, number).await?;
        rollbacks.push(seconds_between(&r, "createdAt", "finishedAt"));
    }
    under_load("rollbacks", &load.stop().await, switches);
    let worst = rollbacks.iter().copied().fold(0.0, f64::max);
    println!(
        "   rollback to live, no rebuild: median {:.2} s, worst {worst:.2} s (bound 10 s)",
        median(rollbacks)
    );
    println!();
    Ok(())
}
