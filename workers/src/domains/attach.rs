//! `domain.attach` and `domain.detach`: the deployment's site written with
//! or without the domain.

use std::sync::Arc;

use berth_deployments::names;
use berth_domains::dns::Pointing;
use berth_jobs::joblog::LogStream;
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_jobs::{DomainAttach, DomainDetach};
use berth_remote::ops::{On, files};
use berth_ssh::Arg;

use super::{DomainJobs, load, op_failure, store, stored};

pub struct AttachDomain(pub Arc<DomainJobs>);
pub struct DetachDomain(pub Arc<DomainJobs>);

impl JobHandler for AttachDomain {
    type Job = DomainAttach;

    async fn run(&self, job: DomainAttach, ctx: JobContext) -> Result<(), JobFailure> {
        let jobs = &self.0;
        let Some((domain, deployment)) = load(jobs, job.domain_id).await? else {
            return Ok(());
        };
        if domain.status == "deleting" {
            return Ok(());
        }
        let (server, session) = jobs.deployments.reach(deployment.server_id).await?;
        ctx.log.step("checking where the name points");
        match jobs.check_dns(&domain, &server).await {
            Ok((Pointing::AtServer, _)) => ctx.log.line(LogStream::Stdout, &format!("{} points at the server", domain.name)),
            Ok((Pointing::Elsewhere { found }, expected)) => ctx.log.line(LogStream::Stdout, &format!(
                "{} points at {found:?}, not at the server ({expected:?}): it is served once its DNS records name the server",
                domain.name
            )),
            // Where it points is only shown here; attaching goes on.
            Err(failure) => ctx.log.line(LogStream::Stdout, &format!("DNS: {}", failure.reason())),
        }
        ctx.log
            .step("writing the deployment's site with the domain");
        if jobs
            .install_site(&ctx, &session, &deployment, &server, None)
            .await?
        {
            store::set_status(jobs.pool(), domain.id, "active", None)
                .await
                .map_err(stored)?;
        } else {
            store::set_status(
                jobs.pool(),
                domain.id,
                "pending",
                Some("the deployment serves nothing now: its next release or restart serves the domain"),
            )
            .await
            .map_err(stored)?;
        }
        Ok(())
    }

    async fn failed(&self, job: DomainAttach, error: String) {
        let reason = format!("writing the site failed: {error}");
        if let Err(e) =
            store::set_status(self.0.pool(), job.domain_id, "failed", Some(&reason)).await
        {
            tracing::warn!(error = %e, domain = %job.domain_id, "cannot record a domain's failure");
        }
    }
}

impl JobHandler for DetachDomain {
    type Job = DomainDetach;

    async fn run(&self, job: DomainDetach, ctx: JobContext) -> Result<(), JobFailure> {
        let jobs = &self.0;
        let Some((domain, deployment)) = load(jobs, job.domain_id).await? else {
            return Ok(());
        };
        store::deleting(jobs.pool(), domain.id)
            .await
            .map_err(stored)?;
        let (server, session) = jobs.deployments.reach(deployment.server_id).await?;
        ctx.log
            .step("writing the deployment's site without the domain");
        jobs.install_site(&ctx, &session, &deployment, &server, None)
            .await?;
        ctx.log.step("removing the domain's certificate files");
        let dir = Arg::path(&names::certificate_dir(
            &server.data_dir,
            deployment.id,
            domain.id,
        ))
        .map_err(JobFailure::permanent)?;
        let on = On::new(&session, &ctx.cancel).with_lines(super::log_lines(&ctx));
        files::remove_tree(&on, &dir)
            .await
            .map_err(|e| op_failure("removing the certificate files", &e))?;
        store::delete(jobs.pool(), domain.id).await.map_err(stored)
    }

    async fn failed(&self, job: DomainDetach, error: String) {
        let reason = format!("removing the domain failed: {error}");
        if let Err(e) = store::removal_failed(self.0.pool(), job.domain_id, &reason).await {
            tracing::warn!(error = %e, domain = %job.domain_id, "cannot record a domain's failure");
        }
    }
}
