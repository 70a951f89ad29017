//! The file manager's writes: create, save, rename, copy and delete. Each is
//! audited on the server (`file.create`, `file.save`, `file.rename`,
//! `file.copy`, `file.delete`) with the paths it touched.

use std::time::Duration;

use axum::extract::State;
use berth_ssh::{Arg, ShellCommand};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{connect, paths, to_completion};
use crate::access::Action;
use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{Envelope, Json, Path};
use crate::error::{ApiError, FieldError};
use crate::routes::servers::pinned_server;
use crate::state::AppState;

/// Entries one delete request removes at most.
const DELETE_BUDGET: u64 = 50_000;
/// Paths one delete request names at most.
const MAX_DELETE_PATHS: usize = 1000;

/// One audit row for a write to `server`'s files.
pub(super) async fn audited(
    state: &AppState,
    principal: &Principal,
    client: &Client,
    server: Uuid,
    action: &'static str,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let entry = client.audit(Some(principal.user_id()), action, "server", server, details);
    audit::record_alone(&state.pool, entry).await?;
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NewKind {
    File,
    Folder,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateRequest {
    path: String,
    #[serde(rename = "type")]
    kind: NewKind,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Written {
    path: String,
}

/// Create an empty file (0644) or a folder (0755); nothing is replaced.
#[utoipa::path(post, path = "/files/{id}/create", tag = "files", request_body = CreateRequest,
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 201, description = "Created", body = Written),
    (status = 400, description = "Invalid path", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or no such parent directory", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Something is there already", body = crate::error::ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<CreateRequest>,
) -> Result<Envelope<Written>, ApiError> {
    to_completion(async move {
        let server = pinned_server(&state, &principal, id, Action::Operate).await?;
        let path = paths::normalise("path", &req.path)?;
        paths::check_name("path", paths::name(&path))?;
        let (_session, files) = connect(&state, &server).await?;
        let kind = match req.kind {
            NewKind::File => {
                files.write(&path, &[], 0o644, true).await?;
                "file"
            }
            NewKind::Folder => {
                files.mkdir(&path, 0o755).await?;
                "folder"
            }
        };
        audited(
            &state,
            &principal,
            &client,
            id,
            "file.create",
            serde_json::json!({ "path": path, "type": kind }),
        )
        .await?;
        Ok(Envelope::created(Written { path }))
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaveRequest {
    path: String,
    /// The whole file, as text: at most `BERTH_FILES_READ_MAX_BYTES`.
    content: String,
}

/// Save a text file (replacing it; a new one is 0644). A link is not
/// written through.
#[utoipa::path(put, path = "/files/{id}/save", tag = "files", request_body = SaveRequest,
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 200, description = "Saved", body = Written),
    (status = 400, description = "Invalid path", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or no such directory", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The path is a link or a directory", body = crate::error::ErrorEnvelope),
    (status = 413, description = "Larger than the limit", body = crate::error::ErrorEnvelope)))]
pub async fn save(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<SaveRequest>,
) -> Result<Envelope<Written>, ApiError> {
    to_completion(async move {
        let server = pinned_server(&state, &principal, id, Action::Operate).await?;
        let path = paths::normalise("path", &req.path)?;
        let limit = state.config.files.read_max_bytes;
        if req.content.len() as u64 > limit {
            return Err(ApiError::PayloadTooLarge(format!(
                "the content is {} bytes, more than the {limit} a file may be saved with",
                req.content.len()
            )));
        }
        let (_session, files) = connect(&state, &server).await?;
        files
            .write(&path, req.content.as_bytes(), 0o644, false)
            .await?;
        audited(
            &state,
            &principal,
            &client,
            id,
            "file.save",
            serde_json::json!({ "path": path, "bytes": req.content.len() }),
        )
        .await?;
        Ok(Envelope::ok(Written { path }))
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenameRequest {
    old_path: String,
    new_path: String,
}

/// Rename or move an entry (a link moves as a link); nothing is replaced.
#[utoipa::path(put, path = "/files/{id}/rename", tag = "files", request_body = RenameRequest,
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 200, description = "Moved", body = Written),
    (status = 400, description = "Invalid path, or / or a system directory", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or no such entry", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Something is at the new path", body = crate::error::ErrorEnvelope)))]
pub async fn rename(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<RenameRequest>,
) -> Result<Envelope<Written>, ApiError> {
    to_completion(async move {
        let server = pinned_server(&state, &principal, id, Action::Operate).await?;
        let old_path = paths::normalise("oldPath", &req.old_path)?;
        let new_path = paths::normalise("newPath", &req.new_path)?;
        paths::check_removable("oldPath", &old_path)?;
        paths::check_name("newPath", paths::name(&new_path))?;
        if new_path != old_path && paths::is_within(&new_path, &old_path) {
            return Err(ApiError::validation(vec![FieldError::new(
                "newPath",
                "must not be inside oldPath",
            )]));
        }
        let (_session, files) = connect(&state, &server).await?;
        files.rename(&old_path, &new_path).await?;
        audited(
            &state,
            &principal,
            &client,
            id,
            "file.rename",
            serde_json::json!({ "oldPath": old_path, "newPath": new_path }),
        )
        .await?;
        Ok(Envelope::ok(Written { path: new_path }))
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyRequest {
    src_path: String,
    /// Must not exist; its directory must.
    dst_path: String,
}

/// How long one copy may run on the server.
const COPY_DEADLINE: Duration = Duration::from_secs(600);

/// Copy an entry, a directory with everything in it. Links are copied as
/// links, never followed; modes and times are kept; nothing is replaced.
/// SFTP has no copy, so the server's `cp -a` does it (quoted arguments),
/// without the bytes coming through Berth.
#[utoipa::path(put, path = "/files/{id}/copy", tag = "files", request_body = CopyRequest,
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 200, description = "Copied", body = Written),
    (status = 400, description = "Invalid path", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or no such entry", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Something is at the new path, or the copy failed on the server", body = crate::error::ErrorEnvelope)))]
