//! Connecting — the address checked, the host key checked against the pin
//! during the key exchange (before any credential is sent), the login — and
//! the [`Connection`] every command and transfer goes through.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_config::{ExposeSecret, SecretString};
use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
    AddressPolicy, Arg, Auth, Limits, Output, ShellCommand, SshError, Stream, Target, address,
    channel, command, files, keys, sftp, shell,
};

/// Channels one session runs at once; more wait for one to end. OpenSSH's
/// sshd allows 10 per connection (`MaxSessions`); the two left over are for
/// the kill of a stopped command, which must never wait behind the others.
pub const MAX_CHANNELS: usize = 8;
const KILL_CHANNELS: usize = 2;

/// How often a quiet session is checked with a keepalive, and how many may
/// go unanswered before it counts as lost.
const KEEPALIVE: Duration = Duration::from_secs(30);
const KEEPALIVES_UNANSWERED: usize = 3;

/// Checks the host key during the key exchange and remembers what it saw,
/// so a refused key can be reported with both fingerprints.
struct HostKeyCheck {
    pinned: Option<String>,
    seen: Arc<Mutex<Option<String>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let data = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data().clone(),
            PublicKeyOrCertificate::Certificate(cert) => cert.public_key().clone(),
        };
        let fingerprint = data.fingerprint(HashAlg::Sha256).to_string();
        let accepted = self.pinned.as_ref().is_none_or(|pin| *pin == fingerprint);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(fingerprint);
        Ok(accepted)
    }
}

pub(crate) struct Shared {
    handle: client::Handle<HostKeyCheck>,
    pub(crate) limits: Limits,
    channels: Arc<Semaphore>,
    kills: Arc<Semaphore>,
    /// Set once a channel could not be opened: the session is not used again.
    lost: AtomicBool,
}

impl Shared {
    /// A place among the channels running at once; waits for one to end.
    pub(crate) async fn channel_turn(&self) -> OwnedSemaphorePermit {
        self.channels
            .clone()
            .acquire_owned()
            .await
            .expect("the channel semaphore is never closed")
    }

    /// A place among the kills of stopped commands, which have places of
    /// their own.
    pub(crate) async fn kill_turn(&self) -> OwnedSemaphorePermit {
        self.kills
            .clone()
            .acquire_owned()
            .await
            .expect("the kill semaphore is never closed")
    }

    /// Opens a channel. A session that cannot open one is gone (the server
    /// dropped it, the network broke) and nothing ran on it; a server that
    /// refuses one (its own limits) is an error of that server.
    pub(crate) async fn open_channel(&self) -> Result<russh::Channel<client::Msg>, SshError> {
        let opened = tokio::time::timeout(self.limits.io, self.handle.channel_open_session()).await;
        match opened {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(russh::Error::ChannelOpenFailure(reason))) if !self.handle.is_closed() => Err(
                SshError::Protocol(format!("the server refused a channel: {reason:?}")),
            ),
            Ok(Err(e)) => Err(self.lost(e.to_string())),
            Err(_) if self.handle.is_closed() => Err(self.lost("the session closed".into())),
            Err(_) => Err(SshError::Timeout(format!(
                "opening a channel took longer than {:?}",
                self.limits.io
            ))),
        }
    }

    /// Marks the session lost: nothing ran, so the caller may run it again
    /// on a new session.
    pub(crate) fn lost(&self, reason: String) -> SshError {
        self.lost.store(true, Ordering::Relaxed);
        SshError::Disconnected(reason)
    }
}

/// An authenticated SSH session. Cheap to clone; clones share the session,
/// and each command runs on a channel of its own, side by side with others
/// (up to [`MAX_CHANNELS`] at once). The session ends when the last clone is
/// dropped.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    host_key: String,
    address: SocketAddr,
}

fn client_config() -> Arc<client::Config> {
    static CONFIG: std::sync::OnceLock<Arc<client::Config>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            Arc::new(client::Config {
                keepalive_interval: Some(KEEPALIVE),
                keepalive_max: KEEPALIVES_UNANSWERED,
                nodelay: true,
                ..Default::default()
            })
        })
        .clone()
}

