//! The file manager's SFTP session: one channel for a request's file
//! operations, on the raw protocol so that what a server sends is bounded
//! (a directory listing stops at a count, a read at a size) instead of
//! gathered whole. Nothing here follows a link unless it says so: entries
//! are `lstat`ed, and writes refuse a path that is a link.

use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, FileType, OpenFlags, StatusCode};
use tokio::sync::OwnedSemaphorePermit;

use crate::SshError;
use crate::connection::Shared;

mod transfer;

pub use transfer::Handle;

/// Bytes asked for per read request (OpenSSH serves up to 255 KiB).
const READ_CHUNK: u32 = 64 * 1024;
/// Bytes sent per write request.
const WRITE_CHUNK: usize = 64 * 1024;

/// What a file operation ran into.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0}: permission denied")]
    PermissionDenied(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{path} is {size} bytes, more than the {limit} allowed")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{0}")]
    Refused(String),
    #[error("{what} {path}: {reason}")]
    Failed {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// What an entry is, as `lstat` says (a link is a link, not what it points to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
    Symlink,
    Other,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Directory => "directory",
            Kind::Symlink => "symlink",
            Kind::Other => "other",
        }
    }
}

/// One entry's attributes.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits (`0o7777` of the mode).
    pub mode: u32,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Seconds since the epoch.
    pub modified: Option<u32>,
    pub accessed: Option<u32>,
}

fn entry(name: String, attrs: &FileAttributes) -> Entry {
    Entry {
        name,
        kind: match attrs.file_type() {
            FileType::File => Kind::File,
            FileType::Dir => Kind::Directory,
            FileType::Symlink => Kind::Symlink,
            FileType::Other => Kind::Other,
        },
        size: attrs.size.unwrap_or(0),
        mode: attrs.permissions.unwrap_or(0) & 0o7777,
        uid: attrs.uid,
        gid: attrs.gid,
        modified: attrs.mtime,
        accessed: attrs.atime,
    }
}

/// A listing, and whether it stopped at the count asked for.
#[derive(Debug)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub truncated: bool,
}

/// An SFTP session on a channel of its own, for one request.
pub struct Files {
    raw: RawSftpSession,
    _turn: OwnedSemaphorePermit,
}

