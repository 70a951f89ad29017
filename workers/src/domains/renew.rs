//! `certificates.renew` (the scheduler's daily tick): a renewal job for
//! every certificate with less than its renewal share of lifetime left,
//! and the expiry warning, once, for one close to its end.

use std::sync::Arc;

use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_jobs::store::{self as jobstore, NewJob};
use berth_jobs::{CertificatesRenew, DomainCertificate, certificate_dedupe};
use uuid::Uuid;

use super::{DomainJobs, stored};

pub struct RenewCertificates(pub Arc<DomainJobs>);

#[derive(sqlx::FromRow)]
struct Due {
    id: Uuid,
    deployment_id: Uuid,
    owner_user_id: Uuid,
}

impl JobHandler for RenewCertificates {
    type Job = CertificatesRenew;

    async fn run(&self, job: CertificatesRenew, ctx: JobContext) -> Result<(), JobFailure> {
        let jobs = &self.0;
        let pool = jobs.pool();
        let due: Vec<Due> = sqlx::query_as(
            "SELECT id, deployment_id, owner_user_id FROM domains \
             WHERE cert_installed AND status <> 'deleting' \
             AND cert_expires_at - (cert_expires_at - cert_not_before) * $1 <= now()",
        )
        .bind(job.renew_fraction.clamp(0.0, 1.0))
        .fetch_all(pool)
        .await
        .map_err(stored)?;
        let mut renewals = 0usize;
        let mut tx = pool.begin().await.map_err(stored)?;
        for domain in &due {
            let new = NewJob::new(DomainCertificate {
                domain_id: domain.id,
                deployment_id: domain.deployment_id,
                renewal: true,
            })
            .owner(domain.owner_user_id)
            .deployment(domain.deployment_id)
            .dedupe_key(certificate_dedupe(domain.id));
            if jobstore::enqueue(&mut tx, &jobs.deployments.servers.policies, new)
                .await
                .map_err(stored)?
                .created()
            {
                renewals += 1;
            }
        }
        tx.commit().await.map_err(stored)?;
        ctx.log.step(&format!(
            "{renewals} renewals enqueued ({} certificates due)",
            due.len()
        ));
        let warned: Vec<(Uuid, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "UPDATE domains SET expiry_warned_at = now(), certificate = 'expiring', updated_at = now() \
             WHERE cert_installed AND expiry_warned_at IS NULL AND status <> 'deleting' \
             AND cert_expires_at <= now() + make_interval(days => $1) \
             RETURNING id, cert_expires_at",
        )
        .bind(i32::try_from(job.warn_days).unwrap_or(21))
        .fetch_all(pool)
        .await
        .map_err(stored)?;
        for (id, expires) in warned {
            if let Some(domain) = super::store::domain(pool, id).await.map_err(stored)? {
                jobs.notify(
                    &domain,
                    "certificate_expiring",
                    format!("The certificate for {} expires soon", domain.name),
                    format!(
                        "It expires {}; its renewal has not succeeded yet (see the domain's last error).",
                        expires.format("%Y-%m-%d %H:%M UTC")
                    ),
                )
                .await;
            }
        }
        Ok(())
    }
}
