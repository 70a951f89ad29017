//! `server.probe`: one SSH round trip for CPU, memory, disk, load, uptime and
//! docker state, stored, and the owner's alert rules evaluated.

use std::sync::Arc;

use berth_jobs::ServerProbe;
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_ssh::{ShellCommand, SshError};

use crate::probe::{self, PROBE_DEADLINE};
use crate::servers::ServerJobs;

pub struct ProbeServer(pub Arc<ServerJobs>);

impl JobHandler for ProbeServer {
    type Job = ServerProbe;

    /// Probes a validated server (one SSH round trip). Servers never validated
    /// are skipped: their host key is not pinned yet.
    async fn run(&self, job: ServerProbe, ctx: JobContext) -> Result<(), JobFailure> {
        let servers = &self.0;
        let Some(row) = servers.load(job.server_id).await? else {
            return Ok(());
        };
        if row.host_key.is_none() {
            return Ok(());
        }
        let previous = servers.cpu_counters(row.id).await;
        let command = match previous {
            Some(_) => probe::PROBE_COMMAND,
            None => probe::FIRST_PROBE_COMMAND,
        };
        let sample = async {
            let conn = servers.connect(&row).await?;
            let output = conn
                .exec(&ShellCommand::new(command), PROBE_DEADLINE, &ctx.cancel)
                .await?;
            probe::parse(&output.stdout, previous).map_err(SshError::Protocol)
        }
        .await;
        let recorded = match &sample {
            Ok(sample) => servers.record(&row, Ok(Some(sample)), true).await,
            Err(error) => servers.record(&row, Err(error), true).await,
        };
        recorded.map_err(|e| JobFailure::retryable(format!("cannot record the probe: {e}")))?;
        sample.map(|_| ()).map_err(|e| ServerJobs::failure(&e))
    }
}
