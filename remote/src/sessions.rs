//! Sessions kept per server, so a job does not pay for a TCP connect, a key
//! exchange and a login each time (one probe a minute per server, builds,
//! health checks).
//!
//! A kept session is handed out again only when it was opened with the same
//! settings (address, user, credentials, pinned key) and no channel failed to
//! open on it. Sessions unused for the idle time are closed; past the cap the
//! least recently used one is. A command that finds its session gone before
//! it started (the server dropped it, sshd restarted) runs again on a new
//! session, connected with the host key checked, once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_config::SecretString;
use berth_ssh::{
    AddressPolicy, Arg, Connection, Limits, Output, ShellCommand, SshError, Stream, Target,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Kept {
    conn: Connection,
    identity: String,
    last_used: Instant,
}

struct Shared {
    kept: Mutex<HashMap<Uuid, Kept>>,
    idle: Duration,
    max: usize,
    connects: AtomicU64,
    reuses: AtomicU64,
    replaced: AtomicU64,
}

/// The sessions one process keeps. Cheap to clone.
#[derive(Clone)]
pub struct SessionPool(Arc<Shared>);

/// What the pool did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    /// Sessions open now.
    pub open: usize,
    /// New sessions connected (each with a key exchange and a login).
    pub connects: u64,
    /// Times a kept session served a job.
    pub reuses: u64,
    /// Kept sessions found lost (closed when checked out, or failing under
    /// a command before it started) and replaced.
    pub replaced: u64,
}

impl SessionPool {
    pub fn new(idle: Duration, max: usize) -> Self {
        SessionPool(Arc::new(Shared {
            kept: Mutex::new(HashMap::new()),
            idle,
            max: max.max(1),
            connects: AtomicU64::new(0),
            reuses: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
        }))
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Kept>> {
        // A panic while holding the map leaves it consistent (every change is
        // one insert or remove), so a poisoned lock is still usable.
        self.0.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kept session of `server_id` if it matches `identity`, is alive and
    /// was used within the idle time. Closes idle ones on the way.
    pub(crate) fn checkout(&self, server_id: Uuid, identity: &str) -> Option<Connection> {
        let mut kept = self.kept();
        let idle = self.0.idle;
        let replaced = &self.0.replaced;
        kept.retain(|_, k| {
            let lost = k.conn.is_lost();
            if lost {
                replaced.fetch_add(1, Ordering::Relaxed);
            }
            !lost && k.last_used.elapsed() < idle
        });
        let entry = kept.get_mut(&server_id)?;
        if entry.identity != identity {
            kept.remove(&server_id);
            return None;
        }
        entry.last_used = Instant::now();
        self.0.reuses.fetch_add(1, Ordering::Relaxed);
        Some(entry.conn.clone())
    }

    fn keep(&self, server_id: Uuid, identity: String, conn: Connection) {
        let mut kept = self.kept();
        if !kept.contains_key(&server_id) && kept.len() >= self.0.max {
            let oldest = kept
                .iter()
                .min_by_key(|(_, k)| k.last_used)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                kept.remove(&id);
            }
        }
        kept.insert(
            server_id,
            Kept {
                conn,
                identity,
                last_used: Instant::now(),
            },
        );
    }

    pub(crate) fn forget(&self, server_id: Uuid) {
        self.kept().remove(&server_id);
    }

    pub fn stats(&self) -> SessionStats {
        SessionStats {
            open: self.kept().len(),
            connects: self.0.connects.load(Ordering::Relaxed),
            reuses: self.0.reuses.load(Ordering::Relaxed),
            replaced: self.0.replaced.load(Ordering::Relaxed),
        }
    }
}

/// How to open a new session to one server, and keep it.
pub(crate) struct Reconnect {
    pub server_id: Uuid,
    pub identity: String,
    pub target: Target,
    pub policy: AddressPolicy,
    pub limits: Limits,
    pub pool: SessionPool,
}

impl Reconnect {
    pub(crate) async fn connect(&self) -> Result<Connection, SshError> {
        let conn = berth_ssh::connect(&self.target, &self.policy, self.limits).await?;
        self.pool.0.connects.fetch_add(1, Ordering::Relaxed);
        // Kept only once pinned: a first validation's key is not trusted
        // for the next job until the pin is recorded.
        if self.target.pinned_host_key.is_some() {
            self.pool
                .keep(self.server_id, self.identity.clone(), conn.clone());
        }
        Ok(conn)
    }
}

/// A session to one server for one job. Every command runs on a channel of
/// its own; a kept session found lost before a command started is replaced
/// and the command runs on the new one.
pub struct Session {
    conn: Mutex<Connection>,
    reused: std::sync::atomic::AtomicBool,
    reconnect: Reconnect,
}

impl Session {
    pub(crate) fn new(conn: Connection, reused: bool, reconnect: Reconnect) -> Self {
        Self {
            conn: Mutex::new(conn),
            reused: std::sync::atomic::AtomicBool::new(reused),
            reconnect,
        }
    }

