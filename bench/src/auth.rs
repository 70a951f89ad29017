//! Part 4: accounts. argon2id dominates a password sign-in, so the hash alone
//! is timed first and the sign-in rate is read against what the cores allow at
//! that cost. Then an authenticated `GET /auth/me` (JWT check plus the session
//! lookup every request makes), beside `GET /health/live` through the same
//! server as the ceiling of the HTTP stack, and beside a bare axum + sqlx
//! server doing the same lookup (`bare_me`) as the honest bound.

use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_api::auth::password::{hash_password_blocking, verify_password};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::Setup;

const EMAIL: &str = "bench@example.test";
const PASSWORD: &str = "correct horse battery staple";
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const JWT_SECRET: &str = "bench-secret-bench-secret-bench-secret";
const DB_CONNECTIONS: &str = "20";

pub async fn accounts(setup: &Setup) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism()?.get();
    // 1. argon2id alone, one thread.
    let rounds = 20;
    let started = Instant::now();
    let mut hash = String::new();
    for _ in 0..rounds {
        hash = hash_password_blocking(PASSWORD)?;
    }
    let hash_ms = started.elapsed().as_secs_f64() * 1000.0 / rounds as f64;
    let started = Instant::now();
    for _ in 0..rounds {
        anyhow::ensure!(verify_password(PASSWORD, Some(&hash)).await?);
    }
    let verify_ms = started.elapsed().as_secs_f64() * 1000.0 / rounds as f64;

    sqlx::query("TRUNCATE users CASCADE")
        .execute(&setup.pool)
        .await?;
    sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, email_verified) \
         VALUES (gen_random_uuid(), $1, 'Bench', $2, true)",
    )
    .bind(EMAIL)
    .bind(&hash)
    .execute(&setup.pool)
    .await?;

    let (mut api, base) = spawn_api(setup).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let login = json!({ "identifier": EMAIL, "password": PASSWORD });
    let api_pid = api.id().context("berth-api runs")?;
    let idle_rss = rss_mb(api_pid)?;
    // Exactly 1,000 sign-ins, 16 at a time, then the resident set.
    let sign_ins = 1000;
    let url = format!("{base}/api/v1/auth/login");
    let results = futures::stream::iter(0..sign_ins)
        .map(|_| client.post(&url).json(&login).send())
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let failed = results
        .iter()
        .filter(|r| !r.as_ref().is_ok_and(|r| r.status().is_success()))
        .count();
    let signed_in_rss = rss_mb(api_pid)?;
    let clients = setup.clients;
    let seconds = setup.seconds;

    let (url, body) = (format!("{base}/api/v1/auth/login"), login.clone());
    let logins = load(&client, clients, seconds, None, move |c| {
        c.post(&url).json(&body)
    })
    .await?;
    let signed_in: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&login)
        .send()
        .await?
        .json()
        .await?;
    let token = signed_in["data"]["accessToken"]
        .as_str()
        .context("no access token")?
        .to_owned();
    let me_clients = 32;
    // The sign-ins above left thousands of new rows: vacuum and checkpoint
    // now, or autovacuum and the checkpointer land in the middle of a round.
    for statement in ["VACUUM ANALYZE", "CHECKPOINT"] {
        sqlx::query(statement).execute(&setup.pool).await?;
    }
    // berth-api and the bare bound both run; rounds alternate between them so
    // the machine's noise (autovacuum, the other processes) falls on both.
    let (mut bare, bare_base) = spawn_bare(setup, &token).await?;
    let (mut me_rates, mut bare_rates) = (Vec::new(), Vec::new());
    let (mut me_cpu, mut bare_cpu) = (Vec::new(), Vec::new());
    let mut me = None;
    let mut bare_me = None;
    // At least five pairs: one noisy pair cannot move the median.
    for _ in 0..setup.rounds.max(5) {
        let url = format!("{base}/api/v1/auth/me");
        let token_me = token.clone();
        let round = load(&client, me_clients, seconds, api.id(), move |c| {
            c.get(&url).bearer_auth(&token_me)
        })
        .await?;
        me_rates.push(round.rate);
        me_cpu.extend(round.cpu_us_per_answer);
        me = Some(round);
        let url = format!("{bare_base}/me");
        let token_bare = token.clone();
        let round = load(&client, me_clients, seconds, bare.id(), move |c| {
            c.get(&url).bearer_auth(&token_bare)
        })
        .await?;
        bare_rates.push(round.rate);
        bare_cpu.extend(round.cpu_us_per_answer);
        bare_me = Some(round);
    }
    let (me, bare_me) = (me.expect("a round"), bare_me.expect("a round"));
    let url = format!("{base}/api/v1/health/live");
    let live = load(&client, me_clients, seconds, None, move |c| c.get(&url)).await?;
    api.kill().await?;
    bare.kill().await?;
    let me_rate = crate::median(me_rates.clone());
    let bare_rate = crate::median(bare_rates.clone());
    // The machine's noise moves both servers' rates together over seconds:
    // each round of berth-api is compared with the bare round right after it.
    let paired = crate::median(
        me_rates
            .iter()
            .zip(&bare_rates)
            .map(|(me, bare)| me / bare)
            .collect(),
    );

    println!("4. Accounts (release berth-api, {cores} cores, client in the same machine)");
    println!(
        "   argon2id (19 MiB, t=2, p=1) alone: hash {hash_ms:.1} ms, verify {verify_ms:.1} ms \
         -> at most {:.0} verifications/s on {cores} cores",
        cores as f64 * 1000.0 / verify_ms
    );
    println!(
        "   berth-api resident memory: {idle_rss:.0} MB idle, {signed_in_rss:.0} MB after \
         {sign_ins} sign-ins ({failed} failed) (bound: < 100 MB)"
    );
    println!(
        "   POST /auth/login, {clients} clients, {seconds} s: {:.0} sign-ins/s \
         ({:.0} % of that bound), p50 {:.0} ms, p99 {:.0} ms, {} errors",
        logins.rate,
        100.0 * logins.rate / (cores as f64 * 1000.0 / verify_ms),
        logins.p50_ms,
        logins.p99_ms,
        logins.errors
    );
    println!(
        "   GET /auth/me (bearer JWT + session lookup), {me_clients} clients, rounds {}: median {me_rate:.0} req/s \
         (last round p50 {:.2} ms, p99 {:.2} ms, {} errors)",
        crate::rounds_text(&me_rates),
        me.p50_ms,
        me.p99_ms,
        me.errors
    );
    println!(
        "   bare axum + sqlx, same JWT check and session query, {me_clients} clients, rounds {}: \
         median {bare_rate:.0} req/s (last round p50 {:.2} ms, p99 {:.2} ms, {} errors)",
        crate::rounds_text(&bare_rates),
        bare_me.p50_ms,
        bare_me.p99_ms,
        bare_me.errors,
    );
    println!(
        "   -> /auth/me at {:.0} % of the bare bound (median of the rounds' pairs; target >= 80 %); \
         CPU per answer {:.0} us vs bare {:.0} us (medians)",
        100.0 * paired,
        crate::median(me_cpu),
        crate::median(bare_cpu),
    );
    println!(
        "   GET /health/live (no auth, no database), {me_clients} clients: {:.0} req/s, \
         p50 {:.2} ms, p99 {:.2} ms (the HTTP stack alone)",
        live.rate, live.p50_ms, live.p99_ms
    );
    Ok(())
}

