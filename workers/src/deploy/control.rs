//! `deployment.stop`, `deployment.restart` and `deployment.delete`. Each
//! looks at what is on the server before it acts, so running one twice
//! does what running it once did.

use std::sync::Arc;
use std::time::Duration;

use berth_deployments::names::{self, DEPLOYMENT_LABEL};
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_jobs::{DeploymentDelete, DeploymentRestart, DeploymentStop};
use berth_remote::ops::{On, OpError, docker, files, health};
use berth_ssh::Arg;
use uuid::Uuid;

use super::store::{self, DeploymentRow};
use super::{DeploymentJobs, log_lines, nginx_of, op_failure, stored};

pub struct StopDeployment(pub Arc<DeploymentJobs>);
pub struct RestartDeployment(pub Arc<DeploymentJobs>);
pub struct DeleteDeployment(pub Arc<DeploymentJobs>);

fn refused(e: berth_ssh::Refused) -> JobFailure {
    JobFailure::permanent(e)
}

/// The live release's container and port.
async fn live_container(
    jobs: &DeploymentJobs,
    deployment: &DeploymentRow,
) -> Result<(i32, Arg, u16), JobFailure> {
    let live = deployment
        .live_release
        .ok_or_else(|| JobFailure::permanent("no release is live: deploy first"))?;
    let release = store::release(&jobs.pool, deployment.id, live)
        .await
        .map_err(stored)?
        .ok_or_else(|| JobFailure::permanent("the live release is gone"))?;
    let port = release
        .port
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| JobFailure::permanent("the live release has no port"))?;
    let name = Arg::name(&names::container_name(deployment.id, live)).map_err(refused)?;
    Ok((live, name, port))
}

async fn load(jobs: &DeploymentJobs, id: Uuid) -> Result<Option<DeploymentRow>, JobFailure> {
    store::deployment(&jobs.pool, id).await.map_err(stored)
}

/// A control job's failure, kept on the deployment as its reason.
async fn noted(jobs: &DeploymentJobs, id: Uuid, what: &str, failure: JobFailure) -> JobFailure {
    let reason = match &failure {
        JobFailure::Retryable(r) | JobFailure::Permanent(r) => format!("{what} failed: {r}"),
        JobFailure::Later { reason, .. } => reason.clone(),
    };
    if let Err(e) = store::set_reason(&jobs.pool, id, &reason).await {
        tracing::warn!(error = %e, deployment = %id, "cannot record a control job's failure");
    }
    failure
}

impl JobHandler for StopDeployment {
    type Job = DeploymentStop;

    async fn run(&self, job: DeploymentStop, ctx: JobContext) -> Result<(), JobFailure> {
        let jobs = &self.0;
        let Some(deployment) = load(jobs, job.deployment_id).await? else {
            return Ok(());
        };
        let result = async {
            let (_, container, _) = live_container(jobs, &deployment).await?;
            let (server, session) = jobs.reach(deployment.server_id).await?;
            let on = On::new(&session, &ctx.cancel).with_lines(log_lines(&ctx));
            let (nginx, conf_dir) = nginx_of(&server).map_err(refused)?;
            ctx.log.step("taking the site down");
            nginx
                .remove_proxy_site(&on, &conf_dir, deployment.id)
                .await
                .map_err(|e| op_failure("removing the site", &e))?;
            ctx.log.step("stopping the live container");
            stop_quietly(&on, &container, jobs.config.stop_grace)
                .await
                .map_err(|e| op_failure("docker stop", &e))?;
            store::set_running(&jobs.pool, deployment.id, true, Some("stopped by its user"))
                .await
                .map_err(stored)
        }
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(failure) => Err(noted(jobs, deployment.id, "stop", failure).await),
        }
    }
}

impl JobHandler for RestartDeployment {
    type Job = DeploymentRestart;

