//! `maintenance.prune` and `maintenance.reconcile`: the scheduler's periodic
//! work, run here so the scheduler only enqueues.

use std::time::Duration;

use berth_jobs::kinds::maintenance::{Prune, Reconcile};
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_jobs::{housekeeping, store};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

pub struct Pruner {
    pub pool: PgPool,
    pub redis: ConnectionManager,
}

impl JobHandler for Pruner {
    type Job = Prune;

    async fn run(&self, job: Prune, ctx: JobContext) -> Result<(), JobFailure> {
        let failed = |e: &dyn std::fmt::Display| JobFailure::retryable(format!("pruning: {e}"));
        let jobs = housekeeping::prune(
            &self.pool,
            &self.redis,
            Duration::from_secs(job.job_retention_secs),
        )
        .await
        .map_err(|e| failed(&e))?;
        let credentials = prune_expired_credentials(&self.pool)
            .await
            .map_err(|e| failed(&e))?;
        let metrics = prune_metrics(&self.pool, Duration::from_secs(job.metrics_retention_secs))
            .await
            .map_err(|e| failed(&e))?;
        ctx.log.step(&format!(
            "pruned {} jobs, {} Redis tasks, {} sessions, {} refresh tokens, {} codes, {} samples",
            jobs.jobs,
            jobs.redis_tasks,
            credentials.sessions,
            credentials.refresh_tokens,
            credentials.codes,
            metrics
        ));
        Ok(())
    }
}

pub struct Reconciler {
    pub pool: PgPool,
}

impl JobHandler for Reconciler {
    type Job = Reconcile;

    async fn run(&self, job: Reconcile, ctx: JobContext) -> Result<(), JobFailure> {
        let outcome = store::reconcile(
            &self.pool,
            Duration::from_millis(job.running_grace_ms),
            Duration::from_millis(job.queued_lost_ms),
        )
        .await
        .map_err(|e| JobFailure::retryable(format!("reconciling: {e}")))?;
        if outcome.requeued > 0 {
            tracing::warn!(requeued = outcome.requeued, "re-issued lost jobs");
        }
        ctx.log
            .step(&format!("re-issued {} lost jobs", outcome.requeued));
        Ok(())
    }
}

/// Deletes probe samples older than `retention`; returns how many.
pub async fn prune_metrics(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM server_metrics WHERE at < now() - $1::interval")
        .bind(format!("{} seconds", retention.as_secs()))
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// Deletes sign-in state that can no longer be used: expired codes, challenges
/// and reset links, and sessions past their lifetime (with their refresh
/// tokens). Revoked sessions are kept 30 days, so a stolen refresh token that
/// comes back is still recognised and audited as reuse, and users see recent
/// revocations in the audit log's terms.

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PrunedCredentials {
    pub sessions: u64,
    pub refresh_tokens: u64,
    pub codes: u64,
}

pub async fn prune_expired_credentials(pool: &PgPool) -> Result<PrunedCredentials, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let sessions = sqlx::query(
        "DELETE FROM sessions WHERE expires_at < now() OR revoked_at < now() - interval '30 days'",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let refresh_tokens = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < now()")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let mut codes = 0;
    for statement in [
        "DELETE FROM email_codes WHERE expires_at < now()",
        "DELETE FROM login_challenges WHERE expires_at < now()",
        "DELETE FROM password_resets WHERE expires_at < now()",
    ] {
        codes += sqlx::query(statement)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    Ok(PrunedCredentials {
        sessions,
        refresh_tokens,
        codes,
    })
}
