//! SPEC §3.2 uploads: images for avatars. The type is read from the bytes (the
//! client's Content-Type and file name are not trusted), only PNG, JPEG, GIF
//! and WebP are kept (never SVG, which can carry script), and they are served
//! with their real type, `nosniff` and a sandboxing CSP, so an upload can never
//! run as a page of Berth's origin.

use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartRejection};

use crate::multipart::{PartError, next_part, read_part_to_vec};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{Deleted, Envelope, Path};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

/// The form `POST /uploads` takes (documentation only: the body is read as a
/// stream by [`read_file_part`]).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// A PNG, JPEG, GIF or WebP image.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// Multipart framing (boundaries, part headers) around the image itself.
pub const MULTIPART_OVERHEAD_BYTES: usize = 16 * 1024;

/// What is stored about an upload (its bytes aside).
#[derive(Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct UploadMeta {
    id: Uuid,
    /// The type read from the image's bytes.
    content_type: String,
    original_name: String,
    size: i32,
    width: i32,
    height: i32,
    sha256: String,
    created_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Upload {
    /// Where the image is served; usable as the profile's `avatarUrl`.
    url: String,
    #[serde(flatten)]
    meta: UploadMeta,
}

fn upload_url(state: &AppState, id: Uuid) -> String {
    format!(
        "{}/api/v1/uploads/{id}",
        state.config.public_url.trim_end_matches('/')
    )
}

/// The media type of an image Berth keeps, read from its first bytes.
fn sniff(data: &[u8]) -> Option<&'static str> {
    match imagesize::image_type(data).ok()? {
        imagesize::ImageType::Png => Some("image/png"),
        imagesize::ImageType::Jpeg => Some("image/jpeg"),
        imagesize::ImageType::Gif => Some("image/gif"),
        imagesize::ImageType::Webp => Some("image/webp"),
        _ => None,
    }
}

/// A file name kept only to show back: its last path component, without
/// control characters, at most 255 characters.
fn clean_name(name: Option<&str>) -> String {
    let name = name
        .unwrap_or("")
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect::<String>();
    let name = name.trim();
    if name.is_empty() {
        "image".to_owned()
    } else {
        name.to_owned()
    }
}

fn multipart_error(message: impl Into<String>) -> ApiError {
    ApiError::validation(vec![FieldError::new("file", message)])
}

/// The one `file` part of the form, read up to the size limit.
async fn read_file_part(
    multipart: &mut Multipart,
    max_bytes: usize,
) -> Result<(Option<String>, Vec<u8>), ApiError> {
    let failed = |e: PartError| match e {
        PartError::TooLarge => too_large(max_bytes),
        PartError::Malformed => multipart_error("the multipart body is malformed or incomplete"),
        PartError::Sink(e) => e,
    };
    while let Some(mut field) = next_part(multipart).await.map_err(failed)? {
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().map(str::to_owned);
        let data = read_part_to_vec(&mut field, max_bytes)
            .await
            .map_err(failed)?;
        return Ok((name, data));
    }
    Err(multipart_error(
        "is required: send the image as the form field `file`",
    ))
}

fn too_large(max_bytes: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!("an image may be at most {max_bytes} bytes"))
}

