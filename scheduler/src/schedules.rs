use std::str::FromStr;
use std::time::Duration;

use berth_config::{ConfigError, Env};
use berth_jobs::kinds::maintenance::{Prune, Reconcile};
use berth_jobs::store::NewJob;
use berth_jobs::{BackupCreate, BackupTrigger, CertificatesRenew};
use berth_jobs::{JobClient, Policies};
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::leader::LeaderLock;

/// The periodic work the scheduler knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Delete finished jobs past the retention, and expired sign-in state
    /// (a `maintenance.prune` job).
    Prune,
    /// Re-issue or fail jobs that no worker will finish (a
    /// `maintenance.reconcile` job).
    Reconcile,
    /// A probe job for every validated server.
    Probe,
    /// Renewals of certificates past their renewal share of lifetime, and
    /// expiry warnings (a `certificates.renew` job).
    Certificates,
    /// A backup of Berth's own database, verified, with retention (a
    /// `backup.create` job); off unless configured.
    Backup,
}

impl Schedule {
    pub const ALL: [Schedule; 5] = [
        Schedule::Prune,
        Schedule::Reconcile,
        Schedule::Probe,
        Schedule::Certificates,
        Schedule::Backup,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Schedule::Prune => "prune",
            Schedule::Reconcile => "reconcile",
            Schedule::Probe => "probe",
            Schedule::Certificates => "certificates",
            Schedule::Backup => "backup",
        }
    }

    fn default_cron(self) -> &'static str {
        match self {
            Schedule::Prune => "0 */10 * * * *",
            Schedule::Reconcile => "*/30 * * * * *",
            Schedule::Probe => "0 * * * * *",
            // Daily, at a minute past the hour few others pick.
            Schedule::Certificates => "0 17 3 * * *",
            // A dump of an operator's database is theirs to time (SPEC §3.9).
            Schedule::Backup => "off",
        }
    }

    /// How long enqueueing a tick's work may take.
    fn timeout(self) -> Duration {
        match self {
            Schedule::Prune | Schedule::Reconcile | Schedule::Certificates | Schedule::Backup => {
                Duration::from_secs(10)
            }
            Schedule::Probe => Duration::from_secs(50),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Each enabled schedule with its cron expression (seconds field first).
    pub schedules: Vec<(Schedule, cron::Schedule)>,
    pub job_retention: Duration,
    /// Probe samples are kept this long (`BERTH_METRICS_RETENTION_DAYS`).
    pub metrics_retention: Duration,
    pub leader_ttl: Duration,
    /// A running job is considered lost this long after its timeout.
    pub running_grace: Duration,
    /// A queued job with no outbox row is considered lost after this long.
    pub queued_lost_after: Duration,
    /// A certificate is renewed with less than this share of its lifetime
    /// left (`BERTH_CERT_RENEW_FRACTION`, a third).
    pub cert_renew_fraction: f64,
    /// The expiry warning goes out this many days before
    /// (`BERTH_CERT_WARN_DAYS`, 21).
    pub cert_warn_days: u32,
    /// Scheduled backups kept, verified ones, newest first
    /// (`BERTH_BACKUP_KEEP`, 7); manual ones are never deleted by it.
    pub backup_keep: u32,
}

impl SchedulerConfig {
    /// `BERTH_SCHEDULE_<NAME>` for each [`Schedule`]: a cron expression with
    /// a seconds field (`0 */10 * * * *`), or `off`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut schedules = Vec::new();
        for schedule in Schedule::ALL {
            let name = format!("BERTH_SCHEDULE_{}", schedule.name().to_ascii_uppercase());
            let expr = env
                .optional(&name)
                .unwrap_or_else(|| schedule.default_cron().to_owned());
            if expr.trim() == "off" {
                continue;
            }
            let parsed =
                cron::Schedule::from_str(expr.trim()).map_err(|e| ConfigError::Malformed {
                    name: name.clone(),
                    reason: format!("not a cron expression with a seconds field: {e}"),
                })?;
            schedules.push((schedule, parsed));
        }
        let retention_hours: u64 = env.parsed("BERTH_JOB_RETENTION_HOURS", 24 * 7)?;
        Ok(Self {
            schedules,
            job_retention: Duration::from_secs(retention_hours * 3600),
            metrics_retention: Duration::from_secs(
                env.parsed::<u64>("BERTH_METRICS_RETENTION_DAYS", 7)? * 86_400,
            ),
            leader_ttl: env.millis("BERTH_SCHEDULER_LEADER_TTL_MS", Duration::from_secs(15))?,
            running_grace: env
                .millis("BERTH_RECONCILE_RUNNING_GRACE_MS", Duration::from_secs(60))?,
            queued_lost_after: env
                .millis("BERTH_RECONCILE_QUEUED_LOST_MS", Duration::from_secs(600))?,
            cert_renew_fraction: {
                let fraction: f64 = env.parsed("BERTH_CERT_RENEW_FRACTION", 1.0 / 3.0)?;
                if !(0.0..=1.0).contains(&fraction) {
                    return Err(ConfigError::Malformed {
                        name: "BERTH_CERT_RENEW_FRACTION".into(),
                        reason: "a share of a certificate's lifetime, from 0 to 1".into(),
                    });
                }
                fraction
            },
            cert_warn_days: env.parsed("BERTH_CERT_WARN_DAYS", 21)?,
            backup_keep: {
                let keep: u32 = env.parsed("BERTH_BACKUP_KEEP", 7)?;
                if keep == 0 {
                    return Err(ConfigError::Malformed {
                        name: "BERTH_BACKUP_KEEP".into(),
                        reason: "at least 1: the backup just taken is always kept".into(),
                    });
                }
                keep
            },
        })
    }
}

