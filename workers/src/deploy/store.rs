//! What the deployment jobs read and write in Postgres: the deployment, its
//! releases, their steps and outcomes. Every outcome that changes what is
//! live is one transaction, so a worker killed between two writes never
//! leaves two releases live or none recorded.

use berth_deployments::settings::Snapshot;
use berth_deployments::state::{DeploymentStatus, ReleaseState};
use berth_secrets::{Keyring, release_snapshot_binding};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeploymentRow {
    pub id: Uuid,
    pub owner_user_id: Uuid,
    pub server_id: Uuid,
    pub name: String,
    pub source_type: String,
    pub repo_url: Option<String>,
    pub branch: Option<String>,
    pub image: Option<String>,
    pub deploy_key_sealed: Option<String>,
    /// `deploy_key`, or `github`: cloned with the owner's GitHub token.
    pub git_access: String,
    pub status: DeploymentStatus,
    pub live_release: Option<i32>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReleaseRow {
    pub number: i32,
    pub trigger: String,
    pub rollback_of: Option<i32>,
    pub requested_commit: Option<String>,
    pub source_ref: Option<String>,
    pub image_tag: Option<String>,
    pub snapshot_sealed: String,
    pub state: ReleaseState,
    pub container: Option<String>,
    pub port: Option<i32>,
    pub image_pruned: bool,
}

const DEPLOYMENT_COLUMNS: &str = "id, owner_user_id, server_id, name, source_type, repo_url, branch, \
    image, deploy_key_sealed, git_access, status, live_release";
const RELEASE_COLUMNS: &str = "number, trigger, rollback_of, requested_commit, source_ref, image_tag, \
    snapshot_sealed, state, container, port, image_pruned";

pub async fn deployment(pool: &PgPool, id: Uuid) -> Result<Option<DeploymentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub async fn release(
    pool: &PgPool,
    id: Uuid,
    number: i32,
) -> Result<Option<ReleaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE deployment_id = $1 AND number = $2"
    ))
    .bind(id)
    .bind(number)
    .fetch_optional(pool)
    .await
}

/// The owner's sealed GitHub token, when GitHub is linked with one.
pub async fn github_token(pool: &PgPool, user_id: Uuid) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT token_sealed FROM oauth_identities WHERE user_id = $1 AND provider = 'github'",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await
    .map(Option::flatten)
}

/// All releases, newest first.
pub async fn releases(pool: &PgPool, id: Uuid) -> Result<Vec<ReleaseRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE deployment_id = $1 ORDER BY number DESC"
    ))
    .bind(id)
    .fetch_all(pool)
    .await
}

pub fn open_snapshot(keys: &Keyring, id: Uuid, release: &ReleaseRow) -> Result<Snapshot, String> {
    let row = format!("{id}/{}", release.number);
    let plain = keys
        .open(&release.snapshot_sealed, release_snapshot_binding(&row))
        .map_err(|e| format!("the release's snapshot does not open: {e}"))?;
    serde_json::from_slice(&plain).map_err(|e| format!("the release's snapshot is unreadable: {e}"))
}

/// The release is on its way: `building` (or `starting` for a rollback,
/// which builds nothing), and so is the deployment.
pub async fn begin(
    pool: &PgPool,
    id: Uuid,
    number: i32,
    job_id: &str,
    state: ReleaseState,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE releases SET state = $3, job_id = $4, started_at = COALESCE(started_at, now()) \
         WHERE deployment_id = $1 AND number = $2",
    )
    .bind(id)
    .bind(number)
    .bind(state)
    .bind(job_id)
    .execute(&mut *tx)
    .await?;
    set_status(&mut tx, id, progress_status(state)).await?;
    tx.commit().await
}

fn progress_status(state: ReleaseState) -> DeploymentStatus {
    match state {
        ReleaseState::Building => DeploymentStatus::Building,
        _ => DeploymentStatus::Starting,
    }
}

async fn set_status(
    conn: &mut sqlx::PgConnection,
    id: Uuid,
    status: DeploymentStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE deployments SET status = $2, updated_at = now() WHERE id = $1 AND status <> 'deleting'")
        .bind(id)
        .bind(status)
        .execute(conn)
        .await
        .map(|_| ())
}

/// One step's timing, appended to the release's `steps`.
pub async fn step_done(
    pool: &PgPool,
    id: Uuid,
    number: i32,
    name: &str,
    started_at: DateTime<Utc>,
    ms: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE releases SET steps = steps || jsonb_build_array(jsonb_build_object('name', $3::text, \
         'startedAt', $4::timestamptz, 'ms', $5::bigint)) WHERE deployment_id = $1 AND number = $2",
    )
    .bind(id)
    .bind(number)
    .bind(name)
    .bind(started_at)
    .bind(ms as i64)
    .execute(pool)
    .await
    .map(|_| ())
}

/// What the fetch found (commit, checksum or digest) and the image to run.
pub async fn fetched(
    pool: &PgPool,
    id: Uuid,
    number: i32,
    source_ref: &str,
    image_tag: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE releases SET source_ref = $3, image_tag = $4 WHERE deployment_id = $1 AND number = $2",
    )
    .bind(id)
    .bind(number)
    .bind(source_ref)
    .bind(image_tag)
    .execute(pool)
    .await
    .map(|_| ())
}

