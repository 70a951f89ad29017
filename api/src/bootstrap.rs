//! First start: the default admin from `DEFAULT_ADMIN_EMAIL`/`DEFAULT_ADMIN_PASSWORD`.

use anyhow::Context;
use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
use berth_config::{ApiConfig, ExposeSecret};
use sqlx::PgPool;
use uuid::Uuid;

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;

/// argon2id with OWASP's recommended parameters (19 MiB, 2 passes, 1 lane), which
/// are the argon2 crate's defaults.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))?;
    Ok(hash.to_string())
}

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
    let chars = password.expose_secret().chars().count();
    if !(PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&chars) {
        anyhow::bail!(
            "DEFAULT_ADMIN_PASSWORD is malformed: must be {PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters"
        );
    }
    let hash = hash_password(password.expose_secret())?;
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
