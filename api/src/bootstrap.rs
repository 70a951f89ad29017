//! First start: the default admin from `DEFAULT_ADMIN_EMAIL`/`DEFAULT_ADMIN_PASSWORD`.

use anyhow::Context;
use berth_config::{ApiConfig, ExposeSecret};
use sqlx::PgPool;

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
        let is_that_admin: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($1))",
        )
        .bind(email.trim())
        .fetch_one(&mut *tx)
        .await?;
        if !is_that_admin {
            tracing::warn!(
                "DEFAULT_ADMIN_EMAIL and DEFAULT_ADMIN_PASSWORD are ignored: users exist already \
                 (use `berth-api admin create` or `admin promote` to add an admin)"
            );
        }
        return Ok(false);
    }
    crate::operator::insert_user(&mut tx, email, "Administrator", "super_admin", hash)
        .await
        .context("cannot create the default admin")?;
    tx.commit().await?;
    tracing::info!("default admin created");
    Ok(true)
}
