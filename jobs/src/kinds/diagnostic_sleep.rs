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
    /// Runs one at a time with other jobs of this key (operators check the
    /// serialization with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// A newer job with the key cancels this one while it waits.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub supersedable: bool,
}

impl DiagnosticJob {
    pub fn sleeping(sleep_ms: u64) -> Self {
        Self {
            sleep_ms,
            concurrency_key: None,
            supersedable: false,
        }
    }
}

impl JobPayload for DiagnosticJob {
    const KIND: &'static str = "diagnostic.sleep";
    const QUEUE: Queue = Queue::Diagnostic;

    fn concurrency_key(&self) -> Option<String> {
        self.concurrency_key.clone()
    }

    fn superseded_by_newer(&self) -> bool {
        self.supersedable
    }
}