/// Connects, checks the host key against the pin and authenticates.
pub async fn connect(
    target: &Target,
    policy: &AddressPolicy,
    limits: Limits,
) -> Result<Connection, SshError> {
    command::check_username(&target.username).map_err(|e| SshError::Denied(e.to_string()))?;
    let address = {
        let (target, policy) = (target.clone(), policy.clone());
        tokio::task::spawn_blocking(move || address::resolve(&target, &policy))
            .await
            .map_err(|e| SshError::Protocol(format!("resolving failed: {e}")))??
    };
    let internal = address::is_internal(address.ip());
    // One answer for every way an internal address fails before SSH is
    // spoken: refused, timed out, or something that is not an SSH server.
    let no_ssh_server = || SshError::Unreachable {
        target: address.to_string(),
        reason: "no SSH server answered".into(),
    };
    let tcp =
        match tokio::time::timeout(limits.connect, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => tcp,
            _ if internal => return Err(no_ssh_server()),
            Ok(Err(e)) => {
                return Err(SshError::Unreachable {
                    target: address.to_string(),
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(SshError::Unreachable {
                    target: address.to_string(),
                    reason: format!("no answer within {:?}", limits.connect),
                });
            }
        };
    let _ = tcp.set_nodelay(true);
    let seen = Arc::new(Mutex::new(None));
    let check = HostKeyCheck {
        pinned: target.pinned_host_key.clone(),
        seen: seen.clone(),
    };
    let handshake = client::connect_stream(client_config(), tcp, check);
    let mut handle = match tokio::time::timeout(limits.handshake, handshake).await {
        Ok(Ok(handle)) => handle,
        Ok(Err(russh::Error::UnknownKey)) => {
            let actual = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
            return Err(SshError::HostKeyMismatch {
                expected: target.pinned_host_key.clone().unwrap_or_default(),
                actual: actual.unwrap_or_default(),
            });
        }
        _ if internal => return Err(no_ssh_server()),
        Ok(Err(e)) => return Err(SshError::Protocol(e.to_string())),
        Err(_) => {
            return Err(SshError::Unreachable {
                target: address.to_string(),
                reason: format!("no SSH handshake within {:?}", limits.handshake),
            });
        }
    };
    let host_key = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| SshError::Protocol("the server sent no host key".into()))?;
    let login = authenticate(&mut handle, target);
    match tokio::time::timeout(limits.io, login).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(SshError::Timeout(format!(
                "logging in took longer than {:?}",
                limits.io
            )));
        }
    }
    Ok(Connection {
        shared: Arc::new(Shared {
            handle,
            limits,
            channels: Arc::new(Semaphore::new(MAX_CHANNELS)),
            kills: Arc::new(Semaphore::new(KILL_CHANNELS)),
            lost: AtomicBool::new(false),
        }),
        host_key,
        address,
    })
}

async fn authenticate(
    handle: &mut client::Handle<HostKeyCheck>,
    target: &Target,
) -> Result<(), SshError> {
    let refused =
        |detail: &str| SshError::AuthFailed(format!("{} was refused{detail}", target.username));
    let result = match &target.auth {
        Auth::Password(password) => handle
            .authenticate_password(&target.username, password.expose_secret())
            .await
            .map_err(|e| SshError::Protocol(e.to_string()))?,
        Auth::Key {
            private_key,
            passphrase,
        } => {
            let key = open_key(private_key.clone(), passphrase.clone()).await?;
            let hash = if key.algorithm().is_rsa() {
                handle
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| SshError::Protocol(e.to_string()))?
                    .flatten()
            } else {
                None
            };
            let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
            handle
                .authenticate_publickey(&target.username, key)
                .await
                .map_err(|e| SshError::Protocol(e.to_string()))?
        }
    };
    if result.success() {
        Ok(())
    } else {
        Err(refused(""))
    }
}

/// Decrypting a key costs real CPU (bcrypt rounds), so it runs off the runtime.
async fn open_key(
    private_key: SecretString,
    passphrase: Option<SecretString>,
) -> Result<russh::keys::PrivateKey, SshError> {
    tokio::task::spawn_blocking(move || {
        keys::open(
            private_key.expose_secret(),
            passphrase.as_ref().map(|p| p.expose_secret()),
        )
        .map_err(|refused| SshError::AuthFailed(format!("the private key {}", refused.rule)))
    })
    .await
    .map_err(|e| SshError::Protocol(format!("opening the key failed: {e}")))?
}

impl Connection {
    /// The server's host key fingerprint, `SHA256:…`.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Whether the session is gone (a channel could not be opened, or the
    /// connection closed): it is not used again.
    pub fn is_lost(&self) -> bool {
        self.shared.lost.load(Ordering::Relaxed) || self.shared.handle.is_closed()
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
    /// (lines longer than 16 KiB are handed over in pieces), and returns the
    /// output at the end: at most the connection's `max_output_bytes` of
    /// each stream, then [`crate::TRUNCATED_MARKER`]. Output past the cap is
    /// read and dropped, so the command runs to its end.
    ///
    /// When `cancel` fires or `deadline` passes, the command's remote process
    /// group (sshd starts every command in a session of its own, so the group
    /// is the command and everything it started, and nothing else) gets
    /// SIGTERM, then SIGKILL after [`crate::KILL_GRACE`], and the channel is
    /// closed.
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
        let run = channel::Run {
            command: command.as_str(),
            deadline,
            cap: self.shared.limits.max_output_bytes,
            stdin,
        };
        channel::run(&self.shared, run, cancel, &mut on_line).await
    }

    /// Writes `data` to `remote` over SFTP with `mode` (e.g. `0o600`).
    pub async fn upload(&self, data: Vec<u8>, remote: &Arg, mode: i32) -> Result<(), SshError> {
        sftp::put(&self.shared, &data, remote.as_str(), mode as u32).await
    }

    /// Reads `remote` over SFTP, refusing files larger than `max_bytes`.
    pub async fn download(&self, remote: &Arg, max_bytes: u64) -> Result<Vec<u8>, SshError> {
        sftp::get(&self.shared, remote.as_str(), max_bytes).await
    }

    /// A login shell on a PTY of `cols`×`rows`, on a channel of its own
    /// until the [`crate::Shell`] is closed or dropped.
    pub async fn open_shell(&self, cols: u32, rows: u32) -> Result<crate::Shell, SshError> {
        shell::open(&self.shared, cols, rows).await
    }

    /// An SFTP session for a request's file operations, on a channel of its
    /// own until the [`crate::Files`] is dropped.
    pub async fn files(&self) -> Result<crate::Files, SshError> {
        files::open(&self.shared).await
    }
}
