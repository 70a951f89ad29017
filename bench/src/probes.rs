//! Part 5: how many servers one `berth-worker` probes per minute on this
//! machine, with its CPU and memory, beside a plain `ssh` client loop running
//! the same command against the same servers at the same concurrency. The
//! servers are one real sshd answering on 200 loopback addresses (the test
//! harness's `TestSshd`), without a container engine: on these two cores one
//! podman answering every server's `docker ps` would be what is measured.
//!
//! Both log in as the harness's user with a plain `/bin/sh` login, as on a
//! stock server. This machine's root runs `bash`, and bash reads
//! `~/.bashrc` for every command sshd starts; root's `~/.bashrc` here runs
//! `pyenv init` (about a hundred processes, over 100 ms of CPU per command),
//! which would be what is measured. The one-server line shows both.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_e2e::ssh_servers::{PASSWORD_USER, TestSshd};
use berth_jobs::store::NewJob;
use berth_jobs::{JobClient, Policies, ServerProbe};
use berth_secrets::server_secret_binding;
use tokio::process::Command;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::{Setup, cpu_ticks, reset};

const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn children_cpu_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // cutime and cstime: fields 16 and 17.
    Ok(fields[13].parse::<u64>()? + fields[14].parse::<u64>()?)
}

/// The whole machine's busy and total CPU ticks (`/proc/stat`): whether the
/// test servers, on the same cores, are what sets the pace.
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .context("/proc/stat")?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = fields.iter().sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}

