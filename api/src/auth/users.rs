//! The `users` row as accounts code reads it, and the view of it users see.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use uuid::Uuid;

/// Stored as text; a value Berth does not know fails to decode (an error,
/// never a silent demotion or promotion).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
    SuperAdmin,
}

impl Role {
    pub fn is_admin(self) -> bool {
        matches!(self, Role::Admin | Role::SuperAdmin)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub username: Option<String>,
    pub name: String,
    pub password_hash: Option<String>,
    pub role: Role,
    pub status: String,
    pub email_verified: bool,
    pub avatar_url: Option<String>,
    pub totp_enabled: bool,
    pub created_at: DateTime<Utc>,
}

pub const USER_COLUMNS: &str = "id, email, username, name, password_hash, role, status, \
    email_verified, avatar_url, totp_enabled, created_at";

/// [`USER_COLUMNS`] qualified with the alias `u`, for joins.
pub static USER_COLUMNS_OF_U: LazyLock<String> = LazyLock::new(|| {
    USER_COLUMNS
        .split(", ")
        .map(|c| format!("u.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
});

impl UserRow {
    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

pub async fn by_id<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn by_email<'e>(
    db: impl PgExecutor<'e>,
    email: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE lower(email) = lower($1)"
    ))
    .bind(email.trim())
    .fetch_optional(db)
    .await
}

/// By email address when `identifier` has an `@`, else by username.
pub async fn by_identifier<'e>(
    db: impl PgExecutor<'e>,
    identifier: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    if identifier.contains('@') {
        return by_email(db, identifier).await;
    }
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE lower(username) = lower($1)"
    ))
    .bind(identifier.trim())
    .fetch_optional(db)
    .await
}

/// Marks the address proven by a mailed code or a provider that verified it.
/// A password set before that may have been chosen by someone else who typed
/// this address, so an unverified account loses it here.
pub async fn mark_email_proven(
    conn: &mut sqlx::PgConnection,
    user: UserRow,
) -> Result<UserRow, sqlx::Error> {
    if user.email_verified {
        return Ok(user);
    }
    sqlx::query_as(&format!(
        "UPDATE users SET email_verified = true, password_hash = NULL, updated_at = now() \
         WHERE id = $1 RETURNING {USER_COLUMNS}"
    ))
    .bind(user.id)
    .fetch_one(conn)
    .await
}

/// What a user sees of an account.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub username: Option<String>,
    pub name: String,
    pub role: Role,
    pub email_verified: bool,
    pub two_factor_enabled: bool,
    pub avatar_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<&UserRow> for UserView {
    fn from(u: &UserRow) -> Self {
        Self {
            id: u.id,
            email: u.email.clone(),
            username: u.username.clone(),
            name: u.name.clone(),
            role: u.role(),
            email_verified: u.email_verified,
            two_factor_enabled: u.totp_enabled,
            avatar_url: u.avatar_url.clone(),
            created_at: u.created_at,
        }
    }
}
