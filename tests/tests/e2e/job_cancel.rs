//! `POST /jobs/{id}/cancel`: a queued job ends at once; a running one's remote
//! command is stopped (its process group killed) and nobody else's; a
//! timeout does the same.

use std::time::{Duration, Instant};

use berth_e2e::accounts::{NewUser, access_token, create_user, send_as};
use berth_e2e::fleet::Fleet;
use berth_e2e::{eventually, processes_containing};
use berth_jobs::DiagnosticJob;
use berth_jobs::store::NewJob;
use reqwest::Method;
use serde_json::{Value, json};

async fn cancel(fleet: &Fleet, token: &str, id: &str) -> (u16, Value) {
    send_as(
        &fleet.stack.app,
        token,
        Method::POST,
        &format!("/api/v1/jobs/{id}/cancel"),
        json!({}),
    )
    .await
}

/// The remote loop of `diagnostic.remote_sleep` for `seconds`, as its shell's
/// command line shows it.
fn remote_loop(seconds: u32) -> String {
    format!("-lt {seconds} ]")
}

async fn wait_running(fleet: &Fleet, id: &str, seconds: u32) {
    eventually(
        Duration::from_secs(20),
        "the remote loop to start",
        || async { processes_containing(&remote_loop(seconds)) == 1 },
    )
    .await;
    let job = fleet.job_state(id).await;
    assert_eq!(job["state"], "running", "{job}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_queued_job_and_a_running_ones_remote_process_only() {
    let fleet = Fleet::start("probe,diagnostic", &[]).await;
    fleet.quiet_alerts().await;
    let server = fleet.onboard(0).await;
    let owner = fleet.owner().await;

    let target = fleet.remote_sleep(&server, 600).await;
    let sibling = fleet.remote_sleep(&server, 601).await;
    wait_running(&fleet, &target, 600).await;
    wait_running(&fleet, &sibling, 601).await;

    // A queued job: waiting for a key another job holds.
    let holder = NewJob::new(DiagnosticJob {
        sleep_ms: 20_000,
        concurrency_key: Some("cancel-test".into()),
        supersedable: false,
    })
    .owner(owner);
    let holder = fleet.stack.app.state.jobs.enqueue(holder).await.unwrap().id;
    let queued = NewJob::new(DiagnosticJob {
        sleep_ms: 0,
        concurrency_key: Some("cancel-test".into()),
        supersedable: false,
    })
    .owner(owner);
    let queued = fleet.stack.app.state.jobs.enqueue(queued).await.unwrap().id;
    let (status, body) = cancel(&fleet, &fleet.token, &queued).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["state"], "cancelled");
    assert_eq!(body["data"]["error"], "cancelled by ops@example.test");

    // Someone else's job is not theirs to cancel; a finished one cannot be.
    create_user(&fleet.stack.db, NewUser::verified("eve@example.test")).await;
    let eve = access_token(&fleet.stack.app, "eve@example.test").await;
    assert_eq!(cancel(&fleet, &eve, &target).await.0, 404);
    assert_eq!(cancel(&fleet, &fleet.token, &queued).await.0, 409);
    assert_eq!(cancel(&fleet, &fleet.token, "01NOSUCHJOB").await.0, 404);

    // A running job: its remote process group goes, its sibling's stays.
    let asked = Instant::now();
    let (status, body) = cancel(&fleet, &fleet.token, &target).await;
    assert_eq!(status, 202, "{body}");
    assert!(body["data"]["cancelRequestedAt"].is_string(), "{body}");
    eventually(
        Duration::from_secs(5),
        "the remote sleep to be gone",
        || async { processes_containing(&remote_loop(600)) == 0 },
    )
    .await;
    let gone = asked.elapsed();
    let job = fleet.job_done_or_cancelled(&target).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(
        processes_containing(&remote_loop(601)),
        1,
        "the sibling was touched"
    );
    assert_eq!(fleet.job_state(&sibling).await["state"], "running");
    println!("cancel to remote process gone: {gone:?}");

    for id in [&sibling, &holder] {
        assert_eq!(cancel(&fleet, &fleet.token, id).await.0, 202);
        fleet.job_done_or_cancelled(id).await;
    }
    assert_eq!(processes_containing(&remote_loop(601)), 0);
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE action = 'job.cancel'")
            .fetch_one(&fleet.stack.db.pool)
            .await
            .unwrap();
    assert_eq!(audited, 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_kills_the_remote_process_too() {
    let fleet = Fleet::start(
        "probe,diagnostic",
        &[
            ("BERTH_DIAGNOSTIC_TIMEOUT_SECS", "2"),
            ("BERTH_DIAGNOSTIC_MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    fleet.quiet_alerts().await;
    let server = fleet.onboard(0).await;
    let id = fleet.remote_sleep(&server, 602).await;
    let job = fleet.job_done(&id).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .starts_with("timed out after 2"),
        "{job}"
    );
    eventually(
        Duration::from_secs(5),
        "the timed-out sleep to be gone",
        || async { processes_containing(&remote_loop(602)) == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_cancel_was_asked_is_not_run_again_after_its_worker_died() {
    let pipeline = berth_e2e::pipeline::pipeline(&[]).await;
    let pool = &pipeline.db.pool;
    let id = berth_e2e::pipeline::enqueue_diagnostic(&pipeline.jobs, 0).await;
    // As if it had been running when cancelled, and its worker died.
    sqlx::query("UPDATE jobs SET cancel_requested_at = now() WHERE id = $1")
        .bind(&id)
        .execute(pool)
        .await
        .unwrap();
    let _worker = berth_e2e::pipeline::diagnostic_worker(&pipeline.env);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job = berth_e2e::pipeline::job(pool, &id).await;
    assert_eq!(job.attempts, 0, "a worker claimed it: {job:?}");
    berth_jobs::store::reconcile(pool, Duration::from_secs(60), Duration::from_secs(600))
        .await
        .unwrap();
    let job = berth_e2e::pipeline::job(pool, &id).await;
    assert_eq!(job.state, berth_jobs::JobState::Cancelled, "{job:?}");
}
