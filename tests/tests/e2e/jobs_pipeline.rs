use std::collections::HashMap;
use std::time::Duration;

use berth_e2e::accounts::{NewUser, create_user};
use berth_e2e::pipeline::{
    Pipeline, client, diagnostic_worker, enqueue_diagnostic, error_of, job, pipeline, wait_for,
    worker_env,
};
use berth_e2e::{
    BerthProcess, SmtpSink, TestApp, TestDb, TestRedis, base_env, eventually, free_port,
};
use berth_jobs::relay::Relay;
use berth_jobs::store::{self, NewJob};
use berth_jobs::{CodePurpose, DiagnosticJob, EmailJob, EmailMessage, JobState, Sealed};
use nix::sys::signal::Signal;
use uuid::Uuid;

fn email(to: &str, code: &str) -> NewJob<EmailJob> {
    NewJob::new(EmailJob {
        to: to.into(),
        message: EmailMessage::VerificationCode {
            recipient_name: "Ada".into(),
            purpose: CodePurpose::VerifyEmail,
            code: Sealed::seal(&berth_e2e::keyring(), to, code),
            expires_in_minutes: 10,
        },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn email_is_delivered_over_smtp_and_counted_in_metrics() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let smtp = SmtpSink::start().await;
    let app = TestApp::spawn(base_env(&db, &redis)).await;
    let _worker = BerthProcess::spawn(
        "berth-worker",
        &["--queues", "email"],
        &worker_env(
            &db,
            &redis,
            &[
                ("SMTP_URL", &smtp.url()),
                ("MAIL_FROM", "Berth <noreply@berth.test>"),
            ],
        ),
    );

    let id = app
        .state
        .jobs
        .enqueue(email("ada@example.test", "424242"))
        .await
        .unwrap()
        .id;
    let record = wait_for(&db.pool, &id, JobState::Succeeded, Duration::from_secs(30)).await;
    assert_eq!(record.attempts, 1);
    assert_eq!(record.error, None);
    assert!(record.started_at.is_some() && record.finished_at.is_some());
    assert!(
        record.worker.as_deref().unwrap().ends_with("/email"),
        "{record:?}"
    );

    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert!(
        message.contains("Subject: Verify your Berth account: 424242"),
        "{message}"
    );
    assert!(message.contains("To: ada@example.test"), "{message}");
    assert!(
        message.contains("From: Berth <noreply@berth.test>"),
        "{message}"
    );
    assert!(message.contains("Content-Type: text/plain"), "{message}");
    assert!(message.contains("Content-Type: text/html"), "{message}");

    assert_eq!(app.get("/api/v1/health/live").await.status(), 200);
    let res = app.get("/metrics").await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.contains("berth_http_requests_total{method=\"GET\",route=\"/api/v1/health/live\",status=\"200\"} 1"), "{text}");
    assert!(
        text.contains("berth_jobs_finished_total{kind=\"email.send\",outcome=\"succeeded\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "berth_job_duration_seconds_count{kind=\"email.send\",outcome=\"succeeded\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("berth_http_request_duration_seconds_bucket"),
        "{text}"
    );

    let file = berth_e2e::scratch_dir("metrics").join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool is installed (scripts/test.sh installs it)");
    assert!(
        check.status.success(),
        "promtool rejected /metrics: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Pruning folds finished jobs into totals: the counter does not go down.
    sqlx::query("UPDATE jobs SET finished_at = now() - interval '30 days', started_at = now() - interval '30 days'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        store::prune(&db.pool, Duration::from_secs(3600))
            .await
            .unwrap(),
        1
    );
    assert!(store::get(&db.pool, &id).await.unwrap().is_none());
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("berth_jobs_finished_total{kind=\"email.send\",outcome=\"succeeded\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_is_retried_with_backoff_then_fails_with_its_error() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let closed_port = free_port();
    let env = worker_env(
        &db,
        &redis,
        &[
            ("SMTP_URL", &format!("smtp://127.0.0.1:{closed_port}")),
            ("BERTH_EMAIL_MAX_ATTEMPTS", "3"),
            ("BERTH_EMAIL_BACKOFF_MS", "400"),
        ],
    );
    let jobs = client(&db, &redis, &env).await;
    let _worker = BerthProcess::spawn("berth-worker", &["--queues", "email"], &env);

    let id = jobs
        .enqueue(email("ada@example.test", "111111"))
        .await
        .unwrap()
        .id;
    eventually(
        Duration::from_secs(30),
        "a retry to be scheduled",
        || async {
            let r = job(&db.pool, &id).await;
            r.state == JobState::Queued && r.attempts == 1
        },
    )
    .await;
    let retrying = job(&db.pool, &id).await;
    assert!(
        error_of(&retrying).contains("SMTP delivery failed"),
        "{retrying:?}"
    );
    assert!(
        retrying.run_after > retrying.created_at,
        "backoff delays the retry"
    );

    let failed = wait_for(&db.pool, &id, JobState::Failed, Duration::from_secs(30)).await;
    assert_eq!(failed.attempts, 3, "stops at its attempt cap");
    assert!(
        error_of(&failed).contains("SMTP delivery failed"),
        "{failed:?}"
    );
    assert!(failed.finished_at.is_some());

    // A permanent failure (an unusable address) fails at once.
    let id = jobs
        .enqueue(email("not an address", "111111"))
        .await
        .unwrap()
        .id;
    let failed = wait_for(&db.pool, &id, JobState::Failed, Duration::from_secs(30)).await;
    assert_eq!(failed.attempts, 1);
    assert!(
        error_of(&failed).starts_with("invalid recipient address"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_job_loses_nothing_and_crash_loops_stop_at_the_cap() {
    let Pipeline {
        db,
        redis,
        env,
        jobs,
    } = pipeline(&[]).await;
    let first = diagnostic_worker(&env);

    let id = enqueue_diagnostic(&jobs, 3000).await;
    let running = wait_for(&db.pool, &id, JobState::Running, Duration::from_secs(30)).await;
    assert!(
        running
            .worker
            .as_deref()
            .unwrap()
            .contains(&format!(":{}:", first.pid())),
        "{running:?}"
    );
    first.signal(Signal::SIGKILL);

    let second = diagnostic_worker(&env);
    let done = wait_for(&db.pool, &id, JobState::Succeeded, Duration::from_secs(60)).await;
    assert_eq!(done.attempts, 2, "the killed attempt counts");
    assert!(
        done.worker
            .as_deref()
            .unwrap()
            .contains(&format!(":{}:", second.pid())),
        "{done:?}"
    );
    drop(second);

    // With a cap of one attempt, the redelivery after a crash fails the job
    // instead of running it again (a job that kills its worker cannot loop).
    let mut capped_env = env.clone();
    capped_env.insert("BERTH_DIAGNOSTIC_MAX_ATTEMPTS".into(), "1".into());
    let capped_jobs = client(&db, &redis, &capped_env).await;
    let third = diagnostic_worker(&capped_env);
    let id = enqueue_diagnostic(&capped_jobs, 3000).await;
    wait_for(&db.pool, &id, JobState::Running, Duration::from_secs(30)).await;
    third.signal(Signal::SIGKILL);
    let _fourth = diagnostic_worker(&capped_env);
    let failed = wait_for(&db.pool, &id, JobState::Failed, Duration::from_secs(60)).await;
    assert_eq!(failed.attempts, 2);
    assert!(
        error_of(&failed).contains("attempt cap of 1 reached"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_running_jobs_finish_then_exits_cleanly() {
    let Pipeline {
        db,
        redis: _redis,
        env,
        jobs,
    } = pipeline(&[]).await;
    let mut worker = diagnostic_worker(&env);
    let id = enqueue_diagnostic(&jobs, 1500).await;
    wait_for(&db.pool, &id, JobState::Running, Duration::from_secs(30)).await;
    worker.signal(Signal::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(30), worker.child.wait())
        .await
        .expect("worker exits after SIGTERM")
        .unwrap();
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        worker.output()
    );
    assert_eq!(job(&db.pool, &id).await.state, JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_worker_is_woken_by_the_push_not_by_polling() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    // With polling and heartbeats every 30 s, only the push notification can start
    // a job on an idle worker quickly.
    let env = worker_env(
        &db,
        &redis,
        &[
            ("BERTH_WORKER_POLL_MS", "30000"),
            ("BERTH_WORKER_HEARTBEAT_MS", "30000"),
        ],
    );
    let jobs = client(&db, &redis, &env).await;
    let _worker = diagnostic_worker(&env);
    // Let the worker register and go idle first.
    let warmup = enqueue_diagnostic(&jobs, 0).await;
    wait_for(
        &db.pool,
        &warmup,
        JobState::Succeeded,
        Duration::from_secs(45),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    for _ in 0..5 {
        let id = enqueue_diagnostic(&jobs, 0).await;
        let done = wait_for(&db.pool, &id, JobState::Succeeded, Duration::from_secs(40)).await;
        let pickup = done.started_at.unwrap() - done.created_at;
        assert!(pickup < chrono_ms(1000), "picked up after {pickup:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Runs the reconciler with the scheduler's default thresholds: how many jobs
/// it re-issued.
async fn reconcile(db: &TestDb) -> u64 {
    store::reconcile(&db.pool, Duration::from_secs(60), Duration::from_secs(600))
        .await
        .unwrap()
        .requeued
}

fn chrono_ms(ms: i64) -> chrono::TimeDelta {
    chrono::TimeDelta::milliseconds(ms)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_run_each_job_exactly_once() {
    let Pipeline {
        db,
        redis,
        env,
        jobs,
    } = pipeline(&[("BERTH_DIAGNOSTIC_CONCURRENCY", "8")]).await;
    let _a = diagnostic_worker(&env);
    let _b = diagnostic_worker(&env);
    // Both must be serving before the jobs arrive, or one could take them all.
    let conn = berth_jobs::redis_conn::connect(&redis.url()).await.unwrap();
    eventually(Duration::from_secs(30), "both workers to register", || {
        let mut conn = conn.clone();
        async move {
            let registered: i64 = redis::cmd("ZCARD")
                .arg("berth:diagnostic:workers")
                .query_async(&mut conn)
                .await
                .unwrap_or(0);
            registered == 2
        }
    })
    .await;
    let mut ids = Vec::new();
    // Long enough (20+ ms each, 8 at a time) that one worker cannot drain all
    // 300 before the other is woken, even on a loaded machine.
    for i in 0..300 {
        ids.push(enqueue_diagnostic(&jobs, 20 + i % 7).await);
    }
    eventually(Duration::from_secs(90), "300 jobs to succeed", || async {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        done == 300
    })
    .await;
    let (max_attempts, workers): (i32, i64) = sqlx::query_as(
        "SELECT max(attempts), count(DISTINCT split_part(worker, '/', 1)) FROM jobs",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(max_attempts, 1, "no job ran twice");
    assert_eq!(workers, 2, "both workers took jobs");
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_and_stale_deliveries_never_run() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let jobs = client(&db, &redis, &HashMap::new()).await;
    let conn = berth_jobs::redis_conn::connect(&redis.url()).await.unwrap();
    let mut relay = Relay::new(db.pool.clone(), conn.clone());
    let active_list = || {
        let mut conn = conn.clone();
        async move {
            redis::cmd("LLEN")
                .arg("berth:diagnostic:active")
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };

    // Committed but never dispatched (the enqueuer crashed): once past the grace
    // the sweep pushes it; before, it leaves the enqueuer time to push it.
    let mut tx = db.pool.begin().await.unwrap();
    let enqueued = store::enqueue(
        &mut tx,
        jobs.policies(),
        NewJob::new(DiagnosticJob::sleeping(0)),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(relay.drain().await.unwrap(), 0, "within the grace");
    sqlx::query("UPDATE jobs SET updated_at = now() - interval '10 seconds'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(relay.drain().await.unwrap(), 1);
    assert_eq!(relay.drain().await.unwrap(), 0, "marked pushed");
    // Pushed again: by a relay whose commit failed, and by a late immediate push.
    sqlx::query("UPDATE jobs SET pushed_at = NULL")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(relay.drain().await.unwrap(), 1);
    jobs.dispatch(&enqueued).await;
    assert_eq!(active_list().await, 1, "a delivery id is stored once");

    // Only the job's current delivery may claim it; once finished, never.
    let id = enqueued.id;
    assert!(
        store::claim(&db.pool, &id, "01STALEDELIVERY000000000000", "w")
            .await
            .unwrap()
            .is_none()
    );
    let claimed = store::claim(&db.pool, &id, &id, "w")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.attempts, 1);
    store::mark_succeeded(&db.pool, &id, &id).await.unwrap();
    assert!(
        store::claim(&db.pool, &id, &id, "w")
            .await
            .unwrap()
            .is_none()
    );

    // Cancelled before it starts: never runs.
    let cancelled = enqueue_diagnostic(&jobs, 0).await;
    assert_eq!(
        store::cancel(
            &mut db.pool.acquire().await.unwrap(),
            &cancelled,
            "cancelled by the test"
        )
        .await
        .unwrap(),
        store::CancelOutcome::Cancelled
    );
    assert!(
        store::claim(&db.pool, &cancelled, &cancelled, "w")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(job(&db.pool, &cancelled).await.state, JobState::Cancelled);

    // One pending job per dedupe key.
    let probe = || NewJob::new(DiagnosticJob::sleeping(0)).dedupe_key("probe:1");
    let first = jobs.enqueue(probe()).await.unwrap();
    let second = jobs.enqueue(probe()).await.unwrap();
    assert!(first.created() && !second.created());
    assert_eq!(first.id, second.id);

    // Concurrent enqueues share batched inserts; a key still yields one job.
    let racers = (0..20).map(|_| {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            let job = NewJob::new(DiagnosticJob::sleeping(0)).dedupe_key("probe:2");
            jobs.enqueue(job).await.unwrap()
        })
    });
    let results: Vec<_> = futures::future::join_all(racers)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(results.iter().filter(|e| e.created()).count(), 1);
    assert!(results.iter().all(|e| e.id == results[0].id));
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE dedupe_key = 'probe:2'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(pending, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reconciler_recovers_jobs_redis_lost() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::start().await;
    let jobs = client(&db, &redis, &HashMap::new()).await;
    let conn = berth_jobs::redis_conn::connect(&redis.url()).await.unwrap();
    let id = enqueue_diagnostic(&jobs, 0).await;
    // An hour later (no worker ran), the sweep has confirmed it in Redis…
    sqlx::query("UPDATE jobs SET updated_at = now() - interval '1 hour'")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(Relay::new(db.pool.clone(), conn).drain().await.unwrap(), 1);

    // …and then Redis restarts without persistence: the delivery is gone.
    redis.stop().await;
    redis.resume().await;
    assert_eq!(reconcile(&db).await, 1);

    let env = worker_env(&db, &redis, &[]);
    let _worker = diagnostic_worker(&env);
    let done = wait_for(&db.pool, &id, JobState::Succeeded, Duration::from_secs(30)).await;
    assert_eq!(done.attempts, 1);

    // A job left running past its timeout by a vanished worker: at its cap, failed.
    // It is written running in one transaction, so no worker or sweep sees it queued.
    let mut tx = db.pool.begin().await.unwrap();
    let stuck = store::enqueue(
        &mut tx,
        jobs.policies(),
        NewJob::new(DiagnosticJob::sleeping(0)),
    )
    .await
    .unwrap()
    .id;
    sqlx::query(
        "UPDATE jobs SET state = 'running', attempts = max_attempts, started_at = now() - interval '2 hours' WHERE id = $1",
    )
    .bind(&stuck)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // Re-issued, and failed at its next claim by the worker (which runs the
    // queue's failure hook), not left running.
    assert_eq!(reconcile(&db).await, 1);
    let failed = wait_for(&db.pool, &stuck, JobState::Failed, Duration::from_secs(30)).await;
    assert!(error_of(&failed).contains("attempt cap"), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_exits_non_zero_when_redis_goes_away() {
    let Pipeline {
        db,
        mut redis,
        env,
        jobs,
    } = pipeline(&[]).await;
    let mut worker = diagnostic_worker(&env);
    let id = enqueue_diagnostic(&jobs, 0).await;
    wait_for(&db.pool, &id, JobState::Succeeded, Duration::from_secs(30)).await;

    // A job running when Redis goes is finished and recorded before the
    // process exits: its side effects happened, so it must not stay `running`
    // (and be run again by the reconciler).
    let midway = enqueue_diagnostic(&jobs, 8_000).await;
    wait_for(
        &db.pool,
        &midway,
        JobState::Running,
        Duration::from_secs(30),
    )
    .await;
    redis.stop().await;
    let status = tokio::time::timeout(Duration::from_secs(60), worker.child.wait())
        .await
        .unwrap_or_else(|_| panic!("worker still alive with Redis gone:\n{}", worker.output()))
        .unwrap();
    assert!(!status.success(), "exit status {status:?}");
    let record = job(&db.pool, &midway).await;
    assert_eq!(
        (record.state, record.attempts),
        (JobState::Succeeded, 1),
        "{}",
        worker.output()
    );
}

/// A peer that misses a worker's heartbeats (a stalled process, a slow Redis)
/// strikes it from the queue's worker set; apalis-redis then refuses its fetches.
/// The worker registers again and goes on running jobs instead of exiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_struck_from_the_worker_set_registers_again() {
    let Pipeline {
        db,
        redis,
        env,
        jobs,
        ..
    } = pipeline(&[]).await;
    let mut worker = diagnostic_worker(&env);
    let first = enqueue_diagnostic(&jobs, 0).await;
    wait_for(
        &db.pool,
        &first,
        JobState::Succeeded,
        Duration::from_secs(30),
    )
    .await;

    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let workers_set = "berth:diagnostic:workers";
    let struck: u64 = redis::cmd("DEL")
        .arg(workers_set)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(struck, 1, "the worker was registered");

    for _ in 0..3 {
        let id = enqueue_diagnostic(&jobs, 0).await;
        wait_for(&db.pool, &id, JobState::Succeeded, Duration::from_secs(30)).await;
    }
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker exited:\n{}",
        worker.output()
    );
    let registered: u64 = redis::cmd("ZCARD")
        .arg(workers_set)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(registered, 1, "{}", worker.output());
    assert!(
        worker.output().contains("registering it again"),
        "{}",
        worker.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nine_thousand_due_jobs_do_not_stop_a_worker() {
    let Pipeline {
        db,
        redis: _redis,
        env,
        jobs,
    } = pipeline(&[("BERTH_DIAGNOSTIC_CONCURRENCY", "32")]).await;
    const JOBS: i64 = 9000;
    let mut tx = db.pool.begin().await.unwrap();
    for _ in 0..JOBS {
        store::enqueue(
            &mut tx,
            jobs.policies(),
            NewJob::new(DiagnosticJob::sleeping(0)),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let mut worker = diagnostic_worker(&env);
    eventually(Duration::from_secs(240), "9000 jobs to succeed", || async {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        done == JOBS
    })
    .await;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "worker still running"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_owner_cannot_hold_every_slot_of_a_queue() {
    let Pipeline {
        db,
        redis: _redis,
        env,
        jobs,
    } = pipeline(&[("BERTH_DIAGNOSTIC_PER_USER_RUNNING", "2")]).await;
    let busy = create_user(&db, NewUser::verified("busy@example.test")).await;
    let other = create_user(&db, NewUser::verified("other@example.test")).await;
    let mut busy_jobs = Vec::new();
    for _ in 0..6 {
        let job = NewJob::new(DiagnosticJob::sleeping(1500)).owner(busy);
        busy_jobs.push(jobs.enqueue(job).await.unwrap().id);
    }
    let _worker = diagnostic_worker(&env);
    let running_of = |owner: Uuid| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs WHERE owner_user_id = $1 AND state = 'running'",
            )
            .bind(owner)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    eventually(
        Duration::from_secs(20),
        "the busy owner's jobs to start",
        || async { running_of(busy).await > 0 },
    )
    .await;
    // The busy owner holds two of the worker's eight slots; another owner's
    // job starts at once.
    let theirs = jobs
        .enqueue(NewJob::new(DiagnosticJob::sleeping(0)).owner(other))
        .await
        .unwrap()
        .id;
    let mut most = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !busy_jobs.is_empty() {
        most = most.max(running_of(busy).await);
        let mut pending = Vec::new();
        for id in busy_jobs {
            if !job(&db.pool, &id).await.state.is_terminal() {
                pending.push(id);
            }
        }
        busy_jobs = pending;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the busy owner's jobs never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most <= 2, "{most} of one owner's jobs ran at once");
    assert_eq!(most, 2);
    // The other owner did not queue behind all of the busy owner's jobs.
    let quick = wait_for(
        &db.pool,
        &theirs,
        JobState::Succeeded,
        Duration::from_secs(10),
    )
    .await;
    let last_busy_start: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT max(started_at) FROM jobs WHERE owner_user_id = $1")
            .bind(busy)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(quick.started_at.unwrap() < last_busy_start);
    let attempts: Vec<i32> = sqlx::query_scalar(
        "SELECT attempts FROM jobs WHERE owner_user_id = $1 AND state = 'succeeded'",
    )
    .bind(busy)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(attempts, [1; 6], "waiting for a slot is not an attempt");
}
