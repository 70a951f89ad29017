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
    assert!(
        a.output().contains("pruned") || b.output().contains("pruned"),
        "prune ran"
    );

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
