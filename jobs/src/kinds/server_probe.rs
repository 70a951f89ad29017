//! `server.probe` on the `probe` queue.

use serde::{Deserialize, Serialize};

use super::JobPayload;
use crate::Queue;

/// Collects CPU, memory, swap, disk, load, uptime and docker state of a
/// validated server in one round trip, stores them, and evaluates the owner's
/// alert rules. Probes come every minute, so one attempt is enough.
///
/// Idempotency: a probe run twice stores two samples (keyed by time), and
/// alert transitions are conditional updates, so nothing is notified twice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerProbe {
    pub server_id: uuid::Uuid,
}

impl JobPayload for ServerProbe {
    const KIND: &'static str = "server.probe";
    const QUEUE: Queue = Queue::Probe;
}
