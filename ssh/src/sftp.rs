//! Files over SFTP on the shared, non-blocking session: every call is
//! repeated while it would block, and gives up when no byte moved for the
//! connection's I/O bound.

use std::io::{ErrorKind, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::channel::{Backoff, lost_session, retry};
use crate::{SshError, Wire};

fn open_sftp(wire: &Wire, io: Duration) -> Result<ssh2::Sftp, SshError> {
    retry(wire, Instant::now() + io, "opening SFTP", || {
        wire.session.sftp()
    })
    .map_err(lost_session)
}

fn stalled(what: &str, io: Duration) -> SshError {
    SshError::Timeout(format!("{what}: nothing moved for {io:?}"))
}

/// Writes `data` to `remote` with `mode`, replacing what was there.
pub(crate) fn put(
    wire: &Wire,
    data: &[u8],
    remote: &str,
    mode: i32,
    io: Duration,
) -> Result<(), SshError> {
    let _turn = wire.turn.lock().unwrap_or_else(|e| e.into_inner());
    let sftp = open_sftp(wire, io)?;
    let flags = ssh2::OpenFlags::WRITE | ssh2::OpenFlags::CREATE | ssh2::OpenFlags::TRUNCATE;
    let mut file = retry(wire, Instant::now() + io, "opening the file", || {
        sftp.open_mode(Path::new(remote), flags, mode, ssh2::OpenType::File)
    })?;
    let mut written = 0;
    let mut backoff = Backoff::new(wire);
    let mut moved = Instant::now();
    while written < data.len() {
        match file.write(&data[written..]) {
            Ok(n) => {
                written += n;
                moved = Instant::now();
                backoff.reset();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if moved.elapsed() > io {
                    return Err(stalled(&format!("writing {remote}"), io));
                }
                backoff.pause();
            }
            Err(e) => return Err(SshError::Protocol(format!("writing {remote}: {e}"))),
        }
    }
    retry(wire, Instant::now() + io, "closing the file", || {
        file.close()
    })
}

/// Reads `remote`, refusing a file larger than `max_bytes`.
pub(crate) fn get(
    wire: &Wire,
    remote: &str,
    max_bytes: u64,
    io: Duration,
) -> Result<Vec<u8>, SshError> {
    let _turn = wire.turn.lock().unwrap_or_else(|e| e.into_inner());
    let sftp = open_sftp(wire, io)?;
    let mut file = retry(wire, Instant::now() + io, "opening the file", || {
        sftp.open(Path::new(remote))
    })?;
    let size = retry(wire, Instant::now() + io, "reading the file's size", || {
        file.stat()
    })?
    .size
    .unwrap_or(0);
    if size > max_bytes {
        return Err(SshError::Protocol(format!(
            "{remote} is {size} bytes, more than the {max_bytes} allowed"
        )));
    }
    let mut data = Vec::with_capacity(size as usize);
    let mut buf = [0u8; 32 * 1024];
    let mut backoff = Backoff::new(wire);
    let mut moved = Instant::now();
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if data.len() as u64 + n as u64 > max_bytes {
                    return Err(SshError::Protocol(format!(
                        "{remote} grew past the {max_bytes} bytes allowed"
                    )));
                }
                data.extend_from_slice(&buf[..n]);
                moved = Instant::now();
                backoff.reset();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if moved.elapsed() > io {
                    return Err(stalled(&format!("reading {remote}"), io));
                }
                backoff.pause();
            }
            Err(e) => return Err(SshError::Protocol(format!("reading {remote}: {e}"))),
        }
    }
    let _ = retry(wire, Instant::now() + io, "closing the file", || {
        file.close()
    });
    Ok(data)
}
