//! An interactive login shell on a pseudo-terminal, for the web terminal:
//! bytes both ways, resizes, and an end that closes the channel (sshd then
//! hangs up the terminal, and the shell and what it started get SIGHUP).

use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::OwnedSemaphorePermit;

use crate::SshError;
use crate::connection::Shared;

/// The terminal type the shell is told it runs on (what xterm.js emulates).
const TERM: &str = "xterm-256color";

/// Columns and rows a terminal may have: what a screen can show, and what
/// `stty` accepts.
pub const MAX_TERMINAL_SIDE: u32 = 1000;

/// What the shell sent.
#[derive(Debug, PartialEq, Eq)]
pub enum ShellOutput {
    /// Bytes for the terminal (the shell's stdout and stderr, as a PTY mixes them).
    Data(Vec<u8>),
    /// The shell ended, with its exit status when the server said it.
    Ended(Option<u32>),
}

/// A shell running on a PTY of its own channel; dropping it closes the channel.
pub struct Shell {
    read: ChannelReadHalf,
    write: ChannelWriteHalf<Msg>,
    exit_status: Option<u32>,
    _turn: OwnedSemaphorePermit,
}

fn check_size(cols: u32, rows: u32) -> Result<(), SshError> {
    if (1..=MAX_TERMINAL_SIDE).contains(&cols) && (1..=MAX_TERMINAL_SIDE).contains(&rows) {
        Ok(())
    } else {
        Err(SshError::Denied(format!(
            "a terminal is 1 to {MAX_TERMINAL_SIDE} columns and rows, not {cols}×{rows}"
        )))
    }
}

/// Opens a PTY of `cols`×`rows` and starts the user's login shell on it.
pub(crate) async fn open(shared: &Shared, cols: u32, rows: u32) -> Result<Shell, SshError> {
    check_size(cols, rows)?;
    let turn = shared.channel_turn().await;
    let channel = shared.open_channel().await?;
    let started = tokio::time::timeout(shared.limits.io, async {
        channel
            .request_pty(true, TERM, cols, rows, 0, 0, &[])
            .await
            .map_err(|e| shared.lost(e.to_string()))?;
        channel
            .request_shell(true)
            .await
            .map_err(|e| shared.lost(e.to_string()))?;
        Ok::<_, SshError>(())
    })
    .await
    .map_err(|_| SshError::Timeout("starting the shell took too long".into()))?;
    started?;
    let (mut read, write) = channel.split();
    // The server answers each request with success or failure, in order.
    for request in ["a terminal", "a shell"] {
        loop {
            match tokio::time::timeout(shared.limits.io, read.wait()).await {
                Ok(Some(ChannelMsg::Success)) => break,
                Ok(Some(ChannelMsg::Failure)) => {
                    return Err(SshError::Protocol(format!("the server refused {request}")));
                }
                Ok(Some(ChannelMsg::WindowAdjusted { .. })) => {}
                Ok(Some(_)) => {}
                Ok(None) => return Err(shared.lost("the channel closed".into())),
                Err(_) => {
                    return Err(SshError::Timeout(format!(
                        "the server did not answer the request for {request}"
                    )));
                }
            }
        }
    }
    Ok(Shell {
        read,
        write,
        exit_status: None,
        _turn: turn,
    })
}

impl Shell {
    /// The next output; `Ended` once the shell is gone. Cancel-safe: a
    /// `select!` may drop it between messages.
    pub async fn output(&mut self) -> ShellOutput {
        loop {
            match self.read.wait().await {
                Some(ChannelMsg::Data { data }) => return ShellOutput::Data(data.to_vec()),
                Some(ChannelMsg::ExtendedData { data, .. }) => {
                    return ShellOutput::Data(data.to_vec());
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    self.exit_status = Some(exit_status);
                }
                Some(ChannelMsg::Close) | None => return ShellOutput::Ended(self.exit_status),
                Some(_) => {}
            }
        }
    }

    /// Keystrokes (or pasted text) for the shell.
    pub async fn input(&self, data: &[u8]) -> Result<(), SshError> {
        self.write
            .data(data)
            .await
            .map_err(|e| SshError::Protocol(format!("writing to the terminal: {e}")))
    }

    /// Tells the shell its terminal is now `cols`×`rows` (it gets SIGWINCH).
    pub async fn resize(&self, cols: u32, rows: u32) -> Result<(), SshError> {
        check_size(cols, rows)?;
        self.write
            .window_change(cols, rows, 0, 0)
            .await
            .map_err(|e| SshError::Protocol(format!("resizing the terminal: {e}")))
    }

    /// Closes the channel: the server hangs up the terminal.
    pub async fn close(self) {
        let _ = self.write.eof().await;
        let _ = self.write.close().await;
    }
}
