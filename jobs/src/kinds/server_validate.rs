//! `server.validate` on the `probe` queue.

use serde::{Deserialize, Serialize};

use super::JobPayload;
use crate::Queue;

/// Connects to a server a user added (or asked to check again), pins its host
/// key on first success, and records OS, arch, docker and nginx, plus a first
/// probe sample.
///
/// Idempotency: it reads the server and records what it found (the host key
/// is pinned only when none is pinned), so running it twice records the same
/// thing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerValidate {
    pub server_id: uuid::Uuid,
}

/// Validation runs when a user adds a server and waits for the answer; it
/// survives a worker's death and rides out a server that is briefly
/// unreachable (retried with the queue's backoff).
pub const VALIDATION_ATTEMPTS: u32 = 4;

impl JobPayload for ServerValidate {
    const KIND: &'static str = "server.validate";
    const QUEUE: Queue = Queue::Probe;

    fn min_attempts(&self) -> u32 {
        VALIDATION_ATTEMPTS
    }
}
