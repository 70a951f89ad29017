//! SPEC §3.2, the signed-in user's own account: profile, password change and
//! account deletion (sessions, 2FA and API tokens have modules of their own).
//! Everything that changes the account needs a signed-in session (not an API
//! token), and is audited.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::auth::users::{self, UserRow, UserView};
use crate::envelope::{Envelope, Json};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;
use crate::validate::{self, text_field, username_field};

mod deletion;
mod password;

pub use deletion::*;
pub use password::*;

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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileUpdate {
    #[serde(default, deserialize_with = "validate::present")]
    #[schema(value_type = Option<String>, nullable = false, min_length = 1, max_length = 100, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    name: Option<Option<String>>,
    /// 3 to 30 of `[a-zA-Z0-9_-]`; `null` removes it.
    #[serde(default, deserialize_with = "validate::present")]
    #[schema(value_type = Option<String>, pattern = r"^[a-zA-Z0-9_-]{3,30}$")]
    username: Option<Option<String>>,
    /// An http(s) URL; `null` removes it.
    #[serde(default, deserialize_with = "validate::present")]
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
