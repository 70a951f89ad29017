//! What `server.validate` and `server.probe` share: reaching the server
//! through `berth-remote` (which loads it, opens its credentials and keeps
//! its session), and recording what was found.
//!
//! Validation connects with the stored credentials (opened from their sealed
//! form, bound to the server's row), pins the host key on the first success,
//! and records OS, architecture and whether docker and nginx are there. A
//! changed host key is recorded as offered, the owner is notified, and the job
//! fails without retrying; so do refused credentials. An unreachable server is
//! a retryable failure: validation is retried with backoff (at least
//! `VALIDATION_ATTEMPTS` attempts), a probe is not (probes come every minute).
//! A successful validation also takes the first sample, so health is there as
//! soon as the server is online.

use berth_jobs::Policies;
use berth_jobs::runtime::JobFailure;
use berth_remote::{Remote, Server, Session};
use berth_ssh::SshError;
use redis::aio::ConnectionManager;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::alerts::{self, Notice, ServerRef};
use crate::probe::{CpuCounters, Sample};

pub struct ServerJobs {
    pub(crate) pool: PgPool,
    redis: ConnectionManager,
    pub(crate) policies: Policies,
    pub(crate) remote: Remote,
}

impl ServerJobs {
    pub fn new(pool: PgPool, redis: ConnectionManager, policies: Policies, remote: Remote) -> Self {
        Self {
            pool,
            redis,
            policies,
            remote,
        }
    }

    pub(crate) async fn load(&self, id: Uuid) -> Result<Option<Server>, JobFailure> {
        self.remote
            .load(id)
            .await
            .map_err(|e| JobFailure::retryable(format!("cannot read the server: {e}")))
    }

