use std::time::Duration;

use anyhow::Context;
use berth_config::{CommonConfig, Env};
use berth_scheduler::SchedulerConfig;
use berth_scheduler::schedules::Scheduler;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        tracing::error!("berth-scheduler stopped: {e:#}");
        eprintln!("berth-scheduler: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let env = Env::process();
    let common = CommonConfig::from_env(&env)?;
    common.logging.init("berth-scheduler")?;
    let config = SchedulerConfig::from_env(&env)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(common.database_url.expose())
        .await
        .context("cannot connect to DATABASE_URL")?;
    let redis = berth_jobs::redis_conn::connect(common.redis_url.expose())
        .await
        .context("cannot connect to REDIS_URL")?;
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into());
    let identity = format!(
        "{host}:{}:{:04x}",
        std::process::id(),
        rand::random::<u16>()
    );
    let names: Vec<_> = config.schedules.iter().map(|(s, _)| s.name()).collect();
    tracing::info!(identity, schedules = %names.join(","), "berth-scheduler starting");

    let shutdown = CancellationToken::new();
    tokio::spawn(berth_config::cancel_on_shutdown_signal(shutdown.clone()));
    let policies = berth_jobs::Policies::from_env(&env)?;
    Scheduler::new(pool, redis, policies, config, identity)
        .run(shutdown)
        .await;
    tracing::info!("berth-scheduler stopped cleanly");
    Ok(())
}
