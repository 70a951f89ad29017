//! Compress: the chosen entries are walked over SFTP depth first (links
//! stored as links, never followed) into a local `.zip`, which is then put
//! beside them under a hidden name and renamed into place.

use axum::extract::State;
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
use crate::routes::files::transfer::put_file;
use crate::routes::files::{connect, paths, to_completion, write::audited};
use crate::routes::servers::pinned_server;
use crate::state::AppState;

/// Paths one compress names at most.
const MAX_COMPRESS_PATHS: usize = 1000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompressRequest {
    /// The directory the entries are in, and where the archive is written.
    parent_dir: String,
    /// 1 to 1000 entries of `parentDir`: names, or absolute paths inside it.
    paths: Vec<String>,
    /// The new archive's file name, ending in `.zip`.
    archive_name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compressed {
    path: String,
    /// Bytes of the archive.
    size: u64,
    files: u64,
    directories: u64,
    links: u64,
    /// Entries that are neither files, directories nor links (sockets,
    /// devices): left out.
    skipped: u64,
}

/// What the walk hands the zip writer's thread.
enum ZipPart {
    Directory(String, u32),
    File(String, u32),
    Data(Vec<u8>),
    Symlink(String, String),
}

#[derive(Default)]
struct Tally {
    files: u64,
    directories: u64,
    links: u64,
    skipped: u64,
    bytes: u64,
}

/// Walks `roots` (absolute, under `parent`) depth first without following
/// links, sending each entry to the zip writer.
async fn gather(
    files: &Files,
    parent: &str,
    roots: Vec<String>,
    limit: u64,
    out: &mpsc::Sender<ZipPart>,
) -> Result<Tally, ApiError> {
    let mut tally = Tally::default();
    let mut stack = roots;
    stack.reverse();
    let relative = |path: &str| path[parent.len()..].trim_start_matches('/').to_owned();
    let send = |part| async {
        out.send(part)
            .await
            .map_err(|_| internal(anyhow::anyhow!("the zip writer stopped")))
    };
    while let Some(path) = stack.pop() {
        if tally.files + tally.directories + tally.links + stack.len() as u64 >= MAX_ENTRIES as u64
        {
            return Err(ApiError::PayloadTooLarge(format!(
                "more than {MAX_ENTRIES} entries to compress"
            )));
        }
        let entry = files.lstat(&path).await?;
        let name = relative(&path);
        match entry.kind {
            Kind::Directory => {
                send(ZipPart::Directory(name, entry.mode)).await?;
                tally.directories += 1;
                let listing = files.list(&path, MAX_ENTRIES).await?;
                let mut children: Vec<String> = listing
                    .entries
                    .into_iter()
                    .map(|child| paths::join(&path, &child.name))
                    .collect();
                children.sort_unstable_by(|a, b| b.cmp(a));
                stack.extend(children);
            }
            Kind::Symlink => {
                let target = files.read_link(&path).await?;
                send(ZipPart::Symlink(name, target)).await?;
                tally.links += 1;
            }
            Kind::File => {
                tally.bytes += entry.size;
                if tally.bytes > limit {
                    return Err(ApiError::PayloadTooLarge(format!(
                        "the entries hold more than the {limit} bytes an archive may (BERTH_FILES_ARCHIVE_MAX_BYTES)"
                    )));
                }
                send(ZipPart::File(name, entry.mode)).await?;
                let mut handle = files.open_read(&path).await?;
                let copied = async {
                    loop {
                        let chunk = files.read_chunk(&mut handle).await?;
                        if chunk.is_empty() {
                            return Ok::<_, ApiError>(());
                        }
                        // A file that grows while it is read counts as it is.
                        if handle.offset() > entry.size {
                            tally.bytes += chunk.len() as u64;
                            if tally.bytes > limit {
                                return Err(ApiError::PayloadTooLarge(format!(
                                    "the entries hold more than the {limit} bytes an archive may"
                                )));
                            }
                        }
                        send(ZipPart::Data(chunk)).await?;
                    }
                }
                .await;
                let _ = files.close(handle).await;
                copied?;
                tally.files += 1;
            }
            Kind::Other => tally.skipped += 1,
        }
    }
    Ok(tally)
}

/// Zip entries of a directory into a new `.zip` in it. Links are stored as
/// links; nothing is followed out of the chosen entries.
#[utoipa::path(post, path = "/files/{id}/compress", tag = "files", request_body = CompressRequest,
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 201, description = "The archive was written", body = Compressed),
    (status = 400, description = "Invalid paths or archive name", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or an entry that does not exist", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The archive's name is taken", body = crate::error::ErrorEnvelope),
    (status = 413, description = "More than an archive may hold", body = crate::error::ErrorEnvelope)))]
