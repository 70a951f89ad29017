//! Running one command on a channel of its own: the session task moves the
//! bytes, this side waits on the channel's messages, the job's cancellation
//! and the command's deadline at once, so a stalled server holds no thread
//! and nothing past the deadline.

use std::sync::Arc;
use std::time::Duration;

use berth_config::{ExposeSecret, SecretString};
use russh::ChannelMsg;
use tokio_util::sync::CancellationToken;

use crate::connection::Shared;
use crate::{Arg, Output, ShellCommand, SshError, Stream, TRUNCATED_MARKER};

/// What one command is given.
pub(crate) struct Run<'c> {
    pub command: &'c str,
    pub deadline: Duration,
    pub cap: usize,
    pub stdin: Option<SecretString>,
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

/// Runs `run` on a new channel; see [`crate::Connection::exec_streaming`].
pub(crate) async fn run(
    shared: &Arc<Shared>,
    run: Run<'_>,
    cancel: &CancellationToken,
    on_line: &mut impl FnMut(Stream, &str),
) -> Result<Output, SshError> {
    let _turn = shared.channel_turn().await;
    let channel = shared.open_channel().await?;
    // The first stderr line names the process group; `Lines` takes it out.
    let command = format!("echo \"{PGID_TAG}$$\" >&2; {}", run.command);
    if let Err(e) = channel.exec(true, command).await {
        return Err(shared.lost(e.to_string()));
    }
    let (mut read, write) = channel.split();
    let input = async {
        if let Some(secret) = &run.stdin {
            write.data(secret.expose_secret().as_bytes()).await?;
        }
        write.eof().await
    };
    tokio::pin!(input);
    let mut input_sent = false;
    let deadline = tokio::time::sleep(run.deadline);
    tokio::pin!(deadline);
    let mut lines = Lines::new(run.cap);
    let mut status = None;
    let mut dropped = StopIfDropped {
        shared: shared.clone(),
        pgid: None,
    };
    let stopped = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                break Some(SshError::Cancelled("the command was stopped".into()));
            }
            _ = &mut deadline => {
                break Some(SshError::Timeout(format!(
                    "the command ran longer than {:?}",
                    run.deadline
                )));
            }
            sent = &mut input, if !input_sent => {
                input_sent = true;
                if let Err(e) = sent {
                    break Some(SshError::Protocol(format!("writing input: {e}")));
                }
            }
            message = read.wait() => match message {
                Some(ChannelMsg::Data { data }) => lines.push(Stream::Stdout, &data, on_line),
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    lines.push(Stream::Stderr, &data, on_line);
                    dropped.pgid = lines.pgid;
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status as i32),
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    status = Some(128 + signal_number(&signal_name));
                }
                Some(ChannelMsg::Failure) if status.is_none() => {
                    break Some(SshError::Protocol("the server refused to run the command".into()));
                }
                Some(ChannelMsg::Close) | None => break None,
                Some(_) => {}
            },
        }
    };
    dropped.pgid = None;
    if let Some(error) = stopped {
        if let Some(pgid) = lines.pgid {
            kill_group(shared, pgid).await;
        }
        let _ = write.close().await;
        return Err(error);
    }
    let Some(exit_status) = status else {
        return Err(SshError::Protocol(
            "the connection was lost while the command ran".into(),
        ));
    };
    let (stdout, stderr) = lines.finish(on_line);
    Ok(Output {
        exit_status,
        stdout,
        stderr,
    })
}

/// A command whose caller stopped waiting for it (its future dropped, say
/// a job's task aborted) is stopped like a cancelled one, so no remote
/// process outlives the one waiting for it.
struct StopIfDropped {
    shared: Arc<Shared>,
    pgid: Option<u32>,
}

impl Drop for StopIfDropped {
    fn drop(&mut self) {
        if let (Some(pgid), Ok(runtime)) = (self.pgid, tokio::runtime::Handle::try_current()) {
            let shared = self.shared.clone();
            runtime.spawn(async move { kill_group(&shared, pgid).await });
        }
    }
}

/// The shell's number for a signal that ended a command (`128 + n` is its
/// exit status).
fn signal_number(signal: &russh::Sig) -> i32 {
    use russh::Sig;
    match signal {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(_) => 127,
    }
}

/// Both output streams of a command, with the process-group line taken out.
struct Lines {
    streams: [Captured; 2],
    cap: usize,
    pgid: Option<u32>,
    tag_seen: bool,
}

impl Lines {
    fn new(cap: usize) -> Self {
        Lines {
            streams: [Captured::new(), Captured::new()],
            cap,
            pgid: None,
            tag_seen: false,
        }
    }

    fn push(&mut self, stream: Stream, data: &[u8], on_line: &mut impl FnMut(Stream, &str)) {
        let Lines {
            streams,
            cap,
            pgid,
            tag_seen,
        } = self;
        let index = stream as usize;
        streams[index].push(data, *cap, |line| {
            emit(stream, line, pgid, tag_seen, on_line)
        });
    }

    fn finish(self, on_line: &mut impl FnMut(Stream, &str)) -> (String, String) {
        let Lines {
            streams: [stdout, stderr],
            mut pgid,
            mut tag_seen,
            ..
        } = self;
        let stdout =
            stdout.finish(|line| emit(Stream::Stdout, line, &mut pgid, &mut tag_seen, on_line));
        let stderr =
            stderr.finish(|line| emit(Stream::Stderr, line, &mut pgid, &mut tag_seen, on_line));
        (stdout, strip_tag(stderr))
    }
}

fn emit(
    stream: Stream,
    line: &[u8],
    pgid: &mut Option<u32>,
    tag_seen: &mut bool,
    on_line: &mut impl FnMut(Stream, &str),
) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\r', '\n']);
    if stream == Stream::Stderr && !*tag_seen {
        *tag_seen = true;
        if let Some(id) = text.strip_prefix(PGID_TAG) {
            *pgid = id.parse().ok();
            return;
        }
    }
    on_line(stream, text);
}

/// Kills a stopped command's process group over a channel of its own (never
/// waiting for a place among the running ones): SIGTERM now, SIGKILL after
/// the grace (left running remotely, in a session of its own, so the channel
/// need not wait for it).
async fn kill_group(shared: &Shared, pgid: u32) {
    let group = Arg::process_group(pgid);
    let kill = ShellCommand::new("kill -TERM --")
        .arg(&group)
        .raw("2>/dev/null; (sleep")
        .arg(&Arg::number(KILL_GRACE.as_secs()))
        .raw("; kill -KILL --")
        .arg(&group)
        .raw("2>/dev/null) >/dev/null 2>&1 </dev/null & true");
    let sent = async {
        let _turn = shared.kill_turn().await;
        let mut channel = shared.open_channel().await?;
        channel
            .exec(true, kill.as_str())
            .await
            .map_err(|e| SshError::Protocol(e.to_string()))?;
        while let Some(message) = channel.wait().await {
            if matches!(message, ChannelMsg::Close) {
                break;
            }
        }
        Ok::<_, SshError>(())
    };
    match tokio::time::timeout(shared.limits.io, sent).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, pgid, "could not signal a stopped command's process group")
        }
        Err(_) => tracing::warn!(
            pgid,
            "signalling a stopped command's process group timed out"
        ),
    }
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
