//! The backup catalogue (the `backups` table) kept as backups are taken
//! and restored: the one way both the `backup` queue's jobs and the
//! operator's `berth-api admin restore` take, prove and restore a backup.

use std::path::PathBuf;

use berth_config::{ConfigError, Env};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{PgTarget, PgTools, Restored, TableRows, VerifyError};

/// Where backups go and how the PostgreSQL tools reach the database.
#[derive(Debug, Clone)]
pub struct BackupSetup {
    /// [`berth_config::backup_dir`].
    pub dir: PathBuf,
    /// `BERTH_PG_BIN_DIR`: where `pg_dump`, `pg_restore` and `psql` are
    /// (default: the `PATH`).
    pub tools: PgTools,
    pub target: PgTarget,
}

impl BackupSetup {
    pub fn from_env(env: &Env, database_url: &str) -> Result<Self, ConfigError> {
        let target = PgTarget::from_url(database_url).map_err(|e| ConfigError::Malformed {
            name: "DATABASE_URL".into(),
            reason: e.to_string(),
        })?;
        let stale = crate::remove_stale_passfiles();
        if stale > 0 {
            tracing::info!(
                stale,
                "removed passfiles of PostgreSQL tools killed earlier"
            );
        }
        Ok(Self {
            dir: berth_config::backup_dir(env)?,
            tools: PgTools::new(env.optional("BERTH_PG_BIN_DIR").map(PathBuf::from)),
            target,
        })
    }
}

/// Why a step did not happen, and whether trying again may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct Failure {
    pub reason: String,
    pub retryable: bool,
}

impl Failure {
    fn retryable(reason: impl std::fmt::Display) -> Self {
        Self {
            reason: reason.to_string(),
            retryable: true,
        }
    }

    fn permanent(reason: impl std::fmt::Display) -> Self {
        Self {
            reason: reason.to_string(),
            retryable: false,
        }
    }
}

/// Says what a step is doing: a job's log, or the operator's terminal.
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// A backup taken and proven by a restore into a scratch database.
#[derive(Debug, Clone)]
pub struct Proven {
    pub file_name: String,
    pub size_bytes: i64,
    pub table_rows: TableRows,
}

/// Dumps and verifies backup `id` (`trigger`: `manual`, `scheduled` or
/// `pre_restore`), recording each step on its row, which is made if the
/// scheduler or the operator did not make it. A file an earlier attempt
/// left is removed first; a file that fails verification is not kept.
pub async fn take(
    pool: &PgPool,
    setup: &BackupSetup,
    id: Uuid,
    trigger: &str,
    job_id: Option<&str>,
    progress: Progress<'_>,
    cancel: &CancellationToken,
) -> Result<Proven, Failure> {
    let earlier: Option<Option<String>> = sqlx::query_scalar(
        "INSERT INTO backups (id, trigger, job_id, status) VALUES ($1, $2, $3, 'dumping') \
         ON CONFLICT (id) DO UPDATE SET status = 'dumping', job_id = EXCLUDED.job_id, failure = NULL, \
             finished_at = NULL, verified_at = NULL \
         RETURNING (SELECT file_name FROM backups WHERE id = $1)",
    )
    .bind(id)
    .bind(trigger)
    .bind(job_id)
    .fetch_optional(pool)
    .await
    .map_err(Failure::retryable)?;
    if let Some(Some(name)) = earlier {
        crate::remove_backup_file(&setup.dir, &name)
            .await
            .map_err(Failure::retryable)?;
    }
    let file_name = format!(
        "berth-{}-{}.dump",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        id.simple()
    );
    progress(&format!("dumping the database to {file_name}"));
    let dumped = crate::dump(
        pool,
        &setup.target,
        &setup.tools,
        &setup.dir,
        &file_name,
        cancel,
    )
    .await
    .map_err(|e| Failure::retryable(format!("the dump failed: {e}")))?;
    sqlx::query(
        "UPDATE backups SET status = 'verifying', file_name = $2, size_bytes = $3, sha256 = $4, \
         table_rows = $5, dump_ms = $6 WHERE id = $1",
    )
    .bind(id)
    .bind(&file_name)
    .bind(dumped.size_bytes)
    .bind(&dumped.sha256)
    .bind(serde_json::to_value(&dumped.table_rows).expect("counts serialize"))
    .bind(dumped.elapsed.as_millis() as i64)
    .execute(pool)
    .await
    .map_err(Failure::retryable)?;
    let rows: i64 = dumped.table_rows.values().sum();
    progress(&format!(
        "dumped {} bytes ({} tables, {rows} rows) in {} ms; verifying by a restore into a scratch database",
        dumped.size_bytes,
        dumped.table_rows.len(),
        dumped.elapsed.as_millis()
    ));
    let path = setup.dir.join(&file_name);
    let verified = crate::verify(
        &setup.target,
        &setup.tools,
        &path,
        &dumped.table_rows,
        cancel,
    )
    .await;
    let (_, verify_time) = match verified {
        Ok(done) => done,
        Err(e) => {
            // Unproven, so not kept as if it were a backup.
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Failure::permanent(format!("verification failed: {e}")));
        }
    };
    sqlx::query(
        "UPDATE backups SET status = 'verified', verify_ms = $2, verified_at = now(), finished_at = now() \
         WHERE id = $1",
    )
    .bind(id)
    .bind(verify_time.as_millis() as i64)
    .execute(pool)
    .await
    .map_err(Failure::retryable)?;
    progress(&format!(
        "verified in {} ms: every table has the rows it was dumped with",
        verify_time.as_millis()
    ));
    Ok(Proven {
        file_name,
        size_bytes: dumped.size_bytes,
        table_rows: dumped.table_rows,
    })
}

