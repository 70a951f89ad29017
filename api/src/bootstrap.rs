//! First start: the default admin from `DEFAULT_ADMIN_EMAIL`/`DEFAULT_ADMIN_PASSWORD`.

use anyhow::Context;
use berth_config::{ApiConfig, ExposeSecret};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::password::{hash_password_blocking, password_problem};

/// Creates the default admin (verified, `super_admin`) when both settings are
/// given and no user exists yet. Returns whether it created one.
pub async fn ensure_default_admin(pool: &PgPool, config: &ApiConfig) -> anyhow::Result<bool> {
    let (Some(email), Some(password)) =
        (&config.default_admin_email, &config.default_admin_password)
    else {
        return Ok(false);
    };
    if !email_address::EmailAddress::is_valid(email) {
        anyhow::bail!("DEFAULT_ADMIN_EMAIL is malformed: not an email address");
    }
    if let Some(problem) = password_problem(password.expose_secret()) {
        anyhow::bail!("DEFAULT_ADMIN_PASSWORD is malformed: it {problem}");
    }
    let hash = hash_password_blocking(password.expose_secret())?;
    // The advisory lock makes two api replicas starting together create one admin.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('berth.default_admin'))")
        .execute(&mut *tx)
        .await?;
    let any_user: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users)")
        .fetch_one(&mut *tx)
        .await?;
    if any_user {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, role, status, email_verified) \
         VALUES ($1, $2, 'Administrator', $3, 'super_admin', 'active', true)",
    )
    .bind(Uuid::new_v4())
    .bind(email.trim())
    .bind(hash)
    .execute(&mut *tx)
    .await
    .context("cannot create the default admin")?;
    tx.commit().await?;
    tracing::info!("default admin created");
    Ok(true)
}