/// Upload an avatar image (multipart form, field `file`): PNG, JPEG, GIF or
/// WebP, within the size and pixel limits.
#[utoipa::path(post, path = "/uploads", tag = "account",
    request_body(content = UploadForm, content_type = "multipart/form-data", description = "A form with the image in the field `file`"),
    responses(
        (status = 201, description = "Stored", body = Upload),
        (status = 400, description = "Not a PNG, JPEG, GIF or WebP image, or too many pixels", body = crate::error::ErrorEnvelope),
        (status = 403, description = "An API token cannot upload", body = crate::error::ErrorEnvelope),
        (status = 409, description = "The per-user number of images is reached", body = crate::error::ErrorEnvelope),
        (status = 413, description = "Larger than the size limit", body = crate::error::ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Envelope<Upload>, ApiError> {
    principal.require_session()?;
    let limits = state.config.uploads;
    let mut multipart = multipart
        .map_err(|_| multipart_error("send a multipart/form-data body with a boundary"))?;
    let (name, data) = read_file_part(&mut multipart, limits.max_bytes).await?;
    let content_type =
        sniff(&data).ok_or_else(|| multipart_error("must be a PNG, JPEG, GIF or WebP image"))?;
    let dimensions =
        imagesize::blob_size(&data).map_err(|_| multipart_error("the image header is damaged"))?;
    let max = limits.max_dimension as usize;
    if dimensions.width == 0 || dimensions.height == 0 {
        return Err(multipart_error("the image has no pixels"));
    }
    if dimensions.width > max || dimensions.height > max {
        return Err(multipart_error(format!(
            "the image may be at most {max}×{max} pixels"
        )));
    }
    let sha256 = hex::encode(Sha256::digest(&data));
    let mut tx = state.pool.begin().await?;
    // Serialises this user's uploads so the count check holds.
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(principal.user_id())
        .execute(&mut *tx)
        .await?;
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM uploads WHERE user_id = $1")
        .bind(principal.user_id())
        .fetch_one(&mut *tx)
        .await?;
    if kept >= i64::from(limits.per_user) {
        return Err(ApiError::Conflict(format!(
            "you keep {kept} images, the most allowed; delete one first"
        )));
    }
    let meta: UploadMeta = sqlx::query_as(
        "INSERT INTO uploads (id, user_id, content_type, original_name, size, width, height, sha256, data) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         RETURNING id, content_type, original_name, size, width, height, sha256, created_at",
    )
    .bind(Uuid::new_v4())
    .bind(principal.user_id())
    .bind(content_type)
    .bind(clean_name(name.as_deref()))
    // Both fit: the size limit is at most 64 MiB, the pixel limit a u32.
    .bind(data.len() as i32)
    .bind(dimensions.width as i32)
    .bind(dimensions.height as i32)
    .bind(&sha256)
    .bind(&data)
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "upload.create",
            "upload",
            meta.id,
            serde_json::json!({ "contentType": content_type, "size": data.len() }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::created(Upload {
        url: upload_url(&state, meta.id),
        meta,
    }))
}

/// The image itself, with its real type. Public, like any avatar: its id is
/// unguessable and it is shown to other users.
#[utoipa::path(get, path = "/uploads/{id}", tag = "account",
    params(("id" = Uuid, Path, description = "The upload id")),
    responses(
        (status = 200, description = "The image bytes", content_type = "image/*"),
        (status = 404, description = "No such upload", body = crate::error::ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let (content_type, data): (String, Vec<u8>) =
        sqlx::query_as("SELECT content_type, data FROM uploads WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.pool)
            .await?
            .ok_or_else(|| ApiError::NotFound("no such upload".into()))?;
    let mut response = data.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&content_type)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored content type: {e}")))?,
    );
    // Content under an id never changes.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("inline; filename=\"image\""),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; sandbox"),
    );
    Ok(response)
}

/// Delete one of your images; a profile using it as its avatar loses it.
#[utoipa::path(delete, path = "/uploads/{id}", tag = "account",
    params(("id" = Uuid, Path, description = "The upload id")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 403, description = "Someone else's upload, or an API token", body = crate::error::ErrorEnvelope),
        (status = 404, description = "No such upload", body = crate::error::ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<Deleted>, ApiError> {
    principal.require_session()?;
    let mut tx = state.pool.begin().await?;
    // Uploads are public by id, so telling "not yours" from "not there" reveals nothing.
    let owner: Uuid = sqlx::query_scalar("SELECT user_id FROM uploads WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such upload".into()))?;
    if owner != principal.user_id() {
        return Err(ApiError::Forbidden(
            "only the uploader can delete an upload".into(),
        ));
    }
    sqlx::query("DELETE FROM uploads WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE users SET avatar_url = NULL, updated_at = now() WHERE id = $1 AND avatar_url = $2",
    )
    .bind(owner)
    .bind(upload_url(&state, id))
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "upload.delete",
            "upload",
            id,
            serde_json::json!({}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(Deleted::DONE))
}

#[cfg(test)]
mod tests {
    use super::{clean_name, sniff};

    #[test]
    fn only_the_four_raster_types_are_kept() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some("image/png"));
        assert_eq!(
            sniff(b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01"),
            Some("image/jpeg")
        );
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0\0\0"), Some("image/gif"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(
            sniff(b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script/>"),
            None
        );
        assert_eq!(sniff(b"<html><script>alert(1)</script>"), None);
        assert_eq!(sniff(b"BM\0\0\0\0"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn names_keep_only_their_last_component() {
        assert_eq!(clean_name(Some("../../etc/passwd")), "passwd");
        assert_eq!(clean_name(Some("C:\\x\\me.png")), "me.png");
        assert_eq!(clean_name(Some("a\u{0}b\nc.png")), "abc.png");
        assert_eq!(clean_name(Some("dir/")), "image");
        assert_eq!(clean_name(None), "image");
    }
}
