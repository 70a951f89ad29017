use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::Queue;

/// A job's payload type. Its queue is fixed by the type, so a payload can never be
/// enqueued on the wrong queue. Payloads are stored as JSON in `jobs.payload`.
///
/// Handlers must be idempotent: delivery is at-least-once (a worker killed mid-job
/// has its job run again), and each handler's docs say how it stays safe.
pub trait JobPayload: Serialize + DeserializeOwned + Send + Sync + 'static {
    const QUEUE: Queue;
}

/// Sends one templated email (plain text + HTML). Idempotency: a crash between the
/// SMTP server's acceptance and the job's completion can send the message twice;
/// SMTP offers no way to dedupe, so this at-least-once is accepted for mail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EmailJob {
    pub to: String,
    pub message: EmailMessage,
}

/// The messages Berth sends; each one names its template.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "template", rename_all = "snake_case")]
pub enum EmailMessage {
    /// A message an operator sends to check that mail delivery works.
    TestMessage { recipient_name: String },
    /// The 6-digit code that verifies an address or signs a user in.
    VerificationCode {
        recipient_name: String,
        code: String,
        expires_in_minutes: u32,
    },
}

impl JobPayload for EmailJob {
    const QUEUE: Queue = Queue::Email;
}

/// Exercises the pipeline without side effects: waits `sleep_ms`, then succeeds.
/// Idempotent by construction. Used by operators' smoke tests and the benchmarks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticJob {
    pub sleep_ms: u64,
}

impl JobPayload for DiagnosticJob {
    const QUEUE: Queue = Queue::Diagnostic;
}