    async fn run(&self, job: DeploymentRestart, ctx: JobContext) -> Result<(), JobFailure> {
        let jobs = &self.0;
        let Some(deployment) = load(jobs, job.deployment_id).await? else {
            return Ok(());
        };
        let result = async {
            let (live, container, port) = live_container(jobs, &deployment).await?;
            let release = store::release(&jobs.pool, deployment.id, live)
                .await
                .map_err(stored)?
                .ok_or_else(|| JobFailure::permanent("the live release is gone"))?;
            let snapshot = store::open_snapshot(&jobs.keys, deployment.id, &release)
                .map_err(JobFailure::permanent)?;
            let (server, session) = jobs.reach(deployment.server_id).await?;
            let on = On::new(&session, &ctx.cancel).with_lines(log_lines(&ctx));
            ctx.log.step(&format!("restarting v{live}"));
            let found = docker::inspect(&on, &container)
                .await
                .map_err(|e| op_failure("docker inspect", &e))?
                .ok_or_else(|| {
                    JobFailure::permanent("the live release's container is gone: redeploy")
                })?;
            if found.state.running {
                stop_quietly(&on, &container, jobs.config.stop_grace)
                    .await
                    .map_err(|e| op_failure("docker stop", &e))?;
            }
            docker::start(&on, &container)
                .await
                .map_err(|e| op_failure("docker start", &e))?;
            if let Some(check) = &snapshot.settings.health_check {
                ctx.log.step("health check");
                let check = health::HealthCheck {
                    path: check.path.clone(),
                    expected_status: check.expected_status,
                    timeout: Duration::from_secs(u64::from(check.timeout_seconds)),
                    retries: check.retries,
                    start_period: Duration::from_secs(u64::from(check.start_period_seconds)),
                    interval: jobs.config.health_interval,
                };
                match health::wait_healthy(&on, port, &check)
                    .await
                    .map_err(|e| op_failure("health check", &e))?
                {
                    health::Health::Healthy { .. } => {}
                    health::Health::Unhealthy { attempts, .. } => {
                        return Err(JobFailure::permanent(format!(
                            "v{live} is unhealthy after {attempts} checks since its restart"
                        )));
                    }
                }
            }
            ctx.log.step("putting the site back");
            let (nginx, conf_dir) = nginx_of(&server).map_err(refused)?;
            let site = super::site::proxy_site(&jobs.pool, &deployment, &server, port)
                .await
                .map_err(stored)?;
            nginx
                .install_proxy_site(&on, &conf_dir, &site)
                .await
                .map_err(|e| op_failure("installing the site", &e))?;
            super::site::domains_served(&jobs.pool, deployment.id)
                .await
                .map_err(stored)?;
            store::set_running(&jobs.pool, deployment.id, false, None)
                .await
                .map_err(stored)
        }
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(failure) => Err(noted(jobs, deployment.id, "restart", failure).await),
        }
    }
}

impl JobHandler for DeleteDeployment {
    type Job = DeploymentDelete;

    async fn run(&self, job: DeploymentDelete, ctx: JobContext) -> Result<(), JobFailure> {
        let jobs = &self.0;
        let Some(deployment) = load(jobs, job.deployment_id).await? else {
            return Ok(());
        };
        let result = async {
            let (server, session) = jobs.reach(deployment.server_id).await?;
            // Deletion goes to its end once begun.
            let cancel = tokio_util::sync::CancellationToken::new();
            let on = On::new(&session, &cancel).with_lines(log_lines(&ctx));
            let id = deployment.id;
            ctx.log.step("removing the site");
            let (nginx, conf_dir) = nginx_of(&server).map_err(refused)?;
            nginx
                .remove_proxy_site(&on, &conf_dir, id)
                .await
                .map_err(|e| op_failure("removing the site", &e))?;
            ctx.log.step("removing the containers");
            let label = Arg::label(DEPLOYMENT_LABEL, &id.to_string()).map_err(refused)?;
            for container in docker::containers_labelled(&on, &label)
                .await
                .map_err(|e| op_failure("docker ps", &e))?
            {
                let name = Arg::name(&container).map_err(refused)?;
                docker::remove(&on, &name)
                    .await
                    .map_err(|e| op_failure("docker rm", &e))?;
            }
            ctx.log.step("removing the images");
            for release in store::releases(&jobs.pool, id).await.map_err(stored)? {
                if let Some(tag) = release.image_tag.as_deref() {
                    let tag = Arg::image(tag).map_err(refused)?;
                    docker::remove_image(&on, &tag)
                        .await
                        .map_err(|e| op_failure("docker rmi", &e))?;
                }
            }
            docker::prune_images(&on, &label)
                .await
                .map_err(|e| op_failure("docker image prune", &e))?;
            ctx.log.step("removing the release directories");
            let dir = Arg::path(&names::deployment_dir(&server.data_dir, id)).map_err(refused)?;
            files::remove_tree(&on, &dir)
                .await
                .map_err(|e| op_failure("removing the deployment's directory", &e))?;
            store::delete(&jobs.pool, id).await.map_err(stored)
        }
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(failure) => Err(noted(jobs, deployment.id, "delete", failure).await),
        }
    }
}

/// `docker stop`, where a container already stopped is not an error.
async fn stop_quietly(on: &On<'_>, container: &Arg, grace: Duration) -> Result<(), OpError> {
    match docker::inspect(on, container).await? {
        Some(found) if found.state.running => docker::stop(on, container, grace).await,
        _ => Ok(()),
    }
}
