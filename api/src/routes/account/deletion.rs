//! Deleting the account: confirmed by the password or a mailed code, audited,
//! refused for the last super admin.

use axum::extract::State;
use axum_extra::extract::CookieJar;
use serde::Deserialize;

use crate::audit;
use crate::auth::Principal;
use crate::auth::codes::{self, CodeCheck, Purpose};
use crate::auth::password::PASSWORD_MAX_CHARS;
use crate::auth::sessions::{self, Client};
use crate::auth::users::{self};
use crate::envelope::{Deleted, Envelope, Json};
use crate::error::ApiError;
use crate::routes::auth::{Sent, limit_mail_to};
use crate::state::AppState;
use crate::validate::{self, secret_field};

use super::*;

/// Mail a 6-digit code that confirms deleting the account (for accounts
/// without a password, or instead of it).
#[utoipa::path(post, path = "/account/delete-code", tag = "account", responses(
    (status = 200, description = "Sent", body = Sent),
    (status = 429, description = "Too many messages to this address", body = crate::error::ErrorEnvelope)))]
pub async fn account_delete_code(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Envelope<Sent>, ApiError> {
    principal.require_session()?;
    limit_mail_to(&state, "account_delete", &principal.user.email).await?;
    let mut tx = state.pool.begin().await?;
    let mail = codes::issue(&mut tx, &state, &principal.user, Purpose::DeleteAccount).await?;
    tx.commit().await?;
    state.jobs.dispatch(&mail).await;
    Ok(Envelope::ok(Sent { sent: true }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccountDeletion {
    /// The account's password…
    password: Option<String>,
    /// …or the code from `POST /account/delete-code`.
    code: Option<String>,
}

/// Delete the caller's account and everything it owns.
#[utoipa::path(delete, path = "/account", tag = "account", request_body = AccountDeletion, responses(
    (status = 200, description = "Deleted; cookies cleared", body = Deleted),
    (status = 400, description = "Missing or wrong confirmation", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The last super admin cannot delete their account", body = crate::error::ErrorEnvelope)))]
pub async fn delete_account(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    jar: CookieJar,
    Json(req): Json<AccountDeletion>,
) -> Result<(CookieJar, Envelope<Deleted>), ApiError> {
    principal.require_session()?;
    let user = &principal.user;
    let mut tx = state.pool.begin().await?;
    match (req.password.as_deref(), req.code.as_deref()) {
        (Some(password), None) => {
            let mut errors = Vec::new();
            secret_field("password", password, PASSWORD_MAX_CHARS, &mut errors);
            validate::finish(errors)?;
            confirm_password(&state, user, password, "password", &client).await?;
        }
        (None, Some(code)) => {
            let check =
                codes::check(&mut tx, &state, user.id, Purpose::DeleteAccount, code).await?;
            if check != CodeCheck::Accepted {
                tx.commit().await?;
                return Err(check.refusal("code"));
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "confirm with exactly one of password or code (POST /account/delete-code sends one)",
            ));
        }
    }
    if user.role() == users::Role::SuperAdmin {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM users WHERE role = 'super_admin' AND status = 'active' AND id <> $1",
        )
        .bind(user.id)
        .fetch_one(&mut *tx)
        .await?;
        if others == 0 {
            return Err(ApiError::Conflict(
                "the last super admin cannot delete their account: make another super admin first"
                    .into(),
            ));
        }
    }
    audit::record(
        &mut tx,
        client.audit(
            Some(user.id),
            "account.delete",
            "user",
            user.id,
            serde_json::json!({ "email": user.email }),
        ),
    )
    .await?;
    // Owned servers, deployments, sessions, tokens and jobs go with the row
    // (ON DELETE CASCADE); the audit row stays, its actor set to NULL.
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    crate::realtime::sign_out(&state, user.id).await;
    Ok((
        sessions::clear_cookies(&state, jar),
        Envelope::ok(Deleted::DONE),
    ))
}
