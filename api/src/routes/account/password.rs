//! Changing the password (every other session revoked), and the password
//! confirmation other account changes ask for.

use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::auth::password::{PASSWORD_MAX_CHARS, check_new_password, hash_password};
use crate::auth::sessions::{self, Client};
use crate::auth::users::UserRow;
use crate::auth::{Principal, clear_password_failures, verify_password_limited};
use crate::envelope::{Envelope, Json};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;
use crate::validate::{self, secret_field};

/// Checks the caller's password, counting failures against the same
/// per-account limit as sign-in. `field` names it in the error.
pub(crate) async fn confirm_password(
    state: &AppState,
    user: &UserRow,
    password: &str,
    field: &str,
    client: &Client,
) -> Result<(), ApiError> {
    let subject = user.id.to_string();
    let hash = user.password_hash.as_deref();
    if verify_password_limited(state, &subject, client.ip, password, hash).await? {
        clear_password_failures(state, &subject, client.ip).await;
        return Ok(());
    }
    let mut conn = state.pool.acquire().await?;
    audit::record(
        &mut conn,
        client.audit(
            Some(user.id),
            "auth.password_confirm_failed",
            "user",
            user.id,
            serde_json::json!({ "field": field }),
        ),
    )
    .await?;
    Err(ApiError::validation(vec![FieldError::new(
        field, "is wrong",
    )]))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PasswordChange {
    #[schema(min_length = 1, max_length = 128)]
    current_password: String,
    /// 8 to 128 characters, not among the most common passwords.
    #[schema(min_length = 8, max_length = 128)]
    new_password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordChanged {
    sessions_revoked: u64,
}

/// Change the password; every other session is revoked.
#[utoipa::path(post, path = "/profile/password", tag = "account", request_body = PasswordChange, responses(
    (status = 200, description = "Changed", body = PasswordChanged),
    (status = 400, description = "Wrong current password, or a refused new one", body = crate::error::ErrorEnvelope),
    (status = 403, description = "API tokens cannot change passwords", body = crate::error::ErrorEnvelope)))]
pub async fn change_password(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<PasswordChange>,
) -> Result<Envelope<PasswordChanged>, ApiError> {
    let session_id = principal.require_session()?;
    let user = &principal.user;
    let mut errors = Vec::new();
    secret_field(
        "currentPassword",
        &req.current_password,
        PASSWORD_MAX_CHARS,
        &mut errors,
    );
    validate::finish(errors)?;
    if user.password_hash.is_none() {
        return Err(ApiError::bad_request(
            "this account has no password yet: set one with /auth/forgot-password",
        ));
    }
    check_new_password("newPassword", &req.new_password)?;
    if req.new_password == req.current_password {
        return Err(ApiError::validation(vec![FieldError::new(
            "newPassword",
            "must differ from the current password",
        )]));
    }
    confirm_password(
        &state,
        user,
        &req.current_password,
        "currentPassword",
        &client,
    )
    .await?;
    let hash = hash_password(&req.new_password).await?;
    let mut tx = state.pool.begin().await?;
    sqlx::query(
        "UPDATE users SET password_hash = $2, password_changed_at = now(), updated_at = now() WHERE id = $1",
    )
    .bind(user.id)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    let revoked =
        sessions::revoke_all(&mut tx, user.id, Some(session_id), "password_change").await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user.id),
            "auth.password_change",
            "user",
            user.id,
            serde_json::json!({ "sessionsRevoked": revoked }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(PasswordChanged {
        sessions_revoked: revoked,
    }))
}
