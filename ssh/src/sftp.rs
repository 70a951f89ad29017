//! Files over SFTP, each transfer on a channel of its own; every request is
//! bounded by the connection's I/O bound.

use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::SshError;
use crate::connection::Shared;

fn failed(what: &str, remote: &str, e: impl std::fmt::Display) -> SshError {
    SshError::Protocol(format!("{what} {remote}: {e}"))
}

/// Bounds `work` by the connection's I/O bound.
async fn bounded<T>(
    shared: &Shared,
    what: &str,
    work: impl Future<Output = Result<T, SshError>>,
) -> Result<T, SshError> {
    tokio::time::timeout(shared.limits.io, work)
        .await
        .map_err(|_| {
            SshError::Timeout(format!("{what}: nothing moved for {:?}", shared.limits.io))
        })?
}

async fn open_sftp(shared: &Shared) -> Result<SftpSession, SshError> {
    let channel = shared.open_channel().await?;
    bounded(shared, "opening SFTP", async {
        if let Err(e) = channel.request_subsystem(true, "sftp").await {
            return Err(shared.lost(e.to_string()));
        }
        SftpSession::new(channel.into_stream())
            .await
            .map_err(|e| SshError::Protocol(format!("starting SFTP: {e}")))
    })
    .await
    .inspect(|sftp| sftp.set_timeout(shared.limits.io.as_secs().max(1)))
}

/// Writes `data` to `remote` with `mode`, replacing what was there.
pub(crate) async fn put(
    shared: &Shared,
    data: &[u8],
    remote: &str,
    mode: u32,
) -> Result<(), SshError> {
    let _turn = shared.channel_turn().await;
    let sftp = open_sftp(shared).await?;
    let attributes = FileAttributes {
        permissions: Some(mode),
        ..Default::default()
    };
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let mut file = sftp
        .open_with_flags_and_attributes(remote, flags, attributes)
        .await
        .map_err(|e| failed("opening", remote, e))?;
    // Each write request is bounded by the session's request timeout.
    file.write_all(data)
        .await
        .map_err(|e| failed("writing", remote, e))?;
    file.shutdown()
        .await
        .map_err(|e| failed("closing", remote, e))?;
    let _ = sftp.close().await;
    Ok(())
}

/// Reads `remote`, refusing a file larger than `max_bytes`.
pub(crate) async fn get(
    shared: &Shared,
    remote: &str,
    max_bytes: u64,
) -> Result<Vec<u8>, SshError> {
    let _turn = shared.channel_turn().await;
    let sftp = open_sftp(shared).await?;
    let file = sftp
        .open(remote)
        .await
        .map_err(|e| failed("opening", remote, e))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| failed("reading the size of", remote, e))?
        .size
        .unwrap_or(0);
    if size > max_bytes {
        return Err(SshError::Protocol(format!(
            "{remote} is {size} bytes, more than the {max_bytes} allowed"
        )));
    }
    let mut data = Vec::with_capacity(size as usize);
    // One byte past the bound tells a file that grew while it was read.
    file.take(max_bytes + 1)
        .read_to_end(&mut data)
        .await
        .map_err(|e| failed("reading", remote, e))?;
    if data.len() as u64 > max_bytes {
        return Err(SshError::Protocol(format!(
            "{remote} grew past the {max_bytes} bytes allowed"
        )));
    }
    let _ = sftp.close().await;
    Ok(data)
}