/// Marks backup `id` failed with `reason`, unless it was proven meanwhile;
/// answers its trigger when it was marked.
pub async fn record_failure(
    pool: &PgPool,
    id: Uuid,
    reason: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE backups SET status = 'failed', failure = $2, finished_at = now() \
         WHERE id = $1 AND status <> 'verified' RETURNING trigger",
    )
    .bind(id)
    .bind(reason)
    .fetch_optional(pool)
    .await
}

/// The file of backup `id`, when it is verified and its bytes are still the
/// ones recorded; refused (permanently) before anything is touched if not.
pub async fn restorable(pool: &PgPool, setup: &BackupSetup, id: Uuid) -> Result<PathBuf, Failure> {
    let row: Option<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT status, file_name, sha256 FROM backups WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(Failure::retryable)?;
    let Some((status, file_name, sha256)) = row else {
        return Err(Failure::permanent("refused: there is no such backup"));
    };
    let (Some(file_name), Some(sha256)) = (file_name, sha256) else {
        return Err(Failure::permanent(
            "refused: the backup has no file (it never finished)",
        ));
    };
    if status != "verified" {
        return Err(Failure::permanent(format!(
            "refused: the backup is {status}, and only a verified one is restored"
        )));
    }
    let path = setup.dir.join(&file_name);
    let (_, found) = crate::checksum(&path)
        .await
        .map_err(|e| Failure::permanent(format!("refused, nothing touched: {e}")))?;
    if found != sha256 {
        return Err(Failure::permanent(format!(
            "refused, nothing touched: {}",
            VerifyError::Checksum {
                expected: sha256,
                found
            }
        )));
    }
    Ok(path)
}

/// Who asked for a restore, for the record the restored database keeps.
#[derive(Debug, Clone, Copy)]
pub enum RestoredBy<'a> {
    /// A `backup.restore` job: its row and the audit rows naming it are
    /// carried over.
    Job(&'a str),
    /// `berth-api admin restore` on the Berth host.
    Operator,
}

/// What must outlive the restore, read just before it.
struct Record {
    /// The backup catalogue: it describes the files on disk, not the data.
    backups: serde_json::Value,
    /// The restoring job's row (none for the operator's restore).
    job: Option<serde_json::Value>,
    /// The audit rows that asked for this restore.
    audit: serde_json::Value,
}

