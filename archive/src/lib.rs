//! Uploaded archives are hostile. An upload (`.zip` or `.tar.gz`) is read
//! entry by entry and rewritten as one normalized `.tar.gz`: only files,
//! directories and links that stay inside the tree, with plain modes and no
//! owners. The first entry that is absolute, climbs out with `..`, is a
//! symbolic or hard link pointing outside, writes through a link, is a
//! device or a pipe, or passes a limit refuses the whole archive and the
//! output is removed: nothing of it reaches a server. What reaches a server
//! is what was checked, so the server's `tar` never meets a hostile entry.

mod entry;
pub mod normalized;
mod read;
mod zip_writer;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

pub use entry::RelativePath;
pub use zip_writer::ZipBuilder;

/// An upload's container format, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Zip,
    TarGz,
}

impl Format {
    /// `PK\x03\x04` (or an empty zip's `PK\x05\x06`) and gzip's `\x1f\x8b`.
    pub fn sniff(head: &[u8]) -> Option<Format> {
        if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Some(Format::Zip)
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Some(Format::TarGz)
        } else {
            None
        }
    }
}

/// What one archive may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: usize,
    /// Bytes of all files together, unpacked (a zip bomb stops here).
    pub max_unpacked_bytes: u64,
    pub max_path_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 50_000,
            max_unpacked_bytes: 1024 * 1024 * 1024,
            max_path_bytes: 1024,
        }
    }
}

/// Why an archive was refused. `entry` is the entry's name as the archive
/// gave it (lossily decoded), for the user to find it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("{entry:?} is an absolute path")]
    Absolute { entry: String },
    #[error("{entry:?} climbs out of the archive's directory")]
    Escapes { entry: String },
    #[error("{entry:?} is a link to {target:?}, outside the archive's directory")]
    LinkOutside { entry: String, target: String },
    #[error("{entry:?} is a hard link to {target:?}, which is not a file earlier in the archive")]
    HardLinkOutside { entry: String, target: String },
    #[error("{entry:?} would be written through the link {link:?}")]
    ThroughLink { entry: String, link: String },
    #[error("{entry:?} appears twice")]
    Duplicate { entry: String },
    #[error("{entry:?} is a {kind}, which an app's source does not need")]
    Special { entry: String, kind: &'static str },
    #[error(
        "{entry:?} has a name that is empty, not UTF-8, or holds control characters or backslashes"
    )]
    BadName { entry: String },
    #[error("{entry:?} has a path longer than {limit} bytes")]
    PathTooLong { entry: String, limit: usize },
    #[error("more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("more than {limit} bytes once unpacked")]
    TooLarge { limit: u64 },
    #[error("{entry:?} is encrypted")]
    Encrypted { entry: String },
    #[error("not a readable {format}: {reason}")]
    Malformed {
        format: &'static str,
        reason: String,
    },
}

/// A failure that is not the archive's fault (the disk, say).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive was refused: {0}")]
    Refused(#[from] Refused),
    #[error("reading or writing the archive failed: {0}")]
    Io(#[from] io::Error),
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    pub files: usize,
    pub directories: usize,
    pub links: usize,
    /// Bytes of all files, unpacked.
    pub unpacked_bytes: u64,
    /// SHA-256 of the upload as it came (what `sha256sum` prints for it).
    pub upload_sha256: String,
}

/// Checks the upload at `input` and writes its normalized `.tar.gz` to
/// `output`; on any refusal or error `output` is removed.
pub fn normalize(
    input: &Path,
    format: Format,
    output: &Path,
    limits: Limits,
) -> Result<Normalized, ArchiveError> {
    let written = (|| {
        let mut upload = File::open(input)?;
        let upload_sha256 = sha256_of(&mut upload)?;
        upload.seek(SeekFrom::Start(0))?;
        let out = File::create(output)?;
        let mut writer = entry::Writer::new(out, limits);
        match format {
            Format::TarGz => read::tar_gz(upload, &mut writer)?,
            Format::Zip => read::zip(upload, &mut writer)?,
        }
        let counts = writer.finish()?;
        Ok(Normalized {
            upload_sha256,
            ..counts
        })
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(output);
    }
    written
}

fn sha256_of(file: &mut File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests;
