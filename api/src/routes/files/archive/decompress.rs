//! Decompress: the archive is fetched, berth-archive refuses the whole of it
//! on any hostile entry (absolute, `..`, a link or hard link out, a device,
//! past the size limit) before anything is written, every path it would
//! write is checked to be free and not under a link, and only then is it
//! written entry by entry; a failure part way removes what was made.

use std::collections::HashMap;

use axum::extract::State;
use berth_archive::normalized::Item;
use berth_ssh::{FileError, Files, Kind};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{MAX_ENTRIES, field, internal};
use crate::access::Action;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{Envelope, Json, Path};
use crate::error::ApiError;
use crate::routes::files::{connect, paths, to_completion, write::audited};
use crate::routes::servers::pinned_server;
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecompressRequest {
    /// The archive on the server: a `.zip` or a `.tar.gz` (told by its bytes).
    zip_file_path: String,
    /// An existing directory (not a link) the entries are written under.
    dest_dir: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Decompressed {
    dest_dir: String,
    files: usize,
    directories: usize,
    links: usize,
    /// Bytes of the files written.
    unpacked_bytes: u64,
}

/// What the archive's reader thread hands the writer.
enum Unpacked {
    Directory(String),
    File(String, bool),
    Data(Vec<u8>),
    Symlink(String, String),
    HardLink(String, String),
}

/// Fetches `path` to a local spool, at most `limit` bytes.
async fn fetch(files: &Files, path: &str, limit: u64) -> Result<tempfile::NamedTempFile, ApiError> {
    use tokio::io::AsyncWriteExt;
    let spool = tempfile::NamedTempFile::new().map_err(internal)?;
    let mut local = tokio::fs::File::from_std(spool.reopen().map_err(internal)?);
    let mut handle = files.open_read(path).await?;
    let fetched = async {
        loop {
            let chunk = files.read_chunk(&mut handle).await?;
            if chunk.is_empty() {
                return Ok::<_, ApiError>(());
            }
            if handle.offset() > limit {
                return Err(ApiError::PayloadTooLarge(format!(
                    "{path} is larger than the {limit} bytes an archive may be (BERTH_FILES_ARCHIVE_MAX_BYTES)"
                )));
            }
            local.write_all(&chunk).await.map_err(internal)?;
        }
    }
    .await;
    let _ = files.close(handle).await;
    fetched?;
    local.flush().await.map_err(internal)?;
    Ok(spool)
}

/// What is at each path under the destination, looked up once: `None` for
/// nothing. A path under one that is absent is absent without asking.
struct Placement<'a> {
    files: &'a Files,
    dest: String,
    known: HashMap<String, Option<Kind>>,
}

impl Placement<'_> {
    async fn kind(&mut self, relative: &str) -> Result<Option<Kind>, ApiError> {
        if let Some(known) = self.known.get(relative) {
            return Ok(*known);
        }
        let parent = relative.rfind('/').map(|i| &relative[..i]);
        let kind = match parent {
            Some(parent) => match Box::pin(self.kind(parent)).await? {
                Some(Kind::Directory) => self.lookup(relative).await?,
                None => None,
                Some(other) => {
                    return Err(ApiError::Conflict(format!(
                        "{}/{parent} is a {}: the archive would write through it",
                        self.dest,
                        other.name()
                    )));
                }
            },
            None => self.lookup(relative).await?,
        };
        self.known.insert(relative.to_owned(), kind);
        Ok(kind)
    }

    async fn lookup(&self, relative: &str) -> Result<Option<Kind>, ApiError> {
        let path = paths::join(&self.dest, relative);
        Ok(self.files.lstat_if_exists(&path).await?.map(|e| e.kind))
    }

    /// Refuses an entry that would replace or write through something there.
    async fn check(&mut self, relative: &str, directory: bool) -> Result<(), ApiError> {
        match self.kind(relative).await? {
            None => Ok(()),
            Some(Kind::Directory) if directory => Ok(()),
            Some(_) => Err(FileError::Exists(paths::join(&self.dest, relative)).into()),
        }
    }
}

/// Where the entries go, and what this request made there (for undoing a
/// failure, newest last).
struct Destination<'a> {
    files: &'a Files,
    dest: &'a str,
    made: Vec<String>,
    directories: std::collections::HashSet<String>,
}

