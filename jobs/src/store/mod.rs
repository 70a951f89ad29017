//! Job state in Postgres: durable enqueue (the job row, written in the caller's
//! transaction, is its own outbox), the worker-side state transitions, status
//! queries, metrics aggregates, pruning and the reconciler that keeps any job from
//! being stuck.

use serde::Serialize;
use ulid::Ulid;
use uuid::Uuid;

use crate::{JobPayload, Policies, Queue};

/// Upper bounds (seconds) of the job duration histogram.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
];

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
    sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A job to enqueue, with the resources it acts on (shown by `GET /jobs/{id}` and
/// used for owner checks).
#[derive(Debug, Clone)]
pub struct NewJob<P> {
    pub payload: P,
    pub owner_user_id: Option<Uuid>,
    pub server_id: Option<Uuid>,
    pub deployment_id: Option<Uuid>,
    /// While a job with this key is queued or running, enqueueing another with the
    /// same key returns the existing job instead (e.g. one pending probe per server).
    pub dedupe_key: Option<String>,
    /// The bounded pool the job needs a slot of while it runs.
    pub slot: Option<SlotPool>,
}

/// A bounded pool of slots (e.g. builds on one server): at most `capacity`
/// jobs naming the pool run at a time, across all workers; the others wait in
/// line, queued, without spending attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPool {
    name: String,
    capacity: u16,
}

impl SlotPool {
    /// The most slots a pool may have.
    pub const MAX_CAPACITY: u16 = 64;

    /// `capacity` is clamped to 1..=[`Self::MAX_CAPACITY`].
    pub fn new(name: impl Into<String>, capacity: u16) -> Self {
        Self {
            name: name.into(),
            capacity: capacity.clamp(1, Self::MAX_CAPACITY),
        }
    }

    /// The builds running on one server at a time (`servers.build_slots`).
    pub fn builds(server_id: Uuid, capacity: u16) -> Self {
        Self::new(format!("builds:{server_id}"), capacity)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn capacity(&self) -> u16 {
        self.capacity
    }
}

impl<P: JobPayload> NewJob<P> {
    pub fn new(payload: P) -> Self {
        Self {
            payload,
            owner_user_id: None,
            server_id: None,
            deployment_id: None,
            dedupe_key: None,
            slot: None,
        }
    }

    /// Runs only while holding a slot of `pool`.
    pub fn slot(mut self, pool: SlotPool) -> Self {
        self.slot = Some(pool);
        self
    }

    pub fn owner(mut self, user_id: Uuid) -> Self {
        self.owner_user_id = Some(user_id);
        self
    }

    pub fn server(mut self, server_id: Uuid) -> Self {
        self.server_id = Some(server_id);
        self
    }

    pub fn deployment(mut self, deployment_id: Uuid) -> Self {
        self.deployment_id = Some(deployment_id);
        self
    }

    pub fn dedupe_key(mut self, key: impl Into<String>) -> Self {
        self.dedupe_key = Some(key.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub id: String,
    pub queue: Queue,
    /// The delivery to push to Redis; `None` when a job with the same dedupe key was
    /// already pending and is returned instead.
    pub delivery_id: Option<String>,
}

impl Enqueued {
    pub fn created(&self) -> bool {
        self.delivery_id.is_some()
    }
}

/// A job as it is inserted: payload encoded, the queue's policy applied.
#[derive(Debug, Clone)]
pub struct JobRow {
    id: String,
    kind: &'static str,
    queue: Queue,
    payload: serde_json::Value,
    max_attempts: i32,
    timeout_ms: i64,
    owner_user_id: Option<Uuid>,
    server_id: Option<Uuid>,
    deployment_id: Option<Uuid>,
    dedupe_key: Option<String>,
    concurrency_key: Option<String>,
    supersedable: bool,
    slot_pool: Option<String>,
    slot_capacity: Option<i32>,
}

impl JobRow {
    pub fn new<P: JobPayload>(policies: &Policies, job: NewJob<P>) -> Result<Self, sqlx::Error> {
        let policy = policies.get(P::QUEUE);
        let max_attempts = policy.max_attempts.max(job.payload.min_attempts());
        Ok(Self {
            id: Ulid::generate().to_string(),
            kind: P::KIND,
            queue: P::QUEUE,
            payload: serde_json::to_value(&job.payload)
                .map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
            max_attempts: max_attempts as i32,
            timeout_ms: policy.timeout.as_millis() as i64,
            owner_user_id: job.owner_user_id,
            server_id: job.server_id,
            deployment_id: job.deployment_id,
            dedupe_key: job.dedupe_key,
            concurrency_key: job.payload.concurrency_key(),
            supersedable: job.payload.superseded_by_newer(),
            slot_capacity: job.slot.as_ref().map(|s| i32::from(s.capacity)),
            slot_pool: job.slot.map(|s| s.name),
        })
    }
}

mod cancel;
mod claim;
mod enqueue;
mod finish;
mod read;
mod upkeep;

pub use cancel::*;
pub use claim::*;
pub use enqueue::*;
pub use finish::*;
pub use read::*;
pub use upkeep::*;
