//! Running one command on a channel of a shared session.
//!
//! A session is non-blocking for its whole life, so channels of one session
//! run side by side on different threads (a build and its health checks, a
//! probe and a deploy): libssh2 calls are serialised per call by `ssh2`, never
//! held for a command's whole run, and no call can block past its deadline.
//! A call that would block is repeated when the server sends something, or
//! after at most 1 ms, doubling to 20 ms while nothing moves.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use berth_config::{ExposeSecret, SecretString};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio_util::sync::CancellationToken;

use crate::{Arg, ShellCommand, SshError, Stream, TRUNCATED_MARKER, Wire, protocol};

/// libssh2's "would block" on a non-blocking session.
const EAGAIN: ssh2::ErrorCode = ssh2::ErrorCode::Session(-37);

/// The longest pause between two tries of a call that would block.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// A wait that ends when the server sends something, or after a bound that
/// grows while nothing moves (data another thread's channel took off the
/// socket wakes nobody here, so the wait is bounded). A socket that stays
/// readable while the caller makes no progress is slept on instead, so the
/// loop never spins.
pub(crate) struct Backoff<'w> {
    socket: &'w TcpStream,
    bound: Duration,
    woke_without_progress: bool,
}

impl<'w> Backoff<'w> {
    pub(crate) fn new(wire: &'w Wire) -> Self {
        Backoff {
            socket: &wire.socket,
            bound: Duration::from_millis(1),
            woke_without_progress: false,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.bound = Duration::from_millis(1);
        self.woke_without_progress = false;
    }

    pub(crate) fn pause(&mut self) {
        if self.woke_without_progress {
            std::thread::sleep(self.bound);
            self.woke_without_progress = false;
        } else {
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(self.bound).unwrap_or(PollTimeout::MAX);
            self.woke_without_progress = matches!(poll(&mut fds, timeout), Ok(n) if n > 0);
        }
        self.bound = (self.bound * 2).min(MAX_PAUSE);
    }
}

/// Repeats `call` while it would block, until `deadline`.
pub(crate) fn retry<T>(
    wire: &Wire,
    deadline: Instant,
    what: &str,
    mut call: impl FnMut() -> Result<T, ssh2::Error>,
) -> Result<T, SshError> {
    let mut backoff = Backoff::new(wire);
    loop {
        match call() {
            Ok(value) => return Ok(value),
            Err(e) if e.code() == EAGAIN => {
                if Instant::now() >= deadline {
                    return Err(SshError::Timeout(format!("{what} took too long")));
                }
                backoff.pause();
            }
            Err(e) => return Err(protocol(e)),
        }
    }
}

/// A protocol failure before a command started: the session is gone and
/// nothing ran ([`SshError::Disconnected`]).
pub(crate) fn lost_session(error: SshError) -> SshError {
    match error {
        SshError::Protocol(reason) => SshError::Disconnected(reason),
        other => other,
    }
}

/// Opens a channel; a session that cannot open one is gone (the server
/// dropped it, the network broke), and nothing ran.
pub(crate) fn open_channel(wire: &Wire, deadline: Instant) -> Result<ssh2::Channel, SshError> {
    retry(wire, deadline, "opening a channel", || {
        wire.session.channel_session()
    })
    .map_err(lost_session)
}

/// What one command is given.
pub(crate) struct Run {
    pub command: String,
    pub deadline: Duration,
    pub io: Duration,
    pub cap: usize,
    pub stdin: Option<SecretString>,
}

/// Runs `run` on a new channel of `session`; see [`crate::Connection::exec_streaming`].
pub(crate) fn run(
    wire: &Wire,
    run: Run,
    cancel: &CancellationToken,
    on_line: &mut impl FnMut(Stream, &str),
) -> Result<(i32, String, String), SshError> {
    let _turn = wire.turn.lock().unwrap_or_else(|e| e.into_inner());
    let io_deadline = || Instant::now() + run.io;
    let mut channel = open_channel(wire, io_deadline())?;
    // The first stderr line names the process group; `pump` takes it out.
    let command = format!("echo \"{PGID_TAG}$$\" >&2; {}", run.command);
    retry(wire, io_deadline(), "starting the command", || {
        channel.exec(&command)
    })
    .map_err(lost_session)?;
    let stdin = run.stdin.as_ref().map(|s| s.expose_secret().as_bytes());
    let (stdout, stderr) = match pump(wire, &mut channel, &run, stdin, cancel, on_line) {
        Ok(output) => output,
        Err(Stopped { pgid, error }) => {
            if let Some(pgid) = pgid {
                kill_group(wire, pgid, run.io);
            }
            let _ = retry(wire, io_deadline(), "closing the channel", || {
                channel.close()
            });
            return Err(error);
        }
    };
    retry(wire, io_deadline(), "closing the channel", || {
        channel.wait_close()
    })?;
    let status = channel.exit_status().map_err(protocol)?;
    Ok((status, stdout, stderr))
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
fn kill_group(wire: &Wire, pgid: u32, io: Duration) {
    let group = Arg::process_group(pgid);
    let kill = ShellCommand::new("kill -TERM --")
        .arg(&group)
        .raw("2>/dev/null; (sleep")
        .arg(&Arg::number(KILL_GRACE.as_secs()))
        .raw("; kill -KILL --")
        .arg(&group)
        .raw("2>/dev/null) >/dev/null 2>&1 </dev/null & true");
    let deadline = Instant::now() + io;
    let sent = open_channel(wire, deadline).and_then(|mut channel| {
        retry(wire, deadline, "signalling", || channel.exec(kill.as_str()))?;
        retry(wire, deadline, "signalling", || channel.wait_close())
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, pgid, "could not signal a stopped command's process group");
    }
}

/// Feeds `stdin` (then end of file) and reads both output streams as they
/// come, so a command that fills one while waiting on the other never stalls.
fn pump(
    wire: &Wire,
    channel: &mut ssh2::Channel,
    run: &Run,
    stdin: Option<&[u8]>,
    cancel: &CancellationToken,
    on_line: &mut impl FnMut(Stream, &str),
) -> Result<(String, String), Stopped> {
    let started = Instant::now();
    let mut streams = [Captured::new(), Captured::new()];
    let mut buf = [0u8; 16 * 1024];
    let mut backoff = Backoff::new(wire);
    let mut pgid: Option<u32> = None;
    let mut tag_seen = false;
    let mut input = stdin.unwrap_or_default();
    let mut input_closed = false;
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
        if !input.is_empty() {
            match channel.write(input) {
                Ok(n) => {
                    input = &input[n..];
                    progressed |= n > 0;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    return Err(stop(
                        pgid,
                        SshError::Protocol(format!("writing input: {e}")),
                    ));
                }
            }
        } else if !input_closed {
            match channel.send_eof() {
                Ok(()) => input_closed = true,
                Err(e) if e.code() == EAGAIN => {}
                Err(e) => return Err(stop(pgid, protocol(e))),
            }
        }
        for (i, stream) in [Stream::Stdout, Stream::Stderr].into_iter().enumerate() {
            let read = match stream {
                Stream::Stdout => channel.read(&mut buf),
                Stream::Stderr => channel.stderr().read(&mut buf),
            };
            match read {
                Ok(0) => {}
                Ok(n) => {
                    progressed = true;
                    streams[i].push(&buf[..n], run.cap, |line| {
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
        if started.elapsed() > run.deadline {
            return Err(stop(
                pgid,
                SshError::Timeout(format!("the command ran longer than {:?}", run.deadline)),
            ));
        }
        if progressed {
            backoff.reset();
        } else {
            backoff.pause();
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
