//! Files moved a chunk at a time: a read handle that hands out the next
//! chunk (a download streams from it), a write handle that takes chunks (an
//! upload or an unpacked archive streams into it), and the links an archive
//! may hold.

use russh_sftp::protocol::{FileAttributes, OpenFlags};

use super::{FileError, Files, Kind, READ_CHUNK, failed, is_eof};

/// Reads in flight at once.
const READ_AHEAD: u64 = 8;

/// An open file on the server, read or written at a running offset.
pub struct Handle {
    handle: String,
    path: String,
    offset: u64,
}

impl Handle {
    pub(super) fn new(handle: String, path: &str) -> Self {
        Handle {
            handle,
            path: path.to_owned(),
            offset: 0,
        }
    }

    /// Bytes read or written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl Files {
    /// Opens `path` for reading (a link to a file is read through: the
    /// caller decides, from `lstat`, whether it may be).
    pub async fn open_read(&self, path: &str) -> Result<Handle, FileError> {
        let handle = self
            .raw
            .open(path, OpenFlags::READ, FileAttributes::default())
            .await
            .map_err(|e| failed("opening", path, e))?
            .handle;
        Ok(Handle::new(handle, path))
    }

    /// The next bytes of `file`, at most 512 KiB; empty at its end. Eight
    /// reads are in flight at once, so one round trip carries eight chunks
    /// (what OpenSSH's own client does); a short read ends the batch, and
    /// the next call goes on from there.
    pub async fn read_chunk(&self, file: &mut Handle) -> Result<Vec<u8>, FileError> {
        let reads = (0..READ_AHEAD).map(|i| {
            self.raw.read(
                file.handle.as_str(),
                file.offset + i * u64::from(READ_CHUNK),
                READ_CHUNK,
            )
        });
        let mut data = Vec::new();
        for read in futures::future::join_all(reads).await {
            match read {
                Ok(chunk) => {
                    let short = chunk.data.len() < READ_CHUNK as usize;
                    data.extend_from_slice(&chunk.data);
                    if short {
                        break;
                    }
                }
                Err(e) if is_eof(&e) => break,
                // What came before the error is handed out; the next call
                // meets the error again.
                Err(_) if !data.is_empty() => break,
                Err(e) => return Err(failed("reading", &file.path, e)),
            }
        }
        file.offset += data.len() as u64;
        Ok(data)
    }

    /// Creates the new file `path` with `mode`; something already there
    /// (a link included) is never opened.
    pub async fn create_new(&self, path: &str, mode: u32) -> Result<Handle, FileError> {
        if self.lstat_if_exists(path).await?.is_some() {
            return Err(FileError::Exists(path.to_owned()));
        }
        let attrs = FileAttributes {
            permissions: Some(mode),
            ..Default::default()
        };
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE;
        let handle = self
            .raw
            .open(path, flags, attrs)
            .await
            .map_err(|e| failed("creating", path, e))?
            .handle;
        Ok(Handle::new(handle, path))
    }

    /// Appends `data` to `file`, 64 KiB a request, the requests in flight
    /// together (the SSH channel's window paces them).
    pub async fn write_chunk(&self, file: &mut Handle, data: &[u8]) -> Result<(), FileError> {
        let offset = file.offset;
        let writes = data
            .chunks(super::WRITE_CHUNK)
            .enumerate()
            .map(|(i, chunk)| {
                self.raw.write(
                    file.handle.as_str(),
                    offset + (i * super::WRITE_CHUNK) as u64,
                    chunk.to_vec(),
                )
            });
        futures::future::try_join_all(writes)
            .await
            .map_err(|e| failed("writing", &file.path, e))?;
        file.offset += data.len() as u64;
        Ok(())
    }

    /// Closes `file`; a write is complete only once this succeeds.
    pub async fn close(&self, file: Handle) -> Result<(), FileError> {
        self.raw
            .close(file.handle)
            .await
            .map_err(|e| failed("closing", &file.path, e))?;
        Ok(())
    }

    /// Removes the file or link `path` (never a directory, never followed).
    pub async fn remove_file(&self, path: &str) -> Result<(), FileError> {
        self.raw
            .remove(path)
            .await
            .map_err(|e| failed("deleting", path, e))?;
        Ok(())
    }

    /// Makes `link` a symbolic link to `target`; nothing may be at `link`.
    pub async fn symlink(&self, link: &str, target: &str) -> Result<(), FileError> {
        if self.lstat_if_exists(link).await?.is_some() {
            return Err(FileError::Exists(link.to_owned()));
        }
        // OpenSSH's sftp-server reads SSH_FXP_SYMLINK's two paths in the
        // opposite order to the draft it implements (target first), and
        // russh-sftp sends them in the draft's order: swapped here, so the
        // link lands at `link` (the e2e tests check where it lands).
        self.raw
            .symlink(target, link)
            .await
            .map_err(|e| failed("linking", link, e))?;
        Ok(())
    }

    /// Makes `link` a hard link to the file `existing` (OpenSSH's
    /// `hardlink@openssh.com`); nothing may be at `link`.
    pub async fn hard_link(&self, existing: &str, link: &str) -> Result<(), FileError> {
        if self.lstat(existing).await?.kind != Kind::File {
            return Err(FileError::Refused(format!("{existing} is not a file")));
        }
        if self.lstat_if_exists(link).await?.is_some() {
            return Err(FileError::Exists(link.to_owned()));
        }
        self.raw
            .hardlink(existing, link)
            .await
            .map_err(|e| failed("linking", link, e))?;
        Ok(())
    }
}
