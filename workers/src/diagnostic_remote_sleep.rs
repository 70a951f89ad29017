//! `diagnostic.remote_sleep`.

use std::sync::Arc;
use std::time::Duration;

use berth_jobs::RemoteSleep;
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_ssh::{Arg, ShellCommand};

use crate::servers::ServerJobs;

/// Sleeps never last longer than this, whatever the payload asks.
const MAX_SECONDS: u32 = 3600;

pub struct RemoteSleeper(pub Arc<ServerJobs>);

impl JobHandler for RemoteSleeper {
    type Job = RemoteSleep;

    async fn run(&self, job: RemoteSleep, ctx: JobContext) -> Result<(), JobFailure> {
        let servers = &self.0;
        let Some(row) = servers.load(job.server_id).await? else {
            return Err(JobFailure::permanent("the server no longer exists"));
        };
        if row.host_key.is_none() {
            return Err(JobFailure::permanent("the server has not been validated"));
        }
        let seconds = job.seconds.min(MAX_SECONDS);
        let conn = servers
            .connect(&row)
            .await
            .map_err(|e| ServerJobs::failure(&e))?;
        let sleep = ShellCommand::new("sleep").arg(&Arg::number(u64::from(seconds)));
        let deadline = Duration::from_secs(u64::from(seconds) + 30);
        conn.exec(&sleep, deadline, &ctx.cancel)
            .await
            .map_err(|e| ServerJobs::failure(&e))?;
        Ok(())
    }
}
