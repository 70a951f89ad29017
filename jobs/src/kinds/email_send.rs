//! `email.send` on the `email` queue.

use berth_secrets::{Binding, Keyring, SecretError};
use serde::{Deserialize, Serialize};

use super::JobPayload;
use crate::Queue;

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
    /// An invitation to a project: its single-use link (7 days).
    ProjectInvite {
        inviter_name: String,
        project_name: String,
        role: String,
        invitation_id: uuid::Uuid,
        token: Sealed,
        expires_in_days: u32,
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
    const KIND: &'static str = "email.send";
    const QUEUE: Queue = Queue::Email;
}