    fn current(&self) -> Connection {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The server's host key fingerprint, `SHA256:…`.
    pub fn host_key(&self) -> String {
        self.current().host_key().to_owned()
    }

    /// Runs `op`; when a kept session turns out lost before anything ran,
    /// connects again (host key checked) and runs it once more.
    async fn with_connection<T, F, Fut>(&self, op: F) -> Result<T, SshError>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T, SshError>>,
    {
        match op(self.current()).await {
            Err(SshError::Disconnected(reason)) if self.reused.load(Ordering::Relaxed) => {
                tracing::info!(server = %self.reconnect.server_id, %reason, "a kept session was lost; connecting again");
                self.reconnect.pool.forget(self.reconnect.server_id);
                let fresh = self.reconnect.connect().await?;
                self.reconnect
                    .pool
                    .0
                    .replaced
                    .fetch_add(1, Ordering::Relaxed);
                *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
                self.reused.store(false, Ordering::Relaxed);
                op(fresh).await
            }
            other => other,
        }
    }

    /// See [`Connection::exec`].
    pub async fn exec(
        &self,
        command: &ShellCommand,
        deadline: Duration,
        cancel: &CancellationToken,
    ) -> Result<Output, SshError> {
        self.with_connection(|conn| async move { conn.exec(command, deadline, cancel).await })
            .await
    }

    /// See [`Connection::exec_streaming`].
    pub async fn exec_streaming(
        &self,
        command: &ShellCommand,
        deadline: Duration,
        cancel: &CancellationToken,
        on_line: impl FnMut(Stream, &str) + Send + 'static,
    ) -> Result<Output, SshError> {
        self.streaming(command, None, deadline, cancel, on_line)
            .await
    }

    /// See [`Connection::exec_with_input`].
    pub async fn exec_with_input(
        &self,
        command: &ShellCommand,
        input: &SecretString,
        deadline: Duration,
        cancel: &CancellationToken,
        on_line: impl FnMut(Stream, &str) + Send + 'static,
    ) -> Result<Output, SshError> {
        self.streaming(command, Some(input), deadline, cancel, on_line)
            .await
    }

    /// `on_line` is shared by both tries: a lost session's try never ran, so
    /// it printed nothing.
    async fn streaming(
        &self,
        command: &ShellCommand,
        input: Option<&SecretString>,
        deadline: Duration,
        cancel: &CancellationToken,
        on_line: impl FnMut(Stream, &str) + Send + 'static,
    ) -> Result<Output, SshError> {
        let on_line = Arc::new(Mutex::new(on_line));
        self.with_connection(|conn| {
            let on_line = on_line.clone();
            let forward = move |stream: Stream, line: &str| {
                (on_line.lock().unwrap_or_else(|e| e.into_inner()))(stream, line)
            };
            let input = input.cloned();
            async move {
                match input {
                    Some(input) => {
                        conn.exec_with_input(command, input, deadline, cancel, forward)
                            .await
                    }
                    None => {
                        conn.exec_streaming(command, deadline, cancel, forward)
                            .await
                    }
                }
            }
        })
        .await
    }

    /// See [`Connection::upload`].
    pub async fn upload(&self, data: &[u8], remote: &Arg, mode: i32) -> Result<(), SshError> {
        self.with_connection(|conn| async move { conn.upload(data.to_vec(), remote, mode).await })
            .await
    }

    /// See [`Connection::download`].
    pub async fn download(&self, remote: &Arg, max_bytes: u64) -> Result<Vec<u8>, SshError> {
        self.with_connection(|conn| async move { conn.download(remote, max_bytes).await })
            .await
    }

    /// See [`Connection::open_shell`].
    pub async fn open_shell(&self, cols: u32, rows: u32) -> Result<berth_ssh::Shell, SshError> {
        self.with_connection(|conn| async move { conn.open_shell(cols, rows).await })
            .await
    }

    /// See [`Connection::files`].
    pub async fn files(&self) -> Result<berth_ssh::Files, SshError> {
        self.with_connection(|conn| async move { conn.files().await })
            .await
    }
}
