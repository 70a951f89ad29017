//! How workers (and later the api) reach users' servers.

use std::time::Duration;

use crate::*;

/// How Berth reaches users' servers over SSH (api and workers).
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// Server addresses Berth refuses to connect to (checked on the resolved
    /// address at connect time): cloud metadata ranges by default.
    pub deny_networks: Vec<ipnet::IpNet>,
    pub connect_timeout: Duration,
    /// For the server's banner and key exchange, apart from job timeouts.
    pub handshake_timeout: Duration,
    pub io_timeout: Duration,
    /// Output kept per stream of one remote command.
    pub max_output_bytes: usize,
    /// How long a worker keeps an unused session to a server open.
    pub session_idle: Duration,
    /// The most sessions one process keeps open; past it the least recently
    /// used one is closed.
    pub max_sessions: usize,
}

impl SshConfig {
    pub fn default_deny_networks() -> Vec<ipnet::IpNet> {
        ["169.254.0.0/16", "fd00:ec2::254/128"]
            .iter()
            .map(|n| n.parse().expect("valid network"))
            .collect()
    }

    /// `BERTH_SSH_DENY_NETWORKS` (comma-separated CIDR ranges, or `none`),
    /// `BERTH_SSH_CONNECT_TIMEOUT_MS`, `BERTH_SSH_HANDSHAKE_TIMEOUT_MS`,
    /// `BERTH_SSH_IO_TIMEOUT_MS`, `BERTH_SSH_MAX_OUTPUT_BYTES`,
    /// `BERTH_SSH_SESSION_IDLE_MS`, `BERTH_SSH_MAX_SESSIONS`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        const NAME: &str = "BERTH_SSH_DENY_NETWORKS";
        let deny_networks = match env.optional(NAME) {
            None => Self::default_deny_networks(),
            Some(list) if list.trim() == "none" => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse()
                        .map_err(|e| malformed(NAME, &format!("{s}: {e} (expected CIDR ranges)")))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            deny_networks,
            connect_timeout: env.millis("BERTH_SSH_CONNECT_TIMEOUT_MS", Duration::from_secs(10))?,
            handshake_timeout: env
                .millis("BERTH_SSH_HANDSHAKE_TIMEOUT_MS", Duration::from_secs(10))?,
            io_timeout: env.millis("BERTH_SSH_IO_TIMEOUT_MS", Duration::from_secs(30))?,
            max_output_bytes: env.parsed("BERTH_SSH_MAX_OUTPUT_BYTES", 1024 * 1024)?,
            session_idle: env.millis("BERTH_SSH_SESSION_IDLE_MS", Duration::from_secs(300))?,
            max_sessions: match env.parsed("BERTH_SSH_MAX_SESSIONS", 512usize)? {
                0 => return Err(malformed("BERTH_SSH_MAX_SESSIONS", "must be at least 1")),
                n => n,
            },
        })
    }
}
