//! `scripts/bench.sh` runs this against a Postgres and a Redis of its own and
//! prints each measurement beside the bound it is compared with, measured in the
//! same run on the same services. Nothing here asserts: the numbers are for people.

mod auth;
mod backups;
mod bare_me;
mod deploys;
mod files;
mod probes;
mod remote_jobs;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use apalis::prelude::{BoxDynError, Data, WorkerBuilder, WorkerBuilderExt};
use apalis_redis::RedisStorage;
use berth_jobs::relay::Relay;
use berth_jobs::store::{self, NewJob};
use berth_jobs::transport::{Delivery, push_deliveries};
use berth_jobs::{DiagnosticJob, JobClient, Policies};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

pub struct Setup {
    pub database_url: String,
    pub redis_url: String,
    pub pool: PgPool,
    pgbench: PathBuf,
    worker_bin: PathBuf,
    pub clients: usize,
    pub seconds: u64,
    pub rounds: usize,
    jobs: usize,
    /// Phase 2 runs at each of these (`BENCH_CONCURRENCY=16,32`), both sides alike.
    concurrency: Vec<usize>,
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set (run scripts/bench.sh)"))
}

pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Part 4 starts this binary again as its bare bound.
    if std::env::args().nth(1).as_deref() == Some("bare-me-server") {
        return bare_me::serve().await;
    }
    let database_url = env("BENCH_DATABASE_URL")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .connect(&database_url)
        .await?;
    berth_api::MIGRATOR.run(&pool).await?;
    let setup = Setup {
        redis_url: env("BENCH_REDIS_URL")?,
        pgbench: env("BENCH_PGBENCH")?.into(),
        worker_bin: env("BENCH_WORKER_BIN")?.into(),
        clients: setting("BENCH_CLIENTS", 8),
        seconds: setting("BENCH_SECONDS", 5),
        rounds: setting("BENCH_ROUNDS", 3),
        jobs: setting("BENCH_JOBS", 10_000),
        concurrency: std::env::var("BENCH_CONCURRENCY")
            .unwrap_or_else(|_| "16,32".into())
            .split(',')
            .map(|c| {
                c.trim()
                    .parse()
                    .context("BENCH_CONCURRENCY: comma-separated numbers")
            })
            .collect::<anyhow::Result<_>>()?,
        database_url,
        pool,
    };

    println!(
        "Berth job pipeline benchmark ({} cores)",
        std::thread::available_parallelism()?.get()
    );
    println!();
    // BENCH_ONLY=2 runs one measurement, e.g. while tuning it.
    let only: Option<u32> = std::env::var("BENCH_ONLY")
        .ok()
        .and_then(|v| v.parse().ok());
    let wanted = |n: u32| only.is_none_or(|o| o == n);
    if wanted(1) {
        enqueue_vs_pgbench(&setup).await?;
    }
    if wanted(2) {
        for &concurrency in &setup.concurrency {
            processing_vs_bare_apalis(&setup, concurrency).await?;
        }
    }
    if wanted(3) {
        latency_with_idle_worker(&setup).await?;
    }
    if wanted(4) {
        auth::accounts(&setup).await?;
    }
    if wanted(5) {
        probes::probes(&setup).await?;
    }
    if wanted(6) {
        remote_jobs::remote_jobs(&setup).await?;
    }
    if wanted(7) {
        deploys::deploys(&setup).await?;
    }
    if wanted(8) {
        backups::backups(&setup).await?;
    }
    if wanted(9) {
        files::files(&setup).await?;
    }
    Ok(())
}

pub async fn reset(setup: &Setup) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE jobs, job_outcome_totals CASCADE")
        .execute(&setup.pool)
        .await?;
    let mut redis = berth_jobs::redis_conn::connect(&setup.redis_url).await?;
    redis::cmd("FLUSHDB").query_async::<()>(&mut redis).await?;
    Ok(())
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

pub fn rounds_text(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Durable enqueue through `JobClient` (the job row committed and its delivery
/// pushed to Redis before each call returns; the relay sweep running as it does in
/// production) beside pgbench's single-row INSERT transactions at the same client
/// count. The two alternate over several rounds so machine noise falls on both.
async fn enqueue_vs_pgbench(setup: &Setup) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_insert (id BIGSERIAL PRIMARY KEY, v DOUBLE PRECISION, created_at TIMESTAMPTZ DEFAULT now())",
    )
    .execute(&setup.pool)
    .await?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..setup.rounds {
        ours.push(enqueue_round(setup).await?);
        theirs.push(pgbench_round(setup).await?);
    }
    sqlx::query("DROP TABLE bench_insert")
        .execute(&setup.pool)
        .await?;
    let (ours_median, theirs_median) = (median(ours.clone()), median(theirs.clone()));
    println!(
        "1. Durable enqueue, {} clients, {} rounds of {} s each side, alternating",
        setup.clients, setup.rounds, setup.seconds
    );
    println!(
        "   JobClient::enqueue (row + Redis push):   median {ours_median:>7.0} jobs/s  (rounds: {})",
        rounds_text(&ours)
    );
    println!(
        "   pgbench single-row INSERT:               median {theirs_median:>7.0} tps     (rounds: {})",
        rounds_text(&theirs)
    );
    println!(
        "   ratio of medians: {:.0} % (target >= 50 %)",
        100.0 * ours_median / theirs_median
    );
    println!();
    Ok(())
}

