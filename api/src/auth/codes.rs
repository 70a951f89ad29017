//! Six-digit codes sent by mail (registration, passwordless sign-in, account
//! deletion): 10 minutes, 5 attempts, one live code per user and purpose. Codes
//! are stored as a keyed hash bound to the user, and mailed through the `email`
//! queue sealed (see `berth_jobs::Sealed`).

use std::time::Duration;

use berth_jobs::store::{self, NewJob};
use berth_jobs::{CodePurpose, EmailJob, EmailMessage, Enqueued, Sealed};
use chrono::Utc;
use sqlx::PgConnection;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::tokens::six_digit_code;
use super::users::UserRow;
use crate::error::ApiError;
use crate::state::AppState;

pub const CODE_TTL: Duration = Duration::from_secs(10 * 60);
pub const CODE_MAX_ATTEMPTS: i32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    VerifyEmail,
    Login,
    DeleteAccount,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "verify_email",
            Purpose::Login => "login",
            Purpose::DeleteAccount => "delete_account",
        }
    }

    fn mail_purpose(self) -> CodePurpose {
        match self {
            Purpose::VerifyEmail => CodePurpose::VerifyEmail,
            Purpose::Login => CodePurpose::SignIn,
            Purpose::DeleteAccount => CodePurpose::DeleteAccount,
        }
    }
}

fn code_hash(state: &AppState, user_id: Uuid, purpose: Purpose, code: &str) -> String {
    let bound = format!("{user_id}:{code}");
    state
        .keys
        .mac(&format!("email_code:{}", purpose.name()), bound.as_bytes())
}

/// Replaces the user's live code for `purpose` with a new one and enqueues its
/// mail on `conn`. After commit, hand the result to `JobClient::dispatch`.
pub async fn issue(
    conn: &mut PgConnection,
    state: &AppState,
    user: &UserRow,
    purpose: Purpose,
) -> Result<Enqueued, ApiError> {
    let code = six_digit_code();
    sqlx::query(
        "INSERT INTO email_codes (user_id, purpose, code_hash, expires_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id, purpose) DO UPDATE \
         SET code_hash = EXCLUDED.code_hash, attempts = 0, created_at = now(), expires_at = EXCLUDED.expires_at",
    )
    .bind(user.id)
    .bind(purpose.name())
    .bind(code_hash(state, user.id, purpose, &code))
    .bind(Utc::now() + chrono::Duration::from_std(CODE_TTL).expect("small"))
    .execute(&mut *conn)
    .await?;
    let job = NewJob::new(EmailJob {
        to: user.email.clone(),
        message: EmailMessage::VerificationCode {
            recipient_name: user.name.clone(),
            purpose: purpose.mail_purpose(),
            code: Sealed::seal(&state.keys, &user.email, &code),
            expires_in_minutes: (CODE_TTL.as_secs() / 60) as u32,
        },
    })
    .owner(user.id);
    Ok(store::enqueue(conn, state.jobs.policies(), job).await?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// Right code; it is used up.
    Accepted,
    Wrong {
        attempts_left: i32,
    },
    /// No live code: none sent, expired, used, or out of attempts.
    Invalid,
}

/// Counts an attempt and checks `code`. The attempt is counted in `conn`'s
/// transaction: commit it whatever the outcome.
pub async fn check(
    conn: &mut PgConnection,
    state: &AppState,
    user_id: Uuid,
    purpose: Purpose,
    code: &str,
) -> Result<CodeCheck, ApiError> {
    let live: Option<(String, i32)> = sqlx::query_as(
        "UPDATE email_codes SET attempts = attempts + 1 \
         WHERE user_id = $1 AND purpose = $2 AND expires_at > now() AND attempts < $3 \
         RETURNING code_hash, attempts",
    )
    .bind(user_id)
    .bind(purpose.name())
    .bind(CODE_MAX_ATTEMPTS)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((stored, attempts)) = live else {
        return Ok(CodeCheck::Invalid);
    };
    let given = code_hash(state, user_id, purpose, code.trim());
    if !bool::from(given.as_bytes().ct_eq(stored.as_bytes())) {
        return Ok(CodeCheck::Wrong {
            attempts_left: CODE_MAX_ATTEMPTS - attempts,
        });
    }
    sqlx::query("DELETE FROM email_codes WHERE user_id = $1 AND purpose = $2")
        .bind(user_id)
        .bind(purpose.name())
        .execute(conn)
        .await?;
    Ok(CodeCheck::Accepted)
}

impl CodeCheck {
    /// The 400 a refused code answers with.
    pub fn refusal(self, field: &str) -> ApiError {
        let message = match self {
            CodeCheck::Wrong { attempts_left } if attempts_left > 0 => {
                format!("the code is wrong; {attempts_left} attempts left")
            }
            _ => "the code is invalid or expired; ask for a new one".to_owned(),
        };
        ApiError::validation(vec![crate::error::FieldError::new(field, message)])
    }
}
