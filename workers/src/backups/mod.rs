//! Backups of Berth's own database (SPEC §3.9) on the `backup` queue:
//! `backup.create` dumps and verifies, `backup.restore` restores. Every
//! backup is proven by restoring it into a scratch database and comparing
//! its rows per table with the dump's snapshot; one that is not proven is
//! `failed`, with the reason, and the administrators are told.

mod restore;

use std::time::Duration;

use berth_database::catalogue::{self, BackupSetup, Proven};
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_jobs::{BackupCreate, BackupTrigger, Policies};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use uuid::Uuid;

use crate::alerts::{self, Notice};

pub use restore::RestoreBackup;

pub struct BackupJobs {
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub policies: Policies,
    pub setup: BackupSetup,
}

fn failure(e: impl std::fmt::Display) -> JobFailure {
    JobFailure::retryable(e)
}

fn job_failure(e: catalogue::Failure) -> JobFailure {
    if e.retryable {
        JobFailure::retryable(e.reason)
    } else {
        JobFailure::permanent(e.reason)
    }
}

impl BackupJobs {
    /// Dumps and verifies backup `id` ([`catalogue::take`]), the steps in
    /// the job's log.
    async fn take(
        &self,
        id: Uuid,
        trigger: BackupTrigger,
        ctx: &JobContext,
    ) -> Result<Proven, JobFailure> {
        catalogue::take(
            &self.pool,
            &self.setup,
            id,
            trigger.name(),
            Some(&ctx.job_id),
            &|step| ctx.log.step(step),
            &ctx.cancel,
        )
        .await
        .map_err(job_failure)
    }

    /// Marks backup `id` failed (unless it was proven meanwhile) and tells
    /// the administrators.
    async fn record_failure(&self, id: Uuid, reason: &str) {
        match catalogue::record_failure(&self.pool, id, reason).await {
            Ok(Some(trigger)) => {
                self.tell_administrators(Notice {
                    kind: "backup_failed",
                    title: "A backup of Berth's database failed".into(),
                    body: format!("The {trigger} backup {id} is not usable: {reason}"),
                    data: serde_json::json!({ "backupId": id }),
                })
                .await;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(backup = %id, error = %e, "backup failure not recorded"),
        }
    }

    /// Deletes the files of scheduled backups past the newest `keep` verified ones.
    async fn apply_retention(&self, keep: u32, ctx: &JobContext) -> Result<(), JobFailure> {
        let old: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, file_name FROM backups WHERE trigger = 'scheduled' AND status = 'verified' \
             ORDER BY created_at DESC OFFSET $1",
        )
        .bind(i64::from(keep))
        .fetch_all(&self.pool)
        .await
        .map_err(failure)?;
        for (id, file_name) in &old {
            berth_database::remove_backup_file(&self.setup.dir, file_name)
                .await
                .map_err(failure)?;
            sqlx::query("DELETE FROM backups WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(failure)?;
        }
        if !old.is_empty() {
            ctx.log.step(&format!(
                "retention: kept the newest {keep} scheduled backups, deleted {}",
                old.len()
            ));
        }
        Ok(())
    }

    /// An in-app notification (and mail, as each one's alert rules say) for
    /// every active administrator.
    async fn tell_administrators(&self, notice: Notice) {
        let told = async {
            let admins: Vec<Uuid> = sqlx::query_scalar(
                "SELECT id FROM users WHERE role IN ('admin', 'super_admin') AND status = 'active'",
            )
            .fetch_all(&self.pool)
            .await?;
            let mut events = Vec::new();
            let mut tx = self.pool.begin().await?;
            for admin in admins {
                let to = alerts::recipient(&mut tx, admin).await?;
                let rules = alerts::rules_of(&mut tx, admin).await?;
                if let Some(event) =
                    alerts::deliver(&mut tx, &self.policies, &to, &rules, &notice).await?
                {
                    events.push((admin, event));
                }
            }
            tx.commit().await?;
            for (admin, event) in events {
                alerts::publish(&self.redis, admin, &[event]).await;
            }
            Ok::<(), sqlx::Error>(())
        };
        if let Err(e) = told.await {
            tracing::error!(error = %e, "administrators not told about a backup");
        }
    }
}

pub struct CreateBackup(pub std::sync::Arc<BackupJobs>);

impl JobHandler for CreateBackup {
    type Job = BackupCreate;

    async fn run(&self, job: BackupCreate, ctx: JobContext) -> Result<(), JobFailure> {
        let proven = self.0.take(job.backup_id, job.trigger, &ctx).await?;
        ctx.log.step(&format!(
            "backup {} is {} ({} bytes, {} tables)",
            job.backup_id,
            proven.file_name,
            proven.size_bytes,
            proven.table_rows.len()
        ));
        if let Some(keep) = job.keep {
            self.0.apply_retention(keep, &ctx).await?;
        }
        Ok(())
    }

    async fn failed(&self, job: BackupCreate, error: String) {
        self.0.record_failure(job.backup_id, &error).await;
    }
}

/// How long a restore may keep the api in maintenance if its worker dies:
/// past the backup queue's timeout.
fn maintenance_expiry(policies: &Policies) -> Duration {
    policies.get(berth_jobs::Queue::Backup).timeout + Duration::from_secs(60)
}
