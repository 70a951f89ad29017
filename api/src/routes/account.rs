//! SPEC §3.2, the signed-in user's own account: profile, password change and
//! account deletion (sessions, 2FA and API tokens have modules of their own).
//! Everything that changes the account needs a signed-in session (not an API
//! token), and is audited.

use axum::extract::State;
use axum_extra::extract::CookieJar;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use crate::audit;
use crate::auth::codes::{self, CodeCheck, Purpose};
use crate::auth::password::{PASSWORD_MAX_CHARS, check_new_password, hash_password};
use crate::auth::sessions::{self, Client};
use crate::auth::users::{self, UserRow, UserView};
use crate::auth::{Principal, clear_password_failures, verify_password_limited};
use crate::envelope::{Envelope, Json};
use crate::error::{ApiError, FieldError};
use crate::routes::auth::{Sent, limit_mail_to};
use crate::state::AppState;
use crate::validate::{self, secret_field, text_field, username_field};

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkedProvider {
    provider: String,
    email: Option<String>,
    linked_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(flatten)]
    user: UserView,
    has_password: bool,
    linked_providers: Vec<LinkedProvider>,
}

async fn profile_of(state: &AppState, user: &UserRow) -> Result<Profile, ApiError> {
    let linked: Vec<(String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT provider, email, created_at FROM oauth_identities WHERE user_id = $1 ORDER BY provider",
    )
    .bind(user.id)
    .fetch_all(&state.pool)
    .await?;
    Ok(Profile {
        user: user.into(),
        has_password: user.password_hash.is_some(),
        linked_providers: linked
            .into_iter()
            .map(|(provider, email, linked_at)| LinkedProvider {
                provider,
                email,
                linked_at,
            })
            .collect(),
    })
}

/// The caller's profile: name, username, avatar, linked providers, verification state.
#[utoipa::path(get, path = "/profile", tag = "account", responses(
    (status = 200, description = "The profile", body = Profile),
    (status = 401, description = "Not signed in", body = crate::error::ErrorEnvelope)))]
pub async fn get_profile(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Envelope<Profile>, ApiError> {
    Ok(Envelope::ok(profile_of(&state, &principal.user).await?))
}

/// `null` and absent differ: `Some(None)` clears a field, `None` leaves it.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileUpdate {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable = false, min_length = 1, max_length = 100, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    name: Option<Option<String>>,
    /// 3 to 30 of `[a-zA-Z0-9_-]`; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = r"^[a-zA-Z0-9_-]{3,30}$")]
    username: Option<Option<String>>,
    /// An http(s) URL; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 2048, pattern = r"^https?://[A-Za-z0-9.-]{1,253}(:(0|[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/[!-~]*)?$")]
    avatar_url: Option<Option<String>>,
}

/// The pattern documented on `ProfileUpdate::avatar_url`, checked by hand so
/// the schema and the check agree, then parsed: an http(s) URL with an ASCII
/// host name or address, an optional port and printable ASCII after it.
fn avatar_field(value: &str, errors: &mut Vec<FieldError>) -> String {
    let shape_ok = || {
        let rest = value
            .strip_prefix("https://")
            .or_else(|| value.strip_prefix("http://"))?;
        let end = rest.find([':', '/']).unwrap_or(rest.len());
        let (host, rest) = rest.split_at(end);
        let host_ok = (1..=253).contains(&host.len())
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        let (port, path) = match rest.strip_prefix(':') {
            Some(after) => {
                let end = after.find('/').unwrap_or(after.len());
                (Some(&after[..end]), &after[end..])
            }
            None => (None, rest),
        };
        // 0 to 65535 without leading zeros, as the pattern spells it.
        let port_ok = port.is_none_or(|p| {
            (1..=5).contains(&p.len())
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p == "0" || !p.starts_with('0'))
                && p.parse::<u32>().is_ok_and(|n| n <= 65535)
        });
        let path_ok = path.is_empty()
            || (path.starts_with('/') && path.bytes().all(|b| (b'!'..=b'~').contains(&b)));
        Some(host_ok && port_ok && path_ok)
    };
    let ok = value.len() <= 2048
        && shape_ok() == Some(true)
        && url::Url::parse(value).is_ok_and(|u| u.host().is_some());
    if !ok {
        errors.push(FieldError::new(
            "avatarUrl",
            "must be an http(s) URL with an ASCII host, of at most 2048 characters",
        ));
    }
    value.to_owned()
}

