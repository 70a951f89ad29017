//! SPEC §3.9: administration. Every route here asks the access layer for
//! [`Resource::Platform`]: a user is refused (403), an API token needs the
//! `admin` scope, and what only a super admin may do asks [`Action::Own`].

mod backups;
mod broadcast;
mod overview;
mod records;
mod users;

use sqlx::PgConnection;

use crate::access::{self, Action, Grant, Resource};
use crate::auth::Principal;
use crate::error::ApiError;

pub use backups::*;
pub use broadcast::*;
pub use overview::*;
pub use records::*;
pub use users::*;

async fn platform(
    conn: &mut PgConnection,
    principal: &Principal,
    action: Action,
) -> Result<Grant, ApiError> {
    access::authorize(conn, principal, Resource::Platform, action).await
}

/// `%text%` for ILIKE, its wildcards escaped; `None` for no filter.
fn like_pattern(field: &str, text: Option<&str>) -> Result<Option<String>, ApiError> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    if text.chars().count() > 100 || text.chars().any(char::is_control) {
        return Err(users::field(
            field,
            "must be at most 100 characters, without control characters",
        ));
    }
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    Ok(Some(format!("%{escaped}%")))
}