pub async fn preflight(
    pool: &PgPool,
    id: Uuid,
    number: i32,
    report: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE releases SET preflight = $3 WHERE deployment_id = $1 AND number = $2")
        .bind(id)
        .bind(number)
        .bind(report)
        .execute(pool)
        .await
        .map(|_| ())
}

/// The release's container is started on `port`.
pub async fn starting(
    pool: &PgPool,
    id: Uuid,
    number: i32,
    container: &str,
    port: u16,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE releases SET state = 'starting', container = $3, port = $4 \
         WHERE deployment_id = $1 AND number = $2",
    )
    .bind(id)
    .bind(number)
    .bind(container)
    .bind(i32::from(port))
    .execute(&mut *tx)
    .await?;
    set_status(&mut tx, id, DeploymentStatus::Starting).await?;
    tx.commit().await
}

/// nginx now sends traffic to `number`: it is live, the one before is
/// superseded, the deployment is running. Returns the release that was live.
pub async fn went_live(pool: &PgPool, id: Uuid, number: i32) -> Result<Option<i32>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let before: Option<i32> =
        sqlx::query_scalar("SELECT live_release FROM deployments WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query(
        "UPDATE releases SET state = 'superseded' WHERE deployment_id = $1 AND state = 'live' AND number <> $2",
    )
    .bind(id)
    .bind(number)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE releases SET state = 'live', error = NULL, failed_step = NULL, finished_at = now() \
         WHERE deployment_id = $1 AND number = $2",
    )
    .bind(id)
    .bind(number)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE deployments SET live_release = $2, status = 'running', status_reason = NULL, stopped = false, \
         updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(number)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(before.filter(|b| *b != number))
}

/// How a release ended before going live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Failed,
    Cancelled,
}

/// The release ended at `step`; the deployment says what still serves.
pub async fn ended(
    pool: &PgPool,
    id: Uuid,
    number: i32,
    ending: Ending,
    step: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    let error: String = error.chars().take(4000).collect();
    let (state, reason) = match ending {
        Ending::Failed => (
            ReleaseState::Failed,
            format!("v{number} failed at {step}: {error}"),
        ),
        Ending::Cancelled => (
            ReleaseState::Cancelled,
            format!("v{number} was cancelled at {step}"),
        ),
    };
    let mut tx = pool.begin().await?;
    sqlx::query(
        "UPDATE releases SET state = $3, failed_step = $4, error = $5, finished_at = now() \
         WHERE deployment_id = $1 AND number = $2 AND state IN ('queued', 'building', 'starting')",
    )
    .bind(id)
    .bind(number)
    .bind(state)
    .bind(step)
    .bind(&error)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE deployments SET status = CASE WHEN live_release IS NOT NULL AND NOT stopped THEN 'running'::deployment_status \
           WHEN $3 OR stopped THEN 'stopped'::deployment_status ELSE 'failed'::deployment_status END, \
           status_reason = $2, updated_at = now() WHERE id = $1 AND status <> 'deleting'",
    )
    .bind(id)
    .bind(&reason)
    .bind(ending == Ending::Cancelled)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Images of these releases are gone: they can no longer be rolled back to.
pub async fn pruned(pool: &PgPool, id: Uuid, numbers: &[i32]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE releases SET image_pruned = true WHERE deployment_id = $1 AND number = ANY($2)",
    )
    .bind(id)
    .bind(numbers)
    .execute(pool)
    .await
    .map(|_| ())
}

/// After a stop (`stopped`) or a restart (not): the status and its reason.
pub async fn set_running(
    pool: &PgPool,
    id: Uuid,
    stopped: bool,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    let status = if stopped {
        DeploymentStatus::Stopped
    } else {
        DeploymentStatus::Running
    };
    sqlx::query(
        "UPDATE deployments SET status = $2, stopped = $3, status_reason = $4, updated_at = now() \
         WHERE id = $1 AND status <> 'deleting'",
    )
    .bind(id)
    .bind(status)
    .bind(stopped)
    .bind(reason)
    .execute(pool)
    .await
    .map(|_| ())
}

/// The archive uploaded for a release, checked and normalized by the api.
pub async fn archive(
    pool: &PgPool,
    id: Uuid,
    number: i32,
) -> Result<Option<(String, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sha256, bytes FROM release_archives WHERE deployment_id = $1 AND number = $2",
    )
    .bind(id)
    .bind(number)
    .fetch_optional(pool)
    .await
}

pub async fn drop_archive(pool: &PgPool, id: Uuid, number: i32) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM release_archives WHERE deployment_id = $1 AND number = $2")
        .bind(id)
        .bind(number)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Why the last control job failed, on the deployment.
pub async fn set_reason(pool: &PgPool, id: Uuid, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE deployments SET status_reason = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(reason)
        .execute(pool)
        .await
        .map(|_| ())
}

pub async fn delete(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM deployments WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}
