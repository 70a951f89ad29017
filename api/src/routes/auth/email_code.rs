//! Passwordless sign-in: a code mailed to the address, then checked.

use axum::extract::State;
use axum_extra::extract::CookieJar;
use serde::Deserialize;

use crate::audit;
use crate::auth::codes::{self, CodeCheck, Purpose};
use crate::auth::sessions::{self, Client, SignInAnswer};
use crate::auth::users::{self, UserRow};
use crate::envelope::{Envelope, Json};
use crate::error::ApiError;
use crate::state::AppState;
use crate::validate::{self, email_field, secret_field};

use super::*;

/// Mail a 6-digit sign-in code. Always answers success: whether an account
/// exists is not revealed.
#[utoipa::path(post, path = "/auth/email-code/send", tag = "auth", request_body = EmailRequest, responses(
    (status = 200, description = "Sent if the account exists", body = Sent),
    (status = 403, description = "Email code sign-in is disabled", body = crate::error::ErrorEnvelope),
    (status = 429, description = "Too many messages to this address", body = crate::error::ErrorEnvelope)))]
pub async fn email_code_send(
    State(state): State<AppState>,
    Json(req): Json<EmailRequest>,
) -> Result<Envelope<Sent>, ApiError> {
    require_email_code_login(&state)?;
    let mut errors = Vec::new();
    let email = email_field("email", &req.email, &mut errors);
    validate::finish(errors)?;
    limit_mail_to(&state, "login_code", &email).await?;
    let mut tx = state.pool.begin().await?;
    if let Some(user) = users::by_email(&mut *tx, &email)
        .await?
        .filter(UserRow::is_active)
    {
        let mail = codes::issue(&mut tx, &state, &user, Purpose::Login).await?;
        tx.commit().await?;
        state.jobs.dispatch(&mail).await;
    }
    Ok(Envelope::ok(Sent { sent: true }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailCodeRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(max_length = 16)]
    code: String,
}

/// Sign in with a mailed code; answers like `/auth/login`. An unverified
/// account becomes verified, and loses any password set before its address was
/// proven (someone else may have chosen it).
#[utoipa::path(post, path = "/auth/email-code/verify", tag = "auth", request_body = EmailCodeRequest, responses(
    (status = 200, description = "Signed in, or a 2FA challenge", body = SignInAnswer),
    (status = 400, description = "Wrong, expired or used code", body = crate::error::ErrorEnvelope)))]
pub async fn email_code_verify(
    State(state): State<AppState>,
    client: Client,
    jar: CookieJar,
    Json(req): Json<EmailCodeRequest>,
) -> Result<(CookieJar, Envelope<SignInAnswer>), ApiError> {
    require_email_code_login(&state)?;
    let mut errors = Vec::new();
    let email = email_field("email", &req.email, &mut errors);
    secret_field("code", &req.code, 16, &mut errors);
    validate::finish(errors)?;
    let mut tx = state.pool.begin().await?;
    let Some(user) = users::by_email(&mut *tx, &email)
        .await?
        .filter(UserRow::is_active)
    else {
        return Err(CodeCheck::Invalid.refusal("code"));
    };
    let check = codes::check(&mut tx, &state, user.id, Purpose::Login, &req.code).await?;
    if check != CodeCheck::Accepted {
        audit::record(
            &mut tx,
            client.audit(
                Some(user.id),
                "auth.login_failed",
                "user",
                user.id,
                serde_json::json!({ "reason": "wrong_email_code" }),
            ),
        )
        .await?;
        tx.commit().await?;
        return Err(check.refusal("code"));
    }
    let user = users::mark_email_proven(&mut tx, user).await?;
    let (jar, answer) =
        sessions::complete_sign_in(&mut tx, &state, jar, &user, "email_code", false, &client)
            .await?;
    tx.commit().await?;
    Ok((jar, Envelope::ok(answer)))
}
