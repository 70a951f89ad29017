//! SSH to users' servers, for the api (terminal, files) and the workers (every
//! remote job). libssh2 (the `ssh2` crate) blocks, so every call runs on
//! tokio's blocking pool, never on the async runtime; each connection has a
//! connect timeout, an I/O timeout on every libssh2 call and a deadline per
//! command.
//!
//! Host keys are pinned: a [`Target`] may carry the SHA-256 fingerprint seen
//! on the first successful connection, and a different key fails with
//! [`SshError::HostKeyMismatch`] before any credential is sent.
//!
//! Addresses are resolved once, checked against an [`AddressPolicy`] (cloud
//! metadata ranges by default) and connected to by IP, so a name cannot
//! resolve to an allowed address for the check and a denied one for the
//! connection.

pub mod command;
pub mod keys;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use berth_config::{ExposeSecret, SecretString};
use ipnet::IpNet;

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
        }
    }

    /// Worth retrying later (the server may come back); a wrong key or
    /// password or a changed host key will not fix itself.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SshError::Unreachable { .. } | SshError::Timeout(_) | SshError::Protocol(_)
        )
    }
}

fn protocol(e: ssh2::Error) -> SshError {
    // libssh2 reports its own timeouts as session errors (-9).
    if matches!(e.code(), ssh2::ErrorCode::Session(-9)) {
        SshError::Timeout(e.message().to_owned())
    } else {
        SshError::Protocol(e.message().to_owned())
    }
}

/// Which server addresses Berth may connect to. Private and loopback addresses
/// stay allowed: self-hosters deploy to their LAN and to the Berth host itself.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    denied: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(denied: Vec<IpNet>) -> Self {
        Self { denied }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        !self.denied.iter().any(|net| net.contains(&ip))
    }
}

impl Default for AddressPolicy {
    fn default() -> Self {
        Self::new(berth_config::SshConfig::default_deny_networks())
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

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Bound on every single libssh2 call.
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            io: Duration::from_secs(30),
        }
    }
}

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

/// An authenticated SSH session. Cheap to clone; calls are serialised.
#[derive(Clone)]
pub struct Connection {
    session: Arc<Mutex<ssh2::Session>>,
    host_key: String,
    address: SocketAddr,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SshError> + Send + 'static,
) -> Result<T, SshError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SshError::Protocol(format!("SSH task failed: {e}")))?
}

