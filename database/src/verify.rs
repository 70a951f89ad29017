//! A backup is verified by restoring it: into a scratch database on the same
//! server, whose rows per table must be those the dump's snapshot held. The
//! scratch database is dropped whatever happens.

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::counts::{self, TableRows};
use crate::{BackupError, PgTarget, PgTools};

/// Scratch databases are named after the database they verify, so backups
/// of two Berth databases on one server never touch each other's: by its
/// name, or by a hash of a name too long or unusual to carry.
fn scratch_prefix(database: &str) -> String {
    let plain = database
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    // 63 bytes at most, with 32 of hex after the prefix.
    if plain && !database.is_empty() && database.len() <= 26 {
        format!("{database}_verify_")
    } else {
        let hash = Sha256::digest(database.as_bytes());
        format!("berth_verify_{}_", hex::encode(&hash[..4]))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "the file's SHA-256 is {found}, not the {expected} recorded when it was taken: it is incomplete or changed"
    )]
    Checksum { expected: String, found: String },
    #[error("the restored copy differs from what was dumped: {0}")]
    Rows(String),
}

/// The SHA-256 of a file, read in full, and its size.
pub async fn checksum(path: &Path) -> Result<(i64, String), BackupError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(BackupError::io(format!("opening {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut size = 0i64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(BackupError::io("reading the backup file"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as i64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Restores `path` into a scratch database and compares its rows per table
/// with `dumped`. Returns what the restore held and how long it took.
pub async fn verify(
    target: &PgTarget,
    tools: &PgTools,
    path: &Path,
    dumped: &TableRows,
    cancel: &CancellationToken,
) -> Result<(TableRows, Duration), BackupError> {
    let started = Instant::now();
    let mut admin = PgConnection::connect_with(&target.options_for(target.database())).await?;
    let prefix = scratch_prefix(target.database());
    drop_stale_scratch_databases(&mut admin, &prefix).await?;
    let scratch = format!("{prefix}{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE \"{scratch}\""))
        .execute(&mut admin)
        .await?;
    let restored = restore_and_count(target, tools, path, &scratch, cancel).await;
    let dropped = sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{scratch}\" WITH (FORCE)"
    ))
    .execute(&mut admin)
    .await;
    let _ = admin.close().await;
    let restored = restored?;
    dropped?;
    let differences = counts::differences(dumped, &restored);
    if !differences.is_empty() {
        return Err(VerifyError::Rows(differences.join("; ")).into());
    }
    Ok((restored, started.elapsed()))
}

async fn restore_and_count(
    target: &PgTarget,
    tools: &PgTools,
    path: &Path,
    scratch: &str,
    cancel: &CancellationToken,
) -> Result<TableRows, BackupError> {
    let dbname = format!("--dbname={scratch}");
    let file = path.display().to_string();
    tools
        .spawn(
            "pg_restore",
            &[
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                "--no-password",
                &dbname,
                "--",
                &file,
            ],
            target,
            scratch,
            false,
            false,
        )?
        .finish(cancel)
        .await?;
    let mut conn = PgConnection::connect_with(&target.options_for(scratch)).await?;
    let rows = counts::count(&mut conn).await?;
    let _ = conn.close().await;
    Ok(rows)
}

/// Whether `name` is one of the scratch databases named with `prefix`
/// (and not one of another database's, whose prefix begins alike).
fn is_scratch(prefix: &str, name: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|suffix| suffix.len() == 32 && suffix.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Scratch databases a killed worker left behind. Backups run one at a time
/// (their jobs share a concurrency key), so any that exists is stale.
async fn drop_stale_scratch_databases(
    admin: &mut PgConnection,
    prefix: &str,
) -> Result<(), BackupError> {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)")
            .bind(prefix)
            .fetch_all(&mut *admin)
            .await?;
    for name in names.iter().filter(|n| is_scratch(prefix, n)) {
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut *admin)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_of_two_databases_never_overlap_and_fit() {
        let short = scratch_prefix("berth");
        assert_eq!(short, "berth_verify_");
        let a = scratch_prefix("berth_test_0123456789abcdef");
        let b = scratch_prefix("berth_test_fedcba9876543210");
        assert_ne!(a, b);
        let of_a = format!("{a}{}", Uuid::new_v4().simple());
        assert!(is_scratch(&a, &of_a));
        assert!(!is_scratch(&b, &of_a) && !is_scratch(&short, &of_a));
        for prefix in [short, a, b, scratch_prefix("Berth-Prod")] {
            assert!(prefix.len() + 32 <= 63, "{prefix}");
        }
    }
}
