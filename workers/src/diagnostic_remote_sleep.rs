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
        ctx.log
            .step(&format!("sleeping {seconds} s on {}", row.name));
        // One line per second, stamped by the server (nanoseconds since the
        // epoch), so a follower can tell how late each line reached it.
        let ticks = ShellCommand::new("i=0; while [ \"$i\" -lt")
            .arg(&Arg::number(u64::from(seconds)))
            .raw("]; do i=$((i+1)); echo \"tick $i $(date +%s%N)\"; sleep 1; done");
        let deadline = Duration::from_secs(u64::from(seconds) + 30);
        let log = ctx.log.clone();
        let output = conn
            .exec_streaming(&ticks, deadline, &ctx.cancel, move |stream, line| {
                log.line(crate::servers::log_stream(stream), line);
            })
            .await
            .map_err(|e| ServerJobs::failure(&e))?;
        ctx.log
            .step(&format!("done (exit status {})", output.exit_status));
        Ok(())
    }
}
