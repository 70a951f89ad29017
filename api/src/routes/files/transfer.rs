//! Files whole, both ways: download streams a file from the server a chunk
//! at a time (never held whole), upload takes a multipart file to a local
//! spool first (a cut connection never leaves half a file on the server),
//! then puts it under a hidden name and renames it into place.

use axum::body::Body;
use axum::extract::{Multipart, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use berth_ssh::{FileError, Files, Kind};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use super::{PathQuery, connect, paths, to_completion, write::audited};
use crate::access::Action;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{Envelope, Path, Query};
use crate::error::{ApiError, FieldError};
use crate::multipart::{PartError, next_part, read_part};
use crate::routes::servers::pinned_server;
use crate::state::AppState;

/// Characters a `filename*` parameter leaves as they are (RFC 8187's attr-char).
const FILENAME_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

fn attachment(name: &str) -> String {
    format!(
        "attachment; filename*=UTF-8''{}",
        percent_encoding::utf8_percent_encode(name, FILENAME_SET)
    )
}

/// A file's bytes, streamed (`BERTH_FILES_DOWNLOAD_MAX_BYTES`, 1 GiB). A
/// link to a file is downloaded as the file.
#[utoipa::path(get, path = "/files/{id}/download", tag = "files",
    params(("id" = Uuid, Path, description = "Server id"), PathQuery), responses(
    (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
    (status = 400, description = "Invalid path", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or no such file", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Not a file", body = crate::error::ErrorEnvelope),
    (status = 413, description = "Larger than the limit", body = crate::error::ErrorEnvelope)))]
