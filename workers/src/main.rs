use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_config::{CommonConfig, Env, MailConfig, SshConfig};
use berth_jobs::runtime::{Liveness, WorkerRuntime};
use berth_jobs::{Policies, Queue};
use berth_secrets::Keyring;
use berth_workers::backups::BackupJobs;
use berth_workers::deploy::{DeployConfig, DeploymentJobs};
use berth_workers::domains::{DomainConfig, DomainJobs};
use berth_workers::email::Mailer;
use berth_workers::servers::ServerJobs;
use clap::Parser;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;

/// Runs Berth's jobs from the chosen queues until SIGTERM or SIGINT.
#[derive(Parser)]
#[command(name = "berth-worker", version)]
struct Args {
    /// Comma-separated queues to serve (default: every queue this build handles).
    #[arg(long, default_value = "")]
    queues: String,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        tracing::error!("berth-worker stopped: {e:#}");
        eprintln!("berth-worker: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let env = Env::process();
    let common = CommonConfig::from_env(&env)?;
    common.logging.init("berth-worker")?;
    let mail = MailConfig::from_env(&env)?;
    let policies = Policies::from_env(&env)?;
    let defaults = Liveness::default();
    let liveness = Liveness {
        heartbeat: env.millis("BERTH_WORKER_HEARTBEAT_MS", defaults.heartbeat)?,
        missed_heartbeats: env
            .parsed("BERTH_WORKER_MISSED_HEARTBEATS", defaults.missed_heartbeats)?,
        poll_fallback: env.millis("BERTH_WORKER_POLL_MS", defaults.poll_fallback)?,
    };
    let grace = env.millis("BERTH_WORKER_SHUTDOWN_GRACE_MS", Duration::from_secs(30))?;

    // Job state writes do not wait for the WAL flush: a Postgres crash can lose the
    // last fraction of a second of them, and the scheduler's reconciler re-issues
    // any job left running or queued that way, so delivery stays at-least-once.
    // It roughly halves the per-job cost of the two writes every job makes.
    let connect = PgConnectOptions::from_str(common.database_url.expose())
        .context("DATABASE_URL is malformed")?
        .options([("synchronous_commit", "off")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(common.database_max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(connect)
        .await
        .context("cannot connect to DATABASE_URL")?;

    let mailer = Mailer::new(&mail)?;
    let ssh = SshConfig::from_env(&env)?;
    let redis = berth_jobs::redis_conn::connect(common.redis_url.expose())
        .await
        .context("cannot connect to REDIS_URL")?;
    let remote = berth_remote::Remote::new(
        pool.clone(),
        Keyring::from_config(&mail.master_key, &mail.previous_master_keys),
        &ssh,
    );
    let servers = Arc::new(ServerJobs::new(
        pool.clone(),
        redis.clone(),
        policies.clone(),
        remote,
    ));
    // Deployments reach servers through the same kept sessions.
    let deployments = DeploymentJobs::new(
        pool.clone(),
        servers.clone(),
        Keyring::from_config(&mail.master_key, &mail.previous_master_keys),
        DeployConfig::from_env(&env)?,
    );
    let domains = DomainJobs::new(deployments.clone(), DomainConfig::from_env(&env)?)?;
    let backups = Arc::new(BackupJobs {
        pool: pool.clone(),
        redis: redis.clone(),
        policies: policies.clone(),
        setup: berth_database::catalogue::BackupSetup::from_env(
            &env,
            common.database_url.expose(),
        )?,
    });
    let registry = berth_workers::registry::registry(
        mailer,
        servers,
        deployments,
        domains,
        backups,
        pool.clone(),
        redis,
    )?;
    let runtime = WorkerRuntime::new(
        pool,
        common.redis_url.expose().to_owned(),
        policies,
        registry,
    )
    .liveness(liveness)
    .shutdown_grace(grace)
    .job_log_max_bytes(env.parsed(
        "BERTH_JOB_LOG_MAX_BYTES",
        berth_jobs::joblog::DEFAULT_MAX_BYTES,
    )?);

    let queues = if args.queues.trim().is_empty() {
        runtime.served_queues()
    } else {
        Queue::parse_list(&args.queues)?
    };
    let names: Vec<_> = queues.iter().map(|q| q.name()).collect();
    tracing::info!(queues = %names.join(","), "berth-worker starting");

    let shutdown = CancellationToken::new();
    tokio::spawn(berth_config::cancel_on_shutdown_signal(shutdown.clone()));
    runtime.run(&queues, shutdown).await?;
    tracing::info!("berth-worker stopped cleanly");
    Ok(())
}
