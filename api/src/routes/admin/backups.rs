//! `/admin/backups`: backups of Berth's own database, each proven by a
//! restore into a scratch database (the `backup` queue's jobs), downloads and
//! restores by a super admin.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use berth_jobs::store::{self, NewJob};
use berth_jobs::{BackupCreate, BackupRestore, BackupTrigger, Enqueued};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::platform;
use super::users::field;
use crate::access::Action;
use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{
    Binds, Deleted, Envelope, Json, Page, PageQuery, Path, Query, filtered_page,
};
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct BackupView {
    id: Uuid,
    /// `manual`, `scheduled` or `pre_restore` (taken just before a restore).
    trigger: String,
    /// `queued`, `dumping`, `verifying`, `verified` or `failed`.
    status: String,
    /// Why it failed (the dump, or the verifying restore).
    failure: Option<String>,
    file_name: Option<String>,
    size_bytes: Option<i64>,
    sha256: Option<String>,
    /// Rows per table, as dumped and as the verifying restore found them.
    #[schema(value_type = Option<Object>)]
    table_rows: Option<serde_json::Value>,
    dump_ms: Option<i64>,
    verify_ms: Option<i64>,
    requested_by: Option<Uuid>,
    /// The job that took it (`GET /jobs/{jobId}`).
    job_id: Option<String>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    verified_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, trigger, status, failure, file_name, size_bytes, sha256, table_rows, dump_ms, \
    verify_ms, requested_by, job_id, created_at, finished_at, verified_at";

async fn one(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<BackupView, ApiError> {
    let lock = if lock { "FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM backups WHERE id = $1 {lock}"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::NotFound("no such backup".into()))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupAccepted {
    backup: BackupView,
    job_id: String,
}

async fn queued_backup(
    conn: &mut PgConnection,
    id: Uuid,
    trigger: BackupTrigger,
    by: Uuid,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO backups (id, trigger, requested_by, status) VALUES ($1, $2, $3, 'queued')",
    )
    .bind(id)
    .bind(trigger.name())
    .bind(by)
    .execute(conn)
    .await?;
    Ok(())
}

/// Take a backup now: a job dumps the database and proves the file by
/// restoring it into a scratch database (202).
#[utoipa::path(post, path = "/admin/backups", tag = "admin", responses(
    (status = 202, description = "Backup queued", body = BackupAccepted),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope)))]
pub async fn create_backup(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
) -> Result<Envelope<BackupAccepted>, ApiError> {
    let mut tx = state.pool.begin().await?;
    platform(&mut tx, &principal, Action::Manage).await?;
    let id = Uuid::new_v4();
    queued_backup(&mut tx, id, BackupTrigger::Manual, principal.user_id()).await?;
    let job: Enqueued = store::enqueue(
        &mut tx,
        state.jobs.policies(),
        NewJob::new(BackupCreate {
            backup_id: id,
            trigger: BackupTrigger::Manual,
            keep: None,
        })
        .owner(principal.user_id()),
    )
    .await?;
    sqlx::query("UPDATE backups SET job_id = $2 WHERE id = $1")
        .bind(id)
        .bind(&job.id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "backup.create",
            "backup",
            id,
            serde_json::json!({ "jobId": job.id }),
        ),
    )
    .await?;
    let backup = one(&mut tx, id, false).await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Envelope::accepted(BackupAccepted {
        backup,
        job_id: job.id,
    }))
}

/// Backups, newest first.
#[utoipa::path(get, path = "/admin/backups", tag = "admin", params(PageQuery), responses(
    (status = 200, description = "A page of backups", body = Page<BackupView>),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope)))]
pub async fn list_backups(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageQuery>,
) -> Result<Envelope<Page<BackupView>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    platform(&mut conn, &principal, Action::Read).await?;
    let page = page.validate()?;
    let backups = filtered_page(
        &mut conn,
        COLUMNS,
        "FROM backups",
        "",
        "created_at DESC, id",
        Binds::default(),
        page,
    )
    .await?;
    Ok(Envelope::ok(backups))
}

/// One backup.
#[utoipa::path(get, path = "/admin/backups/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "Backup id")), responses(
    (status = 200, description = "The backup", body = BackupView),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such backup", body = crate::error::ErrorEnvelope)))]
pub async fn get_backup(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<BackupView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    platform(&mut conn, &principal, Action::Read).await?;
    Ok(Envelope::ok(one(&mut conn, id, false).await?))
}

fn in_progress(backup: &BackupView) -> bool {
    matches!(backup.status.as_str(), "queued" | "dumping" | "verifying")
}

/// Delete a backup and its file (the audit log keeps the record).
#[utoipa::path(delete, path = "/admin/backups/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "Backup id")), responses(
    (status = 200, description = "Deleted", body = Deleted),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such backup", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Still being taken", body = crate::error::ErrorEnvelope)))]
