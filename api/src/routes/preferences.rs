//! SPEC §3.2 preferences: how the dashboard shows things (theme, time zone) and
//! which notices the user wants. Alert thresholds and delivery channels live in
//! `/alerts/rules`; these choices say which kinds of notice are sent at all.

use axum::extract::State;
use serde::{Deserialize, Serialize};

use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{Envelope, Json};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

/// Stored as text; a value Berth does not know fails to decode.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Theme {
    System,
    Light,
    Dark,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationChoices {
    /// Tell me when one of my servers goes offline or comes back.
    server_status: bool,
    /// Tell me when a raised alert clears (and when an offline server returns).
    recoveries: bool,
    /// Also mail security notices (they are always kept in the app).
    security_email: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preferences {
    theme: Theme,
    /// An IANA time zone name the dashboard shows times in, such as `Europe/Berlin`.
    timezone: String,
    notifications: NotificationChoices,
}

#[derive(sqlx::FromRow)]
struct PreferencesRow {
    theme: Theme,
    timezone: String,
    notify_server_status: bool,
    notify_recoveries: bool,
    email_security: bool,
}

impl From<PreferencesRow> for Preferences {
    fn from(row: PreferencesRow) -> Self {
        Preferences {
            theme: row.theme,
            timezone: row.timezone,
            notifications: NotificationChoices {
                server_status: row.notify_server_status,
                recoveries: row.notify_recoveries,
                security_email: row.email_security,
            },
        }
    }
}

const COLUMNS: &str = "theme, timezone, notify_server_status, notify_recoveries, email_security";

/// The caller's preferences (the defaults until changed).
#[utoipa::path(get, path = "/profile/preferences", tag = "account", responses(
    (status = 200, description = "The preferences", body = Preferences),
    (status = 401, description = "Not signed in", body = crate::error::ErrorEnvelope)))]
pub async fn get_preferences(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Envelope<Preferences>, ApiError> {
    // The schema holds the defaults: the row is made with them on first read.
    let row: PreferencesRow = sqlx::query_as(&format!(
        "INSERT INTO user_preferences (user_id) VALUES ($1) \
         ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id RETURNING {COLUMNS}"
    ))
    .bind(principal.user_id())
    .fetch_one(&state.pool)
    .await?;
    Ok(Envelope::ok(row.into()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationChoicesUpdate {
    server_status: Option<bool>,
    recoveries: Option<bool>,
    security_email: Option<bool>,
}

/// Fields left out keep their value.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferencesUpdate {
    theme: Option<Theme>,
    /// An IANA time zone name (`Area/Location`, or `UTC`), at most 64 characters.
    #[schema(
        max_length = 64,
        pattern = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9][A-Za-z0-9_+-]*){0,2}$"
    )]
    timezone: Option<String>,
    notifications: Option<NotificationChoicesUpdate>,
}

/// The shape of an IANA time zone name. Which names exist changes with tzdata
/// releases, so the dashboard (which knows its browser's list) decides whether
/// it can use one; the api refuses only what cannot be a zone name.
fn timezone_field(value: &str, errors: &mut Vec<FieldError>) -> String {
    let part_ok = |part: &str| {
        let mut bytes = part.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
            && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-'))
    };
    let parts: Vec<&str> = value.split('/').collect();
    let ok = value.len() <= 64
        && parts.len() <= 3
        && value
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphabetic)
        && parts.iter().all(|p| part_ok(p));
    if !ok {
        errors.push(FieldError::new(
            "timezone",
            "must be an IANA time zone name such as UTC or Europe/Berlin",
        ));
    }
    value.to_owned()
}

/// Change the theme, time zone or notification choices.
#[utoipa::path(put, path = "/profile/preferences", tag = "account", request_body = PreferencesUpdate, responses(
    (status = 200, description = "The preferences now", body = Preferences),
    (status = 400, description = "Invalid fields", body = crate::error::ErrorEnvelope),
    (status = 403, description = "An API token cannot change preferences", body = crate::error::ErrorEnvelope)))]
pub async fn put_preferences(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<PreferencesUpdate>,
) -> Result<Envelope<Preferences>, ApiError> {
    principal.require_session()?;
    let mut errors = Vec::new();
    let timezone = req
        .timezone
        .as_deref()
        .map(|t| timezone_field(t, &mut errors));
    crate::validate::finish(errors)?;
    let choices = req.notifications.unwrap_or(NotificationChoicesUpdate {
        server_status: None,
        recoveries: None,
        security_email: None,
    });
    let mut tx = state.pool.begin().await?;
    sqlx::query("INSERT INTO user_preferences (user_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(principal.user_id())
        .execute(&mut *tx)
        .await?;
    let row: PreferencesRow = sqlx::query_as(&format!(
        "UPDATE user_preferences SET theme = COALESCE($2, theme), timezone = COALESCE($3, timezone), \
           notify_server_status = COALESCE($4, notify_server_status), \
           notify_recoveries = COALESCE($5, notify_recoveries), \
           email_security = COALESCE($6, email_security), updated_at = now() \
         WHERE user_id = $1 RETURNING {COLUMNS}"
    ))
    .bind(principal.user_id())
    .bind(req.theme)
    .bind(&timezone)
    .bind(choices.server_status)
    .bind(choices.recoveries)
    .bind(choices.security_email)
    .fetch_one(&mut *tx)
    .await?;
    let preferences = Preferences::from(row);
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "profile.preferences_update",
            "user",
            principal.user_id(),
            serde_json::to_value(&preferences).map_err(|e| ApiError::Internal(e.into()))?,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(preferences))
}

#[cfg(test)]
mod tests {
    use super::timezone_field;

    #[test]
    fn timezone_names_have_the_iana_shape() {
        for good in [
            "UTC",
            "Europe/Berlin",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
        ] {
            let mut errors = Vec::new();
            timezone_field(good, &mut errors);
            assert!(errors.is_empty(), "{good} refused");
        }
        for bad in [
            "",
            "/Berlin",
            "Europe/",
            "Europe//Berlin",
            "a/b/c/d",
            "Europe/Ber lin",
            "../etc",
            "1UTC",
        ] {
            let mut errors = Vec::new();
            timezone_field(bad, &mut errors);
            assert_eq!(errors.len(), 1, "{bad:?} accepted");
        }
    }
}
