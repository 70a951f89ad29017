//! The second step of a sign-in with 2FA: a TOTP or recovery code, limited per account, and the owner told when someone keeps guessing.

use axum::extract::State;
use axum_extra::extract::CookieJar;
use berth_jobs::store::{self, NewJob};
use berth_jobs::{EmailJob, EmailMessage};
use serde::Deserialize;
use uuid::Uuid;

use crate::audit;
use crate::auth::sessions::{self, Client, SignInAnswer, SignedIn};
use crate::auth::tokens::token_hash;
use crate::auth::totp;
use crate::auth::users::{self, UserRow};
use crate::envelope::{Envelope, Json};
use crate::error::ApiError;
use crate::state::AppState;
use crate::validate::{self, secret_field};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecondFactorRequest {
    challenge_id: String,
    /// A 6-digit TOTP code or a recovery code.
    code: String,
}

/// The second sign-in step when 2FA is on.
#[utoipa::path(post, path = "/auth/login/2fa", tag = "auth", request_body = SecondFactorRequest, responses(
    (status = 200, description = "Signed in", body = SignedIn),
    (status = 401, description = "Wrong, reused or expired code or challenge", body = crate::error::ErrorEnvelope)))]
pub async fn login_second_factor(
    State(state): State<AppState>,
    client: Client,
    jar: CookieJar,
    Json(req): Json<SecondFactorRequest>,
) -> Result<(CookieJar, Envelope<SignInAnswer>), ApiError> {
    let mut errors = Vec::new();
    secret_field("challengeId", &req.challenge_id, 128, &mut errors);
    secret_field("code", &req.code, 32, &mut errors);
    validate::finish(errors)?;
    let mut tx = state.pool.begin().await?;
    let challenge: Option<(Uuid, String)> = sqlx::query_as(
        "UPDATE login_challenges SET attempts = attempts + 1 \
         WHERE id_hash = $1 AND expires_at > now() AND attempts < $2 RETURNING user_id, auth_method",
    )
    .bind(token_hash(&req.challenge_id))
    .bind(sessions::CHALLENGE_MAX_ATTEMPTS)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((user_id, method)) = challenge else {
        return Err(ApiError::Unauthorized(
            "the sign-in challenge is invalid or expired: sign in again".into(),
        ));
    };
    let user = users::by_id(&mut *tx, user_id)
        .await?
        .filter(|u| u.is_active() && u.totp_enabled)
        .ok_or_else(|| ApiError::Unauthorized("this account cannot sign in".into()))?;
    // Wrong codes are also limited per account, across challenges and
    // addresses: new challenges from many addresses cannot go on guessing.
    let limit = state.config.auth.limits.second_factor_failures;
    let account = user.id.to_string();
    state
        .rate_limiter
        .ensure_below(
            "second_factor_failures",
            &account,
            limit,
            "too many wrong codes for this account; try again later",
        )
        .await?;
    let (kind, accepted) =
        totp::check_second_factor(&mut tx, &state.keys, user.id, &req.code).await?;
    if !accepted {
        let reached = match state
            .rate_limiter
            .hit("second_factor_failures", &account, limit)
            .await
        {
            Ok(decision) => decision.remaining == 0 && decision.allowed,
            Err(e) => {
                tracing::warn!(error = %e, "second-factor failure not counted: Redis unavailable");
                false
            }
        };
        let mail = if reached {
            notify_second_factor_guessing(&mut tx, &state, &user).await?
        } else {
            None
        };
        audit::record(
            &mut tx,
            client.audit(
                Some(user.id),
                "auth.login_failed",
                "user",
                user.id,
                serde_json::json!({ "reason": "second_factor", "kind": kind.name() }),
            ),
        )
        .await?;
        tx.commit().await?;
        if let Some(mail) = mail {
            state.jobs.dispatch(&mail).await;
        }
        return Err(ApiError::Unauthorized(
            "the code is wrong or was already used".into(),
        ));
    }
    sqlx::query("DELETE FROM login_challenges WHERE id_hash = $1")
        .bind(token_hash(&req.challenge_id))
        .execute(&mut *tx)
        .await?;
    let method = format!("{method}+{}", kind.name());
    let (jar, answer) =
        sessions::complete_sign_in(&mut tx, &state, jar, &user, &method, true, &client).await?;
    tx.commit().await?;
    Ok((jar, Envelope::ok(answer)))
}

/// Tells the user, in the app and (unless their preferences say not to) by
/// mail, that someone who knows their password is guessing second-factor codes.
pub(super) async fn notify_second_factor_guessing(
    tx: &mut sqlx::PgConnection,
    state: &AppState,
    user: &UserRow,
) -> Result<Option<berth_jobs::store::Enqueued>, ApiError> {
    let title = "Repeated wrong sign-in codes".to_owned();
    let body = "Someone who knows your password entered many wrong two-factor codes. \
        Sign-in codes for your account are paused for a while. If this was not you, \
        change your password now."
        .to_owned();
    sqlx::query(
        "INSERT INTO notifications (id, user_id, kind, title, body, data) \
         VALUES ($1, $2, 'security', $3, $4, '{\"reason\": \"second_factor_guessing\"}')",
    )
    .bind(Uuid::new_v4())
    .bind(user.id)
    .bind(&title)
    .bind(&body)
    .execute(&mut *tx)
    .await?;
    let mail: Option<bool> =
        sqlx::query_scalar("SELECT email_security FROM user_preferences WHERE user_id = $1")
            .bind(user.id)
            .fetch_optional(&mut *tx)
            .await?;
    if mail == Some(false) {
        return Ok(None);
    }
    let job = NewJob::new(EmailJob {
        to: user.email.clone(),
        message: EmailMessage::Notification {
            recipient_name: user.name.clone(),
            title,
            body,
        },
    })
    .owner(user.id);
    Ok(Some(store::enqueue(tx, state.jobs.policies(), job).await?))
}
