use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_config::ApiConfig;
use berth_jobs::{JobClient, Policies};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::metrics::Metrics;

/// Built once at start-up and shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub config: Arc<ApiConfig>,
    pub jobs: JobClient,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub async fn connect(config: ApiConfig, policies: Policies) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(config.common.database_max_connections)
            // Short, so /health/ready answers 503 quickly while Postgres is down.
            .acquire_timeout(Duration::from_secs(3))
            .connect(config.common.database_url.expose())
            .await
            .context("cannot connect to DATABASE_URL")?;
        let redis = berth_jobs::redis_conn::connect(config.common.redis_url.expose())
            .await
            .context("cannot connect to REDIS_URL")?;
        Ok(Self {
            jobs: JobClient::new(pool.clone(), redis.clone(), policies),
            pool,
            redis,
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
        })
    }
}
