//! SSH to users' servers, for the api (terminal, files) and the workers (every
//! remote job). libssh2 (the `ssh2` crate) is driven off the async runtime, on
//! tokio's blocking pool; each connection has a connect timeout, a handshake
//! timeout, an I/O bound on every call and a deadline per command.
//!
//! After authentication a session is non-blocking for good, so one session
//! serves many channels at once from different threads ([`channel`]): a
//! long command never holds the session, and a stalled server never holds a
//! thread past its deadline.
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
pub mod keys;
mod sftp;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use base64::Engine;
use berth_config::{ExposeSecret, SecretString};

pub use address::{AddressPolicy, embedded_ipv4};
pub use channel::KILL_GRACE;
pub use command::{Arg, Refused, ShellCommand};

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

pub(crate) fn protocol(e: ssh2::Error) -> SshError {
    // libssh2 reports its own timeouts as session errors (-9).
    if matches!(e.code(), ssh2::ErrorCode::Session(-9)) {
        SshError::Timeout(e.message().to_owned())
    } else {
        SshError::Protocol(e.message().to_owned())
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
/// dropped after this, not after a job's whole timeout), time per libssh2 call,
/// and output kept per stream of a command.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect: Duration,
    pub handshake: Duration,
    /// Bound on every single libssh2 call after the handshake.
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

/// A session and its socket: the socket is only ever waited on (`poll`), so
/// a thread that would block sleeps until the server sends something.
pub(crate) struct Wire {
    pub(crate) session: ssh2::Session,
    pub(crate) socket: TcpStream,
    /// Commands and SFTP operations on one session take turns. Measured:
    /// channels side by side on one non-blocking ssh2 session fail under
    /// load (libssh2 keeps a half-sent or half-read packet's state in the
    /// session, so another thread's call in between breaks it: a healthy
    /// session reported lost). A cancel's kill still goes over a second
    /// channel, from the thread holding the turn.
    pub(crate) turn: std::sync::Mutex<()>,
}

/// An authenticated SSH session. Cheap to clone; clones share the session,
/// and each command runs on a channel of its own, side by side with others.
#[derive(Clone)]
pub struct Connection {
    wire: Arc<Wire>,
    host_key: String,
    address: SocketAddr,
    limits: Limits,
    /// Set once a channel could not be opened: the session is not used again.
    lost: Arc<AtomicBool>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SshError> + Send + 'static,
) -> Result<T, SshError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SshError::Protocol(format!("SSH task failed: {e}")))?
}

/// `SHA256:<base64>` as OpenSSH prints it.
fn fingerprint(session: &ssh2::Session) -> Result<String, SshError> {
    let hash = session
        .host_key_hash(ssh2::HashType::Sha256)
        .ok_or_else(|| SshError::Protocol("the server sent no host key".into()))?;
    Ok(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
    ))
}

/// Connects, checks the host key against the pin and authenticates.
pub async fn connect(
    target: &Target,
    policy: &AddressPolicy,
    limits: Limits,
) -> Result<Connection, SshError> {
    command::check_username(&target.username).map_err(|e| SshError::Denied(e.to_string()))?;
    let target = target.clone();
    let policy = policy.clone();
    blocking(move || {
        let address = address::resolve(&target, &policy)?;
        let internal = address::is_internal(address.ip());
        // One answer for every way an internal address fails before SSH is
        // spoken: refused, timed out, or something that is not an SSH server.
        let no_ssh_server = || SshError::Unreachable {
            target: address.to_string(),
            reason: "no SSH server answered".into(),
        };
        let tcp = TcpStream::connect_timeout(&address, limits.connect).map_err(|e| {
            if internal {
                return no_ssh_server();
            }
            let reason = if e.kind() == ErrorKind::TimedOut {
                format!("no answer within {:?}", limits.connect)
            } else {
                e.to_string()
            };
            SshError::Unreachable {
                target: address.to_string(),
                reason,
            }
        })?;
        let socket = tcp
            .try_clone()
            .map_err(|e| SshError::Protocol(format!("cannot share the socket: {e}")))?;
        let mut session = ssh2::Session::new().map_err(protocol)?;
        session.set_timeout(limits.handshake.as_millis() as u32);
        session.set_tcp_stream(tcp);
        session.handshake().map_err(|e| {
            if internal {
                no_ssh_server()
            } else if matches!(e.code(), ssh2::ErrorCode::Session(-9)) {
                SshError::Unreachable {
                    target: address.to_string(),
                    reason: format!("no SSH handshake within {:?}", limits.handshake),
                }
            } else {
                protocol(e)
            }
        })?;
        session.set_timeout(limits.io.as_millis() as u32);
        let host_key = fingerprint(&session)?;
        if let Some(expected) = &target.pinned_host_key
            && *expected != host_key
        {
            return Err(SshError::HostKeyMismatch {
                expected: expected.clone(),
                actual: host_key,
            });
        }
        let authenticated = match &target.auth {
            Auth::Password(password) => {
                session.userauth_password(&target.username, password.expose_secret())
            }
            Auth::Key {
                private_key,
                passphrase,
            } => session.userauth_pubkey_memory(
                &target.username,
                None,
                private_key.expose_secret(),
                passphrase.as_ref().map(|p| p.expose_secret()),
            ),
        };
        if let Err(e) = authenticated {
            return Err(SshError::AuthFailed(format!(
                "{} was refused: {}",
                target.username,
                e.message()
            )));
        }
        if !session.authenticated() {
            return Err(SshError::AuthFailed(format!(
                "{} was refused",
                target.username
            )));
        }
        session.set_keepalive(true, 30);
        session.set_blocking(false);
        Ok(Connection {
            wire: Arc::new(Wire {
                session,
                socket,
                turn: std::sync::Mutex::new(()),
            }),
            host_key,
            address,
            limits,
            lost: Arc::new(AtomicBool::new(false)),
        })
    })
    .await
}