impl Destination<'_> {
    /// The absolute path of a new entry, its parents made first.
    async fn place(&mut self, relative: &str) -> Result<String, ApiError> {
        self.parents(relative).await?;
        Ok(paths::join(self.dest, relative))
    }

    /// Makes the directories above `relative` that are not there.
    async fn parents(&mut self, relative: &str) -> Result<(), ApiError> {
        let mut at = 0;
        while let Some(i) = relative[at..].find('/') {
            self.directory(&relative[..at + i]).await?;
            at += i + 1;
        }
        Ok(())
    }

    /// Makes the directory `relative` unless it is there.
    async fn directory(&mut self, relative: &str) -> Result<(), ApiError> {
        if self.directories.insert(relative.to_owned()) {
            let path = paths::join(self.dest, relative);
            if self.files.lstat_if_exists(&path).await?.is_none() {
                self.files.mkdir(&path, 0o755).await?;
                self.made.push(path);
            }
        }
        Ok(())
    }
}

/// What decompress wrote.
#[derive(Default)]
struct Written {
    files: usize,
    directories: usize,
    links: usize,
    bytes: u64,
}

/// Writes the checked entries, creating parents an archive left implicit.
async fn write_entries(
    to: &mut Destination<'_>,
    mut parts: mpsc::Receiver<Unpacked>,
) -> Result<Written, ApiError> {
    let files = to.files;
    let mut written = Written::default();
    let mut open: Option<berth_ssh::Handle> = None;
    while let Some(part) = parts.recv().await {
        if let Unpacked::Data(data) = &part {
            if let Some(handle) = open.as_mut() {
                files.write_chunk(handle, data).await?;
                written.bytes += data.len() as u64;
            }
            continue;
        }
        // Any other part ends the file before it.
        if let Some(handle) = open.take() {
            files.close(handle).await?;
            written.files += 1;
        }
        match part {
            Unpacked::Data(_) => {}
            Unpacked::Directory(relative) => {
                to.parents(&relative).await?;
                to.directory(&relative).await?;
                written.directories += 1;
            }
            Unpacked::File(relative, executable) => {
                let mode = if executable { 0o755 } else { 0o644 };
                let path = to.place(&relative).await?;
                open = Some(files.create_new(&path, mode).await?);
                to.made.push(path);
            }
            Unpacked::Symlink(relative, target) => {
                let path = to.place(&relative).await?;
                files.symlink(&path, &target).await?;
                to.made.push(path);
                written.links += 1;
            }
            Unpacked::HardLink(relative, target) => {
                let path = to.place(&relative).await?;
                files
                    .hard_link(&paths::join(to.dest, &target), &path)
                    .await?;
                to.made.push(path);
                written.links += 1;
            }
        }
    }
    if let Some(handle) = open.take() {
        files.close(handle).await?;
        written.files += 1;
    }
    Ok(written)
}

/// Reads the normalized archive at `path` on a blocking thread, handing its
/// entries over `out` (bounded: the reader waits for the writer).
fn read_entries(path: &std::path::Path, out: &mpsc::Sender<Unpacked>) -> std::io::Result<()> {
    let gone = || std::io::Error::other("the writer stopped");
    berth_archive::normalized::each_entry(path, |item| {
        let part = match item {
            Item::Directory { path } => Unpacked::Directory(path),
            Item::Symlink { path, target } => Unpacked::Symlink(path, target),
            Item::HardLink { path, target } => Unpacked::HardLink(path, target),
            Item::File {
                path,
                executable,
                content,
            } => {
                out.blocking_send(Unpacked::File(path, executable))
                    .map_err(|_| gone())?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = content.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    out.blocking_send(Unpacked::Data(buf[..n].to_vec()))
                        .map_err(|_| gone())?;
                }
            }
        };
        out.blocking_send(part).map_err(|_| gone())
    })
}