pub async fn probes(setup: &Setup) -> anyhow::Result<()> {
    let count: u8 = crate::setting("BENCH_SERVERS", 200);
    let concurrency: usize = crate::setting("BENCH_PROBE_CONCURRENCY", 16);
    reset(setup).await?;
    sqlx::query("TRUNCATE users CASCADE")
        .execute(&setup.pool)
        .await?;
    let sshd = TestSshd::start_without_containers(count).await;
    let fingerprint = sshd.host_key_fingerprint().await;

    let keys = berth_secrets::Keyring::new(&base64_key(MASTER_KEY)?, &[]);
    let user = Uuid::new_v4();
    sqlx::query("INSERT INTO users (id, email, name, email_verified) VALUES ($1, 'bench@example.test', 'Bench', true)")
        .bind(user)
        .execute(&setup.pool)
        .await?;
    let mut servers = Vec::new();
    for i in 0..count as usize {
        let id = Uuid::new_v4();
        let row = id.to_string();
        let sealed = keys.seal(sshd.key.as_bytes(), server_secret_binding(&row, "secret"));
        sqlx::query(
            "INSERT INTO servers (id, owner_user_id, name, host, port, username, auth_type, secret, \
             secret_key_id, host_key, status) VALUES ($1, $2, $3, $4, $5, $6, 'key', $7, $8, $9, 'online')",
        )
        .bind(id)
        .bind(user)
        .bind(format!("bench-{i}"))
        .bind(sshd.host(i))
        .bind(sshd.port as i32)
        .bind(PASSWORD_USER)
        .bind(sealed)
        .bind(keys.current_key_id())
        .bind(&fingerprint)
        .execute(&setup.pool)
        .await?;
        servers.push(id);
    }
    sqlx::query("INSERT INTO alert_rules (user_id, cpu_threshold, ram_threshold, disk_threshold, swap_threshold, email_alerts) VALUES ($1, 100, 100, 100, 100, false)")
        .bind(user)
        .execute(&setup.pool)
        .await?;

    let mut worker = crate::spawn_worker_for(
        setup,
        "probe",
        &[
            ("BERTH_PROBE_CONCURRENCY", concurrency.to_string()),
            ("BERTH_MASTER_KEY", MASTER_KEY.to_owned()),
        ],
    )?;
    let pid = worker.id().context("worker pid")?;
    let redis = berth_jobs::redis_conn::connect(&setup.redis_url).await?;
    let jobs = JobClient::new(setup.pool.clone(), redis, Policies::defaults());

    let mut rounds = Vec::new();
    for _ in 0..2 {
        sqlx::query("DELETE FROM jobs").execute(&setup.pool).await?;
        let before = cpu_ticks(pid)?;
        let machine_before = machine_ticks()?;
        let started = Instant::now();
        let enqueued = futures::future::join_all(servers.iter().map(|id| {
            jobs.enqueue(
                NewJob::new(ServerProbe { server_id: *id })
                    .owner(user)
                    .server(*id),
            )
        }))
        .await;
        for e in enqueued {
            e?;
        }
        loop {
            let (done, failed): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE state IN ('succeeded', 'failed')), count(*) FILTER (WHERE state = 'failed') FROM jobs",
            )
            .fetch_one(&setup.pool)
            .await?;
            if done as usize == servers.len() {
                anyhow::ensure!(failed == 0, "{failed} probes failed");
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(300),
                "probes did not finish"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu_seconds = (cpu_ticks(pid)? - before) as f64 / 100.0;
        rounds.push((elapsed, cpu_seconds));
        // Where a probe's time goes: waiting to start, and running.
        let (wait, run, most): (f64, f64, i64) = sqlx::query_as(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM started_at - created_at))::float8, \
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM finished_at - started_at))::float8, \
                    (SELECT max(n) FROM (SELECT (SELECT count(*) FROM jobs o WHERE o.started_at <= j.started_at \
                                                  AND o.finished_at > j.started_at) AS n FROM jobs j) c) \
             FROM jobs",
        )
        .fetch_one(&setup.pool)
        .await?;
        let machine_after = machine_ticks()?;
        let busy = 100.0 * (machine_after.0 - machine_before.0) as f64
            / (machine_after.1 - machine_before.1).max(1) as f64;
        println!(
            "   round: {elapsed:.1} s; a probe waited {:.0} ms (median) to start and ran {:.0} ms; \
             at most {most} at once; the machine's cores {busy:.0} % busy",
            wait * 1000.0,
            run * 1000.0
        );
    }
    let rss = peak_rss_kib(pid)?;
    worker.kill().await?;
    // The first round connects to every server; the next ones use the
    // sessions the worker kept (the steady state: a probe a minute each).
    let (first_elapsed, first_cpu) = rounds[0];
    let (elapsed, cpu) = rounds[1];

    // The same probes with OpenSSH's client, `concurrency` at a time.
    let key_file = std::env::temp_dir().join(format!("berth-bench-key-{}", std::process::id()));
    std::fs::write(&key_file, &sshd.key)?;
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let gate = Arc::new(Semaphore::new(concurrency));
    let before = children_cpu_ticks()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..count as usize {
        let (gate, host, port, key_file) =
            (gate.clone(), sshd.host(i), sshd.port, key_file.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            let status = Command::new("ssh")
                .args([
                    "-q",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-i",
                ])
                .arg(&key_file)
                .args([
                    "-p",
                    &port.to_string(),
                    &format!("{PASSWORD_USER}@{host}"),
                    berth_workers::probe::PROBE_COMMAND,
                ])
                .stdout(Stdio::null())
                .status()
                .await?;
            anyhow::ensure!(status.success(), "ssh to {host} failed");
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let ssh_elapsed = started.elapsed().as_secs_f64();
    let ssh_cpu = (children_cpu_ticks()? - before) as f64 / 100.0;
    let _ = std::fs::remove_file(&key_file);

    let per_minute = |n: f64, secs: f64| n / secs * 60.0;
    let n = servers.len() as f64;
    println!(
        "5. Probes: {count} servers (sshd processes on {count} loopback addresses), concurrency {concurrency}"
    );
    println!(
        "   berth-worker, first round (a new session to each server): {n:.0} probes in {first_elapsed:.1} s \
         = {:.0} servers/min; worker CPU {first_cpu:.1} s",
        per_minute(n, first_elapsed),
    );
    println!(
        "   berth-worker, kept sessions: {n:.0} probes in {elapsed:.1} s = {:.0} servers/min \
         (target >= 1000); worker CPU {cpu:.1} s ({:.0} % of one core while probing), peak RSS {:.1} MiB",
        per_minute(n, elapsed),
        100.0 * cpu / elapsed,
        rss as f64 / 1024.0
    );
    println!(
        "   ssh client loop: {n:.0} in {ssh_elapsed:.1} s = {:.0} servers/min; client CPU {ssh_cpu:.1} s \
         -> berth-worker (kept sessions) at {:.0} % of its rate (target >= 300 %), {:.0} % of its CPU",
        per_minute(n, ssh_elapsed),
        100.0 * ssh_elapsed / elapsed,
        100.0 * cpu / ssh_cpu
    );
    one_session(&sshd).await?;
    flood(&sshd).await
}

/// The test sshd's first address, as `username` with the harness's key, not
/// pinned.
fn first_server(sshd: &TestSshd, username: &str) -> berth_ssh::Target {
    berth_ssh::Target {
        host: sshd.host(0),
        port: sshd.port,
        username: username.into(),
        auth: berth_ssh::Auth::Key {
            private_key: berth_config::SecretString::from(sshd.key.clone()),
            passphrase: None,
        },
        pinned_host_key: None,
    }
}

/// What one probe command costs on a kept session, in this process (the
/// command reads the CPU counters once; the previous probe has the other),
/// with a plain `/bin/sh` login and as this machine's root.
async fn one_session(sshd: &TestSshd) -> anyhow::Result<()> {
    let mut costs = Vec::new();
    for user in [PASSWORD_USER, "root"] {
        costs.push(probe_cost(&first_server(sshd, user)).await?);
    }
    let [(connect, plain), (_, root)] = costs[..] else {
        unreachable!("two logins measured")
    };
    println!(
        "   one server, one kept session: connect {connect:.0} ms, then the probe command {plain:.0} ms \
         (median of 10); as this machine's root, whose ~/.bashrc runs pyenv init: {root:.0} ms"
    );
    Ok(())
}

/// Connect time and the median of ten probe commands, in milliseconds.
async fn probe_cost(target: &berth_ssh::Target) -> anyhow::Result<(f64, f64)> {
    use berth_ssh::{AddressPolicy, Limits, ShellCommand};
    let started = Instant::now();
    let conn = berth_ssh::connect(target, &AddressPolicy::default(), Limits::default()).await?;
    let connect = started.elapsed().as_secs_f64() * 1000.0;
    let cancel = tokio_util::sync::CancellationToken::new();
    let command = ShellCommand::new(berth_workers::probe::PROBE_COMMAND);
    let mut runs = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        conn.exec(&command, Duration::from_secs(30), &cancel)
            .await?;
        runs.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok((connect, crate::median(runs)))
}

/// A server that answers a command with 400 MB: what `berth-ssh` (the
/// worker's SSH layer, here in this process) keeps of it, and this process's
/// peak memory before and after.
async fn flood(sshd: &TestSshd) -> anyhow::Result<()> {
    use berth_ssh::{AddressPolicy, Limits, ShellCommand};
    let target = first_server(sshd, PASSWORD_USER);
    let limits = Limits::default();
    let conn = berth_ssh::connect(&target, &AddressPolicy::default(), limits).await?;
    let before = peak_rss_kib(std::process::id())?;
    let started = Instant::now();
    let out = conn
        .exec(
            &ShellCommand::new("head -c 419430400 /dev/zero | tr '\\0' x; echo"),
            Duration::from_secs(600),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let after = peak_rss_kib(std::process::id())?;
    println!(
        "   a server flooding 400 MB of output: {:.1} s, {} bytes kept (cap {} per stream, marked {}); \
         peak RSS of the process {:.1} MiB before, {:.1} MiB after (bound: the cap, not the flood)",
        elapsed,
        out.stdout.len(),
        limits.max_output_bytes,
        out.stdout.contains(berth_ssh::TRUNCATED_MARKER),
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    Ok(())
}

fn base64_key(text: &str) -> anyhow::Result<[u8; 32]> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("32 bytes"))
}
