//! Deletes sign-in state that can no longer be used: expired codes, challenges
//! and reset links, and sessions past their lifetime (with their refresh
//! tokens). Revoked sessions are kept 30 days, so a stolen refresh token that
//! comes back is still recognised and audited as reuse, and users see recent
//! revocations in the audit log's terms.

use sqlx::PgPool;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PrunedCredentials {
    pub sessions: u64,
    pub refresh_tokens: u64,
    pub codes: u64,
}

pub async fn prune_expired_credentials(pool: &PgPool) -> Result<PrunedCredentials, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let sessions = sqlx::query(
        "DELETE FROM sessions WHERE expires_at < now() OR revoked_at < now() - interval '30 days'",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let refresh_tokens = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < now()")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let mut codes = 0;
    for statement in [
        "DELETE FROM email_codes WHERE expires_at < now()",
        "DELETE FROM login_challenges WHERE expires_at < now()",
        "DELETE FROM password_resets WHERE expires_at < now()",
    ] {
        codes += sqlx::query(statement)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    tx.commit().await?;
    Ok(PrunedCredentials {
        sessions,
        refresh_tokens,
        codes,
    })
}
