//! `backup.restore`: a verified backup restored over the live database.
//! The file's checksum is checked before anything is touched; a fresh
//! backup is taken and proven; the api goes into maintenance (writes 503);
//! the restore runs in one transaction; the migrations the backup predates
//! are applied; and the record of the restore (this job, its audit rows,
//! the backup catalogue) is carried into the restored database.

use berth_jobs::maintenance_mode::{self, Maintenance};
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_jobs::{BackupRestore, BackupTrigger};
use chrono::Utc;
use uuid::Uuid;

use super::{BackupJobs, failure, maintenance_expiry};
use crate::alerts::Notice;

/// What must outlive the restore, read just before it.
struct Record {
    /// The backup catalogue: it describes the files on disk, not the data.
    backups: serde_json::Value,
    /// This job's row.
    job: serde_json::Value,
    /// The audit rows that asked for this restore.
    audit: serde_json::Value,
}

pub struct RestoreBackup(pub std::sync::Arc<BackupJobs>);

impl JobHandler for RestoreBackup {
    type Job = BackupRestore;

    async fn run(&self, job: BackupRestore, ctx: JobContext) -> Result<(), JobFailure> {
        let jobs = &self.0;
        let row: Option<(String, Option<String>, Option<String>)> =
            sqlx::query_as("SELECT status, file_name, sha256 FROM backups WHERE id = $1")
                .bind(job.backup_id)
                .fetch_optional(&jobs.pool)
                .await
                .map_err(failure)?;
        let Some((status, Some(file_name), Some(sha256))) = row else {
            return Err(JobFailure::permanent(
                "refused: the backup has no file (it never finished)",
            ));
        };
        if status != "verified" {
            return Err(JobFailure::permanent(format!(
                "refused: the backup is {status}, and only a verified one is restored"
            )));
        }
        let path = jobs.config.dir.join(&file_name);
        ctx.log.step(&format!(
            "checking {file_name} against its recorded SHA-256"
        ));
        let (_, found) = berth_database::checksum(&path)
            .await
            .map_err(|e| JobFailure::permanent(format!("refused, nothing touched: {e}")))?;
        if found != sha256 {
            return Err(JobFailure::permanent(format!(
                "refused, nothing touched: {}",
                berth_database::VerifyError::Checksum {
                    expected: sha256,
                    found
                }
            )));
        }
        ctx.log.step("taking a fresh backup first");
        if let Err(e) = jobs
            .take(job.safety_backup_id, BackupTrigger::PreRestore, &ctx)
            .await
        {
            jobs.record_failure(job.safety_backup_id, e.reason()).await;
            return Err(JobFailure::permanent(format!(
                "nothing restored: the backup taken first failed: {}",
                e.reason()
            )));
        }
        let maintenance = Maintenance {
            reason: format!(
                "Berth is restoring a backup of its database (job {}); changes are refused until it ends",
                ctx.job_id
            ),
            job_id: ctx.job_id.clone(),
            since: Utc::now(),
        };
        maintenance_mode::enter(
            &jobs.redis,
            &maintenance,
            maintenance_expiry(&jobs.policies),
        )
        .await
        .map_err(|e| failure(format!("cannot enter maintenance: {e}")))?;
        let restored = self.restore(&job, &ctx, &path).await;
        if let Err(e) = maintenance_mode::leave(&jobs.redis, &ctx.job_id).await {
            tracing::error!(error = %e, "maintenance not left; it expires by itself");
        }
        let (elapsed_ms, migrations) = restored?;
        ctx.log.step(&format!(
            "restored {file_name} in {elapsed_ms} ms, {migrations} migrations applied; maintenance ended"
        ));
        jobs.tell_administrators(Notice {
            kind: "backup_restored",
            title: "Berth's database was restored".into(),
            body: format!(
                "The backup {} was restored; a backup taken just before is {}.",
                job.backup_id, job.safety_backup_id
            ),
            data: serde_json::json!({ "backupId": job.backup_id, "safetyBackupId": job.safety_backup_id }),
        })
        .await;
        Ok(())
    }

    async fn failed(&self, job: BackupRestore, error: String) {
        // A restore that failed changed nothing (one transaction); the
        // backup taken first, if it was cut short, is marked so.
        self.0.record_failure(job.safety_backup_id, &error).await;
    }
}

impl RestoreBackup {
    async fn restore(
        &self,
        job: &BackupRestore,
        ctx: &JobContext,
        path: &std::path::Path,
    ) -> Result<(u128, usize), JobFailure> {
        let jobs = &self.0;
        let record = keep_record(&jobs.pool, &ctx.job_id)
            .await
            .map_err(failure)?;
        ctx.log
            .step("restoring (one transaction: a failure leaves the database as it was)");
        let restored = berth_database::restore(
            &jobs.pool,
            &jobs.config.target,
            &jobs.config.tools,
            path,
            &ctx.cancel,
        )
        .await
        // Not retried: it failed as a whole, and a retry would take yet
        // another backup first.
        .map_err(|e| JobFailure::permanent(format!("the restore failed, nothing changed: {e}")))?;
        write_record(&jobs.pool, &record, &ctx.job_id, job.backup_id)
            .await
            .map_err(|e| {
                JobFailure::permanent(format!(
                    "restored, but the record of the restore was not written: {e}"
                ))
            })?;
        Ok((restored.elapsed.as_millis(), restored.migrations_applied))
    }
}

async fn keep_record(pool: &sqlx::PgPool, job_id: &str) -> Result<Record, sqlx::Error> {
    let (backups, job, audit): (serde_json::Value, serde_json::Value, serde_json::Value) =
        sqlx::query_as(
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
    pool: &sqlx::PgPool,
    record: &Record,
    job_id: &str,
    backup_id: Uuid,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now(), \
         last_error = $2 WHERE state IN ('queued', 'running') AND id <> $1",
    )
    .bind(job_id)
    .bind(format!(
        "cancelled by the restore of backup {backup_id}: it was in flight when that backup was taken"
    ))
    .execute(&mut *tx)
    .await?;
    // Ids that point at users the restored data does not have are cleared.
    if !record.job.is_null() {
        sqlx::query(
            "INSERT INTO jobs SELECT (jsonb_populate_record(NULL::jobs, $1 || jsonb_build_object( \
             'owner_user_id', (SELECT id FROM users WHERE id = ($1->>'owner_user_id')::uuid), \
             'server_id', NULL, 'deployment_id', NULL))).* \
         ON CONFLICT (id) DO NOTHING",
        )
        .bind(&record.job)
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
    .bind(serde_json::json!({ "jobId": job_id }))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