pub async fn delete_backup(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<Deleted>, ApiError> {
    let mut tx = state.pool.begin().await?;
    platform(&mut tx, &principal, Action::Manage).await?;
    let backup = one(&mut tx, id, true).await?;
    if in_progress(&backup) {
        return Err(ApiError::Conflict("the backup is still being taken".into()));
    }
    if let Some(name) = &backup.file_name {
        berth_database::remove_backup_file(&state.config.backup_dir, name)
            .await
            .map_err(|e| {
                ApiError::Internal(anyhow::Error::new(e).context("removing a backup file"))
            })?;
    }
    sqlx::query("DELETE FROM backups WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "backup.delete",
            "backup",
            id,
            serde_json::json!({ "fileName": backup.file_name }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(Deleted::DONE))
}

/// The backup file itself (a super admin): `pg_dump`'s custom format, for
/// `pg_restore`. Its SHA-256 is in `X-Checksum-Sha256`.
#[utoipa::path(get, path = "/admin/backups/{id}/download", tag = "admin",
    params(("id" = Uuid, Path, description = "Backup id")), responses(
    (status = 200, description = "The file", content_type = "application/octet-stream"),
    (status = 403, description = "Not a super admin", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such backup, or its file is gone", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Not verified", body = crate::error::ErrorEnvelope)))]
pub async fn download_backup(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let mut tx = state.pool.begin().await?;
    platform(&mut tx, &principal, Action::Own).await?;
    let backup = one(&mut tx, id, false).await?;
    let (Some(name), Some(sha256), "verified") =
        (&backup.file_name, &backup.sha256, backup.status.as_str())
    else {
        return Err(ApiError::Conflict(format!(
            "the backup is {}; only a verified one is downloaded",
            backup.status
        )));
    };
    let file = tokio::fs::File::open(state.config.backup_dir.join(name))
        .await
        .map_err(|_| ApiError::NotFound("the backup's file is not in BERTH_BACKUP_DIR".into()))?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "backup.download",
            "backup",
            id,
            serde_json::json!({ "fileName": name }),
        ),
    )
    .await?;
    tx.commit().await?;
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(size) = backup.size_bytes {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    // The name is Berth's own: `berth-<time>-<hex>.dump`.
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    if let Ok(checksum) = HeaderValue::from_str(sha256) {
        headers.insert("x-checksum-sha256", checksum);
    }
    Ok(response)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreRequest {
    /// The backup's id typed again: a restore replaces everything.
    confirm: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreAccepted {
    job_id: String,
    /// The backup the job takes first, of the database as it is now.
    safety_backup_id: Uuid,
}

/// Restore a verified backup over the live database (a super admin): a job
/// checks the file's checksum, takes a fresh backup, puts the api into
/// maintenance (writes answer 503), restores, applies pending migrations and
/// leaves maintenance (202).
#[utoipa::path(post, path = "/admin/backups/{id}/restore", tag = "admin", request_body = RestoreRequest,
    params(("id" = Uuid, Path, description = "Backup id")), responses(
    (status = 202, description = "Restore queued", body = RestoreAccepted),
    (status = 400, description = "The confirmation is not the backup's id", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Not a super admin", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such backup", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Not verified, or a restore is under way", body = crate::error::ErrorEnvelope)))]
pub async fn restore_backup(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<RestoreRequest>,
) -> Result<Envelope<RestoreAccepted>, ApiError> {
    let mut tx = state.pool.begin().await?;
    platform(&mut tx, &principal, Action::Own).await?;
    let backup = one(&mut tx, id, true).await?;
    if req.confirm.trim() != id.to_string() {
        return Err(field("confirm", "must be the backup's id, typed again"));
    }
    if backup.status != "verified" {
        return Err(ApiError::Conflict(format!(
            "the backup is {}; only a verified one is restored",
            backup.status
        )));
    }
    let under_way: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE kind = 'backup.restore' AND state IN ('queued', 'running'))",
    )
    .fetch_one(&mut *tx)
    .await?;
    if under_way {
        return Err(ApiError::Conflict("a restore is under way".into()));
    }
    let safety_backup_id = Uuid::new_v4();
    queued_backup(
        &mut tx,
        safety_backup_id,
        BackupTrigger::PreRestore,
        principal.user_id(),
    )
    .await?;
    let job: Enqueued = store::enqueue(
        &mut tx,
        state.jobs.policies(),
        NewJob::new(BackupRestore {
            backup_id: id,
            safety_backup_id,
        })
        .owner(principal.user_id()),
    )
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "backup.restore",
            "backup",
            id,
            serde_json::json!({ "jobId": job.id, "safetyBackupId": safety_backup_id }),
        ),
    )
    .await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Envelope::accepted(RestoreAccepted {
        job_id: job.id,
        safety_backup_id,
    }))
}