fn resolve(target: &Target, policy: &AddressPolicy) -> Result<SocketAddr, SshError> {
    command::check_host(&target.host).map_err(|e| SshError::Denied(e.to_string()))?;
    let unreachable = |reason: String| SshError::Unreachable {
        target: format!("{}:{}", target.host, target.port),
        reason,
    };
    let addresses: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| unreachable(format!("cannot resolve the host: {e}")))?
        .collect();
    let first = addresses
        .first()
        .copied()
        .ok_or_else(|| unreachable("the host has no address".into()))?;
    if let Some(denied) = addresses.iter().find(|a| !policy.allows(a.ip())) {
        return Err(SshError::Denied(format!(
            "{} resolves to {}, which is in a denied network (BERTH_SSH_DENY_NETWORKS)",
            target.host,
            denied.ip()
        )));
    }
    Ok(first)
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
    timeouts: Timeouts,
) -> Result<Connection, SshError> {
    command::check_username(&target.username).map_err(|e| SshError::Denied(e.to_string()))?;
    let target = target.clone();
    let policy = policy.clone();
    blocking(move || {
        let address = resolve(&target, &policy)?;
        let tcp = TcpStream::connect_timeout(&address, timeouts.connect).map_err(|e| {
            let reason = if e.kind() == ErrorKind::TimedOut {
                format!("no answer within {:?}", timeouts.connect)
            } else {
                e.to_string()
            };
            SshError::Unreachable {
                target: address.to_string(),
                reason,
            }
        })?;
        let mut session = ssh2::Session::new().map_err(protocol)?;
        session.set_timeout(timeouts.io.as_millis() as u32);
        session.set_tcp_stream(tcp);
        session.handshake().map_err(protocol)?;
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
        Ok(Connection {
            session: Arc::new(Mutex::new(session)),
            host_key,
            address,
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

    /// Runs `command` under `sh -c`, capturing its output.
    pub async fn exec(
        &self,
        command: &ShellCommand,
        deadline: Duration,
    ) -> Result<Output, SshError> {
        self.exec_streaming(command, deadline, |_, _| {}).await
    }

    /// Runs `command`, handing each complete output line to `on_line` as it
    /// arrives, and returns everything at the end.
    pub async fn exec_streaming(
        &self,
        command: &ShellCommand,
        deadline: Duration,
        mut on_line: impl FnMut(Stream, &str) + Send + 'static,
    ) -> Result<Output, SshError> {
        let session = self.session.clone();
        let command = command.as_str().to_owned();
        blocking(move || {
            let session = session
                .lock()
                .map_err(|_| SshError::Protocol("session poisoned".into()))?;
            let mut channel = session.channel_session().map_err(protocol)?;
            channel.exec(&command).map_err(protocol)?;
            // Non-blocking reads of both streams, so a command that fills one
            // while the other is read never stalls.
            session.set_blocking(false);
            let result = pump(&mut channel, deadline, &mut on_line);
            session.set_blocking(true);
            let (stdout, stderr) = result?;
            channel.wait_close().map_err(protocol)?;
            Ok(Output {
                exit_status: channel.exit_status().map_err(protocol)?,
                stdout,
                stderr,
            })
        })
        .await
    }

    /// Runs `work` with an SFTP channel of this session, off the runtime.
    async fn with_sftp<T: Send + 'static>(
        &self,
        work: impl FnOnce(&ssh2::Sftp) -> Result<T, SshError> + Send + 'static,
    ) -> Result<T, SshError> {
        let session = self.session.clone();
        blocking(move || {
            let session = session
                .lock()
                .map_err(|_| SshError::Protocol("session poisoned".into()))?;
            let sftp = session.sftp().map_err(protocol)?;
            work(&sftp)
        })
        .await
    }

    /// Writes `data` to `remote` over SFTP with `mode` (e.g. `0o600`).
    pub async fn upload(&self, data: Vec<u8>, remote: &Arg, mode: i32) -> Result<(), SshError> {
        let remote = remote.as_str().to_owned();
        self.with_sftp(move |sftp| {
            let mut file = sftp
                .open_mode(
                    Path::new(&remote),
                    ssh2::OpenFlags::WRITE | ssh2::OpenFlags::CREATE | ssh2::OpenFlags::TRUNCATE,
                    mode,
                    ssh2::OpenType::File,
                )
                .map_err(protocol)?;
            file.write_all(&data)
                .map_err(|e| SshError::Protocol(format!("writing {remote}: {e}")))
        })
        .await
    }

    /// Reads `remote` over SFTP, refusing files larger than `max_bytes`.
    pub async fn download(&self, remote: &Arg, max_bytes: u64) -> Result<Vec<u8>, SshError> {
        let remote = remote.as_str().to_owned();
        self.with_sftp(move |sftp| {
            let mut file = sftp.open(Path::new(&remote)).map_err(protocol)?;
            let size = file.stat().map_err(protocol)?.size.unwrap_or(0);
            if size > max_bytes {
                return Err(SshError::Protocol(format!(
                    "{remote} is {size} bytes, more than the {max_bytes} allowed"
                )));
            }
            let mut data = Vec::with_capacity(size as usize);
            file.take(max_bytes + 1)
                .read_to_end(&mut data)
                .map_err(|e| SshError::Protocol(format!("reading {remote}: {e}")))?;
            Ok(data)
        })
        .await
    }
}

fn pump(
    channel: &mut ssh2::Channel,
    deadline: Duration,
    on_line: &mut impl FnMut(Stream, &str),
) -> Result<(String, String), SshError> {
    let started = Instant::now();
    let mut outputs = [Vec::new(), Vec::new()];
    let mut pending = [Vec::new(), Vec::new()];
    let mut buf = [0u8; 16 * 1024];
    let mut idle = Duration::from_millis(1);
    loop {
        let mut progressed = false;
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let read = match stream {
                Stream::Stdout => channel.read(&mut buf),
                Stream::Stderr => channel.stderr().read(&mut buf),
            };
            match read {
                Ok(0) => {}
                Ok(n) => {
                    progressed = true;
                    outputs[i].extend_from_slice(&buf[..n]);
                    pending[i].extend_from_slice(&buf[..n]);
                    while let Some(end) = pending[i].iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending[i].drain(..=end).collect();
                        on_line(
                            stream,
                            String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']),
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(SshError::Protocol(format!("reading output: {e}"))),
            }
        }
        if channel.eof() && !progressed {
            break;
        }
        if started.elapsed() > deadline {
            let _ = channel.close();
            return Err(SshError::Timeout(format!(
                "the command ran longer than {deadline:?}"
            )));
        }
        if progressed {
            idle = Duration::from_millis(1);
        } else {
            std::thread::sleep(idle);
            idle = (idle * 2).min(Duration::from_millis(20));
        }
    }
    for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
        if !pending[i].is_empty() {
            on_line(
                stream,
                String::from_utf8_lossy(&pending[i]).trim_end_matches('\r'),
            );
        }
    }
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Ok((text(&outputs[0]), text(&outputs[1])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_ranges_are_denied_and_private_ones_allowed() {
        let policy = AddressPolicy::default();
        for denied in ["169.254.169.254", "::ffff:169.254.169.254", "fd00:ec2::254"] {
            assert!(!policy.allows(denied.parse().unwrap()), "{denied}");
        }
        for allowed in ["127.0.0.1", "10.0.0.5", "192.168.1.2", "::1", "203.0.113.9"] {
            assert!(policy.allows(allowed.parse().unwrap()), "{allowed}");
        }
        let custom = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(!custom.allows("127.0.0.9".parse().unwrap()));
        assert!(AddressPolicy::new(Vec::new()).allows("169.254.169.254".parse().unwrap()));
    }
}
