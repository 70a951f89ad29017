//! SPEC §3.2 TOTP two-factor authentication (RFC 6238): setup, enable with
//! recovery codes, disable with password and code.

use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::auth::password::PASSWORD_MAX_CHARS;
use crate::auth::sessions::Client;
use crate::auth::{Principal, totp};
use crate::envelope::{Envelope, Json};
use crate::error::{ApiError, FieldError};
use crate::routes::account::confirm_password;
use crate::state::AppState;
use crate::validate::{self, secret_field};

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TotpSetup {
    /// Base32, for typing into an authenticator app.
    secret: String,
    otpauth_uri: String,
}

/// Start turning on 2FA: a new secret, not active until `/auth/2fa/enable`.
#[utoipa::path(post, path = "/auth/2fa/setup", tag = "account", responses(
    (status = 200, description = "A new secret", body = TotpSetup),
    (status = 409, description = "2FA is already on", body = crate::error::ErrorEnvelope)))]
pub async fn totp_setup(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Envelope<TotpSetup>, ApiError> {
    principal.require_session()?;
    if principal.user.totp_enabled {
        return Err(ApiError::Conflict(
            "two-factor authentication is already on: disable it first".into(),
        ));
    }
    let secret = totp::generate(&principal.user.email)?;
    let sealed = totp::seal(
        &state.keys,
        principal.user_id(),
        "totp_pending_secret",
        &secret.raw,
    );
    sqlx::query("UPDATE users SET totp_pending_secret = $2 WHERE id = $1")
        .bind(principal.user_id())
        .bind(sealed)
        .execute(&state.pool)
        .await?;
    Ok(Envelope::ok(TotpSetup {
        secret: secret.base32,
        otpauth_uri: secret.otpauth_uri,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TotpEnable {
    /// The current 6-digit code from the authenticator app.
    #[schema(pattern = "^[0-9]{6}$")]
    code: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryCodes {
    /// Shown once. Each works once in place of a TOTP code.
    recovery_codes: Vec<String>,
}

/// Turn 2FA on by proving the authenticator works; answers 10 recovery codes.
#[utoipa::path(post, path = "/auth/2fa/enable", tag = "account", request_body = TotpEnable, responses(
    (status = 200, description = "2FA is on", body = RecoveryCodes),
    (status = 400, description = "Wrong code, or no setup started", body = crate::error::ErrorEnvelope),
    (status = 409, description = "2FA is already on", body = crate::error::ErrorEnvelope)))]
pub async fn totp_enable(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<TotpEnable>,
) -> Result<Envelope<RecoveryCodes>, ApiError> {
    principal.require_session()?;
    let user_id = principal.user_id();
    let mut tx = state.pool.begin().await?;
    let (enabled, pending): (bool, Option<String>) = sqlx::query_as(
        "SELECT totp_enabled, totp_pending_secret FROM users WHERE id = $1 FOR UPDATE",
    )
    .bind(user_id)
    .fetch_one(&mut *tx)
    .await?;
    if enabled {
        return Err(ApiError::Conflict(
            "two-factor authentication is already on".into(),
        ));
    }
    let pending = pending.ok_or_else(|| {
        ApiError::bad_request("no 2FA setup in progress: start with POST /auth/2fa/setup")
    })?;
    let raw = totp::open(&state.keys, user_id, "totp_pending_secret", &pending)?;
    let Some(step) = totp::matching_step(&raw, &req.code)? else {
        return Err(ApiError::validation(vec![FieldError::new(
            "code",
            "is wrong: enter the current code from your authenticator app",
        )]));
    };
    sqlx::query(
        "UPDATE users SET totp_secret = $2, totp_pending_secret = NULL, totp_enabled = true, \
         totp_last_step = $3, updated_at = now() WHERE id = $1",
    )
    .bind(user_id)
    .bind(totp::seal(&state.keys, user_id, "totp_secret", &raw))
    .bind(step)
    .execute(&mut *tx)
    .await?;
    let codes = totp::new_recovery_codes();
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let hashes: Vec<String> = codes.iter().map(|c| totp::recovery_code_hash(c)).collect();
    sqlx::query("INSERT INTO recovery_codes (code_hash, user_id) SELECT unnest($1::text[]), $2")
        .bind(&hashes)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user_id),
            "auth.2fa_enable",
            "user",
            user_id,
            serde_json::json!({}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(RecoveryCodes {
        recovery_codes: codes,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TotpDisable {
    /// Required when the account has a password.
    password: Option<String>,
    /// A current TOTP code or a recovery code.
    code: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TotpDisabled {
    two_factor_enabled: bool,
}

/// Turn 2FA off: needs the password and a code.
#[utoipa::path(post, path = "/auth/2fa/disable", tag = "account", request_body = TotpDisable, responses(
    (status = 200, description = "2FA is off", body = TotpDisabled),
    (status = 400, description = "Wrong password or code, or 2FA is not on", body = crate::error::ErrorEnvelope)))]
pub async fn totp_disable(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<TotpDisable>,
) -> Result<Envelope<TotpDisabled>, ApiError> {
    principal.require_session()?;
    let user = &principal.user;
    if !user.totp_enabled {
        return Err(ApiError::bad_request("two-factor authentication is not on"));
    }
    let mut errors = Vec::new();
    secret_field("code", &req.code, 32, &mut errors);
    if user.password_hash.is_some() {
        secret_field(
            "password",
            req.password.as_deref().unwrap_or(""),
            PASSWORD_MAX_CHARS,
            &mut errors,
        );
    }
    validate::finish(errors)?;
    if user.password_hash.is_some() {
        confirm_password(
            &state,
            user,
            req.password.as_deref().unwrap_or(""),
            "password",
            &client,
        )
        .await?;
    }
    let mut tx = state.pool.begin().await?;
    let (_, accepted) = totp::check_second_factor(&mut tx, &state.keys, user.id, &req.code).await?;
    if !accepted {
        return Err(ApiError::validation(vec![FieldError::new(
            "code",
            "is wrong or was already used",
        )]));
    }
    sqlx::query(
        "UPDATE users SET totp_enabled = false, totp_secret = NULL, totp_pending_secret = NULL, \
         totp_last_step = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(user.id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user.id),
            "auth.2fa_disable",
            "user",
            user.id,
            serde_json::json!({}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(TotpDisabled {
        two_factor_enabled: false,
    }))
}
