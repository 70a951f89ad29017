//! Restoring a backup over Berth's live database: all of it in one
//! transaction (a failure leaves the database as it was), then the
//! migrations the backup predates.

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::{BackupError, MIGRATOR, PgTarget, PgTools};

/// Before the backup's own statements, in the same transaction: the schema
/// emptied, so tables the backup predates go too and the migrations can
/// create them again. Waiting for locks is bounded.
const PREFIX: &str = "SET lock_timeout = '60s';\n\
                      DROP SCHEMA IF EXISTS public CASCADE;\n\
                      CREATE SCHEMA public;\n";

#[derive(Debug, Clone)]
pub struct Restored {
    pub elapsed: Duration,
    /// Migrations applied after the restore (those newer than the backup).
    pub migrations_applied: usize,
}

/// Replaces the database `pool` is connected to with the backup at `path`,
/// then applies pending migrations. Other connections to the database are
/// ended before (so none holds a lock the restore waits on) and after (so
/// no process keeps statements or type ids of the replaced schema); their
/// pools reconnect.
pub async fn restore(
    pool: &PgPool,
    target: &PgTarget,
    tools: &PgTools,
    path: &Path,
    cancel: &CancellationToken,
) -> Result<Restored, BackupError> {
    let started = Instant::now();
    end_other_connections(pool).await?;
    let mut psql = tools.spawn(
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "--no-password",
            "-f",
            "-",
        ],
        target,
        target.database(),
        true,
        false,
    )?;
    let file = path.display().to_string();
    let mut script = tools.spawn(
        "pg_restore",
        &[
            "--no-owner",
            "--no-privileges",
            "--clean",
            "--if-exists",
            "--file=-",
            "--",
            &file,
        ],
        target,
        target.database(),
        false,
        true,
    )?;
    let mut stdin = psql.child.stdin.take().expect("stdin is piped");
    let mut statements = script.child.stdout.take().expect("stdout is piped");
    // psql commits when its input ends: the pipe is closed by dropping it.
    let fed = async move {
        stdin.write_all(PREFIX.as_bytes()).await?;
        tokio::io::copy(&mut statements, &mut stdin).await?;
        stdin.flush().await?;
        drop(stdin);
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        fed = fed => fed.map_err(BackupError::io("feeding the backup to psql"))?,
        () = cancel.cancelled() => return Err(BackupError::Cancelled),
    }
    script.finish(cancel).await?;
    psql.finish(cancel).await?;
    end_other_connections(pool).await?;
    let before = applied(pool).await?;
    MIGRATOR
        .run(pool)
        .await
        .map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
    let migrations_applied = applied(pool).await?.saturating_sub(before);
    Ok(Restored {
        elapsed: started.elapsed(),
        migrations_applied,
    })
}

async fn applied(pool: &PgPool) -> Result<usize, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await?;
    Ok(n as usize)
}

/// Ends every other session on this database (other processes' pools open
/// new ones on their next query).
async fn end_other_connections(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND backend_type = 'client backend'",
    )
    .execute(pool)
    .await?;
    Ok(())
}
