use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_config::ApiConfig;
use berth_jobs::{JobClient, Policies};
use redis::aio::ConnectionManager;

use crate::rate_limit::RateLimiter;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::auth::csrf::CsrfKey;
use crate::auth::tokens::JwtKeys;
use crate::metrics::Metrics;
use crate::realtime::Hub;
use berth_secrets::Keyring;

/// Built once at start-up and shared by every request. One `Arc`: axum clones
/// the state several times per request (each stateful layer and handler).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub pool: PgPool,
    pub redis: ConnectionManager,
    /// Counters of every rate limit, in Redis.
    pub rate_limiter: RateLimiter,
    pub config: Arc<ApiConfig>,
    pub jobs: JobClient,
    pub metrics: Arc<Metrics>,
    pub jwt: Arc<JwtKeys>,
    pub csrf: Arc<CsrfKey>,
    /// Seals secrets at rest (`BERTH_MASTER_KEY`).
    pub keys: Arc<Keyring>,
    /// Outgoing HTTP (OAuth providers).
    pub http: reqwest::Client,
    /// This process's open WebSockets, by user.
    pub hub: Hub,
    /// Request-scoped SSH (a live container's logs; the terminal and file
    /// manager later): the same kept sessions and checks as the workers'.
    pub remote: berth_remote::Remote,
}

impl AppState {
    pub async fn connect(config: ApiConfig, policies: Policies) -> anyhow::Result<Self> {
        let hub = Hub::default();
        let restored_at = hub.database_restored_at();
        let pool = PgPoolOptions::new()
            .max_connections(config.common.database_max_connections)
            // Short, so /health/ready answers 503 quickly while Postgres is down.
            .acquire_timeout(Duration::from_secs(3))
            // sqlx pings every connection it hands out by default: a second
            // round trip for every query (measured: it halved GET /auth/me).
            // Only connections idle long enough to have been cut are checked.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                let restored_at = restored_at.load(std::sync::atomic::Ordering::Relaxed);
                Box::pin(async move {
                    // Opened before a restore ended it: closed, another taken.
                    let opened_at = unix_millis().saturating_sub(meta.age.as_millis() as u64);
                    if opened_at < restored_at {
                        return Ok(false);
                    }
                    if meta.idle_for > Duration::from_secs(10) {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect(config.common.database_url.expose())
            .await
            .context("cannot connect to DATABASE_URL")?;
        let redis = berth_jobs::redis_conn::connect(config.common.redis_url.expose())
            .await
            .context("cannot connect to REDIS_URL")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Berth")
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self(Arc::new(Shared {
            jobs: JobClient::new(pool.clone(), redis.clone(), policies),
            jwt: Arc::new(JwtKeys::new(
                &config.jwt_secret,
                config.auth.access_token_ttl,
            )),
            csrf: Arc::new(CsrfKey::derive(&config.jwt_secret)),
            keys: Arc::new(Keyring::from_config(
                &config.master_key,
                &config.previous_master_keys,
            )),
            http,
            hub,
            remote: berth_remote::Remote::new(
                pool.clone(),
                Keyring::from_config(&config.master_key, &config.previous_master_keys),
                &config.ssh,
            ),
            pool,
            rate_limiter: RateLimiter::new(redis.clone()),
            redis,
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
        })))
    }
}

/// Milliseconds since the epoch.
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
