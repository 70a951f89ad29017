//! Zero downtime, measured: twenty redeploys (each a new commit, built,
//! health-checked, switched at nginx, the old container drained and
//! stopped) while two clients request the site without pause: no request
//! fails; a download begun before the first redeploy arrives whole after
//! the last. `scripts/bench.sh` (part 7) adds rollbacks and the timings.

use std::time::Duration;

use berth_e2e::deploy::{AppRepo, DeployFleet};
use berth_e2e::load::Load;
use serde_json::json;

const REDEPLOYS: usize = 20;
const DOWNLOAD_BYTES: usize = 4 * 1024 * 1024;
/// How fast the early download is read: it stays open over several redeploys.
const READ_BYTES_PER_SEC: f64 = 256.0 * 1024.0;

/// A build step writing `/www/big.bin` (the image's busybox has no `head`
/// link, so it is called by name).
fn big_file() -> String {
    format!(
        "RUN busybox mkdir -p /www && busybox head -c {DOWNLOAD_BYTES} /dev/zero > /www/big.bin"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_redeploys_under_load_fail_no_request() {
    let f = DeployFleet::start().await;
    let repo = AppRepo::new(&f);
    // The health budget is generous (100 checks, 200 ms apart): CI runs
    // this beside every other test on two cores, with the load flat out.
    let (id, url) = f
        .git_deployment(
            &repo,
            json!({"name": "steady", "port": 8080, "drainSeconds": 1,
                   "healthCheck": {"path": "/index.html", "retries": 100}}),
        )
        .await;
    let host = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    repo.commit_with("a", true, &big_file());
    let redeploy = || async {
        f.job_ok(f.redeploy(&id).await["jobId"].as_str().unwrap())
            .await;
    };
    redeploy().await;
    assert_eq!(f.through_nginx(&url, "/").await, Some((200, "a\n".into())));

    // A download read slowly, begun before the first redeploy.
    let site = format!("http://127.0.0.1:{}", f.http_port);
    let download = reqwest::Client::new()
        .get(format!("{site}/big.bin"))
        .header("Host", &host)
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let slow = tokio::spawn(async move {
        let mut download = download;
        let mut total = 0usize;
        while let Some(chunk) = download.chunk().await.expect("the download was not cut") {
            total += chunk.len();
            tokio::time::sleep(Duration::from_secs_f64(
                chunk.len() as f64 / READ_BYTES_PER_SEC,
            ))
            .await;
        }
        (total, std::time::Instant::now())
    });

    // Paced (about 100 requests a second per client), so the builds on the
    // same two cores are not what is measured; bench part 7 goes flat out.
    let load = Load::start(
        &format!("{site}/"),
        &host,
        Some("b\n"),
        Duration::from_millis(10),
    );
    let mut first_done = None;
    for n in 0..REDEPLOYS {
        let version = if n % 2 == 0 { "b" } else { "a" };
        repo.commit_with(version, true, &big_file());
        redeploy().await;
        first_done.get_or_insert_with(std::time::Instant::now);
    }
    let report = load.stop().await;
    println!(
        "{REDEPLOYS} redeploys in {:?}: {} requests ({:.0}/s), {} failed; kept-alive {:?}, new connections {:?}",
        report.elapsed,
        report.answered(),
        report.per_second(),
        report.failed(),
        report.kept_alive,
        report.new_connections
    );
    assert_eq!(report.failed(), 0, "no request failed: {report:?}");
    for seen in [report.kept_alive, report.new_connections] {
        assert!(
            seen.marked > 0 && seen.marked < seen.ok,
            "both versions served: {seen:?}"
        );
    }
    assert_eq!(f.through_nginx(&url, "/").await, Some((200, "a\n".into())));
    let (downloaded, finished) = slow.await.unwrap();
    assert_eq!(
        downloaded, DOWNLOAD_BYTES,
        "the early download arrived whole"
    );
    assert!(
        finished > first_done.unwrap(),
        "the download was still open when the first redeploy went live"
    );
    assert_eq!(f.containers_of(&id).await.len(), 1);
    let kept = f.images_of(&id).await.len();
    assert!(kept <= 5, "images beyond keepReleases were pruned: {kept}");
}
