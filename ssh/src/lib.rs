//! SSH to users' servers, for the api (terminal, files) and the workers (every
//! remote job), on `russh`: one task per session drives the protocol, and
//! every command, SFTP transfer or terminal is a channel of its own
//! on it, side by side, each awaited without holding a thread. Each
//! connection has a connect timeout, a handshake timeout, an I/O bound on
//! every request and a deadline per command.
//!
//! Host keys are pinned: a [`Target`] may carry the SHA-256 fingerprint seen
//! on the first successful connection, and a different key fails with
//! [`SshError::HostKeyMismatch`] before any credential is sent.
//!
//! Addresses are resolved once, checked against an [`AddressPolicy`] (cloud
//! metadata ranges by default) and connected to by IP ([`address`]).

mod address;
mod channel;
pub mod command;
mod connection;
mod files;
pub mod keys;
mod sftp;
mod shell;

use std::time::Duration;

use berth_config::SecretString;

pub use address::{AddressPolicy, embedded_ipv4};
pub use channel::KILL_GRACE;
pub use command::{Arg, Refused, ShellCommand};
pub use connection::{Connection, MAX_CHANNELS, connect};
pub use files::{Entry, FileError, Files, Handle, Kind, Listing};
pub use shell::{MAX_TERMINAL_SIDE, Shell, ShellOutput};

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{0}")]
    Denied(String),
    #[error("cannot reach {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("the server's host key changed: expected {expected}, got {actual}")]
    HostKeyMismatch { expected: String, actual: String },
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("SSH error: {0}")]
    Protocol(String),
    /// The command was stopped because its job was cancelled (or timed out):
    /// its remote process group was killed.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// The session is gone (the server dropped it, the network broke) and the
    /// command never started: safe to run again on a new session.
    #[error("the session was lost: {0}")]
    Disconnected(String),
}

impl SshError {
    /// A stable code for job errors and notifications.
    pub fn code(&self) -> &'static str {
        match self {
            SshError::Denied(_) => "ADDRESS_DENIED",
            SshError::Unreachable { .. } => "UNREACHABLE",
            SshError::HostKeyMismatch { .. } => "HOST_KEY_MISMATCH",
            SshError::AuthFailed(_) => "AUTH_FAILED",
            SshError::Timeout(_) => "TIMEOUT",
            SshError::Protocol(_) => "SSH_ERROR",
            SshError::Cancelled(_) => "CANCELLED",
            SshError::Disconnected(_) => "DISCONNECTED",
        }
    }

    /// Worth retrying later (the server may come back); a wrong key or
    /// password or a changed host key will not fix itself.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SshError::Unreachable { .. }
                | SshError::Timeout(_)
                | SshError::Protocol(_)
                | SshError::Disconnected(_)
        )
    }
}

#[derive(Clone)]
pub enum Auth {
    Password(SecretString),
    Key {
        private_key: SecretString,
        passphrase: Option<SecretString>,
    },
}

/// A server to connect to. Its fields are checked values (see [`command`]).
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub auth: Auth,
    /// `SHA256:…` of the pinned host key; `None` before the first success.
    pub pinned_host_key: Option<String>,
}

/// What one connection may take: time to connect, time for the server's
/// banner and key exchange (a tarpit that accepts TCP and never speaks is
/// dropped after this, not after a job's whole timeout), time per request
/// (opening a channel, logging in, an SFTP call), and output kept per stream
/// of a command.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    pub handshake: Duration,
    /// Bound on every single request after the handshake.
    pub io: Duration,
    /// Output kept of each of a command's streams; the rest is read and dropped.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            io: Duration::from_secs(30),
            max_output_bytes: 1024 * 1024,
        }
    }
}

impl From<&berth_config::SshConfig> for Limits {
    fn from(config: &berth_config::SshConfig) -> Self {
        Self {
            connect: config.connect_timeout,
            handshake: config.handshake_timeout,
            io: config.io_timeout,
            max_output_bytes: config.max_output_bytes,
        }
    }
}

/// Marks where a command's output was cut.
pub const TRUNCATED_MARKER: &str = "[berth: output truncated]";

/// What a finished command left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub exit_status: i32,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}