/// Restores backup `backup_id` (its file at `path`, checked by
/// [`restorable`]) over the live database, and carries the record of the
/// restore into the restored one.
pub async fn restore_recorded(
    pool: &PgPool,
    setup: &BackupSetup,
    path: &std::path::Path,
    backup_id: Uuid,
    by: RestoredBy<'_>,
    progress: Progress<'_>,
    cancel: &CancellationToken,
) -> Result<Restored, Failure> {
    let record = keep_record(pool, by).await.map_err(Failure::retryable)?;
    progress("restoring (one transaction: a failure leaves the database as it was)");
    let restored = crate::restore(pool, &setup.target, &setup.tools, path, cancel)
        .await
        // Not retried: it failed as a whole, and a retry would take yet
        // another backup first.
        .map_err(|e| Failure::permanent(format!("the restore failed, nothing changed: {e}")))?;
    write_record(pool, &record, by, backup_id)
        .await
        .map_err(|e| {
            Failure::permanent(format!(
                "restored, but the record of the restore was not written: {e}"
            ))
        })?;
    Ok(restored)
}

async fn keep_record(pool: &PgPool, by: RestoredBy<'_>) -> Result<Record, sqlx::Error> {
    let job_id = match by {
        RestoredBy::Job(id) => Some(id),
        RestoredBy::Operator => None,
    };
    type Read = (
        serde_json::Value,
        Option<serde_json::Value>,
        serde_json::Value,
    );
    let (backups, job, audit): Read = sqlx::query_as(
        "SELECT (SELECT coalesce(jsonb_agg(to_jsonb(b)), '[]') FROM backups b), \
                    (SELECT to_jsonb(j) FROM jobs j WHERE j.id = $1), \
                    (SELECT coalesce(jsonb_agg(to_jsonb(a)), '[]') FROM audit_logs a \
                      WHERE a.details->>'jobId' = $1)",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await?;
    Ok(Record {
        backups,
        job,
        audit,
    })
}

/// Carries the record of the restore into the restored database, and
/// settles the jobs the backup caught in flight: their runs belong to a
/// past the restore undid, so they end `cancelled` (their deployments and
/// releases settle with them, by the jobs table's trigger) and are never
/// run again.
async fn write_record(
    pool: &PgPool,
    record: &Record,
    by: RestoredBy<'_>,
    backup_id: Uuid,
) -> Result<(), sqlx::Error> {
    let (job_id, details) = match by {
        RestoredBy::Job(id) => (Some(id), serde_json::json!({ "jobId": id })),
        RestoredBy::Operator => (None, serde_json::json!({ "by": "berth-api admin restore" })),
    };
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(), \
         last_error = $2 WHERE state IN ('queued', 'running') AND id IS DISTINCT FROM $1",
    )
    .bind(job_id)
    .bind(format!(
        "cancelled by the restore of backup {backup_id}: it was in flight when that backup was taken"
    ))
    .execute(&mut *tx)
    .await?;
    // Ids that point at users the restored data does not have are cleared.
    if let Some(job) = &record.job {
        sqlx::query(
            "INSERT INTO jobs SELECT (jsonb_populate_record(NULL::jobs, $1 || jsonb_build_object( \
             'owner_user_id', (SELECT id FROM users WHERE id = ($1->>'owner_user_id')::uuid), \
             'server_id', NULL, 'deployment_id', NULL))).* \
         ON CONFLICT (id) DO NOTHING",
        )
        .bind(job)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM backups").execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO backups (id, trigger, requested_by, job_id, status, file_name, size_bytes, sha256, \
             table_rows, failure, dump_ms, verify_ms, created_at, finished_at, verified_at) \
         SELECT b.id, b.trigger, u.id, j.id, b.status, b.file_name, b.size_bytes, b.sha256, b.table_rows, \
             b.failure, b.dump_ms, b.verify_ms, b.created_at, b.finished_at, b.verified_at \
         FROM jsonb_populate_recordset(NULL::backups, $1) b \
         LEFT JOIN users u ON u.id = b.requested_by LEFT JOIN jobs j ON j.id = b.job_id",
    )
    .bind(&record.backups)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO audit_logs SELECT (jsonb_populate_record(NULL::audit_logs, r || jsonb_build_object( \
             'actor_user_id', (SELECT id FROM users WHERE id = (r->>'actor_user_id')::uuid)))).* \
         FROM jsonb_array_elements($1) r ON CONFLICT (id) DO NOTHING",
    )
    .bind(&record.audit)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO audit_logs (id, actor_user_id, action, target_type, target_id, details) \
         VALUES ($1, NULL, 'backup.restored', 'backup', $2, $3)",
    )
    .bind(Uuid::new_v4())
    .bind(backup_id.to_string())
    .bind(details)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
