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

use tokio_util::sync::CancellationToken;

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
    /// The command was stopped because its job was cancelled (or timed out):
    /// its remote process group was killed.
    #[error("cancelled: {0}")]
    Cancelled(String),
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

    /// An IPv6 address is checked as itself and as every IPv4 address it
    /// carries (mapped, compatible, NAT64, 6to4, Teredo), so
    /// `64:ff9b::a9fe:a9fe` is as denied as `169.254.169.254`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        !address_forms(ip)
            .iter()
            .any(|form| self.denied.iter().any(|net| net.contains(form)))
    }
}

/// `ip` and, for IPv6, every IPv4 address it carries.
fn address_forms(ip: IpAddr) -> Vec<IpAddr> {
    let mut forms = vec![ip];
    if let IpAddr::V6(v6) = ip {
        forms.extend(embedded_ipv4(v6).into_iter().map(IpAddr::V4));
    }
    forms
}

/// The IPv4 addresses an IPv6 address stands for under the transition schemes
/// that route to them.
pub fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Vec<std::net::Ipv4Addr> {
    use std::net::Ipv4Addr;
    let s = v6.segments();
    let bits = u128::from(v6);
    let low32 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let mut found = Vec::new();
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated but routed
    // by some stacks); :: and ::1 are not IPv4.
    if s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && bits > 1)) {
        found.push(low32);
    }
    // NAT64: the well-known 64:ff9b::/96 and the local-use 64:ff9b:1::/48.
    if (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]) || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) {
        found.push(low32);
    }
    // 6to4: 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
    if s[0] == 0x2002 {
        found.push(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32));
    }
    // Teredo: 2001:0::/32, server in bits 32..64, client inverted in the last 32.
    if s[0] == 0x2001 && s[1] == 0 {
        found.push(Ipv4Addr::from(((s[2] as u32) << 16) | s[3] as u32));
        found.push(Ipv4Addr::from(!((bits & 0xffff_ffff) as u32)));
    }
    found
}

/// Addresses on the Berth host's own side (loopback, private, link-local):
/// connection errors to them are reported in one uniform way, so server
/// validation cannot be used to tell open ports from closed ones.
fn is_internal(ip: IpAddr) -> bool {
    address_forms(ip).iter().any(|ip| match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    })
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

