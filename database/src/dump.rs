//! `pg_dump` of Berth's database into the backup directory, hashed as it is
//! written, inside a snapshot whose row counts are read alongside.

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::counts::{self, TableRows};
use crate::{BackupError, PgTarget, PgTools};

/// A finished dump file.
#[derive(Debug, Clone)]
pub struct Dumped {
    pub size_bytes: i64,
    pub sha256: String,
    /// Rows per table in the snapshot the file holds.
    pub table_rows: TableRows,
    pub elapsed: Duration,
}

/// Dumps the database `pool` is connected to into `dir/file_name`. The file
/// appears under its name only once complete: it is written as
/// `.file_name.partial` and renamed, so a crash leaves no file that looks
/// like a backup.
pub async fn dump(
    pool: &PgPool,
    target: &PgTarget,
    tools: &PgTools,
    dir: &Path,
    file_name: &str,
    cancel: &CancellationToken,
) -> Result<Dumped, BackupError> {
    let started = Instant::now();
    create_private_dir(dir).await?;
    let partial = dir.join(format!(".{file_name}.partial"));
    let done = dir.join(file_name);
    let result = write(pool, target, tools, &partial, cancel).await;
    match result {
        Ok((size_bytes, sha256, table_rows)) => {
            tokio::fs::rename(&partial, &done)
                .await
                .map_err(BackupError::io("naming the finished backup"))?;
            sync_dir(dir).await;
            Ok(Dumped {
                size_bytes,
                sha256,
                table_rows,
                elapsed: started.elapsed(),
            })
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(e)
        }
    }
}

async fn write(
    pool: &PgPool,
    target: &PgTarget,
    tools: &PgTools,
    partial: &Path,
    cancel: &CancellationToken,
) -> Result<(i64, String, TableRows), BackupError> {
    // The counts and pg_dump read the same snapshot, so the verifying
    // restore can be held to them exactly.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *tx)
        .await?;
    let table_rows = counts::count(&mut tx).await?;
    let snapshot_arg = format!("--snapshot={snapshot}");
    let mut running = tools.spawn(
        "pg_dump",
        &["--format=custom", "--no-password", &snapshot_arg],
        target,
        target.database(),
        false,
        true,
    )?;
    let mut stdout = running.child.stdout.take().expect("stdout is piped");
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(partial)
        .await
        .map_err(BackupError::io("creating the backup file"))?;
    let mut hasher = Sha256::new();
    let mut size: i64 = 0;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = tokio::select! {
            n = stdout.read(&mut buf) => n.map_err(BackupError::io("reading pg_dump's output"))?,
            () = cancel.cancelled() => return Err(BackupError::Cancelled),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .await
            .map_err(BackupError::io("writing the backup file"))?;
        size += n as i64;
    }
    running.finish(cancel).await?;
    file.sync_all()
        .await
        .map_err(BackupError::io("syncing the backup file"))?;
    tx.rollback().await?;
    Ok((size, hex::encode(hasher.finalize()), table_rows))
}

/// Backups hold every secret Berth keeps sealed and every hash: the
/// directory is the operator's alone.
async fn create_private_dir(dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(BackupError::io(format!("creating {}", dir.display())))?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(BackupError::io(format!("restricting {}", dir.display())))
}

async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}
