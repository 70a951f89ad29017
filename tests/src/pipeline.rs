//! The job pipeline alone: a test database and Redis, `berth-worker`
//! processes with test timings, and a `JobClient` with the same policies.

use std::collections::HashMap;
use std::time::Duration;

use berth_jobs::store::{self, NewJob};
use berth_jobs::{DiagnosticJob, JobClient, JobRecord, JobState, Policies};
use sqlx::PgPool;

use crate::{BerthProcess, TestDb, TestRedis, base_env, eventually};

pub fn worker_env(
    db: &TestDb,
    redis: &TestRedis,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env = base_env(db, redis);
    for (k, v) in [
        ("BERTH_WORKER_HEARTBEAT_MS", "1000"),
        ("BERTH_WORKER_MISSED_HEARTBEATS", "3"),
        ("BERTH_MAIL_DIR", "/nonexistent/unused"),
    ]
    .iter()
    .chain(extra)
    {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// A test database and Redis, the worker settings and the job policies they imply.
pub struct Pipeline {
    pub db: TestDb,
    pub redis: TestRedis,
    pub env: HashMap<String, String>,
    pub jobs: JobClient,
}

pub async fn pipeline(extra: &[(&str, &str)]) -> Pipeline {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let env = worker_env(&db, &redis, extra);
    let jobs = client(&db, &redis, &env).await;
    Pipeline {
        db,
        redis,
        env,
        jobs,
    }
}

/// Enqueues with the policies a worker with `env` uses.
pub async fn client(db: &TestDb, redis: &TestRedis, env: &HashMap<String, String>) -> JobClient {
    let policies = Policies::from_env(&berth_config::Env::from_map(env.clone())).unwrap();
    let conn = berth_jobs::redis_conn::connect(&redis.url()).await.unwrap();
    JobClient::new(db.pool.clone(), conn, policies)
}

pub fn diagnostic_worker(env: &HashMap<String, String>) -> BerthProcess {
    BerthProcess::spawn("berth-worker", &["--queues", "diagnostic"], env)
}

pub async fn job(pool: &PgPool, id: &str) -> JobRecord {
    store::get(pool, id).await.unwrap().expect("job exists")
}

/// The job's recorded error; empty when it has none.
pub fn error_of(record: &JobRecord) -> &str {
    record.error.as_deref().unwrap_or_default()
}

pub async fn wait_for(pool: &PgPool, id: &str, state: JobState, timeout: Duration) -> JobRecord {
    let what = format!("job {id} to be {}", state.name());
    eventually(timeout, &what, || async {
        job(pool, id).await.state == state
    })
    .await;
    job(pool, id).await
}

pub async fn enqueue_diagnostic(jobs: &JobClient, sleep_ms: u64) -> String {
    jobs.enqueue(NewJob::new(DiagnosticJob::sleeping(sleep_ms)))
        .await
        .unwrap()
        .id
}
