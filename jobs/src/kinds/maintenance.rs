//! `maintenance.prune` and `maintenance.reconcile` on the `maintenance` queue:
//! the scheduler's periodic work, enqueued on its ticks and run by workers, so
//! the scheduler's leader loop only ever enqueues. Each names a concurrency
//! key and may be superseded: a newer tick's job cancels an older one still
//! waiting (one whose delivery Redis lost included), so they never pile up
//! and never run twice at once.

use serde::{Deserialize, Serialize};

use super::JobPayload;
use crate::Queue;

/// Deletes finished jobs (and their Redis task data) past the retention,
/// sign-in state that can no longer be used, and probe samples past theirs.
///
/// Idempotency: deleting what is past a cut-off twice deletes nothing more.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Prune {
    pub job_retention_secs: u64,
    pub metrics_retention_secs: u64,
}

impl JobPayload for Prune {
    const KIND: &'static str = "maintenance.prune";
    const QUEUE: Queue = Queue::Maintenance;

    fn concurrency_key(&self) -> Option<String> {
        Some("maintenance:prune".into())
    }

    fn superseded_by_newer(&self) -> bool {
        true
    }
}

/// Re-issues jobs no worker will finish (running past their timeout plus
/// `running_grace_ms`, or pushed and untouched for `queued_lost_ms`).
///
/// Idempotency: a re-issued job gets a new delivery id, so running this twice
/// re-issues nothing more.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Reconcile {
    pub running_grace_ms: u64,
    pub queued_lost_ms: u64,
}

impl JobPayload for Reconcile {
    const KIND: &'static str = "maintenance.reconcile";
    const QUEUE: Queue = Queue::Maintenance;

    fn concurrency_key(&self) -> Option<String> {
        Some("maintenance:reconcile".into())
    }

    fn superseded_by_newer(&self) -> bool {
        true
    }
}