pub async fn compress(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<CompressRequest>,
) -> Result<Envelope<Compressed>, ApiError> {
    to_completion(async move {
        let server = pinned_server(&state, &principal, id, Action::Operate).await?;
        let parent = paths::normalise("parentDir", &req.parent_dir)?;
        if req.paths.is_empty() || req.paths.len() > MAX_COMPRESS_PATHS {
            return Err(field("paths", "must name 1 to 1000 entries"));
        }
        let mut roots = Vec::with_capacity(req.paths.len());
        for raw in &req.paths {
            let joined = if raw.starts_with('/') {
                raw.clone()
            } else {
                format!("{parent}/{raw}")
            };
            let path = paths::normalise("paths", &joined)?;
            if path == parent || !paths::is_within(&path, &parent) {
                return Err(field("paths", format!("{path} is not inside parentDir")));
            }
            if !roots.iter().any(|r: &String| paths::is_within(&path, r)) {
                roots.retain(|r| !paths::is_within(r, &path));
                roots.push(path);
            }
        }
        paths::check_name("archiveName", &req.archive_name)?;
        if !req.archive_name.to_lowercase().ends_with(".zip") {
            return Err(field("archiveName", "must end in .zip"));
        }
        let target = paths::join(&parent, &req.archive_name);
        let limit = state.config.files.archive_max_bytes;
        let (_session, files) = connect(&state, &server).await?;
        if files.lstat(&parent).await?.kind != Kind::Directory {
            return Err(ApiError::Conflict(format!("{parent} is not a directory")));
        }
        if files.lstat_if_exists(&target).await?.is_some() {
            return Err(FileError::Exists(target).into());
        }

        let spool = tempfile::NamedTempFile::new().map_err(internal)?;
        let out = spool.reopen().map_err(internal)?;
        let (tx, mut rx) = mpsc::channel::<ZipPart>(16);
        let writer = tokio::task::spawn_blocking(move || {
            let mut zip = berth_archive::ZipBuilder::new(out);
            while let Some(part) = rx.blocking_recv() {
                match part {
                    ZipPart::Directory(name, mode) => zip.directory(&name, mode)?,
                    ZipPart::File(name, mode) => zip.start_file(&name, mode)?,
                    ZipPart::Data(data) => zip.write(&data)?,
                    ZipPart::Symlink(name, target) => zip.symlink(&name, &target)?,
                }
            }
            zip.finish().map(|_| ())
        });
        let gathered = gather(&files, &parent, roots.clone(), limit, &tx).await;
        drop(tx);
        let written = writer.await.map_err(internal)?;
        let tally = gathered?;
        written.map_err(internal)?;
        let size = put_file(&files, spool.path(), &target, 0o644).await?;
        audited(
            &state,
            &principal,
            &client,
            id,
            "file.compress",
            serde_json::json!({ "path": target, "paths": roots, "bytes": size }),
        )
        .await?;
        Ok(Envelope::created(Compressed {
            path: target,
            size,
            files: tally.files,
            directories: tally.directories,
            links: tally.links,
            skipped: tally.skipped,
        }))
    })
    .await
}
