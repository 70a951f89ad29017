use std::time::Duration;

use berth_jobs::DiagnosticJob;
use berth_jobs::runtime::{JobContext, JobFailure};

/// Diagnostic jobs never sleep longer than this, whatever their payload asks.
const MAX_SLEEP: Duration = Duration::from_secs(600);

pub async fn run(job: DiagnosticJob, _ctx: JobContext) -> Result<(), JobFailure> {
    tokio::time::sleep(Duration::from_millis(job.sleep_ms).min(MAX_SLEEP)).await;
    Ok(())
}
