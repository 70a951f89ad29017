//! `deployment.deploy` and `deployment.rollback`: a release from its source
//! (or, for a rollback, a kept release's image) to live behind nginx, each
//! step timed, streamed to the job's log and recorded on the release.
//!
//! fetch → pre-flight → build (deploys only) → start on a free loopback port
//! → health check → switch nginx, confirmed by a request through it → the
//! release is live (one transaction) → drain → the old containers stopped →
//! images beyond the kept releases pruned. Anything failing before the switch
//! removes the new container and leaves the previous release serving.

use std::sync::Arc;
use std::time::Duration;

use berth_deployments::names;
use berth_deployments::state::{DeploymentStatus, ReleaseState};
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_jobs::{DeploymentDeploy, DeploymentRollback};
use berth_remote::ops::{On, docker};
use berth_ssh::Arg;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::steps::Run;
use super::store::{self, DeploymentRow, Ending, ReleaseRow};
use super::{DeploymentJobs, log_lines, stored};

pub struct DeployRelease(pub Arc<DeploymentJobs>);
pub struct RollbackRelease(pub Arc<DeploymentJobs>);

impl JobHandler for DeployRelease {
    type Job = DeploymentDeploy;

    async fn run(&self, job: DeploymentDeploy, ctx: JobContext) -> Result<(), JobFailure> {
        self.0
            .run_release(job.deployment_id, job.release, ctx, Mode::Build)
            .await
    }

    async fn failed(&self, job: DeploymentDeploy, _error: String) {
        self.0.abandoned(job.deployment_id, job.release).await;
    }
}

impl JobHandler for RollbackRelease {
    type Job = DeploymentRollback;

    async fn run(&self, job: DeploymentRollback, ctx: JobContext) -> Result<(), JobFailure> {
        self.0
            .run_release(job.deployment_id, job.release, ctx, Mode::Rollback)
            .await
    }