pub struct Scheduler {
    pool: PgPool,
    redis: ConnectionManager,
    jobs: JobClient,
    config: SchedulerConfig,
    identity: String,
}

impl Scheduler {
    pub fn new(
        pool: PgPool,
        redis: ConnectionManager,
        policies: Policies,
        config: SchedulerConfig,
        identity: String,
    ) -> Self {
        Self {
            jobs: JobClient::new(pool.clone(), redis.clone(), policies),
            pool,
            redis,
            config,
            identity,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut lock = LeaderLock::new(
            self.redis.clone(),
            self.identity.clone(),
            self.config.leader_ttl,
        );
        let renew_every = self.config.leader_ttl / 3;
        let mut leading = false;
        let mut last_renewal = tokio::time::Instant::now() - renew_every;
        let mut next_ticks: Vec<Option<DateTime<Utc>>> = self
            .config
            .schedules
            .iter()
            .map(|(_, cron)| cron.after(&Utc::now()).next())
            .collect();
        loop {
            if last_renewal.elapsed() >= renew_every {
                let was_leading = leading;
                leading = match lock.acquire_or_renew().await {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::warn!(error = %e, "leader lock unavailable; not firing schedules");
                        false
                    }
                };
                last_renewal = tokio::time::Instant::now();
                if leading != was_leading {
                    tracing::info!(leading, "scheduler leadership changed");
                }
            }
            let now = Utc::now();
            for (i, (schedule, cron)) in self.config.schedules.iter().enumerate() {
                let Some(tick) = next_ticks[i] else { continue };
                if tick > now {
                    continue;
                }
                next_ticks[i] = cron.after(&now).next();
                if leading {
                    self.fire(*schedule, tick).await;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
        if leading && let Err(e) = lock.release().await {
            tracing::warn!(error = %e, "could not release the leader lock");
        }
    }

    /// Claims the tick in Postgres, then runs it; a tick someone else claimed is skipped.
    async fn fire(&self, schedule: Schedule, tick: DateTime<Utc>) {
        let claimed = sqlx::query(
            "INSERT INTO schedule_ticks (schedule, tick, fired_by) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(schedule.name())
        .bind(tick)
        .bind(&self.identity)
        .execute(&self.pool)
        .await;
        match claimed {
            Ok(r) if r.rows_affected() == 1 => {}
            Ok(_) => {
                tracing::debug!(schedule = schedule.name(), %tick, "tick already fired elsewhere");
                return;
            }
            Err(e) => {
                tracing::warn!(schedule = schedule.name(), error = %e, "could not claim a tick");
                return;
            }
        }
        tracing::info!(schedule = schedule.name(), tick = %tick.to_rfc3339(), "schedule fired");
        let work = self.run_schedule(schedule);
        match tokio::time::timeout(schedule.timeout(), work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                schedule = schedule.name(),
                error = format!("{e:#}"),
                "scheduled work failed"
            ),
            Err(_) => tracing::warn!(schedule = schedule.name(), "scheduled work timed out"),
        }
    }

    /// Enqueues the tick's work; workers run it (the `maintenance` and
    /// `probe` queues), so this loop never waits on the work itself.
    async fn run_schedule(&self, schedule: Schedule) -> anyhow::Result<()> {
        let config = &self.config;
        let job = match schedule {
            Schedule::Prune => {
                self.jobs
                    .enqueue(NewJob::new(Prune {
                        job_retention_secs: config.job_retention.as_secs(),
                        metrics_retention_secs: config.metrics_retention.as_secs(),
                    }))
                    .await?
            }
            Schedule::Reconcile => {
                self.jobs
                    .enqueue(NewJob::new(Reconcile {
                        running_grace_ms: config.running_grace.as_millis() as u64,
                        queued_lost_ms: config.queued_lost_after.as_millis() as u64,
                    }))
                    .await?
            }
            Schedule::Certificates => {
                self.jobs
                    .enqueue(NewJob::new(CertificatesRenew {
                        renew_fraction: config.cert_renew_fraction,
                        warn_days: config.cert_warn_days,
                    }))
                    .await?
            }
            Schedule::Backup => {
                // The worker makes the backup's row when the job starts.
                self.jobs
                    .enqueue(NewJob::new(BackupCreate {
                        backup_id: uuid::Uuid::new_v4(),
                        trigger: BackupTrigger::Scheduled,
                        keep: Some(config.backup_keep),
                    }))
                    .await?
            }
            Schedule::Probe => {
                let probes = crate::probes::enqueue_probes(&self.pool, &self.jobs).await?;
                tracing::info!(probes, "probes enqueued");
                return Ok(());
            }
        };
        tracing::info!(schedule = schedule.name(), job = %job.id, "enqueued");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_from_env() {
        let env = Env::from_map(
            [
                ("BERTH_SCHEDULE_PRUNE".to_string(), "off".to_string()),
                ("BERTH_SCHEDULE_PROBE".to_string(), "off".to_string()),
                ("BERTH_SCHEDULE_CERTIFICATES".to_string(), "off".to_string()),
                (
                    "BERTH_SCHEDULE_RECONCILE".to_string(),
                    "*/5 * * * * *".to_string(),
                ),
            ]
            .into(),
        );
        let config = SchedulerConfig::from_env(&env).unwrap();
        assert_eq!(config.schedules.len(), 1);
        assert_eq!(config.schedules[0].0, Schedule::Reconcile);
        assert_eq!(config.backup_keep, 7);

        let env = Env::from_map(
            [
                (
                    "BERTH_SCHEDULE_BACKUP".to_string(),
                    "0 0 3 * * *".to_string(),
                ),
                ("BERTH_BACKUP_KEEP".to_string(), "2".to_string()),
            ]
            .into(),
        );
        let config = SchedulerConfig::from_env(&env).unwrap();
        assert!(config.schedules.iter().any(|(s, _)| *s == Schedule::Backup));
        assert_eq!(config.backup_keep, 2);
        let env = Env::from_map([("BERTH_BACKUP_KEEP".to_string(), "0".to_string())].into());
        let err = SchedulerConfig::from_env(&env).unwrap_err().to_string();
        assert!(err.starts_with("BERTH_BACKUP_KEEP is malformed"), "{err}");

        let env = Env::from_map(
            [(
                "BERTH_SCHEDULE_PRUNE".to_string(),
                "every minute".to_string(),
            )]
            .into(),
        );
        let err = SchedulerConfig::from_env(&env).unwrap_err().to_string();
        assert!(
            err.starts_with("BERTH_SCHEDULE_PRUNE is malformed"),
            "{err}"
        );
    }
}