/// An authenticated SSH session. Cheap to clone; calls are serialised.
#[derive(Clone)]
pub struct Connection {
    session: Arc<Mutex<ssh2::Session>>,
    host_key: String,
    address: SocketAddr,
    max_output_bytes: usize,
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
    limits: Limits,
) -> Result<Connection, SshError> {
    command::check_username(&target.username).map_err(|e| SshError::Denied(e.to_string()))?;
    let target = target.clone();
    let policy = policy.clone();
    blocking(move || {
        let address = resolve(&target, &policy)?;
        let internal = is_internal(address.ip());
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
        Ok(Connection {
            session: Arc::new(Mutex::new(session)),
            host_key,
            address,
            max_output_bytes: limits.max_output_bytes,
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
        mut on_line: impl FnMut(Stream, &str) + Send + 'static,
    ) -> Result<Output, SshError> {
        let session = self.session.clone();
        // The first stderr line names the process group; `pump` takes it out.
        let command = format!("echo \"{PGID_TAG}$$\" >&2; {}", command.as_str());
        let cap = self.max_output_bytes;
        let cancel = cancel.clone();
        blocking(move || {
            let session = session
                .lock()
                .map_err(|_| SshError::Protocol("session poisoned".into()))?;
            let mut channel = session.channel_session().map_err(protocol)?;
            channel.exec(&command).map_err(protocol)?;
            // Non-blocking reads of both streams, so a command that fills one
            // while the other is read never stalls.
            session.set_blocking(false);
            let result = pump(&mut channel, deadline, cap, &cancel, &mut on_line);
            session.set_blocking(true);
            let (stdout, stderr) = match result {
                Ok(output) => output,
                Err(Stopped { pgid, error }) => {
                    if let Some(pgid) = pgid {
                        kill_group(&session, pgid);
                    }
                    let _ = channel.close();
                    return Err(error);
                }
            };
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

/// A line handed to `on_line` is at most this long; a longer one (a flood
/// without newlines) is split, so the pending buffer stays bounded.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// One output stream: what is kept (up to the cap) and the line being built.
struct Captured {
    kept: Vec<u8>,
    truncated: bool,
    line: Vec<u8>,
}

impl Captured {
    fn new() -> Self {
        Self {
            kept: Vec::new(),
            truncated: false,
            line: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8], cap: usize, mut emit: impl FnMut(&[u8])) {
        let room = cap.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
        self.truncated |= data.len() > room;
        for mut chunk in data.split_inclusive(|b| *b == b'\n') {
            while !chunk.is_empty() {
                let take = chunk.len().min(MAX_LINE_BYTES - self.line.len());
                self.line.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                if self.line.ends_with(b"\n") || self.line.len() == MAX_LINE_BYTES {
                    emit(&self.line);
                    self.line.clear();
                }
            }
        }
    }

    fn finish(self, mut emit: impl FnMut(&[u8])) -> String {
        if !self.line.is_empty() {
            emit(&self.line);
        }
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        if self.truncated {
            if !text.ends_with('\n') && !text.is_empty() {
                text.push('\n');
            }
            text.push_str(TRUNCATED_MARKER);
        }
        text
    }
}

/// Marks the line in which a command reports its process group.
const PGID_TAG: &str = "berth-pgid:";

/// How long a stopped command's process group has between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// Why `pump` stopped before the command ended, and whom to kill.
struct Stopped {
    pgid: Option<u32>,
    error: SshError,
}

/// Kills a stopped command's process group over a second channel of the same
/// session: SIGTERM now, SIGKILL after the grace (left running remotely, in a
/// session of its own, so the channel need not wait for it).
fn kill_group(session: &ssh2::Session, pgid: u32) {
    let group = Arg::process_group(pgid);
    let kill = ShellCommand::new("kill -TERM --")
        .arg(&group)
        .raw("2>/dev/null; (sleep")
        .arg(&Arg::number(KILL_GRACE.as_secs()))
        .raw("; kill -KILL --")
        .arg(&group)
        .raw("2>/dev/null) >/dev/null 2>&1 </dev/null & true");
    let sent = (|| {
        let mut channel = session.channel_session()?;
        channel.exec(kill.as_str())?;
        channel.wait_close()
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, pgid, "could not signal a stopped command's process group");
    }
}

fn pump(
    channel: &mut ssh2::Channel,
    deadline: Duration,
    cap: usize,
    cancel: &CancellationToken,
    on_line: &mut impl FnMut(Stream, &str),
) -> Result<(String, String), Stopped> {
    let started = Instant::now();
    let mut streams = [Captured::new(), Captured::new()];
    let mut buf = [0u8; 16 * 1024];
    let mut idle = Duration::from_millis(1);
    let mut pgid: Option<u32> = None;
    let mut tag_seen = false;
    let mut emit_line = |stream: Stream, line: &[u8], pgid: &mut Option<u32>| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        if stream == Stream::Stderr && !tag_seen {
            tag_seen = true;
            if let Some(id) = text.strip_prefix(PGID_TAG) {
                *pgid = id.parse().ok();
                return true;
            }
        }
        on_line(stream, text);
        false
    };
    let stop = |pgid: Option<u32>, error: SshError| Stopped { pgid, error };
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
                    streams[i].push(&buf[..n], cap, |line| {
                        emit_line(stream, line, &mut pgid);
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    return Err(stop(
                        pgid,
                        SshError::Protocol(format!("reading output: {e}")),
                    ));
                }
            }
        }
        if channel.eof() && !progressed {
            break;
        }
        if cancel.is_cancelled() {
            return Err(stop(
                pgid,
                SshError::Cancelled("the command was stopped".into()),
            ));
        }
        if started.elapsed() > deadline {
            return Err(stop(
                pgid,
                SshError::Timeout(format!("the command ran longer than {deadline:?}")),
            ));
        }
        if progressed {
            idle = Duration::from_millis(1);
        } else {
            std::thread::sleep(idle);
            idle = (idle * 2).min(Duration::from_millis(20));
        }
    }
    let [stdout, stderr] = streams;
    let stdout = stdout.finish(|line| {
        emit_line(Stream::Stdout, line, &mut pgid);
    });
    let stderr = stderr.finish(|line| {
        emit_line(Stream::Stderr, line, &mut pgid);
    });
    Ok((stdout, strip_tag(stderr)))
}

/// The captured stderr without the process-group line the wrapper printed.
fn strip_tag(stderr: String) -> String {
    match stderr.strip_prefix(PGID_TAG) {
        Some(rest) => rest
            .split_once('\n')
            .map(|(_, tail)| tail.to_owned())
            .unwrap_or_default(),
        None => stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_ranges_are_denied_and_private_ones_allowed() {
        let policy = AddressPolicy::default();
        for denied in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2001:0:a9fe:a9fe::1",
            "2001:0:4136:e378:8000:63bf:5601:5601",
        ] {
            assert!(!policy.allows(denied.parse().unwrap()), "{denied}");
        }
        for allowed in [
            "127.0.0.1",
            "10.0.0.5",
            "192.168.1.2",
            "::1",
            "::",
            "203.0.113.9",
            "2606:4700::1111",
            "64:ff9b::cb00:7109",
        ] {
            assert!(policy.allows(allowed.parse().unwrap()), "{allowed}");
        }
        let custom = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(!custom.allows("127.0.0.9".parse().unwrap()));
        assert!(AddressPolicy::new(Vec::new()).allows("169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn output_past_the_cap_is_dropped_with_a_marker_and_lines_stay_bounded() {
        let mut out = Captured::new();
        let mut lines = Vec::new();
        let flood = vec![b'x'; 100_000];
        for _ in 0..10 {
            out.push(&flood, 4096, |l| lines.push(l.len()));
        }
        out.push(b"tail\n", 4096, |l| lines.push(l.len()));
        assert!(out.line.is_empty());
        assert!(lines.iter().all(|n| *n <= MAX_LINE_BYTES));
        let text = out.finish(|_| {});
        assert!(text.ends_with(TRUNCATED_MARKER));
        assert_eq!(text.len(), 4096 + 1 + TRUNCATED_MARKER.len());

        let mut small = Captured::new();
        let mut seen = Vec::new();
        small.push(b"one\ntw", 4096, |l| {
            seen.push(String::from_utf8_lossy(l).into_owned())
        });
        small.push(b"o\n", 4096, |l| {
            seen.push(String::from_utf8_lossy(l).into_owned())
        });
        assert_eq!(seen, ["one\n", "two\n"]);
        assert_eq!(small.finish(|_| {}), "one\ntwo\n");
    }
}
