//! Slots of bounded pools: at most `capacity` jobs of a pool run at a time
//! across all workers; the others wait queued, in line, without spending
//! attempts, and a slot held by a worker that died comes back.

use std::time::Duration;

use berth_e2e::eventually;
use berth_e2e::pipeline::{Pipeline, diagnostic_worker, job, pipeline, wait_for};
use berth_jobs::store::{NewJob, SlotPool};
use berth_jobs::{DiagnosticJob, JobRecord, JobState};
use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use uuid::Uuid;

fn pooled(sleep_ms: u64, pool: &SlotPool) -> NewJob<DiagnosticJob> {
    NewJob::new(DiagnosticJob::sleeping(sleep_ms)).slot(pool.clone())
}

/// The most jobs that ran at one moment.
fn most_at_once(records: &[JobRecord]) -> usize {
    let mut edges: Vec<(DateTime<Utc>, i32)> = Vec::new();
    for r in records {
        edges.push((r.started_at.unwrap(), 1));
        edges.push((r.finished_at.unwrap(), -1));
    }
    // An end and a start at the same instant do not overlap.
    edges.sort_by_key(|&(at, delta)| (at, delta));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

async fn slots_held(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM job_slots")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_of_one_lines_up_three_jobs_and_a_killed_holder_gives_its_slot_back() {
    let Pipeline {
        db,
        redis: _redis,
        env,
        jobs,
    } = pipeline(&[]).await;
    let pool = SlotPool::builds(Uuid::new_v4(), 1);
    let first = diagnostic_worker(&env);
    let holder = jobs.enqueue(pooled(4000, &pool)).await.unwrap().id;
    let running = wait_for(
        &db.pool,
        &holder,
        JobState::Running,
        Duration::from_secs(30),
    )
    .await;
    let _second = diagnostic_worker(&env);
    let mut waiters = Vec::new();
    for _ in 0..3 {
        waiters.push(jobs.enqueue(pooled(200, &pool)).await.unwrap().id);
    }
    let why = format!("a free slot of {}", pool.name());
    eventually(
        Duration::from_secs(20),
        "the waiters to say why",
        || async {
            let mut all = true;
            for id in &waiters {
                all &= job(&db.pool, id).await.waiting_for.as_deref() == Some(why.as_str());
            }
            all
        },
    )
    .await;
    for (i, id) in waiters.iter().enumerate() {
        let record = job(&db.pool, id).await;
        assert_eq!(
            (record.state, record.attempts, record.position),
            (JobState::Queued, 0, Some(i as i32 + 1)),
            "{record:?}"
        );
    }
    assert_eq!(job(&db.pool, &holder).await.position, None);

    // The holder's worker dies mid-job: its slot stays with the job, which
    // another worker runs again once the heartbeat window has passed.
    assert!(
        running
            .worker
            .as_deref()
            .unwrap()
            .contains(&format!(":{}:", first.pid()))
    );
    first.signal(Signal::SIGKILL);
    let _third = diagnostic_worker(&env);
    let mut records = vec![
        wait_for(
            &db.pool,
            &holder,
            JobState::Succeeded,
            Duration::from_secs(60),
        )
        .await,
    ];
    for id in &waiters {
        records.push(wait_for(&db.pool, id, JobState::Succeeded, Duration::from_secs(60)).await);
    }
    assert_eq!(records[0].attempts, 2, "the killed attempt counts");
    for record in &records[1..] {
        assert_eq!(record.attempts, 1, "waiting spent no attempt: {record:?}");
        assert_eq!(
            (record.waiting_for.as_deref(), record.position),
            (None, None)
        );
    }
    assert_eq!(most_at_once(&records), 1, "{records:?}");
    // In line: each waiter started after the one before it.
    for pair in records[1..].windows(2) {
        assert!(pair[0].started_at < pair[1].started_at, "{pair:?}");
    }
    assert_eq!(slots_held(&db.pool).await, 0, "every slot was given back");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_of_two_runs_two_at_once_and_a_job_waiting_for_its_key_does_not_block_it() {
    let Pipeline {
        db,
        redis: _redis,
        env,
        jobs,
    } = pipeline(&[]).await;
    let _workers: Vec<_> = (0..3).map(|_| diagnostic_worker(&env)).collect();
    let pool = SlotPool::new("builds:pair", 2);

    // A job of the pool that first waits for its key (held by a job outside
    // the pool) is not "ahead" of the pool's other jobs.
    let key_holder = jobs
        .enqueue(NewJob::new(DiagnosticJob {
            sleep_ms: 3000,
            concurrency_key: Some("deploy:42".into()),
            supersedable: false,
        }))
        .await
        .unwrap()
        .id;
    wait_for(
        &db.pool,
        &key_holder,
        JobState::Running,
        Duration::from_secs(30),
    )
    .await;
    let blocked = jobs
        .enqueue(
            NewJob::new(DiagnosticJob {
                sleep_ms: 0,
                concurrency_key: Some("deploy:42".into()),
                supersedable: false,
            })
            .slot(pool.clone()),
        )
        .await
        .unwrap()
        .id;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(jobs.enqueue(pooled(800, &pool)).await.unwrap().id);
    }
    let mut records = Vec::new();
    for id in &ids {
        records.push(wait_for(&db.pool, id, JobState::Succeeded, Duration::from_secs(60)).await);
    }
    let blocked = wait_for(
        &db.pool,
        &blocked,
        JobState::Succeeded,
        Duration::from_secs(60),
    )
    .await;
    let key_holder = job(&db.pool, &key_holder).await;
    assert!(blocked.started_at.unwrap() >= key_holder.finished_at.unwrap());
    assert!(
        records[0].started_at.unwrap() < key_holder.finished_at.unwrap(),
        "the pool's first job ran while the key-blocked one waited: {records:?}"
    );
    records.push(blocked);
    assert_eq!(most_at_once(&records), 2, "{records:?}");
    assert!(records.iter().all(|r| r.attempts == 1), "{records:?}");
    assert_eq!(slots_held(&db.pool).await, 0);
}