fn failed(what: &'static str, path: &str, e: SftpError) -> FileError {
    match e {
        SftpError::Status(status) => match status.status_code {
            StatusCode::NoSuchFile => FileError::NotFound(path.to_owned()),
            StatusCode::PermissionDenied => FileError::PermissionDenied(path.to_owned()),
            _ => FileError::Failed {
                what,
                path: path.to_owned(),
                reason: status.error_message,
            },
        },
        SftpError::Timeout => FileError::Ssh(SshError::Timeout(format!("{what} {path}"))),
        other => FileError::Failed {
            what,
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

fn is_eof(e: &SftpError) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == StatusCode::Eof)
}

pub(crate) async fn open(shared: &Shared) -> Result<Files, SshError> {
    let turn = shared.channel_turn().await;
    let channel = shared.open_channel().await?;
    let io = shared.limits.io;
    let raw = tokio::time::timeout(io, async {
        if let Err(e) = channel.request_subsystem(true, "sftp").await {
            return Err(shared.lost(e.to_string()));
        }
        let raw = RawSftpSession::new(channel.into_stream());
        raw.set_timeout(io.as_secs().max(1));
        raw.init()
            .await
            .map_err(|e| SshError::Protocol(format!("starting SFTP: {e}")))?;
        Ok(raw)
    })
    .await
    .map_err(|_| SshError::Timeout(format!("starting SFTP took longer than {io:?}")))??;
    Ok(Files { raw, _turn: turn })
}

impl Files {
    /// The login's home directory, absolute.
    pub async fn home(&self) -> Result<String, FileError> {
        let name = self
            .raw
            .realpath(".")
            .await
            .map_err(|e| failed("resolving", ".", e))?;
        name.files
            .into_iter()
            .next()
            .map(|f| f.filename)
            .ok_or_else(|| FileError::Refused("the server named no home directory".into()))
    }

    /// `path`'s own attributes (a link's, not its target's).
    pub async fn lstat(&self, path: &str) -> Result<Entry, FileError> {
        let attrs = self
            .raw
            .lstat(path)
            .await
            .map_err(|e| failed("reading", path, e))?;
        let name = path.rsplit('/').next().unwrap_or(path).to_owned();
        Ok(entry(name, &attrs.attrs))
    }

    /// `path`'s attributes, or `None` when nothing is there.
    pub async fn lstat_if_exists(&self, path: &str) -> Result<Option<Entry>, FileError> {
        match self.lstat(path).await {
            Ok(entry) => Ok(Some(entry)),
            Err(FileError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where the link `path` points.
    pub async fn read_link(&self, path: &str) -> Result<String, FileError> {
        let name = self
            .raw
            .readlink(path)
            .await
            .map_err(|e| failed("reading the link", path, e))?;
        Ok(name
            .files
            .into_iter()
            .next()
            .map(|f| f.filename)
            .unwrap_or_default())
    }

    /// The entries of directory `path` (not `.` and `..`), at most `max`.
    pub async fn list(&self, path: &str, max: usize) -> Result<Listing, FileError> {
        let handle = self
            .raw
            .opendir(path)
            .await
            .map_err(|e| failed("listing", path, e))?
            .handle;
        let mut entries = Vec::new();
        let mut truncated = false;
        let read = async {
            loop {
                match self.raw.readdir(handle.as_str()).await {
                    Ok(name) => {
                        for file in name.files {
                            if file.filename == "." || file.filename == ".." {
                                continue;
                            }
                            if entries.len() == max {
                                truncated = true;
                                return Ok(());
                            }
                            entries.push(entry(file.filename, &file.attrs));
                        }
                    }
                    Err(e) if is_eof(&e) => return Ok(()),
                    Err(e) => return Err(failed("listing", path, e)),
                }
            }
        };
        let listed = read.await;
        let _ = self.raw.close(handle).await;
        listed?;
        Ok(Listing { entries, truncated })
    }

    /// The bytes of file `path`, refused when it is larger than `limit`.
    pub async fn read(&self, path: &str, limit: u64) -> Result<Vec<u8>, FileError> {
        let mut file = self.open_read(path).await?;
        let mut data = Vec::new();
        let result = loop {
            match self.read_chunk(&mut file).await {
                Ok(chunk) if chunk.is_empty() => break Ok(()),
                Ok(chunk) => {
                    data.extend_from_slice(&chunk);
                    // One byte past the limit tells a file that is too large,
                    // whatever size it claimed.
                    if data.len() as u64 > limit {
                        break Err(FileError::TooLarge {
                            path: path.to_owned(),
                            size: data.len() as u64,
                            limit,
                        });
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let _ = self.close(file).await;
        result.map(|()| data)
    }

    /// Writes `data` to `path` with `mode` for a new file: a new file only
    /// when `create_new`, else replacing what is there. A path that is a
    /// link (or not a file) is refused: nothing is written through a link.
    pub async fn write(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
        create_new: bool,
    ) -> Result<(), FileError> {
        match self.lstat_if_exists(path).await? {
            Some(_) if create_new => return Err(FileError::Exists(path.to_owned())),
            Some(found) if found.kind != Kind::File => {
                return Err(FileError::Refused(format!(
                    "{path} is a {}, not a file",
                    found.kind.name()
                )));
            }
            _ => {}
        }
        let mut flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        if create_new {
            flags |= OpenFlags::EXCLUDE;
        }
        let attrs = FileAttributes {
            permissions: Some(mode),
            ..Default::default()
        };
        let handle = self
            .raw
            .open(path, flags, attrs)
            .await
            .map_err(|e| failed("opening", path, e))?
            .handle;
        let mut file = transfer::Handle::new(handle, path);
        let written = self.write_chunk(&mut file, data).await;
        let closed = self.close(file).await;
        written?;
        closed
    }

    pub async fn mkdir(&self, path: &str, mode: u32) -> Result<(), FileError> {
        if self.lstat_if_exists(path).await?.is_some() {
            return Err(FileError::Exists(path.to_owned()));
        }
        let attrs = FileAttributes {
            permissions: Some(mode),
            ..Default::default()
        };
        self.raw
            .mkdir(path, attrs)
            .await
            .map_err(|e| failed("creating", path, e))?;
        Ok(())
    }

    /// Moves `from` to `to`, which must not exist (SFTP's rename never
    /// replaces, and never follows a link).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), FileError> {
        self.lstat(from).await?;
        if self.lstat_if_exists(to).await?.is_some() {
            return Err(FileError::Exists(to.to_owned()));
        }
        self.raw
            .rename(from, to)
            .await
            .map_err(|e| failed("moving", from, e))?;
        Ok(())
    }

    /// Removes `path` and, for a directory, everything under it; links are
    /// removed, never followed. Stops after `budget` entries with
    /// [`FileError::Refused`] saying how many went (the rest stays, and a
    /// second call goes on). Answers how many entries were removed.
    pub async fn remove_tree(&self, path: &str, budget: u64) -> Result<u64, FileError> {
        let mut removed = 0u64;
        // (path, its children already pushed)
        let mut stack = vec![(path.to_owned(), false)];
        while let Some((current, expanded)) = stack.pop() {
            // Entries waiting count too: a hostile tree cannot grow the stack
            // without limit.
            if removed + stack.len() as u64 >= budget {
                return Err(FileError::Refused(format!(
                    "{removed} entries removed under {path}, as many as one request may; the rest is still there: delete it again"
                )));
            }
            let kind = match self.lstat_if_exists(&current).await? {
                Some(entry) => entry.kind,
                None => continue,
            };
            if kind != Kind::Directory {
                self.raw
                    .remove(current.as_str())
                    .await
                    .map_err(|e| failed("deleting", &current, e))?;
                removed += 1;
                continue;
            }
            if !expanded {
                let listing = self.list(&current, 1000).await?;
                stack.push((current.clone(), true));
                for child in listing.entries {
                    stack.push((
                        format!("{}/{}", current.trim_end_matches('/'), child.name),
                        false,
                    ));
                }
                continue;
            }
            // A directory listed in part is listed again until it is empty.
            if !self.list(&current, 1).await?.entries.is_empty() {
                stack.push((current, false));
                continue;
            }
            self.raw
                .rmdir(current.as_str())
                .await
                .map_err(|e| failed("deleting", &current, e))?;
            removed += 1;
        }
        Ok(removed)
    }
}
