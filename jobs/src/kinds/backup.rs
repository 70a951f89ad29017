//! `backup.create` and `backup.restore` on the `backup` queue: Berth's own
//! database dumped, verified by a restore into a scratch database, and
//! restored over the live one. They share one concurrency key, so no two run
//! at once anywhere.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::JobPayload;
use crate::Queue;

const KEY: &str = "platform:backup";

/// Why a backup was taken.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackupTrigger {
    Manual,
    Scheduled,
    PreRestore,
}

impl BackupTrigger {
    pub fn name(self) -> &'static str {
        match self {
            BackupTrigger::Manual => "manual",
            BackupTrigger::Scheduled => "scheduled",
            BackupTrigger::PreRestore => "pre_restore",
        }
    }
}

/// Dumps the database into the backup directory and verifies the file.
///
/// Idempotency: an attempt writes a file of its own and records it on the
/// backup's row (created if the scheduler enqueued the job); a retry
/// replaces an earlier attempt's file, which is removed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupCreate {
    pub backup_id: Uuid,
    pub trigger: BackupTrigger,
    /// Scheduled backups: how many verified ones to keep (older files are
    /// deleted once this one is verified).
    pub keep: Option<u32>,
}

impl JobPayload for BackupCreate {
    const KIND: &'static str = "backup.create";
    const QUEUE: Queue = Queue::Backup;

    fn concurrency_key(&self) -> Option<String> {
        Some(KEY.into())
    }
}

/// Restores a verified backup over the live database, after taking a fresh
/// backup, with the api in maintenance.
///
/// Not idempotent in one respect: it is all or nothing up to the commit of
/// the restore, and running it again restores the same file again, but a
/// worker killed between that commit and the re-recording of the backup
/// catalogue leaves the catalogue as the restored backup had it (the files
/// stay on disk). Its queue's single retry is for a worker lost before the
/// restore began.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupRestore {
    pub backup_id: Uuid,
    /// The backup taken just before (its row is made by the api).
    pub safety_backup_id: Uuid,
}

impl JobPayload for BackupRestore {
    const KIND: &'static str = "backup.restore";
    const QUEUE: Queue = Queue::Backup;

    fn concurrency_key(&self) -> Option<String> {
        Some(KEY.into())
    }
}
