//! What the domain jobs read and write in Postgres.

use berth_domains::cert::Issued;
use berth_domains::dns::Pointing;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DomainRow {
    pub id: Uuid,
    pub deployment_id: Uuid,
    pub owner_user_id: Uuid,
    pub name: String,
    pub status: String,
    pub cert_serial: Option<String>,
}

pub async fn domain(pool: &PgPool, id: Uuid) -> Result<Option<DomainRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, deployment_id, owner_user_id, name, status, cert_serial FROM domains \
         WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn record_dns(pool: &PgPool, id: Uuid, pointing: &Pointing) -> Result<(), sqlx::Error> {
    let (dns, found) = match pointing {
        Pointing::AtServer => ("ok", None),
        Pointing::Elsewhere { found } => ("mismatch", Some(found)),
    };
    let found: Vec<String> = found
        .map(|f| f.iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    sqlx::query(
        "UPDATE domains SET dns = $2, dns_found = $3, dns_checked_at = now(), updated_at = now() \
         WHERE id = $1",
    )
    .bind(id)
    .bind(dns)
    .bind(&found)
    .execute(pool)
    .await
    .map(|_| ())
}

/// The block is written (`active`), or is not yet because the deployment
/// serves nothing (`pending`, with why), or writing it failed.
pub async fn set_status(
    pool: &PgPool,
    id: Uuid,
    status: &str,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE domains SET status = $2, status_reason = $3, updated_at = now() \
         WHERE id = $1 AND status <> 'deleting'",
    )
    .bind(id)
    .bind(status)
    .bind(reason)
    .execute(pool)
    .await
    .map(|_| ())
}

/// A certificate is being ordered; one already installed keeps serving
/// and keeps its state.
pub async fn certificate_pending(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE domains SET certificate = 'pending', updated_at = now() \
         WHERE id = $1 AND NOT cert_installed",
    )
    .bind(id)
    .execute(pool)
    .await
    .map(|_| ())
}

/// The certificate `issued` is installed and served.
pub async fn certificate_installed(
    pool: &PgPool,
    id: Uuid,
    issued: &Issued,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE domains SET certificate = 'issued', cert_installed = true, cert_serial = $2, \
         cert_not_before = $3, cert_expires_at = $4, cert_error = NULL, cert_error_type = NULL, \
         cert_failed_at = NULL, expiry_warned_at = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(&issued.serial)
    .bind(issued.not_before)
    .bind(issued.not_after)
    .execute(pool)
    .await
    .map(|_| ())
}

/// The last attempt failed: `failed` without an installed certificate,
/// `expiring` with one (it serves until its expiry, and its renewal is
/// due).
pub async fn certificate_failed(
    pool: &PgPool,
    id: Uuid,
    error: &str,
    problem_type: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE domains SET certificate = CASE WHEN cert_installed THEN 'expiring' ELSE 'failed' END, \
         cert_error = $2, cert_error_type = $3, cert_failed_at = now(), updated_at = now() \
         WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .bind(problem_type)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Marks the domain as being removed (the site is rendered without it).
pub async fn deleting(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE domains SET status = 'deleting', updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Removing it failed: it is shown `failed` with why, and can be deleted
/// again.
pub async fn removal_failed(pool: &PgPool, id: Uuid, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE domains SET status = 'failed', status_reason = $2, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn delete(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM domains WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Berth's sealed account credentials at `directory`.
pub async fn acme_account(pool: &PgPool, directory: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT credentials_sealed FROM acme_accounts WHERE directory_url = $1")
        .bind(directory)
        .fetch_optional(pool)
        .await
}

/// Keeps a new account; when another worker registered one meanwhile,
/// that one is kept and answered.
pub async fn keep_acme_account(
    pool: &PgPool,
    directory: &str,
    sealed: &str,
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar(
        "WITH kept AS (INSERT INTO acme_accounts (directory_url, credentials_sealed) VALUES ($1, $2) \
         ON CONFLICT (directory_url) DO NOTHING RETURNING credentials_sealed) \
         SELECT credentials_sealed FROM kept UNION ALL \
         SELECT credentials_sealed FROM acme_accounts WHERE directory_url = $1 LIMIT 1",
    )
    .bind(directory)
    .bind(sealed)
    .fetch_one(pool)
    .await
}
