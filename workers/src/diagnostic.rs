//! `diagnostic.sleep`.

use std::time::Duration;

use berth_jobs::DiagnosticJob;
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};

/// Diagnostic jobs never sleep longer than this, whatever their payload asks.
const MAX_SLEEP: Duration = Duration::from_secs(600);

pub struct DiagnosticSleep;

impl JobHandler for DiagnosticSleep {
    type Job = DiagnosticJob;

    async fn run(&self, job: DiagnosticJob, _ctx: JobContext) -> Result<(), JobFailure> {
        tokio::time::sleep(Duration::from_millis(job.sleep_ms).min(MAX_SLEEP)).await;
        Ok(())
    }
}