/// Update name, username or avatar; fields left out keep their value.
#[utoipa::path(patch, path = "/profile", tag = "account", request_body = ProfileUpdate, responses(
    (status = 200, description = "The updated profile", body = Profile),
    (status = 400, description = "Invalid fields", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Username taken", body = crate::error::ErrorEnvelope)))]
pub async fn update_profile(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<ProfileUpdate>,
) -> Result<Envelope<Profile>, ApiError> {
    principal.require_session()?;
    let mut errors = Vec::new();
    let name = req.name.as_ref().map(|n| match n {
        Some(n) => text_field("name", n, 100, &mut errors),
        None => {
            errors.push(FieldError::new("name", "must not be null"));
            String::new()
        }
    });
    let username = req.username.as_ref().map(|u| {
        u.as_deref()
            .map(|u| username_field("username", u, &mut errors))
    });
    let avatar = req
        .avatar_url
        .as_ref()
        .map(|a| a.as_deref().map(|a| avatar_field(a, &mut errors)));
    validate::finish(errors)?;
    if name.is_none() && username.is_none() && avatar.is_none() {
        // Nothing to change (a PATCH of `{}`): the profile as it is.
        return Ok(Envelope::ok(profile_of(&state, &principal.user).await?));
    }
    let mut tx = state.pool.begin().await?;
    if let Some(Some(username)) = &username {
        let taken: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($1) AND id <> $2)",
        )
        .bind(username)
        .bind(principal.user_id())
        .fetch_one(&mut *tx)
        .await?;
        if taken {
            return Err(ApiError::Conflict("this username is taken".into()));
        }
    }
    let user: UserRow = sqlx::query_as(&format!(
        "UPDATE users SET name = COALESCE($2, name), \
           username = CASE WHEN $3 THEN $4 ELSE username END, \
           avatar_url = CASE WHEN $5 THEN $6 ELSE avatar_url END, updated_at = now() \
         WHERE id = $1 RETURNING {}",
        users::USER_COLUMNS
    ))
    .bind(principal.user_id())
    .bind(&name)
    .bind(username.is_some())
    .bind(username.clone().flatten())
    .bind(avatar.is_some())
    .bind(avatar.clone().flatten())
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user.id),
            "profile.update",
            "user",
            user.id,
            serde_json::json!({ "name": name.is_some(), "username": username.is_some(), "avatarUrl": avatar.is_some() }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(profile_of(&state, &user).await?))
}

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

#[derive(Serialize, utoipa::ToSchema)]
pub struct Deleted {
    deleted: bool,
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
    Ok((
        sessions::clear_cookies(&state, jar),
        Envelope::ok(Deleted { deleted: true }),
    ))
}

#[cfg(test)]
mod tests {
    use super::avatar_field;

    fn accepted(url: &str) -> bool {
        let mut errors = Vec::new();
        avatar_field(url, &mut errors);
        errors.is_empty()
    }

    #[test]
    fn avatar_urls_follow_the_documented_pattern() {
        for good in [
            "https://cdn.example.com/a.png",
            "http://127.0.0.1:54321/api/v1/uploads/x",
            "http://a:0",
            "http://a:65535/",
        ] {
            assert!(accepted(good), "{good} refused");
        }
        for bad in [
            "javascript:alert(1)",
            "http://a:65536",
            "http://a:08",
            " http://a",
            "http://ex ample.com",
            "http://\u{e9}xample.com",
            "http://a/\u{e9}",
            "ftp://a",
        ] {
            assert!(!accepted(bad), "{bad} accepted");
        }
    }
}
