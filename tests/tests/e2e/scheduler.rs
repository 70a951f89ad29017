use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use berth_e2e::{BerthProcess, TestDb, TestRedis, base_env, eventually};
use nix::sys::signal::Signal;

/// The ticks a scheduler's log says it fired.
fn fired_ticks(process: &BerthProcess) -> BTreeSet<String> {
    process
        .output()
        .lines()
        .filter(|l| l.contains("schedule fired"))
        .filter_map(|l| l.split("tick=").nth(1))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_schedulers_fire_each_tick_once_and_hand_over() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let mut env: HashMap<String, String> = base_env(&db, &redis);
    env.insert("BERTH_SCHEDULE_RECONCILE".into(), "* * * * * *".into());
    env.insert("BERTH_SCHEDULE_PRUNE".into(), "*/2 * * * * *".into());
    env.insert("BERTH_SCHEDULER_LEADER_TTL_MS".into(), "1500".into());

    let a = BerthProcess::spawn("berth-scheduler", &[], &env);
    let b = BerthProcess::spawn("berth-scheduler", &[], &env);
    eventually(Duration::from_secs(30), "six ticks fired", || async {
        fired_ticks(&a).len() + fired_ticks(&b).len() >= 6
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (ta, tb) = (fired_ticks(&a), fired_ticks(&b));
    assert!(
        ta.is_disjoint(&tb),
        "a tick fired in both: {:?}",
        ta.intersection(&tb).collect::<Vec<_>>()
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM schedule_ticks")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let fired_lines =
        a.output().matches("schedule fired").count() + b.output().matches("schedule fired").count();
    assert_eq!(
        rows as usize, fired_lines,
        "every fire claimed its own tick"
    );
    // The schedulers only enqueue: the work waits for a maintenance worker.
    let enqueued: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM jobs WHERE queue = 'maintenance' GROUP BY kind ORDER BY kind",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let kinds: Vec<&str> = enqueued.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["maintenance.prune", "maintenance.reconcile"]);

    // Stop whichever leads; the other takes over.
    let (leader, follower) = if ta.len() >= tb.len() { (a, b) } else { (b, a) };
    leader.signal(Signal::SIGKILL);
    let before = fired_ticks(&follower).len();
    eventually(
        Duration::from_secs(30),
        "the other scheduler to fire",
        || async { fired_ticks(&follower).len() >= before + 3 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_deletes_sign_in_state_that_can_no_longer_be_used() {
    use berth_e2e::accounts::{NewUser, create_user};
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let mut env: HashMap<String, String> = base_env(&db, &redis);
    env.insert("BERTH_SCHEDULE_PRUNE".into(), "* * * * * *".into());
    let user = create_user(&db, NewUser::verified("old@example.test")).await;
    for (id, expires, revoked) in [
        (
            "00000000-0000-0000-0000-000000000001",
            "now() - interval '1 minute'",
            "NULL",
        ),
        (
            "00000000-0000-0000-0000-000000000002",
            "now() + interval '1 day'",
            "now() - interval '31 days'",
        ),
        (
            "00000000-0000-0000-0000-000000000003",
            "now() + interval '1 day'",
            "now() - interval '1 day'",
        ),
        (
            "00000000-0000-0000-0000-000000000004",
            "now() + interval '1 day'",
            "NULL",
        ),
    ] {
        sqlx::query(&format!(
            "INSERT INTO sessions (id, user_id, auth_method, expires_at, revoked_at) \
             VALUES ('{id}', $1, 'password', {expires}, {revoked})"
        ))
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES \
         ('old', '00000000-0000-0000-0000-000000000004', now() - interval '1 second'), \
         ('live', '00000000-0000-0000-0000-000000000004', now() + interval '1 day')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO email_codes (user_id, purpose, code_hash, expires_at) \
         VALUES ($1, 'login', 'x', now() - interval '1 second'), ($1, 'verify_email', 'y', now() + interval '5 minutes')",
    )
    .bind(user)
    .execute(&db.pool)
    .await
    .unwrap();

    // The scheduler only enqueues; a worker serving `maintenance` prunes.
    let _scheduler = BerthProcess::spawn("berth-scheduler", &[], &env);
    let pool = db.pool.clone();
    eventually(Duration::from_secs(10), "a prune job enqueued", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM jobs WHERE kind = 'maintenance.prune' AND queue = 'maintenance'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                > 0
        }
    })
    .await;
    let _worker = BerthProcess::spawn("berth-worker", &["--queues", "maintenance"], &env);
    eventually(Duration::from_secs(30), "expired rows pruned", || {
        let pool = pool.clone();
        async move {
            let left: (i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM refresh_tokens), \
                 (SELECT count(*) FROM email_codes)",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            left == (2, 1, 1)
        }
    })
    .await;
    let kept: Vec<String> = sqlx::query_scalar("SELECT id::text FROM sessions ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        kept,
        [
            "00000000-0000-0000-0000-000000000003",
            "00000000-0000-0000-0000-000000000004"
        ]
    );
    // The job that pruned them is recorded a moment after its deletes.
    let count = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    eventually(Duration::from_secs(20), "a prune job to succeed", || async {
        count("SELECT count(*) FROM jobs WHERE kind = 'maintenance.prune' AND state = 'succeeded'")
            .await
            >= 1
    })
    .await;
    // A tick a second, yet never more than one prune queued and one running:
    // each newer one supersedes the one still waiting.
    let pending = count(
        "SELECT count(*) FROM jobs WHERE kind = 'maintenance.prune' AND state IN ('queued', 'running')",
    )
    .await;
    assert!(pending <= 2, "{pending} prune jobs pending");
}
