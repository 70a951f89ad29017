//! After the switch: drain the old release, stop every other container of
//! the deployment, prune images and release directories past the kept
//! releases. Run again after a crash, it finds what is left.

use std::time::Duration;

use berth_deployments::names::{self, DEPLOYMENT_LABEL};
use berth_deployments::state::ReleaseState;
use berth_jobs::runtime::{JobContext, JobFailure};
use berth_remote::ops::{On, OpError, docker, files};
use berth_remote::{Server, Session};
use berth_ssh::Arg;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::store::{self, DeploymentRow};
use super::{DeploymentJobs, Timer, log_lines, op_failure, stored};

impl DeploymentJobs {
    /// After the switch: drain the old release, stop every other container
    /// of the deployment, prune images and release directories past the
    /// kept releases. Run again after a crash, it finds what is left.
    pub(super) async fn after_switch(
        &self,
        deployment: &DeploymentRow,
        live: i32,
        server: &Server,
        session: &Session,
        ctx: &JobContext,
    ) -> Result<(), JobFailure> {
        let id = deployment.id;
        let release = store::release(&self.pool, id, live)
            .await
            .map_err(stored)?
            .ok_or_else(|| JobFailure::permanent("the live release is gone"))?;
        let snapshot =
            store::open_snapshot(&self.keys, id, &release).map_err(JobFailure::permanent)?;
        // Clean-up runs to its end even when the job is cancelled now: the
        // switch is done, and old containers must not be left running.
        let cleanup = CancellationToken::new();
        let on = On::new(session, &cleanup).with_lines(log_lines(ctx));
        let label = Arg::label(DEPLOYMENT_LABEL, &id.to_string()).map_err(JobFailure::permanent)?;
        let live_name = names::container_name(id, live);
        let others: Vec<String> = docker::containers_labelled(&on, &label)
            .await
            .map_err(|e| op_failure("listing the deployment's containers", &e))?
            .into_iter()
            .filter(|c| *c != live_name)
            .collect();

        if !others.is_empty() && snapshot.settings.drain_seconds > 0 {
            let timer = Timer::start();
            ctx.log.step(&format!(
                "draining the previous release for {} s",
                snapshot.settings.drain_seconds
            ));
            tokio::select! {
                () = ctx.cancel.cancelled() => ctx.log.step("drain cut short by a cancel"),
                () = tokio::time::sleep(Duration::from_secs(u64::from(snapshot.settings.drain_seconds))) => {}
            }
            self.record_step(id, live, "drain", &timer).await;
        }

        let timer = Timer::start();
        ctx.log.step("stopping the previous containers");
        for container in &others {
            let name = Arg::name(container).map_err(JobFailure::permanent)?;
            docker::stop(&on, &name, self.config.stop_grace)
                .await
                .or_else(|e| match e {
                    OpError::Failed { .. } => Ok(()),
                    other => Err(other),
                })
                .map_err(|e| op_failure("docker stop", &e))?;
            docker::remove(&on, &name)
                .await
                .map_err(|e| op_failure("docker rm", &e))?;
        }
        self.record_step(id, live, "cleanup", &timer).await;

        let timer = Timer::start();
        ctx.log.step("pruning old releases");
        let releases = store::releases(&self.pool, id).await.map_err(stored)?;
        let keep = snapshot.settings.keep_releases.max(1) as usize;
        // Kept: the live release, the newest `keep` that served with their
        // image, and whatever a release on its way will run (a rollback).
        let mut kept_tags = std::collections::HashSet::new();
        let mut kept = 0usize;
        for r in &releases {
            let Some(tag) = r.image_tag.as_deref().filter(|_| !r.image_pruned) else {
                continue;
            };
            let served = matches!(r.state, ReleaseState::Live | ReleaseState::Superseded);
            if r.number == live || r.state.in_progress() || (served && kept < keep) {
                kept += usize::from(served);
                kept_tags.insert(tag);
            }
        }
        let mut gone = Vec::new();
        let mut removed = std::collections::HashSet::new();
        for r in &releases {
            let Some(tag) = r.image_tag.as_deref().filter(|_| !r.image_pruned) else {
                continue;
            };
            if kept_tags.contains(tag) {
                continue;
            }
            if removed.insert(tag) {
                let tag = Arg::image(tag).map_err(JobFailure::permanent)?;
                docker::remove_image(&on, &tag)
                    .await
                    .map_err(|e| op_failure("docker rmi", &e))?;
            }
            gone.push(r.number);
        }
        store::pruned(&self.pool, id, &gone).await.map_err(stored)?;
        // Release directories hold sources and env files; only the live
        // one's env file is still in use. One command for all of them.
        let mut old_dirs = berth_ssh::ShellCommand::new("rm -rf --");
        let mut any = false;
        for r in releases
            .iter()
            .filter(|r| r.number != live && !r.state.in_progress())
        {
            old_dirs = old_dirs.arg(
                &Arg::path(&names::release_dir(&server.data_dir, id, r.number))
                    .map_err(JobFailure::permanent)?,
            );
            any = true;
        }
        if any {
            on.session
                .exec(&old_dirs, Duration::from_secs(600), &cleanup)
                .await
                .map_err(|e| crate::servers::ServerJobs::failure(&e))?;
        }
        let src = Arg::path(&format!(
            "{}/src",
            names::release_dir(&server.data_dir, id, live)
        ))
        .map_err(JobFailure::permanent)?;
        files::remove_tree(&on, &src)
            .await
            .map_err(|e| op_failure("removing the built source", &e))?;
        self.record_step(id, live, "prune", &timer).await;
        ctx.log.step(&format!("v{live} is live"));
        Ok(())
    }

    pub(super) async fn record_step(&self, id: Uuid, number: i32, name: &str, timer: &Timer) {
        if let Err(e) = store::step_done(&self.pool, id, number, name, timer.at, timer.ms()).await {
            tracing::warn!(error = %e, deployment = %id, "cannot record a step's time");
        }
    }
}
