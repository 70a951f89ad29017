//! Backups of Berth's own database (SPEC §3.9) on the `backup` queue:
//! `backup.create` dumps and verifies, `backup.restore` restores. Every
//! backup is proven by restoring it into a scratch database and comparing
//! its rows per table with the dump's snapshot; one that is not proven is
//! `failed`, with the reason, and the administrators are told.

mod restore;

use std::path::PathBuf;
use std::time::Duration;

use berth_config::{ConfigError, Env};
use berth_database::{PgTarget, PgTools, TableRows};
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_jobs::{BackupCreate, BackupTrigger, Policies};
use chrono::Utc;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use uuid::Uuid;

use crate::alerts::{self, Notice};

pub use restore::RestoreBackup;

/// Where backups go and how the PostgreSQL tools are reached.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// [`berth_config::backup_dir`].
    pub dir: PathBuf,
    /// `BERTH_PG_BIN_DIR`: where `pg_dump`, `pg_restore` and `psql` are
    /// (default: the `PATH`).
    pub tools: PgTools,
    pub target: PgTarget,
}

impl BackupConfig {
    pub fn from_env(env: &Env, database_url: &str) -> Result<Self, ConfigError> {
        let target = PgTarget::from_url(database_url).map_err(|e| ConfigError::Malformed {
            name: "DATABASE_URL".into(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            dir: berth_config::backup_dir(env)?,
            tools: PgTools::new(env.optional("BERTH_PG_BIN_DIR").map(PathBuf::from)),
            target,
        })
    }
}

pub struct BackupJobs {
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub policies: Policies,
    pub config: BackupConfig,
}

/// A backup the job took and proved.
struct Proven {
    file_name: String,
    size_bytes: i64,
    table_rows: TableRows,
}

fn failure(e: impl std::fmt::Display) -> JobFailure {
    JobFailure::retryable(e)
}

impl BackupJobs {
    /// Dumps and verifies backup `id`, recording each step on its row. A
    /// file an earlier attempt left is removed first.
    async fn take(
        &self,
        id: Uuid,
        trigger: BackupTrigger,
        ctx: &JobContext,
    ) -> Result<Proven, JobFailure> {
        let earlier: Option<Option<String>> = sqlx::query_scalar(
            "INSERT INTO backups (id, trigger, job_id, status) VALUES ($1, $2, $3, 'dumping') \
             ON CONFLICT (id) DO UPDATE SET status = 'dumping', job_id = EXCLUDED.job_id, failure = NULL, \
                 finished_at = NULL, verified_at = NULL \
             RETURNING (SELECT file_name FROM backups WHERE id = $1)",
        )
        .bind(id)
        .bind(trigger.name())
        .bind(&ctx.job_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(failure)?;
        if let Some(Some(name)) = earlier {
            let _ = tokio::fs::remove_file(self.config.dir.join(name)).await;
        }
        let file_name = format!(
            "berth-{}-{}.dump",
            Utc::now().format("%Y%m%dT%H%M%SZ"),
            id.simple()
        );
        ctx.log
            .step(&format!("dumping the database to {file_name}"));
        let dumped = berth_database::dump(
            &self.pool,
            &self.config.target,
            &self.config.tools,
            &self.config.dir,
            &file_name,
            &ctx.cancel,
        )
        .await
        .map_err(|e| failure(format!("the dump failed: {e}")))?;
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
        .execute(&self.pool)
        .await
        .map_err(failure)?;
        let rows: i64 = dumped.table_rows.values().sum();
        ctx.log.step(&format!(
            "dumped {} bytes ({} tables, {rows} rows) in {} ms; verifying by a restore into a scratch database",
            dumped.size_bytes,
            dumped.table_rows.len(),
            dumped.elapsed.as_millis()
        ));
        let path = self.config.dir.join(&file_name);
        let (_, verify_time) = match berth_database::verify(
            &self.config.target,
            &self.config.tools,
            &path,
            &dumped.table_rows,
            &ctx.cancel,
        )
        .await
        {
            Ok(done) => done,
            Err(e) => {
                // Unproven, so not kept as if it were a backup.
                let _ = tokio::fs::remove_file(&path).await;
                return Err(JobFailure::permanent(format!("verification failed: {e}")));
            }
        };
        sqlx::query(
            "UPDATE backups SET status = 'verified', verify_ms = $2, verified_at = now(), finished_at = now() \
             WHERE id = $1",
        )
        .bind(id)
        .bind(verify_time.as_millis() as i64)
        .execute(&self.pool)
        .await
        .map_err(failure)?;
        ctx.log.step(&format!(
            "verified in {} ms: every table has the rows it was dumped with",
            verify_time.as_millis()
        ));
        Ok(Proven {
            file_name,
            size_bytes: dumped.size_bytes,
            table_rows: dumped.table_rows,
        })
    }

    /// Marks backup `id` failed (unless it was proven meanwhile) and tells
    /// the administrators.
    async fn record_failure(&self, id: Uuid, reason: &str) {
        let marked: Result<Option<String>, sqlx::Error> = sqlx::query_scalar(
            "UPDATE backups SET status = 'failed', failure = $2, finished_at = now() \
             WHERE id = $1 AND status <> 'verified' RETURNING trigger",
        )
        .bind(id)
        .bind(reason)
        .fetch_optional(&self.pool)
        .await;
        match marked {
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
            berth_database::remove_backup_file(&self.config.dir, file_name)
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
