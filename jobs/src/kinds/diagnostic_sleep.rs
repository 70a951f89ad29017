//! `diagnostic.sleep` on the `diagnostic` queue.

use serde::{Deserialize, Serialize};

use super::JobPayload;
use crate::Queue;

/// Exercises the pipeline without side effects: waits `sleep_ms`, then succeeds.
/// Idempotent by construction. Used by operators' smoke tests and the benchmarks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticJob {
    pub sleep_ms: u64,
}

impl JobPayload for DiagnosticJob {
    const KIND: &'static str = "diagnostic.sleep";
    const QUEUE: Queue = Queue::Diagnostic;
}
