//! SPEC §3.2 registration: an account that is unusable until the emailed
//! 6-digit code verifies its address.

use axum::extract::State;
use axum_extra::extract::CookieJar;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit;
use crate::auth::codes::{self, CodeCheck, Purpose};
use crate::auth::password::{check_new_password, hash_password};
use crate::auth::sessions::{self, Client, SignInAnswer};
use crate::auth::users::{self, UserRow};
use crate::envelope::{Envelope, Json};
use crate::error::{ApiError, FieldError};
use crate::routes::auth::{EmailRequest, Sent, limit_mail_to, require_password_login};
use crate::state::AppState;
use crate::validate::{self, email_field, secret_field, text_field, username_field};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// 8 to 128 characters, not one of the 10,000 most common passwords.
    password: String,
    name: String,
    /// 3 to 30 of `[a-zA-Z0-9_-]`.
    username: Option<String>,
    /// Must be `true`: the terms are accepted.
    #[serde(default)]
    #[schema(required = true, schema_with = accepted_schema)]
    terms_accepted: bool,
}

fn accepted_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Boolean)
        .enum_values(Some([true]))
        .build()
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registered {
    email: String,
    verification_required: bool,
    message: &'static str,
}

/// Create an account; a 6-digit code is mailed to verify the address.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterRequest, responses(
    (status = 201, description = "Account created, code sent", body = Registered),
    (status = 400, description = "Invalid fields", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Email or username taken", body = crate::error::ErrorEnvelope),
    (status = 429, description = "Too many registrations from this address", body = crate::error::ErrorEnvelope)))]
pub async fn register(
    State(state): State<AppState>,
    client: Client,
    Json(req): Json<RegisterRequest>,
) -> Result<Envelope<Registered>, ApiError> {
    require_password_login(&state)?;
    let mut errors = Vec::new();
    let email = email_field("email", &req.email, &mut errors);
    let name = text_field("name", &req.name, 100, &mut errors);
    let username = req
        .username
        .as_deref()
        .filter(|u| !u.trim().is_empty())
        .map(|u| username_field("username", u, &mut errors));
    if let Err(ApiError::Validation { details, .. }) = check_new_password("password", &req.password)
    {
        errors.extend(details);
    }
    if !req.terms_accepted {
        errors.push(FieldError::new("termsAccepted", "must be accepted"));
    }
    validate::finish(errors)?;
    limit_mail_to(&state, "verify", &email).await?;
    let hash = hash_password(&req.password).await?;

    let mut tx = state.pool.begin().await?;
    if users::by_email(&mut *tx, &email).await?.is_some() {
        return Err(ApiError::Conflict(
            "an account with this email address already exists: sign in, or reset the password"
                .into(),
        ));
    }
    if let Some(username) = &username {
        let taken: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($1))",
        )
        .bind(username)
        .fetch_one(&mut *tx)
        .await?;
        if taken {
            return Err(ApiError::Conflict("this username is taken".into()));
        }
    }
    let id = Uuid::new_v4();
    let user: UserRow = sqlx::query_as(&format!(
        "INSERT INTO users (id, email, username, name, password_hash, password_changed_at) \
         VALUES ($1, $2, $3, $4, $5, now()) RETURNING {}",
        users::USER_COLUMNS
    ))
    .bind(id)
    .bind(&email)
    .bind(&username)
    .bind(&name)
    .bind(&hash)
    .fetch_one(&mut *tx)
    .await?;
    let mail = codes::issue(&mut tx, &state, &user, Purpose::VerifyEmail).await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(id),
            "auth.register",
            "user",
            id,
            serde_json::json!({ "email": email }),
        ),
    )
    .await?;
    tx.commit().await?;
    state.jobs.dispatch(&mail).await;
    Ok(Envelope::created(Registered {
        email,
        verification_required: true,
        message: "we sent a 6-digit code to this address: submit it to /auth/verify-email",
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyEmailRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    otp: String,
}

/// Verify the registration code; answers like a sign-in.
#[utoipa::path(post, path = "/auth/verify-email", tag = "auth", request_body = VerifyEmailRequest, responses(
    (status = 200, description = "Verified and signed in (or a 2FA challenge)", body = SignInAnswer),
    (status = 400, description = "Wrong, expired or used code", body = crate::error::ErrorEnvelope),
    (status = 429, description = "Too many attempts", body = crate::error::ErrorEnvelope)))]
pub async fn verify_email(
    State(state): State<AppState>,
    client: Client,
    jar: CookieJar,
    Json(req): Json<VerifyEmailRequest>,
) -> Result<(CookieJar, Envelope<SignInAnswer>), ApiError> {
    let mut errors = Vec::new();
    let email = email_field("email", &req.email, &mut errors);
    secret_field("otp", &req.otp, 16, &mut errors);
    validate::finish(errors)?;
    let mut tx = state.pool.begin().await?;
    let user = users::by_email(&mut *tx, &email)
        .await?
        .filter(|u| !u.email_verified && u.is_active());
    let Some(user) = user else {
        return Err(CodeCheck::Invalid.refusal("otp"));
    };
    let check = codes::check(&mut tx, &state, user.id, Purpose::VerifyEmail, &req.otp).await?;
    if check != CodeCheck::Accepted {
        tx.commit().await?;
        return Err(check.refusal("otp"));
    }
    sqlx::query("UPDATE users SET email_verified = true, updated_at = now() WHERE id = $1")
        .bind(user.id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user.id),
            "auth.verify_email",
            "user",
            user.id,
            serde_json::json!({}),
        ),
    )
    .await?;
    let user = UserRow {
        email_verified: true,
        ..user
    };
    let (jar, answer) = sessions::complete_sign_in(
        &mut tx,
        &state,
        jar,
        &user,
        "email_verification",
        false,
        &client,
    )
    .await?;
    tx.commit().await?;
    Ok((jar, Envelope::ok(answer)))
}

/// Send a new registration code (cooldown: BERTH_RATE_LIMIT_OTP_RESEND). The
/// answer is the same whether or not a pending account exists.
#[utoipa::path(post, path = "/auth/resend-otp", tag = "auth", request_body = EmailRequest, responses(
    (status = 200, description = "Sent if a pending account exists", body = Sent),
    (status = 429, description = "Asked again too soon", body = crate::error::ErrorEnvelope)))]
pub async fn resend_otp(
    State(state): State<AppState>,
    Json(req): Json<EmailRequest>,
) -> Result<Envelope<Sent>, ApiError> {
    let mut errors = Vec::new();
    let email = email_field("email", &req.email, &mut errors);
    validate::finish(errors)?;
    state
        .rate_limiter
        .enforce(
            "otp_resend",
            &email.to_lowercase(),
            state.config.auth.limits.otp_resend,
            "a code was sent moments ago; wait before asking again",
        )
        .await?;
    limit_mail_to(&state, "verify", &email).await?;
    let mut tx = state.pool.begin().await?;
    let pending = users::by_email(&mut *tx, &email)
        .await?
        .filter(|u| !u.email_verified && u.is_active());
    if let Some(user) = pending {
        let mail = codes::issue(&mut tx, &state, &user, Purpose::VerifyEmail).await?;
        tx.commit().await?;
        state.jobs.dispatch(&mail).await;
    }
    Ok(Envelope::ok(Sent { sent: true }))
}
