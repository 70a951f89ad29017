use berth_secrets::{Binding, Keyring, SecretError};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::Queue;

/// A job's payload type. Its queue is fixed by the type, so a payload can never be
/// enqueued on the wrong queue. Payloads are stored as JSON in `jobs.payload`.
///
/// Handlers must be idempotent: delivery is at-least-once (a worker killed mid-job
/// has its job run again), and each handler's docs say how it stays safe.
pub trait JobPayload: Serialize + DeserializeOwned + Send + Sync + 'static {
    const QUEUE: Queue;

    /// Attempts this job gets at least, whatever its queue's cap says: a job a
    /// user waits on is worth retrying past a worker's death or a brief outage.
    fn min_attempts(&self) -> u32 {
        1
    }
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

/// The messages Berth sends; each one names its template. Codes and links that
/// grant access travel sealed ([`Sealed`]): the job row outlives the mail, and
/// tokens are never stored in the clear.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "template", rename_all = "snake_case")]
pub enum EmailMessage {
    /// A message an operator sends to check that mail delivery works.
    TestMessage { recipient_name: String },
    /// A 6-digit code: verifies an address, signs a user in, or confirms deletion.
    VerificationCode {
        recipient_name: String,
        purpose: CodePurpose,
        code: Sealed,
        expires_in_minutes: u32,
    },
    /// The single-use link that sets a new password.
    PasswordReset {
        recipient_name: String,
        token: Sealed,
        expires_in_minutes: u32,
    },
    /// A notification (an alert raised or cleared, a changed host key) by mail.
    Notification {
        recipient_name: String,
        title: String,
        body: String,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CodePurpose {
    VerifyEmail,
    SignIn,
    DeleteAccount,
}

/// A secret inside a mail job, sealed with the master key and bound to the
/// recipient, so it opens only for the message it was made for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    fn binding(recipient: &str) -> Binding<'_> {
        Binding {
            table: "jobs",
            column: "payload.email",
            row_id: recipient,
        }
    }

    pub fn seal(keys: &Keyring, recipient: &str, secret: &str) -> Self {
        Self(keys.seal(secret.as_bytes(), Self::binding(recipient)))
    }

    pub fn open(&self, keys: &Keyring, recipient: &str) -> Result<String, SecretError> {
        keys.open_string(&self.0, Self::binding(recipient))
    }
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

/// Work on one of a user's servers over SSH (`probe` queue).
///
/// Idempotency: validation reads the server and records what it found (the
/// host key is pinned only when none is pinned), so running it twice records
/// the same thing. A probe run twice stores two samples (keyed by time) and
/// alert transitions are conditional updates, so nothing is notified twice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerJob {
    pub server_id: uuid::Uuid,
    pub action: ServerAction,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ServerAction {
    /// Connect, pin the host key on first success, record OS, arch, docker and nginx.
    Validate,
    /// Collect CPU, memory, swap, disk, load, uptime and docker state in one
    /// round trip, store them, and evaluate the owner's alert rules.
    Probe,
}

/// Validation runs when a user adds a server and waits for the answer; it
/// survives a worker's death and rides out a server that is briefly
/// unreachable (retried with the queue's backoff). Probes come every minute
/// anyway, so one attempt is enough for them.
pub const VALIDATION_ATTEMPTS: u32 = 4;

impl JobPayload for ServerJob {
    const QUEUE: Queue = Queue::Probe;

    fn min_attempts(&self) -> u32 {
        match self.action {
            ServerAction::Validate => VALIDATION_ATTEMPTS,
            ServerAction::Probe => 1,
        }
    }
}

/// Where a server's sealed credentials live: the row's id, table and column are
/// bound into the ciphertext (the api seals, workers open).
pub fn server_secret_binding<'a>(server_id: &'a str, column: &'a str) -> Binding<'a> {
    Binding {
        table: "servers",
        column,
        row_id: server_id,
    }
}
