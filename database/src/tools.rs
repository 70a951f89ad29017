//! The PostgreSQL client tools, run as children: fixed arguments, the
//! connection in their environment, their error output kept to its tail.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::{BackupError, PgTarget};

/// How much of a tool's error output is kept: enough for its message.
const STDERR_TAIL_BYTES: usize = 16 * 1024;

/// Where `pg_dump`, `pg_restore` and `psql` are (`BERTH_PG_BIN_DIR`, else
/// the `PATH`). They must be at least the server's version.
#[derive(Debug, Clone, Default)]
pub struct PgTools {
    bin_dir: Option<PathBuf>,
}

/// What a PostgreSQL tool is given of this process's environment.
const INHERITED: [&str; 5] = ["PATH", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// A running tool, its passfile alive as long as it is.
pub(crate) struct Running {
    pub(crate) tool: &'static str,
    pub(crate) child: Child,
    stderr: tokio::task::JoinHandle<String>,
    _passfile: tempfile::NamedTempFile,
}

impl PgTools {
    pub fn new(bin_dir: Option<PathBuf>) -> Self {
        Self { bin_dir }
    }

    /// Starts `tool` with `args` against `database`; stdout piped when `piped_out`,
    /// stdin piped when `piped_in`.
    pub(crate) fn spawn(
        &self,
        tool: &'static str,
        args: &[&str],
        target: &PgTarget,
        database: &str,
        piped_in: bool,
        piped_out: bool,
    ) -> Result<Running, BackupError> {
        let program = match &self.bin_dir {
            Some(dir) => dir.join(tool),
            None => PathBuf::from(tool),
        };
        let (env, passfile) = target.environment(database)?;
        let mut command = Command::new(&program);
        command
            .args(args)
            // Only what this target says, and none of this process's secrets
            // (DATABASE_URL, the master key): nothing inherited but the
            // search path and the locale.
            .env_clear()
            .envs(
                INHERITED
                    .iter()
                    .filter_map(|name| Some((*name, std::env::var_os(name)?))),
            )
            .envs(env)
            .stdin(if piped_in {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if piped_out {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(BackupError::io(format!("cannot start {tool}")))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        Ok(Running {
            tool,
            child,
            stderr: tokio::spawn(tail(stderr)),
            _passfile: passfile,
        })
    }
}

impl Running {
    /// Waits for the tool to end; an unsuccessful end is its error output.
    pub(crate) async fn finish(mut self, cancel: &CancellationToken) -> Result<(), BackupError> {
        let status = tokio::select! {
            status = self.child.wait() => status.map_err(BackupError::io(format!("waiting for {}", self.tool)))?,
            () = cancel.cancelled() => {
                let _ = self.child.kill().await;
                return Err(BackupError::Cancelled);
            }
        };
        let stderr = self.stderr.await.unwrap_or_default();
        check(self.tool, status, stderr)
    }
}

fn check(tool: &'static str, status: ExitStatus, stderr: String) -> Result<(), BackupError> {
    if status.success() {
        return Ok(());
    }
    Err(BackupError::Tool {
        tool,
        status: status.to_string(),
        stderr: stderr.trim().to_owned(),
    })
}

/// The last [`STDERR_TAIL_BYTES`] of a stream, read to its end.
async fn tail(mut stream: impl AsyncRead + Unpin) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > STDERR_TAIL_BYTES * 2 {
            kept.drain(..kept.len() - STDERR_TAIL_BYTES);
        }
    }
    if kept.len() > STDERR_TAIL_BYTES {
        kept.drain(..kept.len() - STDERR_TAIL_BYTES);
    }
    String::from_utf8_lossy(&kept).into_owned()
}
