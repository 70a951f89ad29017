//! Serialization by key: at most one running job per concurrency key across
//! all workers, a later job waits its turn without spending an attempt, and
//! a newer job can supersede a waiting one.

use std::time::Duration;

use berth_e2e::eventually;
use berth_e2e::pipeline::{Pipeline, diagnostic_worker, job, pipeline, wait_for};
use berth_jobs::store::NewJob;
use berth_jobs::{DiagnosticJob, JobState};

fn keyed(sleep_ms: u64, key: &str, supersedable: bool) -> NewJob<DiagnosticJob> {
    NewJob::new(DiagnosticJob {
        sleep_ms,
        concurrency_key: Some(key.to_owned()),
        supersedable,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_of_one_key_never_overlap_across_four_workers() {
    let Pipeline {
        db,
        redis: _redis,
        env,
        jobs,
    } = pipeline(&[]).await;
    let _workers: Vec<_> = (0..4).map(|_| diagnostic_worker(&env)).collect();
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(jobs.enqueue(keyed(20, "app:1", false)).await.unwrap().id);
    }
    // Jobs of another key are not held back by this line.
    let other = jobs.enqueue(keyed(0, "app:2", false)).await.unwrap().id;
    wait_for(
        &db.pool,
        &other,
        JobState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    for id in &ids {
        wait_for(&db.pool, id, JobState::Succeeded, Duration::from_secs(120)).await;
    }
    let mut spans = Vec::new();
    for id in &ids {
        let record = job(&db.pool, id).await;
        assert_eq!(record.attempts, 1, "waiting spent no attempt: {record:?}");
        assert_eq!(record.waiting_for, None);
        spans.push((record.started_at.unwrap(), record.finished_at.unwrap()));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two jobs of one key overlapped: {pair:?}"
        );
    }
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM job_keys")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(held, 0, "every key was given back");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_job_shows_why_and_runs_after_the_holder() {
    let Pipeline {
        db,
        redis: _redis,
        env,
        jobs,
    } = pipeline(&[]).await;
    let _worker = diagnostic_worker(&env);
    let holder = jobs
        .enqueue(keyed(3000, "deploy:7", false))
        .await
        .unwrap()
        .id;
    wait_for(
        &db.pool,
        &holder,
        JobState::Running,
        Duration::from_secs(20),
    )
    .await;
    let waiter = jobs.enqueue(keyed(0, "deploy:7", false)).await.unwrap().id;
    eventually(Duration::from_secs(10), "the waiter to say why", || async {
        job(&db.pool, &waiter).await.waiting_for.as_deref() == Some("its turn on deploy:7")
    })
    .await;
    let waiting = job(&db.pool, &waiter).await;
    assert_eq!((waiting.state, waiting.attempts), (JobState::Queued, 0));
    let done = wait_for(
        &db.pool,
        &waiter,
        JobState::Succeeded,
        Duration::from_secs(30),
    )
    .await;
    let held = job(&db.pool, &holder).await;
    assert!(done.started_at.unwrap() >= held.finished_at.unwrap());
    // Woken by the release, not by its 30 s safety net (loose: CI is slow).
    assert!(
        done.started_at.unwrap() - held.finished_at.unwrap() < chrono::Duration::seconds(20),
        "{done:?} {held:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_job_supersedes_a_waiting_one_that_allows_it() {
    let Pipeline {
        db,
        redis: _redis,
        env,
        jobs,
    } = pipeline(&[]).await;
    // No worker yet: everything waits. Any newer job of the key supersedes
    // the ones that allow it; one that does not allow it stays.
    let old = jobs.enqueue(keyed(0, "deploy:9", true)).await.unwrap().id;
    let kept = jobs.enqueue(keyed(0, "deploy:9", false)).await.unwrap().id;
    let superseded = job(&db.pool, &old).await;
    assert_eq!(superseded.state, JobState::Cancelled);
    assert_eq!(
        superseded.error.as_deref(),
        Some(format!("superseded by job {kept}").as_str())
    );
    let newer = jobs.enqueue(keyed(0, "deploy:9", true)).await.unwrap().id;
    assert_eq!(
        job(&db.pool, &kept).await.state,
        JobState::Queued,
        "a job that did not allow it is not superseded"
    );
    let _worker = diagnostic_worker(&env);
    wait_for(
        &db.pool,
        &kept,
        JobState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    wait_for(
        &db.pool,
        &newer,
        JobState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(job(&db.pool, &old).await.state, JobState::Cancelled);
}