/// Checks the fetched archive whole (berth-archive's rules) into a
/// normalized spool, and lists its entries (relative path, is a directory).
fn check_archive(
    fetched: &std::path::Path,
    limit: u64,
) -> Result<(tempfile::NamedTempFile, Vec<(String, bool)>), ApiError> {
    let mut head = [0u8; 4];
    let read = std::fs::File::open(fetched)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(internal)?;
    let format = berth_archive::Format::sniff(&head[..read])
        .ok_or_else(|| field("zipFilePath", "is not a .zip or .tar.gz archive"))?;
    let normalized = tempfile::NamedTempFile::new().map_err(internal)?;
    let limits = berth_archive::Limits {
        max_entries: MAX_ENTRIES,
        max_unpacked_bytes: limit,
        ..berth_archive::Limits::default()
    };
    berth_archive::normalize(fetched, format, normalized.path(), limits).map_err(|e| match e {
        berth_archive::ArchiveError::Refused(refused) => field(
            "zipFilePath",
            format!("the archive was refused, and nothing was written: {refused}"),
        ),
        berth_archive::ArchiveError::Io(e) => internal(e),
    })?;
    let mut entries = Vec::new();
    berth_archive::normalized::each_entry(normalized.path(), |item| {
        entries.push(match item {
            Item::Directory { path } => (path, true),
            Item::File { path, .. } | Item::Symlink { path, .. } | Item::HardLink { path, .. } => {
                (path, false)
            }
        });
        Ok(())
    })
    .map_err(internal)?;
    Ok((normalized, entries))
}

/// Extract a `.zip` or `.tar.gz` on the server into a directory. The whole
/// archive is refused, with nothing written, when an entry is absolute,
/// climbs out with `..`, is a link or hard link pointing outside, is a
/// device, or the files pass `BERTH_FILES_ARCHIVE_MAX_BYTES` unpacked; and
/// when anything it would write is already there (a directory may be) or
/// would be written through a link.
#[utoipa::path(post, path = "/files/{id}/decompress", tag = "files", request_body = DecompressRequest,
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 201, description = "Extracted", body = Decompressed),
    (status = 400, description = "Invalid paths, or the archive was refused", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, no such archive or directory", body = crate::error::ErrorEnvelope),
    (status = 409, description = "An entry is there already, or would be written through a link", body = crate::error::ErrorEnvelope),
    (status = 413, description = "The archive is larger than the limit", body = crate::error::ErrorEnvelope)))]
pub async fn decompress(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<DecompressRequest>,
) -> Result<Envelope<Decompressed>, ApiError> {
    to_completion(async move {
        let server = pinned_server(&state, &principal, id, Action::Operate).await?;
        let archive = paths::normalise("zipFilePath", &req.zip_file_path)?;
        let dest = paths::normalise("destDir", &req.dest_dir)?;
        let limit = state.config.files.archive_max_bytes;
        let (_session, files) = connect(&state, &server).await?;
        let found = files.lstat(&archive).await?;
        if found.kind != Kind::File {
            return Err(ApiError::Conflict(format!("{archive} is not a file")));
        }
        if found.size > limit {
            return Err(FileError::TooLarge {
                path: archive,
                size: found.size,
                limit,
            }
            .into());
        }
        if files.lstat(&dest).await?.kind != Kind::Directory {
            return Err(ApiError::Conflict(format!(
                "{dest} is not a directory (a link to one is not written through)"
            )));
        }
        let fetched = fetch(&files, &archive, limit).await?;
        let (normalized, entries) =
            tokio::task::spawn_blocking(move || check_archive(fetched.path(), limit))
                .await
                .map_err(internal)??;
        let mut placement = Placement {
            files: &files,
            dest: dest.clone(),
            known: HashMap::new(),
        };
        for (relative, directory) in &entries {
            placement.check(relative, *directory).await?;
        }

        let (tx, rx) = mpsc::channel(16);
        let reader = tokio::task::spawn_blocking(move || read_entries(normalized.path(), &tx));
        let mut to = Destination {
            files: &files,
            dest: &dest,
            made: Vec::new(),
            directories: std::collections::HashSet::new(),
        };
        let result = write_entries(&mut to, rx).await;
        let read = reader.await.map_err(internal)?;
        let written = match (result, read) {
            (Ok(written), Ok(())) => written,
            (result, read) => {
                // What this request made goes again, newest first: the
                // destination is left as it was found.
                for path in to.made.iter().rev() {
                    let _ = files.remove_tree(path, 1).await;
                }
                return Err(match result {
                    Err(e) => e,
                    Ok(_) => internal(
                        read.err()
                            .unwrap_or_else(|| std::io::Error::other("unknown")),
                    ),
                });
            }
        };
        audited(
            &state,
            &principal,
            &client,
            id,
            "file.decompress",
            serde_json::json!({
                "archive": archive, "destDir": dest, "files": written.files,
                "directories": written.directories, "links": written.links, "bytes": written.bytes,
            }),
        )
        .await?;
        Ok(Envelope::created(Decompressed {
            dest_dir: dest,
            files: written.files,
            directories: written.directories,
            links: written.links,
            unpacked_bytes: written.bytes,
        }))
    })
    .await
}