pub async fn download(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(query): Query<PathQuery>,
) -> Result<Response, ApiError> {
    let server = pinned_server(&state, &principal, id, Action::Read).await?;
    let path = query.path()?;
    let limit = state.config.files.download_max_bytes;
    let (session, files) = connect(&state, &server).await?;
    let found = files.lstat(&path).await?;
    if matches!(found.kind, Kind::Directory | Kind::Other) {
        return Err(ApiError::Conflict(format!("{path} is not a file")));
    }
    if found.kind == Kind::File && found.size > limit {
        return Err(FileError::TooLarge {
            path,
            size: found.size,
            limit,
        }
        .into());
    }
    let handle = files.open_read(&path).await?;
    // A file's length is sent, and what it grows by while it streams is cut
    // there; a link's target is read up to the limit.
    let stop_at = match found.kind {
        Kind::File => found.size,
        _ => limit,
    };
    let disposition = attachment(paths::name(&path));
    let kind = found.kind;
    let chunks = futures::stream::unfold(Some((session, files, handle)), move |open| {
        let path = path.clone();
        async move {
            let (session, files, mut handle) = open?;
            match files.read_chunk(&mut handle).await {
                Ok(chunk) if chunk.is_empty() => {
                    let _ = files.close(handle).await;
                    None
                }
                Ok(mut chunk) => {
                    let before = handle.offset() - chunk.len() as u64;
                    if handle.offset() > stop_at {
                        if kind != Kind::File {
                            let error = std::io::Error::other(format!(
                                "{path} is larger than the {limit} bytes a download may be"
                            ));
                            return Some((Err(error), None));
                        }
                        // What the file grew by is not sent: the length
                        // promised is, and the stream ends there.
                        chunk.truncate((stop_at - before) as usize);
                        let _ = files.close(handle).await;
                        return Some((Ok(axum::body::Bytes::from(chunk)), None));
                    }
                    Some((
                        Ok(axum::body::Bytes::from(chunk)),
                        Some((session, files, handle)),
                    ))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = header::HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if found.kind == Kind::File {
        headers.insert(
            header::CONTENT_LENGTH,
            header::HeaderValue::from(found.size),
        );
    }
    Ok(response.into_response())
}

/// Puts the local file `spool` on the server at `target` (which must not
/// exist) with `mode`: written under a hidden name beside it, then renamed
/// into place, so `target` is whole or absent. Answers the bytes written.
pub(super) async fn put_file(
    files: &Files,
    spool: &std::path::Path,
    target: &str,
    mode: u32,
) -> Result<u64, ApiError> {
    let hidden = paths::join(
        paths::parent(target),
        &format!(
            ".{}.berth-{:08x}",
            paths::name(target),
            rand::random::<u32>()
        ),
    );
    let mut local = tokio::fs::File::open(spool)
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
    let mut remote = files.create_new(&hidden, mode).await?;
    let written = async {
        let mut buf = vec![0u8; 1024 * 1024];
        loop {
            let n = local
                .read(&mut buf)
                .await
                .map_err(|e| ApiError::Internal(e.into()))?;
            if n == 0 {
                return Ok::<_, ApiError>(());
            }
            files.write_chunk(&mut remote, &buf[..n]).await?;
        }
    }
    .await;
    let size = remote.offset();
    let closed = files.close(remote).await;
    let placed = match (written, closed) {
        (Ok(()), Ok(())) => files.rename(&hidden, target).await.map_err(ApiError::from),
        (Err(e), _) => Err(e),
        (_, Err(e)) => Err(e.into()),
    };
    if let Err(e) = placed {
        let _ = files.remove_file(&hidden).await;
        return Err(e);
    }
    Ok(size)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The directory the file goes into, absolute.
    path: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Uploaded {
    path: String,
    size: u64,
}

/// The multipart form of an upload: one part named `file`, with a filename.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// Upload a file (multipart part `file`, named by its filename) into a
/// directory; nothing there is replaced (`BERTH_FILES_UPLOAD_MAX_BYTES`,
/// 256 MiB). The file is whole on the server or not there at all.
#[utoipa::path(post, path = "/files/{id}/upload", tag = "files",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    params(("id" = Uuid, Path, description = "Server id"), UploadQuery), responses(
    (status = 201, description = "Uploaded", body = Uploaded),
    (status = 400, description = "Invalid path, form or file name", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or no such directory", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Something is there already, or the path is not a directory", body = crate::error::ErrorEnvelope),
    (status = 413, description = "Larger than the limit", body = crate::error::ErrorEnvelope)))]
pub async fn upload(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Query(query): Query<UploadQuery>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Envelope<Uploaded>, ApiError> {
    let server = pinned_server(&state, &principal, id, Action::Operate).await?;
    let dir = paths::required("path", query.path.as_deref())?;
    let mut multipart =
        multipart.map_err(|_| ApiError::bad_request("expected a multipart/form-data body"))?;
    let max = state.config.files.upload_max_bytes;
    let failed = |e: PartError| match e {
        PartError::TooLarge => ApiError::PayloadTooLarge(format!(
            "the file is larger than {max} bytes (BERTH_FILES_UPLOAD_MAX_BYTES)"
        )),
        PartError::Malformed => {
            ApiError::bad_request("the multipart body is malformed or incomplete")
        }
        PartError::Sink(e) => e,
    };
    let file_field = || {
        ApiError::validation(vec![FieldError::new(
            "file",
            "is required: send the file as the form part `file`, with its filename",
        )])
    };
    let mut field = loop {
        match next_part(&mut multipart).await.map_err(failed)? {
            Some(field) if field.name() == Some("file") => break field,
            Some(_) => continue,
            None => return Err(file_field()),
        }
    };
    let name = field.file_name().ok_or_else(file_field)?.to_owned();
    paths::check_name("file", &name)?;
    let target = paths::join(&dir, &name);
    let (session, files) = connect(&state, &server).await?;
    // Refused before the body is read: no spool for a file that cannot land.
    if files.lstat(&dir).await?.kind != Kind::Directory {
        return Err(ApiError::Conflict(format!("{dir} is not a directory")));
    }
    if files.lstat_if_exists(&target).await?.is_some() {
        return Err(FileError::Exists(target).into());
    }
    let mut spool = tempfile::NamedTempFile::new().map_err(|e| ApiError::Internal(e.into()))?;
    read_part(
        &mut field,
        usize::try_from(max).unwrap_or(usize::MAX),
        |chunk| {
            use std::io::Write;
            spool
                .write_all(chunk)
                .map_err(|e| ApiError::Internal(e.into()))
        },
    )
    .await
    .map_err(failed)?;
    // From here the file lands whole, and is audited, whether or not the
    // client waits.
    to_completion(async move {
        let _session = session;
        let size = put_file(&files, spool.path(), &target, 0o644).await?;
        audited(
            &state,
            &principal,
            &client,
            id,
            "file.upload",
            serde_json::json!({ "path": target, "bytes": size }),
        )
        .await?;
        Ok(Envelope::created(Uploaded { path: target, size }))
    })
    .await
}
