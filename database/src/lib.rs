//! Berth's own database: its schema ([`MIGRATOR`]), backups of it, and
//! restores. A backup is `pg_dump`'s custom format taken inside a snapshot
//! whose per-table row counts are read in the same transaction, so the
//! verifying restore into a scratch database can be compared row for row
//! with what was dumped. Nothing here puts the database's password on a
//! command line: the PostgreSQL tools read it from a passfile only this
//! process can read.

pub mod catalogue;
mod counts;
mod dump;
mod restore;
mod target;
mod tools;
mod verify;

use sqlx::migrate::Migrator;

pub use counts::TableRows;
pub use dump::{Dumped, dump};
pub use restore::{Restored, restore};
pub use target::{PgTarget, TargetError, remove_stale_passfiles};
pub use tools::PgTools;
pub use verify::{VerifyError, checksum, verify};

/// Every migration, embedded: the api applies them at start, a restore
/// brings an older backup up to date with them.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Removes the backup file `file_name` from `dir`; one already gone is not
/// an error (the worker's retention and the api's delete both end here).
pub async fn remove_backup_file(dir: &std::path::Path, file_name: &str) -> std::io::Result<()> {
    match tokio::fs::remove_file(dir.join(file_name)).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What went wrong with a backup or restore, in words fit for its job's
/// error (no password, no full connection string).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Target(#[from] TargetError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error("stopped: the job was cancelled or ran out of time")]
    Cancelled,
    #[error("{0}")]
    Verify(#[from] VerifyError),
}

impl BackupError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
        let what = what.into();
        move |source| BackupError::Io { what, source }
    }
}
