//! What an operator does on the Berth host without mail or a browser:
//! `berth-api admin create|promote|reset-password` here, and
//! `users|backups|restore` in [`backups`]. Passwords come from
//! standard input or are generated and printed once; never from the command
//! line, where other users of the host can read them.

pub mod backups;

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context;
use base64::Engine;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::audit::{self, AuditEntry, RequestId};
use crate::auth::password::{hash_password_blocking, password_problem};

/// A password of 144 random bits in URL-safe base64 (24 characters).
pub fn generate_password() -> String {
    let bytes: [u8; 18] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The roles an operator can give.
pub fn check_role(role: &str) -> anyhow::Result<()> {
    match role {
        "user" | "admin" | "super_admin" => Ok(()),
        other => anyhow::bail!("unknown role {other:?}: expected user, admin or super_admin"),
    }
}

fn check_password(password: &str) -> anyhow::Result<()> {
    match password_problem(password) {
        None => Ok(()),
        Some(problem) => anyhow::bail!("the password {problem}"),
    }
}

async fn audit_cli(
    conn: &mut PgConnection,
    action: &'static str,
    user_id: Uuid,
    details: serde_json::Value,
) -> Result<(), sqlx::Error> {
    audit::record(
        conn,
        AuditEntry {
            actor_user_id: None,
            action,
            target_type: "user",
            target_id: user_id.to_string(),
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            request_id: &RequestId("berth-api admin".into()),
            details,
        },
    )
    .await
}

/// Inserts a verified, active user with `role`; the caller holds the
/// transaction.
pub async fn insert_user(
    conn: &mut PgConnection,
    email: &str,
    name: &str,
    role: &str,
    password_hash: String,
) -> anyhow::Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, role, status, email_verified) \
         VALUES ($1, $2, $3, $4, $5, 'active', true)",
    )
    .bind(id)
    .bind(email.trim())
    .bind(name)
    .bind(password_hash)
    .bind(role)
    .execute(&mut *conn)
    .await
    .map_err(|e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            anyhow::anyhow!("a user with the email {email} already exists")
        }
        _ => anyhow::Error::new(e).context("cannot create the user"),
    })?;
    Ok(id)
}

/// `admin create`: a verified account that can sign in at once.
pub async fn create(
    pool: &PgPool,
    email: &str,
    name: &str,
    role: &str,
    password: &str,
) -> anyhow::Result<Uuid> {
    if !email_address::EmailAddress::is_valid(email.trim()) {
        anyhow::bail!("{email:?} is not an email address");
    }
    check_role(role)?;
    check_password(password)?;
    let hash = hash_password_blocking(password)?;
    let mut tx = pool.begin().await?;
    let id = insert_user(&mut tx, email, name, role, hash).await?;
    audit_cli(
        &mut tx,
        "admin.user_create",
        id,
        serde_json::json!({ "role": role }),
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

async fn user_id_by_email(conn: &mut PgConnection, email: &str) -> anyhow::Result<Uuid> {
    sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
        .bind(email.trim())
        .fetch_optional(&mut *conn)
        .await?
        .with_context(|| format!("no user has the email {email}"))
}

/// `admin promote`: gives an existing user `role`.
pub async fn promote(pool: &PgPool, email: &str, role: &str) -> anyhow::Result<Uuid> {
    check_role(role)?;
    let mut tx = pool.begin().await?;
    let id = user_id_by_email(&mut tx, email).await?;
    sqlx::query("UPDATE users SET role = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(role)
        .execute(&mut *tx)
        .await?;
    audit_cli(
        &mut tx,
        "admin.user_role",
        id,
        serde_json::json!({ "role": role }),
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// `admin reset-password`: sets a new password (a suspended account stays
/// suspended) and signs out all its sessions. Returns how many were revoked.
pub async fn reset_password(pool: &PgPool, email: &str, password: &str) -> anyhow::Result<u64> {
    check_password(password)?;
    let hash = hash_password_blocking(password)?;
    let mut tx = pool.begin().await?;
    let id = user_id_by_email(&mut tx, email).await?;
    sqlx::query(
        "UPDATE users SET password_hash = $2, email_verified = true, updated_at = now() \
         WHERE id = $1",
    )
    .bind(id)
    .bind(hash)
    .execute(&mut *tx)
    .await?;
    let revoked =
        crate::auth::sessions::revoke_all(&mut tx, id, None, "password reset by operator").await?;
    audit_cli(
        &mut tx,
        "admin.password_reset",
        id,
        serde_json::json!({ "sessionsRevoked": revoked }),
    )
    .await?;
    tx.commit().await?;
    Ok(revoked)
}