/// The bare bound (`bare_me`), started from this binary, with berth-api's
/// secret and pool size; ready once it answers `token`.
async fn spawn_bare(setup: &Setup, token: &str) -> anyhow::Result<(Child, String)> {
    let port = berth_e2e::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(std::env::current_exe()?)
        .arg("bare-me-server")
        .env("DATABASE_URL", &setup.database_url)
        .env("BENCH_BARE_ADDR", format!("127.0.0.1:{port}"))
        .env("JWT_SECRET", JWT_SECRET)
        .env("BERTH_DB_MAX_CONNECTIONS", DB_CONNECTIONS)
        .kill_on_drop(true)
        .spawn()?;
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = client
            .get(format!("{base}/me"))
            .bearer_auth(token)
            .send()
            .await;
        if answer.is_ok_and(|r| r.status().is_success()) {
            return Ok((child, base));
        }
        anyhow::ensure!(Instant::now() < deadline, "the bare server did not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// VmRSS of `pid`, in MB.
fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

async fn spawn_api(setup: &Setup) -> anyhow::Result<(Child, String)> {
    let port = berth_e2e::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let bin = std::env::var("BENCH_API_BIN")
        .context("BENCH_API_BIN is not set (run scripts/bench.sh)")?;
    let child = Command::new(bin)
        .env("DATABASE_URL", &setup.database_url)
        .env("REDIS_URL", &setup.redis_url)
        .env("BERTH_API_ADDR", format!("127.0.0.1:{port}"))
        .env("JWT_SECRET", JWT_SECRET)
        .env("BERTH_MASTER_KEY", MASTER_KEY)
        .env("BERTH_DB_MAX_CONNECTIONS", DB_CONNECTIONS)
        .env("BERTH_RATE_LIMIT_LOGIN", "1000000/60")
        .env("BERTH_RATE_LIMIT_LOGIN_FAILURES", "1000000/60")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if reqwest::get(format!("{base}/api/v1/health/ready"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok((child, base));
        }
        anyhow::ensure!(Instant::now() < deadline, "berth-api did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct LoadResult {
    rate: f64,
    /// The server process's CPU time (user + system) per counted answer.
    cpu_us_per_answer: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

/// CPU time (user + system) `pid` has used so far, in microseconds.
fn cpu_us(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command name")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // Linux reports these in USER_HZ, 100 on every architecture Berth runs on.
    Ok(ticks * 10_000.0)
}

/// `clients` loops sending `request` for `seconds`; successful answers count.
/// With `server`, the CPU time that process spent while counting is measured.
async fn load<F>(
    client: &reqwest::Client,
    clients: usize,
    seconds: u64,
    server: Option<u32>,
    request: F,
) -> anyhow::Result<LoadResult>
where
    F: Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync + 'static + Clone,
{
    // One second of warm-up, not counted.
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, request, stop, counting) = (
            client.clone(),
            request.clone(),
            stop.clone(),
            counting.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let ok = request(&client)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if counting.load(Ordering::Relaxed) {
                    if ok {
                        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let cpu_before = server.map(cpu_us).transpose()?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_spent = match (server, cpu_before) {
        (Some(pid), Some(before)) => Some(cpu_us(pid)? - before),
        _ => None,
    };
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(LoadResult {
        rate: latencies.len() as f64 / elapsed,
        cpu_us_per_answer: cpu_spent.map(|us| us / latencies.len().max(1) as f64),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        errors,
    })
}