    async fn failed(&self, job: DeploymentRollback, _error: String) {
        self.0.abandoned(job.deployment_id, job.release).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Fetch and build the release's source.
    Build,
    /// Run the image the release names (a kept one), no build.
    Rollback,
}

impl DeploymentJobs {
    async fn run_release(
        &self,
        id: Uuid,
        number: i32,
        ctx: JobContext,
        mode: Mode,
    ) -> Result<(), JobFailure> {
        let Some(deployment) = store::deployment(&self.pool, id).await.map_err(stored)? else {
            return Ok(());
        };
        let Some(release) = store::release(&self.pool, id, number)
            .await
            .map_err(stored)?
        else {
            return Ok(());
        };
        if deployment.status == DeploymentStatus::Deleting {
            return Err(JobFailure::permanent("the deployment is being deleted"));
        }
        if release.state == ReleaseState::Live {
            // A rerun after the switch: only the clean-up is left.
            let (server, session) = self.reach(deployment.server_id).await?;
            return self
                .after_switch(&deployment, number, &server, &session, &ctx)
                .await;
        }
        if !release.state.in_progress() {
            return Ok(());
        }
        let snapshot =
            store::open_snapshot(&self.keys, id, &release).map_err(JobFailure::permanent)?;
        let (server, session) = self.reach(deployment.server_id).await?;
        let first = match mode {
            Mode::Build => ReleaseState::Building,
            Mode::Rollback => ReleaseState::Starting,
        };
        store::begin(&self.pool, id, number, &ctx.job_id, first)
            .await
            .map_err(stored)?;
        ctx.log.step(&format!(
            "release v{number} of {} on {} (attempt {})",
            deployment.name, server.name, ctx.attempt
        ));
        let mut run = Run {
            jobs: self,
            deployment: &deployment,
            release: &release,
            server: &server,
            on: On::new(&session, &ctx.cancel).with_lines(log_lines(&ctx)),
            ctx: &ctx,
            snapshot: &snapshot,
            step: "fetch",
            started: None,
            // An earlier attempt got as far as starting: it may have switched.
            switching: release.state == ReleaseState::Starting,
        };
        if run.switching {
            if let Err(e) = run.restore_live_site().await {
                return Err(JobFailure::retryable(format!(
                    "cannot put the live release's site back: {}",
                    e.message
                )));
            }
            run.switching = false;
        }
        let outcome = run.through_switch(mode).await;
        if outcome.is_err()
            && run.switching
            && let Err(e) = run.restore_live_site().await
        {
            {
                ctx.log.line(
                    berth_jobs::joblog::LogStream::Stderr,
                    &format!(
                        "the live release's site could not be put back: {}",
                        e.message
                    ),
                );
            }
        }
        let (step, started) = (run.step, run.started.take());
        match outcome {
            Ok(()) => {
                self.went_live_notice(&deployment, &release, mode).await;
                self.after_switch(&deployment, number, &server, &session, &ctx)
                    .await
            }
            Err(failure) => {
                // The job's own token may be the reason it stopped.
                let cleanup = CancellationToken::new();
                let on = On::new(&session, &cleanup).with_lines(log_lines(&ctx));
                if let Some(container) = started {
                    let removed = match Arg::name(&container) {
                        Ok(name) => docker::remove(&on, &name).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = removed {
                        ctx.log.line(
                            berth_jobs::joblog::LogStream::Stderr,
                            &format!("the new container could not be removed: {e}"),
                        );
                    }
                }
                let cancelled = ctx.cancel.is_cancelled();
                if !cancelled && failure.transient && ctx.attempt < ctx.max_attempts {
                    return Err(JobFailure::retryable(format!(
                        "{step}: {}",
                        failure.message
                    )));
                }
                let ending = if cancelled {
                    Ending::Cancelled
                } else {
                    Ending::Failed
                };
                ctx.log.step(&match ending {
                    Ending::Failed => format!("v{number} failed at {step}: {}", failure.message),
                    Ending::Cancelled => format!("v{number} cancelled at {step}"),
                });
                store::ended(&self.pool, id, number, ending, step, &failure.message)
                    .await
                    .map_err(stored)?;
                if ending == Ending::Failed {
                    let still = match deployment.live_release {
                        Some(live) => format!("v{live} still serves."),
                        None => "Nothing of it is live.".to_owned(),
                    };
                    super::notify(
                        self,
                        &deployment,
                        "deployment_failed",
                        format!("Deploy of {} failed", deployment.name),
                        format!("v{number} failed at {step}: {}. {still}", failure.message),
                        number,
                    )
                    .await;
                }
                Err(JobFailure::permanent(format!(
                    "{step}: {}",
                    failure.message
                )))
            }
        }
    }

    /// A rollback's, or a success after a failed release: worth telling.
    async fn went_live_notice(&self, deployment: &DeploymentRow, release: &ReleaseRow, mode: Mode) {
        let number = release.number;
        if mode == Mode::Rollback {
            let to = release.rollback_of.unwrap_or_default();
            super::notify(
                self,
                deployment,
                "deployment_rolled_back",
                format!("{} rolled back to v{to}", deployment.name),
                format!("v{number} runs v{to}'s image with its env and settings, and serves now."),
                number,
            )
            .await;
            return;
        }
        let before = store::release(&self.pool, deployment.id, number - 1).await;
        if let Ok(Some(before)) = before
            && before.state == ReleaseState::Failed
        {
            super::notify(
                self,
                deployment,
                "deployment_recovered",
                format!("{} deploys again", deployment.name),
                format!("v{number} is live after v{} failed.", before.number),
                number,
            )
            .await;
        }
    }

    /// A job that ended without saying how (its worker died at the attempt
    /// cap): the database trigger settled the release; its container, if
    /// one was started, is removed here.
    async fn abandoned(&self, id: Uuid, number: i32) {
        let Ok(Some(deployment)) = store::deployment(&self.pool, id).await else {
            return;
        };
        if deployment.live_release == Some(number) {
            return;
        }
        let Ok((_, session)) = self.reach(deployment.server_id).await else {
            return;
        };
        let cancel = CancellationToken::new();
        let on = On::new(&session, &cancel);
        if let Ok(name) = Arg::name(&names::container_name(id, number)) {
            let _ = tokio::time::timeout(Duration::from_secs(60), docker::remove(&on, &name)).await;
        }
    }
}