impl Connection {
    /// The server's host key fingerprint, `SHA256:…`.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether a channel failed to open on this session: it is not used again.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Runs `work` off the runtime; a [`SshError::Disconnected`] marks the
    /// session lost.
    async fn on_session<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Wire, Limits) -> Result<T, SshError> + Send + 'static,
    ) -> Result<T, SshError> {
        let (wire, limits, lost) = (self.wire.clone(), self.limits, self.lost.clone());
        blocking(move || {
            let result = work(&wire, limits);
            if matches!(result, Err(SshError::Disconnected(_))) {
                lost.store(true, Ordering::Relaxed);
            }
            result
        })
        .await
    }

    /// Runs `command` under `sh -c`, capturing its output. `cancel` stops it:
    /// the command's whole remote process group is killed.
    pub async fn exec(
        &self,
        command: &ShellCommand,
        deadline: Duration,
        cancel: &CancellationToken,
    ) -> Result<Output, SshError> {
        self.exec_streaming(command, deadline, cancel, |_, _| {})
            .await
    }

    /// Runs `command`, handing each output line to `on_line` as it arrives
    /// (lines longer than the output cap are handed over in pieces), and
    /// returns the output at the end: at most the connection's
    /// `max_output_bytes` of each stream, then [`TRUNCATED_MARKER`]. Output
    /// past the cap is read and dropped, so the command runs to its end.
    ///
    /// When `cancel` fires or `deadline` passes, the command's remote process
    /// group (sshd starts every command in a session of its own, so the group
    /// is the command and everything it started, and nothing else) gets
    /// SIGTERM, then SIGKILL after [`KILL_GRACE`], and the channel is closed.
    pub async fn exec_streaming(
        &self,
        command: &ShellCommand,
        deadline: Duration,
        cancel: &CancellationToken,
        on_line: impl FnMut(Stream, &str) + Send + 'static,
    ) -> Result<Output, SshError> {
        self.exec_inner(command, None, deadline, cancel, on_line)
            .await
    }

    /// [`Self::exec_streaming`] with `input` written to the command's stdin,
    /// then end of file: how a secret (a deploy key, a password) reaches a
    /// command without being on its command line, where `ps` shows it, or on
    /// the server's disk.
    pub async fn exec_with_input(
        &self,
        command: &ShellCommand,
        input: SecretString,
        deadline: Duration,
        cancel: &CancellationToken,
        on_line: impl FnMut(Stream, &str) + Send + 'static,
    ) -> Result<Output, SshError> {
        self.exec_inner(command, Some(input), deadline, cancel, on_line)
            .await
    }

    async fn exec_inner(
        &self,
        command: &ShellCommand,
        stdin: Option<SecretString>,
        deadline: Duration,
        cancel: &CancellationToken,
        mut on_line: impl FnMut(Stream, &str) + Send + 'static,
    ) -> Result<Output, SshError> {
        let command = command.as_str().to_owned();
        let cancel = cancel.clone();
        self.on_session(move |wire, limits| {
            let run = channel::Run {
                command,
                deadline,
                io: limits.io,
                cap: limits.max_output_bytes,
                stdin,
            };
            let (exit_status, stdout, stderr) = channel::run(wire, run, &cancel, &mut on_line)?;
            Ok(Output {
                exit_status,
                stdout,
                stderr,
            })
        })
        .await
    }

    /// Writes `data` to `remote` over SFTP with `mode` (e.g. `0o600`).
    pub async fn upload(&self, data: Vec<u8>, remote: &Arg, mode: i32) -> Result<(), SshError> {
        let remote = remote.as_str().to_owned();
        self.on_session(move |wire, limits| sftp::put(wire, &data, &remote, mode, limits.io))
            .await
    }

    /// Reads `remote` over SFTP, refusing files larger than `max_bytes`.
    pub async fn download(&self, remote: &Arg, max_bytes: u64) -> Result<Vec<u8>, SshError> {
        let remote = remote.as_str().to_owned();
        self.on_session(move |wire, limits| sftp::get(wire, &remote, max_bytes, limits.io))
            .await
    }
}
