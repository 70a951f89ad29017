//! `backup.restore`: a verified backup restored over the live database.
//! The file's checksum is checked before anything is touched; a fresh
//! backup is taken and proven; the api goes into maintenance (writes 503);
//! the restore runs in one transaction; the migrations the backup predates
//! are applied; and the record of the restore (this job, its audit rows,
//! the backup catalogue) is carried into the restored database.

use berth_database::catalogue::{self, RestoredBy};
use berth_jobs::maintenance_mode::{self, Maintenance};
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_jobs::{BackupRestore, BackupTrigger};
use chrono::Utc;

use super::{BackupJobs, failure, job_failure, maintenance_expiry};
use crate::alerts::Notice;

pub struct RestoreBackup(pub std::sync::Arc<BackupJobs>);

impl JobHandler for RestoreBackup {
    type Job = BackupRestore;

    async fn run(&self, job: BackupRestore, ctx: JobContext) -> Result<(), JobFailure> {
        let jobs = &self.0;
        ctx.log
            .step("checking the backup's file against its recorded SHA-256");
        let path = catalogue::restorable(&jobs.pool, &jobs.setup, job.backup_id)
            .await
            .map_err(job_failure)?;
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
        let restored = catalogue::restore_recorded(
            &jobs.pool,
            &jobs.setup,
            &path,
            job.backup_id,
            RestoredBy::Job(&ctx.job_id),
            &|step| ctx.log.step(step),
            &ctx.cancel,
        )
        .await;
        berth_jobs::events::publish_database_restored(&jobs.redis).await;
        if let Err(e) = maintenance_mode::leave(&jobs.redis, &ctx.job_id).await {
            tracing::error!(error = %e, "maintenance not left; it expires by itself");
        }
        let restored = restored.map_err(job_failure)?;
        ctx.log.step(&format!(
            "restored in {} ms, {} migrations applied; maintenance ended",
            restored.elapsed.as_millis(),
            restored.migrations_applied
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
