//! `berth-api reseal`: after `BERTH_MASTER_KEY` is rotated (the old key moved
//! to `BERTH_MASTER_KEY_PREVIOUS`), re-encrypts every stored secret under the
//! new key, so the old one can then be retired. Each value is opened with its
//! own row binding and sealed again with the same binding; a value that does
//! not open is reported and left as it is.

use berth_secrets::{Binding, Keyring};
use berth_secrets::{
    acme_account_binding, deployment_secret_binding, oauth_identity_row, oauth_token_binding,
    release_snapshot_binding, server_secret_binding,
};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resealed {
    pub values: u64,
    /// `table.column:id` of values that did not open.
    pub failed: Vec<String>,
}

fn reseal_one(
    keys: &Keyring,
    sealed: &str,
    binding: Binding<'_>,
    outcome: &mut Resealed,
) -> Option<String> {
    if !keys.needs_reseal(sealed) {
        return None;
    }
    match keys.open(sealed, binding) {
        Ok(plain) => {
            outcome.values += 1;
            Some(keys.seal(&plain, binding))
        }
        Err(e) => {
            tracing::error!(table = binding.table, column = binding.column, id = binding.row_id, error = %e, "secret does not open");
            outcome.failed.push(format!(
                "{}.{}:{}",
                binding.table, binding.column, binding.row_id
            ));
            None
        }
    }
}

pub async fn reseal_all(pool: &PgPool, keys: &Keyring) -> anyhow::Result<Resealed> {
    let mut outcome = Resealed::default();
    let mut tx = pool.begin().await?;
    let servers: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT id, secret, passphrase FROM servers WHERE secret_key_id <> $1 FOR UPDATE",
    )
    .bind(keys.current_key_id())
    .fetch_all(&mut *tx)
    .await?;
    for (id, secret, passphrase) in servers {
        let row = id.to_string();
        let secret = reseal_one(
            keys,
            &secret,
            server_secret_binding(&row, "secret"),
            &mut outcome,
        );
        let passphrase = passphrase.and_then(|p| {
            reseal_one(
                keys,
                &p,
                server_secret_binding(&row, "passphrase"),
                &mut outcome,
            )
        });
        sqlx::query(
            "UPDATE servers SET secret = COALESCE($2, secret), passphrase = COALESCE($3, passphrase), \
             secret_key_id = CASE WHEN $2 IS NULL THEN secret_key_id ELSE $4 END WHERE id = $1",
        )
        .bind(id)
        .bind(secret)
        .bind(passphrase)
        .bind(keys.current_key_id())
        .execute(&mut *tx)
        .await?;
    }
    let users: Vec<(Uuid, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, totp_secret, totp_pending_secret FROM users \
         WHERE totp_secret IS NOT NULL OR totp_pending_secret IS NOT NULL FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (id, secret, pending) in users {
        let row = id.to_string();
        let binding = |column| Binding {
            table: "users",
            column,
            row_id: &row,
        };
        let secret =
            secret.and_then(|s| reseal_one(keys, &s, binding("totp_secret"), &mut outcome));
        let pending = pending
            .and_then(|s| reseal_one(keys, &s, binding("totp_pending_secret"), &mut outcome));
        sqlx::query(
            "UPDATE users SET totp_secret = COALESCE($2, totp_secret), \
             totp_pending_secret = COALESCE($3, totp_pending_secret) WHERE id = $1",
        )
        .bind(id)
        .bind(secret)
        .bind(pending)
        .execute(&mut *tx)
        .await?;
    }
    let tokens: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT user_id, provider, token_sealed FROM oauth_identities \
         WHERE token_sealed IS NOT NULL FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (user_id, provider, sealed) in tokens {
        let row = oauth_identity_row(user_id, &provider);
        if let Some(again) = reseal_one(keys, &sealed, oauth_token_binding(&row), &mut outcome) {
            sqlx::query(
                "UPDATE oauth_identities SET token_sealed = $3 WHERE user_id = $1 AND provider = $2",
            )
            .bind(user_id)
            .bind(&provider)
            .bind(again)
            .execute(&mut *tx)
            .await?;
        }
    }
    let accounts: Vec<(String, String)> =
        sqlx::query_as("SELECT directory_url, credentials_sealed FROM acme_accounts FOR UPDATE")
            .fetch_all(&mut *tx)
            .await?;
    for (directory, sealed) in accounts {
        if let Some(again) = reseal_one(
            keys,
            &sealed,
            acme_account_binding(&directory),
            &mut outcome,
        ) {
            sqlx::query(
                "UPDATE acme_accounts SET credentials_sealed = $2 WHERE directory_url = $1",
            )
            .bind(&directory)
            .bind(again)
            .execute(&mut *tx)
            .await?;
        }
    }
    reseal_deployments(&mut tx, keys, &mut outcome).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Deployments' env, deploy key and webhook secret, and every release's
/// snapshot.
async fn reseal_deployments(
    tx: &mut sqlx::PgConnection,
    keys: &Keyring,
    outcome: &mut Resealed,
) -> anyhow::Result<()> {
    type Sealed = (Uuid, String, Option<String>, Option<String>);
    let deployments: Vec<Sealed> = sqlx::query_as(
        "SELECT id, env_sealed, deploy_key_sealed, webhook_secret_sealed FROM deployments FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (id, env, deploy_key, webhook) in deployments {
        let row = id.to_string();
        let mut again = |sealed: Option<String>, column| {
            sealed.filter(|s| !s.is_empty()).and_then(|s| {
                reseal_one(keys, &s, deployment_secret_binding(&row, column), outcome)
            })
        };
        let env = again(Some(env), "env");
        let deploy_key = again(deploy_key, "deploy_key");
        let webhook = again(webhook, "webhook_secret");
        sqlx::query(
            "UPDATE deployments SET env_sealed = COALESCE($2, env_sealed), \
             deploy_key_sealed = COALESCE($3, deploy_key_sealed), \
             webhook_secret_sealed = COALESCE($4, webhook_secret_sealed) WHERE id = $1",
        )
        .bind(id)
        .bind(env)
        .bind(deploy_key)
        .bind(webhook)
        .execute(&mut *tx)
        .await?;
    }
    let releases: Vec<(Uuid, i32, String)> =
        sqlx::query_as("SELECT deployment_id, number, snapshot_sealed FROM releases FOR UPDATE")
            .fetch_all(&mut *tx)
            .await?;
    for (id, number, snapshot) in releases {
        let row = format!("{id}/{number}");
        if let Some(sealed) = reseal_one(keys, &snapshot, release_snapshot_binding(&row), outcome) {
            sqlx::query(
                "UPDATE releases SET snapshot_sealed = $3 WHERE deployment_id = $1 AND number = $2",
            )
            .bind(id)
            .bind(number)
            .bind(sealed)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}