async fn enqueue_round(setup: &Setup) -> anyhow::Result<f64> {
    reset(setup).await?;
    let redis = berth_jobs::redis_conn::connect(&setup.redis_url).await?;
    let jobs = JobClient::new(setup.pool.clone(), redis.clone(), Policies::defaults());
    let stop_relay = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(setup.pool.clone(), redis).run(stop_relay.clone()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(setup.seconds);
    let mut clients = Vec::new();
    for _ in 0..setup.clients {
        let jobs = jobs.clone();
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                jobs.enqueue(NewJob::new(DiagnosticJob::sleeping(0)))
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut enqueued = 0u64;
    for client in clients {
        enqueued += client.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop_relay.cancel();
    relay.await?;
    let in_redis: i64 = {
        let mut conn = berth_jobs::redis_conn::connect(&setup.redis_url).await?;
        redis::cmd("LLEN")
            .arg("berth:diagnostic:active")
            .query_async(&mut conn)
            .await?
    };
    if in_redis as u64 != enqueued {
        bail!("{enqueued} jobs enqueued but {in_redis} deliveries in Redis");
    }
    Ok(enqueued as f64 / elapsed)
}

async fn pgbench_round(setup: &Setup) -> anyhow::Result<f64> {
    let script = std::env::temp_dir().join("berth-bench-insert.sql");
    std::fs::write(&script, "INSERT INTO bench_insert (v) VALUES (random());\n")?;
    let output = Command::new(&setup.pgbench)
        .args([
            "-n",
            "-c",
            &setup.clients.to_string(),
            "-j",
            "2",
            "-T",
            &setup.seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(&setup.database_url)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .with_context(|| {
            format!(
                "pgbench output: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

fn spawn_worker(setup: &Setup, extra: &[(&str, String)]) -> anyhow::Result<Child> {
    spawn_worker_for(setup, "diagnostic", extra)
}

pub fn spawn_worker_for(
    setup: &Setup,
    queues: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Child> {
    let mut command = Command::new(&setup.worker_bin);
    command
        .args(["--queues", queues])
        .env("DATABASE_URL", &setup.database_url)
        .env("REDIS_URL", &setup.redis_url)
        .env(
            "BERTH_MASTER_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .env("BERTH_DB_MAX_CONNECTIONS", "40")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in extra {
        command.env(k, v);
    }
    Ok(command.spawn()?)
}

/// No-op jobs through one berth-worker beside a bare apalis-redis worker draining
/// the same number of tasks pushed the same way, at the same concurrency,
/// alternating over several rounds.
async fn processing_vs_bare_apalis(setup: &Setup, concurrency: usize) -> anyhow::Result<()> {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..setup.rounds {
        ours.push(berth_worker_round(setup, concurrency).await?);
        theirs.push(bare_apalis_round(setup, concurrency).await?);
    }
    let (ours_median, theirs_median) = (median(ours.clone()), median(theirs.clone()));
    println!(
        "2. No-op job processing, one worker, concurrency {}, {} jobs, {} rounds each side, alternating",
        concurrency, setup.jobs, setup.rounds
    );
    println!(
        "   berth-worker (claim + finish in Postgres): median {ours_median:>6.0} jobs/s  (rounds: {})",
        rounds_text(&ours)
    );
    println!(
        "   bare apalis-redis worker:                  median {theirs_median:>6.0} jobs/s  (rounds: {})",
        rounds_text(&theirs)
    );
    println!(
        "   ratio of medians: {:.0} % (target >= 80 %)",
        100.0 * ours_median / theirs_median
    );
    println!();
    Ok(())
}

async fn berth_worker_round(setup: &Setup, concurrency: usize) -> anyhow::Result<f64> {
    reset(setup).await?;
    let policies = Policies::defaults();
    let mut tx = setup.pool.begin().await?;
    for _ in 0..setup.jobs {
        store::enqueue(&mut tx, &policies, NewJob::new(DiagnosticJob::sleeping(0))).await?;
    }
    tx.commit().await?;
    // Past the sweep's grace, so the drain below pushes them all.
    sqlx::query("UPDATE jobs SET updated_at = now() - interval '1 minute'")
        .execute(&setup.pool)
        .await?;
    // TRUNCATE left the planner no statistics, so it would plan the claim join for
    // an empty table until autoanalyze happens mid-round; a live table has them.
    sqlx::query("ANALYZE jobs").execute(&setup.pool).await?;
    let redis = berth_jobs::redis_conn::connect(&setup.redis_url).await?;
    Relay::new(setup.pool.clone(), redis.clone())
        .drain()
        .await?;

    let mut worker = spawn_worker(
        setup,
        &[("BERTH_DIAGNOSTIC_CONCURRENCY", concurrency.to_string())],
    )?;
    let timeout = Instant::now() + Duration::from_secs(600);
    // Progress is read from the small partial index of unfinished jobs, and not
    // often: the bare baseline pays nothing for its progress counter either.
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")
                .fetch_one(&setup.pool)
                .await?;
        if left == 0 {
            break;
        }
        if Instant::now() > timeout {
            bail!("berth-worker left {left} of {} jobs unfinished", setup.jobs);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    worker.kill().await?;
    let span: f64 = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM max(finished_at) - min(started_at))::float8 FROM jobs",
    )
    .fetch_one(&setup.pool)
    .await?;
    Ok(setup.jobs as f64 / span)
}

/// The baseline: apalis-redis alone, no Postgres bookkeeping.
async fn bare_apalis_round(setup: &Setup, concurrency: usize) -> anyhow::Result<f64> {
    reset(setup).await?;
    let mut redis = berth_jobs::redis_conn::connect(&setup.redis_url).await?;
    let config = apalis_redis::Config::default()
        .queue("bench:bare")
        .batch_size(1);
    let tasks: Vec<(String, Vec<u8>)> = (0..setup.jobs)
        .map(|_| {
            let id = ulid::Ulid::generate().to_string();
            let args = serde_json::to_vec(&Delivery {
                job_id: id.clone(),
                delivery_id: id.clone(),
            })
            .expect("json");
            (id, args)
        })
        .collect();
    for chunk in tasks.chunks(500) {
        push_deliveries(&mut redis, &config, chunk).await?;
    }
    struct Progress {
        done: AtomicUsize,
        first: std::sync::OnceLock<Instant>,
        last: std::sync::Mutex<Option<Instant>>,
    }
    let progress = Arc::new(Progress {
        done: AtomicUsize::new(0),
        first: std::sync::OnceLock::new(),
        last: std::sync::Mutex::new(None),
    });
    async fn noop(_delivery: Delivery, progress: Data<Arc<Progress>>) -> Result<(), BoxDynError> {
        progress.first.get_or_init(Instant::now);
        progress.done.fetch_add(1, Ordering::Relaxed);
        *progress.last.lock().expect("lock") = Some(Instant::now());
        Ok(())
    }
    let storage = RedisStorage::<Delivery, _>::new(redis.clone()).with_config(config);
    let bare = WorkerBuilder::new(format!(
        "bench-bare-{}-{}",
        std::process::id(),
        ulid::Ulid::generate()
    ))
    .backend(storage)
    .data(progress.clone())
    .concurrency(concurrency)
    .build(noop);
    let handle = tokio::spawn(async move { bare.run().await });
    while progress.done.load(Ordering::Relaxed) < setup.jobs {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.abort();
    let first = *progress.first.get().expect("started");
    let last = progress.last.lock().expect("lock").expect("finished");
    Ok(setup.jobs as f64 / (last - first).as_secs_f64())
}

pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// Enqueue-to-start latency through the whole path (commit, Redis push, pub/sub
/// wake-up, fetch, claim) with an idle worker, and that idle
/// worker's CPU use. The worker runs with its production defaults.
async fn latency_with_idle_worker(setup: &Setup) -> anyhow::Result<()> {
    reset(setup).await?;
    let redis = berth_jobs::redis_conn::connect(&setup.redis_url).await?;
    let jobs = JobClient::new(setup.pool.clone(), redis.clone(), Policies::defaults());
    let stop_relay = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(setup.pool.clone(), redis).run(stop_relay.clone()));
    let mut worker = spawn_worker(setup, &[])?;
    let pid = worker.id().context("worker pid")?;

    let warmup = jobs
        .enqueue(NewJob::new(DiagnosticJob::sleeping(0)))
        .await?
        .id;
    wait_succeeded(&setup.pool, &warmup).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let idle_seconds = 20.0;
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let before = cpu_ticks(pid)?;
    tokio::time::sleep(Duration::from_secs_f64(idle_seconds)).await;
    let idle_cpu = 100.0 * (cpu_ticks(pid)? - before) as f64 / ticks_per_second / idle_seconds;

    let mut latencies = Vec::new();
    for i in 0..200u64 {
        let id = jobs
            .enqueue(NewJob::new(DiagnosticJob::sleeping(0)))
            .await?
            .id;
        wait_succeeded(&setup.pool, &id).await?;
        let ms: f64 = sqlx::query_scalar("SELECT EXTRACT(EPOCH FROM started_at - created_at)::float8 * 1000 FROM jobs WHERE id = $1")
            .bind(&id)
            .fetch_one(&setup.pool)
            .await?;
        latencies.push(ms);
        tokio::time::sleep(Duration::from_millis(20 + (i * 7) % 40)).await;
    }
    worker.kill().await?;
    stop_relay.cancel();
    relay.await?;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];

    println!(
        "3. Enqueue-to-start latency, idle worker, {} jobs one at a time",
        latencies.len()
    );
    println!(
        "   p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 50 ms)",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "   idle worker CPU over {idle_seconds:.0} s: {idle_cpu:.2} % of one core (target < 1 %)"
    );
    Ok(())
}

async fn wait_succeeded(pool: &PgPool, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
        if state == "succeeded" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("job {id} still {state} after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
