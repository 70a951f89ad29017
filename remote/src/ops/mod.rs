//! Typed operations on a server, for deployments, domains and backups: every
//! command is fixed text plus checked, quoted arguments ([`berth_ssh::Arg`]);
//! secrets go through stdin or a file written over SFTP, never a command
//! line; output lines go to the job's log as they come; `cancel` and each
//! operation's deadline stop the remote process group.

pub mod docker;
pub mod files;
pub mod git;
pub mod health;
pub mod http;
pub mod nginx;
pub mod source;

use std::sync::Arc;

use berth_ssh::{Output, Refused, SshError, Stream};
use tokio_util::sync::CancellationToken;

use crate::Session;

/// Where a command's output lines go (a job's log), as they are produced.
pub type Lines = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// Output lines nobody follows.
pub fn quiet() -> Lines {
    Arc::new(|_, _| {})
}

/// What an operation runs with: the session, the job's cancellation and
/// where output lines go.
#[derive(Clone)]
pub struct On<'a> {
    pub session: &'a Session,
    pub cancel: &'a CancellationToken,
    pub lines: Lines,
}

impl<'a> On<'a> {
    pub fn new(session: &'a Session, cancel: &'a CancellationToken) -> Self {
        Self {
            session,
            cancel,
            lines: quiet(),
        }
    }

    pub fn with_lines(mut self, lines: Lines) -> Self {
        self.lines = lines;
        self
    }

    /// Runs `command`, streaming its lines, and fails on a non-zero exit.
    pub(crate) async fn run(
        &self,
        what: &'static str,
        command: &berth_ssh::ShellCommand,
        deadline: std::time::Duration,
    ) -> Result<Output, OpError> {
        let lines = self.lines.clone();
        let output = self
            .session
            .exec_streaming(command, deadline, self.cancel, move |stream, line| {
                lines(stream, line)
            })
            .await?;
        succeeded(what, output)
    }

    /// [`Self::run`] with `input` on the command's stdin.
    pub(crate) async fn run_with_input(
        &self,
        what: &'static str,
        command: &berth_ssh::ShellCommand,
        input: &berth_config::SecretString,
        deadline: std::time::Duration,
    ) -> Result<Output, OpError> {
        let lines = self.lines.clone();
        let output = self
            .session
            .exec_with_input(
                command,
                input,
                deadline,
                self.cancel,
                move |stream, line| lines(stream, line),
            )
            .await?;
        succeeded(what, output)
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The command ran and failed; `detail` is the end of what it printed.
    #[error("{what} failed (exit status {status}): {detail}")]
    Failed {
        what: &'static str,
        status: i32,
        detail: String,
    },
    /// The command's answer could not be read.
    #[error("{what}: {detail}")]
    Unreadable { what: &'static str, detail: String },
}

impl OpError {
    /// Worth retrying later: the server or the network, not the request.
    pub fn is_transient(&self) -> bool {
        matches!(self, OpError::Ssh(e) if e.is_transient())
    }
}

/// How much of a failed command's output an error carries.
const DETAIL_BYTES: usize = 2000;

/// The last lines of `text`, at most [`DETAIL_BYTES`].
fn tail(text: &str) -> String {
    let text = text.trim_end();
    if text.len() <= DETAIL_BYTES {
        return text.to_owned();
    }
    let mut start = text.len() - DETAIL_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

fn succeeded(what: &'static str, output: Output) -> Result<Output, OpError> {
    if output.exit_status == 0 {
        return Ok(output);
    }
    let detail = if output.stderr.trim().is_empty() {
        tail(&output.stdout)
    } else {
        tail(&output.stderr)
    };
    Err(OpError::Failed {
        what,
        status: output.exit_status,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_carries_the_end_of_its_output() {
        let long = format!("{}\nthe real error", "noise ".repeat(1000));
        let err = succeeded(
            "docker build",
            Output {
                exit_status: 2,
                stdout: String::new(),
                stderr: long,
            },
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("docker build failed (exit status 2): …"),
            "{text}"
        );
        assert!(text.ends_with("the real error"));
        assert!(text.len() < DETAIL_BYTES + 100);
        let ok = Output {
            exit_status: 0,
            stdout: "x".into(),
            stderr: String::new(),
        };
        assert!(succeeded("x", ok).is_ok());
    }
}
