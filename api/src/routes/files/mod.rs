//! The file manager (SPEC §3.7): a server's files over SFTP, for its owner
//! alone (servers are never shared; a project role gives no file access).
//! Every path is absolute and normalised here before it reaches the server;
//! entries are reported as they are (a link is a link), and nothing is
//! written through a link. Every write is audited.

use axum::extract::State;
use berth_ssh::{Entry, FileError, Files};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::Action;
use crate::auth::Principal;
use crate::envelope::{Envelope, Path, Query};
use crate::error::ApiError;
use crate::routes::servers::pinned_server;
use crate::state::AppState;

pub mod archive;
mod paths;
pub mod search;
pub mod transfer;
pub mod write;

/// Entries a listing holds at most; a larger directory is cut there (`truncated`).
const MAX_LISTED: usize = 10_000;

impl From<FileError> for ApiError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::NotFound(path) => {
                ApiError::NotFound(format!("no such file or directory: {path}"))
            }
            FileError::PermissionDenied(path) => {
                ApiError::Forbidden(format!("the server's user may not do this to {path}"))
            }
            FileError::TooLarge { .. } => ApiError::PayloadTooLarge(e.to_string()),
            FileError::Exists(_) | FileError::Refused(_) | FileError::Failed { .. } => {
                ApiError::Conflict(e.to_string())
            }
            FileError::Ssh(ssh) => {
                ApiError::ServiceUnavailable(format!("cannot reach the server: {ssh}"))
            }
        }
    }
}

/// An SFTP session to `server`, on the kept SSH session (the session is
/// returned with it: the channel lives as long as both).
pub(super) async fn connect(
    state: &AppState,
    server: &berth_remote::Server,
) -> Result<(berth_remote::Session, Files), ApiError> {
    let unreachable = |e: berth_ssh::SshError| {
        ApiError::ServiceUnavailable(format!("cannot reach the server: {e}"))
    };
    let session = state.remote.session(server).await.map_err(unreachable)?;
    let files = session.files().await.map_err(unreachable)?;
    Ok((session, files))
}

/// Runs a change to a server's files to its end in a task of its own: a
/// client that goes away, or a request past its deadline, must not stop a
/// write half done, nor the audit row after it.
pub(super) async fn to_completion<T: Send + 'static>(
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
}

fn time(secs: Option<u32>) -> Option<DateTime<Utc>> {
    secs.and_then(|s| DateTime::from_timestamp(i64::from(s), 0))
}

/// One entry of a listing.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    name: String,
    path: String,
    /// `file`, `directory`, `symlink` or `other`, as the entry itself is
    /// (a link is not followed).
    #[serde(rename = "type")]
    kind: &'static str,
    size: u64,
    /// Permission bits, octal (`"0644"`).
    mode: String,
    modified: Option<DateTime<Utc>>,
}

fn file_entry(parent: &str, entry: Entry) -> FileEntry {
    FileEntry {
        path: paths::join(parent, &entry.name),
        name: entry.name,
        kind: entry.kind.name(),
        size: entry.size,
        mode: format!("{:04o}", entry.mode),
        modified: time(entry.modified),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    /// Absolute; normalised (`.`, `..` and repeated `/` resolved); no NUL or
    /// control characters.
    path: Option<String>,
}

impl PathQuery {
    fn path(&self) -> Result<String, ApiError> {
        paths::required("path", self.path.as_deref())
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesInfo {
    connected: bool,
    /// The login's home directory, where a file manager starts.
    home: String,
}

/// Whether the server is reachable over SFTP, and its home directory.
#[utoipa::path(get, path = "/files/{id}/info", tag = "files",
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 200, description = "Reachable", body = FilesInfo),
    (status = 404, description = "No such server of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Not validated yet", body = crate::error::ErrorEnvelope),
    (status = 503, description = "The server cannot be reached", body = crate::error::ErrorEnvelope)))]