    /// The last probe's CPU counters, for this probe to compare with.
    pub(crate) async fn cpu_counters(&self, id: Uuid) -> Option<CpuCounters> {
        let row: Option<(Option<i64>, Option<i64>)> =
            sqlx::query_as("SELECT cpu_ticks_total, cpu_ticks_idle FROM servers WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, server = %id, "cannot read the last CPU counters");
                    None
                });
        match row {
            Some((Some(total), Some(idle))) => Some(CpuCounters {
                total: total as u64,
                idle: idle as u64,
            }),
            _ => None,
        }
    }

    /// A session to the server: the one kept from its last job, or a new one.
    pub(crate) async fn connect(&self, row: &Server) -> Result<Session, SshError> {
        self.remote.session(row).await
    }

    /// Records a server's state, evaluates alerts (with `sample` from a probe,
    /// `None` when it could not be read) and delivers what they raise, in one
    /// transaction; realtime events go out after commit.
    pub(crate) async fn record(
        &self,
        row: &Server,
        outcome: Result<Option<&Sample>, &SshError>,
        probed: bool,
    ) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let server = ServerRef {
            id: row.id,
            name: &row.name,
        };
        let rules = alerts::rules_of(&mut tx, row.owner_user_id).await?;
        let mut notices = Vec::new();
        match outcome {
            Ok(sample) => {
                sqlx::query(
                    "UPDATE servers SET status = 'online', status_reason = NULL, host_key_offered = NULL,                      last_probe_at = CASE WHEN $2 THEN now() ELSE last_probe_at END, updated_at = now()                      WHERE id = $1",
                )
                .bind(row.id)
                .bind(probed)
                .execute(&mut *tx)
                .await?;
                alerts::set_host_key_changed(&mut tx, row.id, false).await?;
                if let Some(sample) = sample {
                    insert_sample(&mut tx, row.id, sample).await?;
                    sqlx::query(
                        "UPDATE servers SET cpu_ticks_total = $2, cpu_ticks_idle = $3 WHERE id = $1",
                    )
                    .bind(row.id)
                    .bind(sample.cpu_counters.total as i64)
                    .bind(sample.cpu_counters.idle as i64)
                    .execute(&mut *tx)
                    .await?;
                    notices =
                        alerts::evaluate(&mut tx, &server, &rules, Some(sample), None).await?;
                }
            }
            Err(error) => {
                let reason = format!("{}: {error}", error.code());
                let offered = match error {
                    SshError::HostKeyMismatch { actual, .. } => Some(actual.clone()),
                    _ => None,
                };
                let status = if error.is_transient() {
                    "offline"
                } else {
                    "error"
                };
                sqlx::query(
                    "UPDATE servers SET status = $2, status_reason = $3,                      host_key_offered = COALESCE($4, host_key_offered),                      last_probe_at = CASE WHEN $5 THEN now() ELSE last_probe_at END, updated_at = now()                      WHERE id = $1",
                )
                .bind(row.id)
                .bind(status)
                .bind(&reason)
                .bind(&offered)
                .bind(probed)
                .execute(&mut *tx)
                .await?;
                if let Some(offered) = &offered
                    && alerts::set_host_key_changed(&mut tx, row.id, true).await?
                {
                    notices.push(Notice {
                        kind: "host_key_mismatch",
                        title: format!("{}: host key changed", row.name),
                        body: format!(
                            "{} presented a different SSH host key ({offered}). Berth stopped connecting to it. \
                             If the server was reinstalled, accept the new key; otherwise treat this as an attack.",
                            row.name
                        ),
                        data: serde_json::json!({ "serverId": row.id, "offered": offered }),
                    });
                }
                // A changed host key has its own alert; the server answering
                // with the wrong key is not also "offline".
                if probed && offered.is_none() {
                    notices.extend(
                        alerts::evaluate(&mut tx, &server, &rules, None, Some(&reason)).await?,
                    );
                }
            }
        }
        let mut events = Vec::new();
        if !notices.is_empty() {
            let to = alerts::recipient(&mut tx, row.owner_user_id).await?;
            for notice in &notices {
                events.extend(alerts::deliver(&mut tx, &self.policies, &to, &rules, notice).await?);
            }
        }
        tx.commit().await?;
        alerts::publish(&self.redis, row.owner_user_id, &events).await;
        Ok(())
    }

    /// Tells the server's (or deployment's) owner `notice` the ways their
    /// rules ask: in-app, mail, realtime. A failure to record it is logged,
    /// never the job's failure.
    pub(crate) async fn notify(&self, user_id: Uuid, notice: &Notice) {
        let delivered = async {
            let mut tx = self.pool.begin().await?;
            let rules = alerts::rules_of(&mut tx, user_id).await?;
            let to = alerts::recipient(&mut tx, user_id).await?;
            let event = alerts::deliver(&mut tx, &self.policies, &to, &rules, notice).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(event)
        }
        .await;
        match delivered {
            Ok(events) => alerts::publish(&self.redis, user_id, events.as_slice()).await,
            Err(e) => {
                tracing::warn!(error = %e, user = %user_id, kind = notice.kind, "cannot deliver a notice")
            }
        }
    }

    pub(crate) fn failure(error: &SshError) -> JobFailure {
        let reason = format!("{}: {error}", error.code());
        if error.is_transient() {
            JobFailure::retryable(reason)
        } else {
            JobFailure::permanent(reason)
        }
    }
}

async fn insert_sample(
    conn: &mut PgConnection,
    server_id: Uuid,
    s: &Sample,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO server_metrics (server_id, at, cpu_percent, memory_percent, swap_percent, disk_percent,            load1, load5, load15, uptime_secs, docker_running, containers)          VALUES ($1, now(), $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
    )
    .bind(server_id)
    .bind(s.cpu_percent)
    .bind(s.memory_percent)
    .bind(s.swap_percent)
    .bind(s.disk_percent)
    .bind(s.load[0])
    .bind(s.load[1])
    .bind(s.load[2])
    .bind(s.uptime_secs)
    .bind(s.docker_running)
    .bind(s.containers)
    .execute(conn)
    .await?;
    Ok(())
}

/// Where a command's output line goes in its job's log.
pub fn log_stream(stream: berth_ssh::Stream) -> berth_jobs::joblog::LogStream {
    match stream {
        berth_ssh::Stream::Stdout => berth_jobs::joblog::LogStream::Stdout,
        berth_ssh::Stream::Stderr => berth_jobs::joblog::LogStream::Stderr,
    }
}
