//! SPEC §3.2 password reset: a mailed single-use link; a reset revokes every
//! session.

use axum::extract::State;
use berth_jobs::store::{self, NewJob};
use berth_jobs::{EmailJob, EmailMessage, Sealed};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit;
use crate::auth::password::{check_new_password, hash_password};
use crate::auth::sessions::{self, Client};
use crate::auth::tokens::{random_token, token_hash};
use crate::auth::users::{self, UserRow};
use crate::envelope::{Envelope, Json};
use crate::error::{ApiError, FieldError};
use crate::routes::auth::{EmailRequest, Sent, limit_mail_to};
use crate::state::AppState;
use crate::validate::{self, email_field, secret_field};

const PASSWORD_RESET_TTL_MINUTES: i64 = 30;

/// Mail a single-use password reset link (30 minutes). Always answers success.
#[utoipa::path(post, path = "/auth/forgot-password", tag = "auth", request_body = EmailRequest, responses(
    (status = 200, description = "Sent if the account exists", body = Sent),
    (status = 429, description = "Too many messages to this address", body = crate::error::ErrorEnvelope)))]
pub async fn forgot_password(
    State(state): State<AppState>,
    client: Client,
    Json(req): Json<EmailRequest>,
) -> Result<Envelope<Sent>, ApiError> {
    let mut errors = Vec::new();
    let email = email_field("email", &req.email, &mut errors);
    validate::finish(errors)?;
    limit_mail_to(&state, "reset", &email).await?;
    let mut tx = state.pool.begin().await?;
    let Some(user) = users::by_email(&mut *tx, &email)
        .await?
        .filter(UserRow::is_active)
    else {
        return Ok(Envelope::ok(Sent { sent: true }));
    };
    let token = random_token();
    // One live link per user: a new request voids the previous one.
    sqlx::query("DELETE FROM password_resets WHERE user_id = $1 AND used_at IS NULL")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO password_resets (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(token_hash(&token))
    .bind(user.id)
    .bind(Utc::now() + chrono::Duration::minutes(PASSWORD_RESET_TTL_MINUTES))
    .execute(&mut *tx)
    .await?;
    let job = NewJob::new(EmailJob {
        to: user.email.clone(),
        message: EmailMessage::PasswordReset {
            recipient_name: user.name.clone(),
            token: Sealed::seal(&state.keys, &user.email, &token),
            expires_in_minutes: PASSWORD_RESET_TTL_MINUTES as u32,
        },
    })
    .owner(user.id);
    let mail = store::enqueue(&mut tx, state.jobs.policies(), job).await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user.id),
            "auth.password_reset_requested",
            "user",
            user.id,
            serde_json::json!({}),
        ),
    )
    .await?;
    tx.commit().await?;
    state.jobs.dispatch(&mail).await;
    Ok(Envelope::ok(Sent { sent: true }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResetPasswordRequest {
    token: String,
    password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PasswordReset {
    reset: bool,
}

/// Set a new password with the mailed token. Every session is revoked.
#[utoipa::path(post, path = "/auth/reset-password", tag = "auth", request_body = ResetPasswordRequest, responses(
    (status = 200, description = "Password changed; sign in again", body = PasswordReset),
    (status = 400, description = "Invalid, used or expired token, or a refused password", body = crate::error::ErrorEnvelope)))]
pub async fn reset_password(
    State(state): State<AppState>,
    client: Client,
    Json(req): Json<ResetPasswordRequest>,
) -> Result<Envelope<PasswordReset>, ApiError> {
    let mut errors = Vec::new();
    secret_field("token", &req.token, 256, &mut errors);
    validate::finish(errors)?;
    check_new_password("password", &req.password)?;
    let hash = hash_password(&req.password).await?;
    let mut tx = state.pool.begin().await?;
    let user_id: Option<Uuid> = sqlx::query_scalar(
        "UPDATE password_resets SET used_at = now() \
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING user_id",
    )
    .bind(token_hash(&req.token))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(user_id) = user_id else {
        return Err(ApiError::validation(vec![FieldError::new(
            "token",
            "the reset link is invalid, used or expired: ask for a new one",
        )]));
    };
    // Following the mailed link proves the address.
    sqlx::query(
        "UPDATE users SET password_hash = $2, password_changed_at = now(), email_verified = true, \
         updated_at = now() WHERE id = $1",
    )
    .bind(user_id)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    let revoked = sessions::revoke_all(&mut tx, user_id, None, "password_reset").await?;
    sqlx::query("DELETE FROM login_challenges WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user_id),
            "auth.password_reset",
            "user",
            user_id,
            serde_json::json!({ "sessionsRevoked": revoked }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(PasswordReset { reset: true }))
}