pub async fn info(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<FilesInfo>, ApiError> {
    let server = pinned_server(&state, &principal, id, Action::Read).await?;
    let (_session, files) = connect(&state, &server).await?;
    Ok(Envelope::ok(FilesInfo {
        connected: true,
        home: files.home().await?,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryListing {
    path: String,
    /// Directories first, then by name.
    entries: Vec<FileEntry>,
    /// The directory holds more than the 10,000 entries listed.
    truncated: bool,
}

/// The entries of a directory.
#[utoipa::path(get, path = "/files/{id}/list", tag = "files",
    params(("id" = Uuid, Path, description = "Server id"), PathQuery), responses(
    (status = 200, description = "The directory's entries", body = DirectoryListing),
    (status = 400, description = "Invalid path", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or no such directory", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Not a directory", body = crate::error::ErrorEnvelope)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(query): Query<PathQuery>,
) -> Result<Envelope<DirectoryListing>, ApiError> {
    let server = pinned_server(&state, &principal, id, Action::Read).await?;
    let path = query.path()?;
    let (_session, files) = connect(&state, &server).await?;
    let listing = files.list(&path, MAX_LISTED).await?;
    let mut entries: Vec<FileEntry> = listing
        .entries
        .into_iter()
        .map(|e| file_entry(&path, e))
        .collect();
    entries.sort_by(|a, b| {
        (a.kind != "directory")
            .cmp(&(b.kind != "directory"))
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(Envelope::ok(DirectoryListing {
        path,
        entries,
        truncated: listing.truncated,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileContent {
    path: String,
    /// The file as UTF-8 text.
    content: String,
    size: u64,
}

/// A text file's content, up to `BERTH_FILES_READ_MAX_BYTES` (5 MiB).
#[utoipa::path(get, path = "/files/{id}/read", tag = "files",
    params(("id" = Uuid, Path, description = "Server id"), PathQuery), responses(
    (status = 200, description = "The content", body = FileContent),
    (status = 400, description = "Invalid path", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or no such file", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Not a file, or not text (download it instead)", body = crate::error::ErrorEnvelope),
    (status = 413, description = "Larger than the limit", body = crate::error::ErrorEnvelope)))]
pub async fn read(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(query): Query<PathQuery>,
) -> Result<Envelope<FileContent>, ApiError> {
    let server = pinned_server(&state, &principal, id, Action::Read).await?;
    let path = query.path()?;
    let (_session, files) = connect(&state, &server).await?;
    let limit = state.config.files.read_max_bytes;
    // The size it claims is checked first; the read stops past the limit
    // whatever it claimed.
    let found = files.lstat(&path).await?;
    let target = match found.kind {
        berth_ssh::Kind::Symlink => files.read_link(&path).await.ok(),
        _ => None,
    };
    if found.kind == berth_ssh::Kind::Directory {
        return Err(ApiError::Conflict(format!("{path} is a directory")));
    }
    if found.kind == berth_ssh::Kind::File && found.size > limit {
        return Err(FileError::TooLarge {
            path,
            size: found.size,
            limit,
        }
        .into());
    }
    let bytes = files.read(&path, limit).await?;
    let size = bytes.len() as u64;
    let content = String::from_utf8(bytes).map_err(|_| {
        ApiError::Conflict(format!(
            "{path} is not UTF-8 text{}: download it instead",
            target
                .map(|t| format!(" (through the link to {t})"))
                .unwrap_or_default()
        ))
    })?;
    Ok(Envelope::ok(FileContent {
        path,
        content,
        size,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileProperties {
    path: String,
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    size: u64,
    mode: String,
    uid: Option<u32>,
    gid: Option<u32>,
    modified: Option<DateTime<Utc>>,
    accessed: Option<DateTime<Utc>>,
    /// Where a symlink points (not followed).
    link_target: Option<String>,
}

/// An entry's own attributes (a link's, with where it points).
#[utoipa::path(get, path = "/files/{id}/properties", tag = "files",
    params(("id" = Uuid, Path, description = "Server id"), PathQuery), responses(
    (status = 200, description = "The attributes", body = FileProperties),
    (status = 400, description = "Invalid path", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or no such entry", body = crate::error::ErrorEnvelope)))]
pub async fn properties(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(query): Query<PathQuery>,
) -> Result<Envelope<FileProperties>, ApiError> {
    let server = pinned_server(&state, &principal, id, Action::Read).await?;
    let path = query.path()?;
    let (_session, files) = connect(&state, &server).await?;
    let entry = files.lstat(&path).await?;
    let link_target = if entry.kind == berth_ssh::Kind::Symlink {
        Some(files.read_link(&path).await?)
    } else {
        None
    };
    Ok(Envelope::ok(FileProperties {
        name: paths::name(&path).to_owned(),
        path,
        kind: entry.kind.name(),
        size: entry.size,
        mode: format!("{:04o}", entry.mode),
        uid: entry.uid,
        gid: entry.gid,
        modified: time(entry.modified),
        accessed: time(entry.accessed),
        link_target,
    }))
}
