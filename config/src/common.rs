//! What every process shares: its services, its logging, its shutdown.

use std::path::PathBuf;

use crate::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where and how a process logs: standard output for a supervisor (the
/// default), or daily-rotated files in `BERTH_LOG_DIR` keeping the newest
/// `BERTH_LOG_KEEP_FILES`, so a long-running process never fills the disk.
#[derive(Debug, Clone)]
pub struct Logging {
    pub format: LogFormat,
    pub dir: Option<PathBuf>,
    pub keep_files: usize,
}

impl Logging {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let format = match env.optional("BERTH_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => return Err(malformed("BERTH_LOG_FORMAT", "expected text or json")),
        };
        let keep_files: usize = env.parsed("BERTH_LOG_KEEP_FILES", 7)?;
        if keep_files == 0 {
            return Err(malformed("BERTH_LOG_KEEP_FILES", "must be at least 1"));
        }
        Ok(Self {
            format,
            dir: env.optional("BERTH_LOG_DIR").map(PathBuf::from),
            keep_files,
        })
    }

    /// Installs the process-wide tracing subscriber; `RUST_LOG` filters
    /// (default `info`). With a log directory, `process` names the files
    /// (`berth-api.2026-12-01.log`).
    pub fn init(&self, process: &str) -> Result<(), ConfigError> {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let Some(dir) = &self.dir else {
            // Colour codes only for a terminal; in files and collectors they are noise.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(ansi);
            match self.format {
                LogFormat::Json => builder.json().init(),
                LogFormat::Text => builder.init(),
            }
            return Ok(());
        };
        let files = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix(process)
            .filename_suffix("log")
            .max_log_files(self.keep_files)
            // `<process>.log` always names the current file.
            .latest_symlink(format!("{process}.log"))
            .build(dir)
            .map_err(|e| malformed("BERTH_LOG_DIR", &format!("cannot write logs there: {e}")))?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(files);
        match self.format {
            LogFormat::Json => builder.json().init(),
            LogFormat::Text => builder.init(),
        }
        Ok(())
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT, so every binary drains the same way.
pub async fn cancel_on_shutdown_signal(shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

/// Settings every Berth process shares.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub database_url: ServiceUrl,
    pub redis_url: ServiceUrl,
    pub logging: Logging,
    pub database_max_connections: u32,
}

impl CommonConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            database_url: ServiceUrl::read(env, "DATABASE_URL", &["postgres", "postgresql"])?,
            redis_url: ServiceUrl::read(
                env,
                "REDIS_URL",
                &["redis", "rediss", "redis+unix", "unix"],
            )?,
            logging: Logging::from_env(env)?,
            database_max_connections: env.parsed("BERTH_DB_MAX_CONNECTIONS", 10)?,
        })
    }
}
