//! `berth-api admin users|backups|restore`: what an operator needs when the
//! api is down — who has an account, which backups are proven, and a
//! restore run from the host. The restore takes the same steps as the
//! `backup.restore` job ([`berth_database::catalogue`]): the checksum
//! first, a proven backup of the current data, maintenance while it runs
//! (when Redis is reachable), one transaction, the pending migrations.

use std::time::Duration;

use anyhow::Context;
use berth_database::catalogue::{self, BackupSetup, RestoredBy};
use berth_jobs::maintenance_mode::{self, Maintenance};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `admin users`: accounts, newest first, `search` in email, name or username.
pub async fn list_users(pool: &PgPool, search: Option<&str>, limit: i64) -> anyhow::Result<String> {
    let pattern = search.map(|s| {
        let escaped = s
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let rows: Vec<(Uuid, String, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT id, email, role, status, created_at FROM users \
         WHERE $1::text IS NULL OR email ILIKE $1 OR name ILIKE $1 OR username ILIKE $1 \
         ORDER BY created_at DESC, id LIMIT $2",
    )
    .bind(pattern)
    .bind(limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await?;
    let mut out = format!(
        "{:<36}  {:<11}  {:<9}  {:<20}  EMAIL\n",
        "ID", "ROLE", "STATUS", "CREATED"
    );
    for (id, email, role, status, created) in rows {
        out.push_str(&format!(
            "{id:<36}  {role:<11}  {status:<9}  {:<20}  {email}\n",
            created.format("%Y-%m-%d %H:%M:%S")
        ));
    }
    Ok(out)
}

/// `admin backups`: the catalogue, newest first.
pub async fn list_backups(pool: &PgPool) -> anyhow::Result<String> {
    type Row = (
        Uuid,
        String,
        String,
        Option<i64>,
        DateTime<Utc>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, trigger, status, size_bytes, created_at, file_name, failure FROM backups \
         ORDER BY created_at DESC, id",
    )
    .fetch_all(pool)
    .await?;
    let mut out = format!(
        "{:<36}  {:<11}  {:<9}  {:>12}  {:<20}  FILE / FAILURE\n",
        "ID", "TRIGGER", "STATUS", "BYTES", "CREATED"
    );
    for (id, trigger, status, size, created, file, failure) in rows {
        let size = size.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        let note = failure.or(file).unwrap_or_default();
        out.push_str(&format!(
            "{id:<36}  {trigger:<11}  {status:<9}  {size:>12}  {:<20}  {note}\n",
            created.format("%Y-%m-%d %H:%M:%S")
        ));
    }
    Ok(out)
}

/// How long a restore from the host keeps the api in maintenance if this
/// process is killed before it leaves it.
const MAINTENANCE_EXPIRY: Duration = Duration::from_secs(2 * 3600);

/// `admin restore ID --confirm ID`: restores verified backup `id` over the
/// live database. Answers the id of the backup taken just before.
pub async fn restore(
    pool: &PgPool,
    setup: &BackupSetup,
    redis_url: &str,
    id: Uuid,
    cancel: &CancellationToken,
) -> anyhow::Result<Uuid> {
    let say = |step: &str| println!("{step}");
    say("checking the backup's file against its recorded SHA-256");
    let path = catalogue::restorable(pool, setup, id).await?;
    say("taking a fresh backup first");
    let safety = Uuid::new_v4();
    if let Err(e) = catalogue::take(pool, setup, safety, "pre_restore", None, &say, cancel).await {
        catalogue::record_failure(pool, safety, &e.reason).await?;
        anyhow::bail!("nothing restored: the backup taken first failed: {e}");
    }
    let holder = format!("berth-api admin restore (pid {})", std::process::id());
    let redis = match tokio::time::timeout(
        Duration::from_secs(5),
        berth_jobs::redis_conn::connect(redis_url),
    )
    .await
    {
        Ok(Ok(redis)) => {
            let maintenance = Maintenance {
                reason: "Berth is restoring a backup of its database from the host; changes are refused until it ends".into(),
                job_id: holder.clone(),
                since: Utc::now(),
            };
            maintenance_mode::enter(&redis, &maintenance, MAINTENANCE_EXPIRY)
                .await
                .context("cannot put the api into maintenance")?;
            say("the api is in maintenance: writes answer 503 until the restore ends");
            Some(redis)
        }
        _ => {
            say("Redis is not reachable: no running api is put into maintenance (stop it first)");
            None
        }
    };
    let restored =
        catalogue::restore_recorded(pool, setup, &path, id, RestoredBy::Operator, &say, cancel)
            .await;
    if let Some(redis) = &redis {
        berth_jobs::events::publish_database_restored(redis).await;
        if let Err(e) = maintenance_mode::leave(redis, &holder).await {
            eprintln!("maintenance not left ({e}); it ends by itself within two hours");
        }
    }
    let restored = restored?;
    say(&format!(
        "restored in {} ms, {} migrations applied",
        restored.elapsed.as_millis(),
        restored.migrations_applied
    ));
    Ok(safety)
}