pub async fn copy(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<CopyRequest>,
) -> Result<Envelope<Written>, ApiError> {
    to_completion(async move {
        let server = pinned_server(&state, &principal, id, Action::Operate).await?;
        let src = paths::normalise("srcPath", &req.src_path)?;
        let dst = paths::normalise("dstPath", &req.dst_path)?;
        paths::check_name("dstPath", paths::name(&dst))?;
        if paths::is_within(&dst, &src) {
            return Err(ApiError::validation(vec![FieldError::new(
                "dstPath",
                "must not be srcPath or inside it",
            )]));
        }
        let quoted = |name: &'static str, path: &str| {
            Arg::path(path).map_err(|_| {
                ApiError::validation(vec![FieldError::new(
                    name,
                    "copy takes paths without quotes or backslashes",
                )])
            })
        };
        let command = ShellCommand::new("cp")
            .raw("-a --")
            .arg(&quoted("srcPath", &src)?)
            .arg(&quoted("dstPath", &dst)?);
        let (session, files) = connect(&state, &server).await?;
        files.lstat(&src).await?;
        if files.lstat_if_exists(&dst).await?.is_some() {
            return Err(berth_ssh::FileError::Exists(dst).into());
        }
        if files.lstat(paths::parent(&dst)).await?.kind != berth_ssh::Kind::Directory {
            return Err(ApiError::Conflict(format!(
                "{} is not a directory",
                paths::parent(&dst)
            )));
        }
        drop(files);
        let output = session
            .exec(&command, COPY_DEADLINE, &CancellationToken::new())
            .await
            .map_err(|e| ApiError::ServiceUnavailable(format!("cannot reach the server: {e}")))?;
        let complete = output.exit_status == 0;
        audited(
            &state,
            &principal,
            &client,
            id,
            "file.copy",
            serde_json::json!({ "srcPath": src, "dstPath": dst, "complete": complete }),
        )
        .await?;
        if !complete {
            let reason: String = output.stderr.trim().chars().take(500).collect();
            return Err(ApiError::Conflict(format!(
                "the copy failed on the server: {reason}"
            )));
        }
        Ok(Envelope::ok(Written { path: dst }))
    })
    .await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteRequest {
    /// 1 to 1000 absolute paths; a directory goes with everything in it.
    paths: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    paths: Vec<String>,
    /// Entries removed in all (a directory's contents counted).
    removed: u64,
}

/// Delete entries; a directory with everything under it. Links are removed,
/// never followed. `/` and the system's top-level directories are refused,
/// and every path is checked before anything is deleted.
#[utoipa::path(delete, path = "/files/{id}/delete", tag = "files", request_body = DeleteRequest,
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 200, description = "Deleted", body = Deleted),
    (status = 400, description = "Invalid paths, or / or a system directory", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or a path that does not exist", body = crate::error::ErrorEnvelope),
    (status = 409, description = "More than one request may delete: the rest is still there", body = crate::error::ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<DeleteRequest>,
) -> Result<Envelope<Deleted>, ApiError> {
    to_completion(async move {
        let server = pinned_server(&state, &principal, id, Action::Operate).await?;
        if req.paths.is_empty() || req.paths.len() > MAX_DELETE_PATHS {
            return Err(ApiError::validation(vec![FieldError::new(
                "paths",
                "must name 1 to 1000 paths",
            )]));
        }
        let mut checked = Vec::with_capacity(req.paths.len());
        for raw in &req.paths {
            let path = paths::normalise("paths", raw)?;
            paths::check_removable("paths", &path)?;
            if !checked.contains(&path) {
                checked.push(path);
            }
        }
        let (_session, files) = connect(&state, &server).await?;
        for path in &checked {
            files.lstat(path).await?;
        }
        let mut removed = 0;
        let mut outcome = Ok(());
        for path in &checked {
            match files.remove_tree(path, DELETE_BUDGET - removed).await {
                Ok(n) => removed += n,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        // What went is recorded whether or not all of it did.
        audited(
            &state,
            &principal,
            &client,
            id,
            "file.delete",
            serde_json::json!({ "paths": checked, "removed": removed, "complete": outcome.is_ok() }),
        )
        .await?;
        outcome?;
        Ok(Envelope::ok(Deleted {
            paths: checked,
            removed,
        }))
    })
    .await
}
