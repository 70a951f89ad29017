//! `diagnostic.remote_sleep` on the `diagnostic` queue.

use serde::{Deserialize, Serialize};

use super::JobPayload;
use crate::Queue;

/// Runs a `<seconds>`-long loop on one of the owner's servers, printing one
/// line a second into the job's log: an operator's check that remote commands
/// run there, stream live, and stop when their job is cancelled or times out
/// (the remote process group is killed). No route enqueues it; operators and
/// the test suite do.
///
/// Idempotency: sleeping has no effect to repeat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemoteSleep {
    pub server_id: uuid::Uuid,
    pub seconds: u32,
}

impl JobPayload for RemoteSleep {
    const KIND: &'static str = "diagnostic.remote_sleep";
    const QUEUE: Queue = Queue::Diagnostic;
}
