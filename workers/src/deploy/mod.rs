//! The deployment jobs (SPEC §3.4): deploy, rollback, stop, restart and
//! delete, all of one deployment under its concurrency key. [`release`]
//! takes a release from its source to live behind nginx; [`control`] does
//! the rest. Everything Berth creates on the server carries the
//! deployment's label or lives under its directory, and clean-up looks
//! for exactly that.

mod cleanup;
mod control;
mod release;
pub(crate) mod site;
mod steps;
pub mod store;

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_build::BaseImages;
use berth_config::{ConfigError, Env};
use berth_jobs::runtime::{JobContext, JobFailure};
use berth_remote::ops::nginx::Nginx;
use berth_remote::ops::{Lines, OpError};
use berth_remote::{Server, Session};
use berth_secrets::Keyring;
use berth_ssh::{Arg, Refused, Stream};
use sqlx::PgPool;
use uuid::Uuid;

use crate::servers::ServerJobs;

pub use control::{DeleteDeployment, RestartDeployment, StopDeployment};
pub use release::{DeployRelease, RollbackRelease};

/// How deploys run, from the worker's environment.
#[derive(Debug, Clone)]
pub struct DeployConfig {
    /// Loopback ports releases' containers are published on.
    pub ports: RangeInclusive<u16>,
    /// A build does not start with less free disk than this under the
    /// server's data directory.
    pub min_free_disk_bytes: u64,
    pub base_images: BaseImages,
    /// Between two health-check attempts.
    pub health_interval: Duration,
    /// How long a build may run.
    pub build_timeout: Duration,
    /// How long an old container gets to exit on SIGTERM before SIGKILL
    /// (after its drain).
    pub stop_grace: Duration,
}

impl DeployConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let defaults = BaseImages::default();
        let range = env
            .optional("BERTH_DEPLOY_PORT_RANGE")
            .unwrap_or_else(|| "20000-29999".into());
        let ports = range
            .split_once('-')
            .and_then(|(a, b)| Some(a.trim().parse::<u16>().ok()?..=b.trim().parse::<u16>().ok()?))
            .filter(|r| *r.start() >= 1024 && r.start() <= r.end())
            .ok_or_else(|| ConfigError::Malformed {
                name: "BERTH_DEPLOY_PORT_RANGE".into(),
                reason: "expected FIRST-LAST, e.g. 20000-29999, from 1024 up".into(),
            })?;
        let min_free_mb: u64 = env.parsed("BERTH_DEPLOY_MIN_FREE_DISK_MB", 1024)?;
        Ok(Self {
            ports,
            min_free_disk_bytes: min_free_mb * 1024 * 1024,
            base_images: BaseImages {
                node: env
                    .optional("BERTH_BUILD_IMAGE_NODE")
                    .unwrap_or(defaults.node),
                python: env
                    .optional("BERTH_BUILD_IMAGE_PYTHON")
                    .unwrap_or(defaults.python),
                static_site: env
                    .optional("BERTH_BUILD_IMAGE_STATIC")
                    .unwrap_or(defaults.static_site),
            },
            health_interval: env
                .millis("BERTH_DEPLOY_HEALTH_INTERVAL_MS", Duration::from_secs(1))?,
            build_timeout: Duration::from_secs(
                env.parsed("BERTH_DEPLOY_BUILD_TIMEOUT_SECS", 1200)?,
            ),
            stop_grace: Duration::from_secs(env.parsed("BERTH_DEPLOY_STOP_GRACE_SECS", 10)?),
        })
    }
}

/// What every deployment job needs.
pub struct DeploymentJobs {
    pub(crate) pool: PgPool,
    pub(crate) servers: Arc<ServerJobs>,
    pub(crate) keys: Keyring,
    pub(crate) config: DeployConfig,
}

impl DeploymentJobs {
    pub fn new(
        pool: PgPool,
        servers: Arc<ServerJobs>,
        keys: Keyring,
        config: DeployConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            pool,
            servers,
            keys,
            config,
        })
    }

    /// The server's row and a session to it.
    pub(crate) async fn reach(&self, server_id: Uuid) -> Result<(Server, Session), JobFailure> {
        let server = self
            .servers
            .remote
            .load(server_id)
            .await
            .map_err(stored)?
            .ok_or_else(|| JobFailure::permanent("the deployment's server no longer exists"))?;
        if server.host_key.is_none() {
            return Err(JobFailure::permanent(
                "the server has not been validated yet (no host key is pinned)",
            ));
        }
        let session = self
            .servers
            .connect(&server)
            .await
            .map_err(|e| ServerJobs::failure(&e))?;
        Ok((server, session))
    }
}

/// Tells the deployment's owner how a release ended (SPEC §3.6's channels).
pub(crate) async fn notify(
    jobs: &DeploymentJobs,
    deployment: &store::DeploymentRow,
    kind: &'static str,
    title: String,
    body: String,
    release: i32,
) {
    let notice = crate::alerts::Notice {
        kind,
        title,
        body,
        data: serde_json::json!({ "deploymentId": deployment.id, "release": release }),
    };
    jobs.servers.notify(deployment.owner_user_id, &notice).await;
}

/// The host name nginx serves the deployment under.
pub(crate) fn host_of(deployment: &store::DeploymentRow, server: &Server) -> String {
    berth_deployments::names::generated_host(
        &deployment.name,
        deployment.id,
        server.host(),
        server.hostname_base.as_deref(),
    )
}

/// The server's nginx and the directory Berth's sites go in.
pub(crate) fn nginx_of(server: &Server) -> Result<(Nginx, Arg), Refused> {
    let nginx = Nginx {
        config: server
            .nginx_conf_file
            .as_deref()
            .map(Arg::path)
            .transpose()?,
    };
    Ok((nginx, Arg::path(&server.nginx_conf_dir)?))
}

/// Output lines of remote commands, into the job's log.
pub(crate) fn log_lines(ctx: &JobContext) -> Lines {
    let log = ctx.log.clone();
    Arc::new(move |stream: Stream, line: &str| log.line(crate::servers::log_stream(stream), line))
}

pub(crate) fn stored(e: sqlx::Error) -> JobFailure {
    JobFailure::retryable(format!("cannot read or record the deployment: {e}"))
}

/// A remote operation's failure as a job's: a lost server is worth another
/// attempt, anything else fails the same way again.
pub(crate) fn op_failure(what: &str, e: &OpError) -> JobFailure {
    if e.is_transient() {
        JobFailure::retryable(format!("{what}: {e}"))
    } else {
        JobFailure::permanent(format!("{what}: {e}"))
    }
}

/// A step's wall time, for the release's `steps`.
pub(crate) struct Timer {
    pub at: chrono::DateTime<chrono::Utc>,
    started: Instant,
}

impl Timer {
    pub fn start() -> Self {
        Self {
            at: chrono::Utc::now(),
            started: Instant::now(),
        }
    }

    pub fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}
