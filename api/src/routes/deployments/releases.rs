//! Releases: how one is made (by a create, a redeploy, a push or a
//! rollback) and enqueued, and the release history.

use axum::extract::State;
use berth_deployments::settings::{Settings, Snapshot};
use berth_jobs::store::{self, NewJob, SlotPool};
use berth_jobs::{DeploymentDeploy, DeploymentRollback, Enqueued};
use berth_secrets::{deployment_secret_binding, release_snapshot_binding};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{DeploymentRow, RELEASE_COLUMNS, ReleaseView, authorized};
use crate::access::Action;
use crate::auth::Principal;
use crate::envelope::{Envelope, Path};
use crate::error::ApiError;
use crate::state::AppState;

/// What makes a release.
pub(crate) enum Making<'a> {
    /// The deployment's source and its env and settings now; `commit` pins
    /// a push's commit.
    Build {
        trigger: &'static str,
        commit: Option<&'a str>,
    },
    /// A kept release's image and snapshot again.
    Rollback { to: i32 },
}

pub(crate) fn seal_snapshot(
    state: &AppState,
    id: Uuid,
    number: i32,
    snapshot: &Snapshot,
) -> Result<String, ApiError> {
    let plain = serde_json::to_vec(snapshot)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("snapshot: {e}")))?;
    let row = format!("{id}/{number}");
    Ok(state.keys.seal(&plain, release_snapshot_binding(&row)))
}

pub(crate) fn open_env(
    state: &AppState,
    id: Uuid,
    sealed: &str,
) -> Result<std::collections::BTreeMap<String, String>, ApiError> {
    if sealed.is_empty() {
        return Ok(Default::default());
    }
    let id = id.to_string();
    let plain = state
        .keys
        .open(sealed, deployment_secret_binding(&id, "env"))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("env does not open: {e}")))?;
    serde_json::from_slice(&plain).map_err(|e| ApiError::Internal(anyhow::anyhow!("env: {e}")))
}

pub(crate) fn seal_env(
    state: &AppState,
    id: Uuid,
    env: &std::collections::BTreeMap<String, String>,
) -> String {
    let plain = serde_json::to_vec(env).expect("a map of strings encodes");
    state
        .keys
        .seal(&plain, deployment_secret_binding(&id.to_string(), "env"))
}

/// Adds the next release to `row` (locked by the caller) and enqueues its
/// job; the caller commits and dispatches.
pub(crate) async fn make_release(
    conn: &mut PgConnection,
    state: &AppState,
    owner: Uuid,
    row: &DeploymentRow,
    making: Making<'_>,
) -> Result<(i32, Enqueued), ApiError> {
    let number: i32 = sqlx::query_scalar(
        "UPDATE deployments SET next_release = next_release + 1, updated_at = now() \
         WHERE id = $1 RETURNING next_release - 1",
    )
    .bind(row.id)
    .fetch_one(&mut *conn)
    .await?;
    let (trigger, commit, rollback_of, image_tag, source_ref, snapshot) = match making {
        Making::Build { trigger, commit } => {
            let env_sealed: String =
                sqlx::query_scalar("SELECT env_sealed FROM deployments WHERE id = $1")
                    .bind(row.id)
                    .fetch_one(&mut *conn)
                    .await?;
            let snapshot = Snapshot {
                env: open_env(state, row.id, &env_sealed)?,
                settings: row.settings()?,
            };
            (trigger, commit, None, None, None, snapshot)
        }
        Making::Rollback { to } => {
            let (tag, source_ref, sealed): (Option<String>, Option<String>, String) =
                sqlx::query_as(
                    "SELECT image_tag, source_ref, snapshot_sealed FROM releases \
                     WHERE deployment_id = $1 AND number = $2",
                )
                .bind(row.id)
                .bind(to)
                .fetch_one(&mut *conn)
                .await?;
            let key = format!("{}/{to}", row.id);
            let plain = state
                .keys
                .open(&sealed, release_snapshot_binding(&key))
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("snapshot: {e}")))?;
            let snapshot: Snapshot = serde_json::from_slice(&plain)
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("snapshot: {e}")))?;
            ("rollback", None, Some(to), tag, source_ref, snapshot)
        }
    };
    sqlx::query(
        "INSERT INTO releases (deployment_id, number, trigger, rollback_of, requested_commit, \
         source_ref, image_tag, snapshot_sealed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(row.id)
    .bind(number)
    .bind(trigger)
    .bind(rollback_of)
    .bind(commit)
    .bind(&source_ref)
    .bind(&image_tag)
    .bind(seal_snapshot(state, row.id, number, &snapshot)?)
    .execute(&mut *conn)
    .await?;
    if row.source_type == "upload" && rollback_of.is_none() {
        // The newest archive is kept for redeploys; older ones go.
        sqlx::query(
            "INSERT INTO release_archives (deployment_id, number, sha256, bytes) \
             SELECT deployment_id, $2, sha256, bytes FROM release_archives \
             WHERE deployment_id = $1 ORDER BY number DESC LIMIT 1",
        )
        .bind(row.id)
        .bind(number)
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM release_archives WHERE deployment_id = $1 AND number < $2")
            .bind(row.id)
            .bind(number)
            .execute(&mut *conn)
            .await?;
    }
    let job = match rollback_of {
        None => {
            let job = NewJob::new(DeploymentDeploy {
                deployment_id: row.id,
                release: number,
            })
            .slot(SlotPool::builds(
                row.server_id,
                u16::try_from(row.build_slots).unwrap_or(1),
            ));
            store::enqueue(
                conn,
                state.jobs.policies(),
                job.owner(owner).server(row.server_id).deployment(row.id),
            )
            .await?
        }
        Some(_) => {
            let job = NewJob::new(DeploymentRollback {
                deployment_id: row.id,
                release: number,
            });
            store::enqueue(
                conn,
                state.jobs.policies(),
                job.owner(owner).server(row.server_id).deployment(row.id),
            )
            .await?
        }
    };
    sqlx::query("UPDATE releases SET job_id = $3 WHERE deployment_id = $1 AND number = $2")
        .bind(row.id)
        .bind(number)
        .bind(&job.id)
        .execute(&mut *conn)
        .await?;
    // While nothing is live, the deployment waits with its release.
    sqlx::query(
        "UPDATE deployments SET status = 'queued' WHERE id = $1 AND live_release IS NULL \
         AND status IN ('failed', 'stopped', 'queued')",
    )
    .bind(row.id)
    .execute(&mut *conn)
    .await?;
    Ok((number, job))
}

/// What a release-starting call answers.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseAccepted {
    /// The new release's number.
    release: i32,
    /// Its job (`GET /jobs/{jobId}`; cancel with `POST /deployments/{id}/cancel`).
    job_id: String,
}

impl ReleaseAccepted {
    pub(crate) fn new(release: i32, job: &Enqueued) -> Self {
        Self {
            release,
            job_id: job.id.clone(),
        }
    }
}

/// The settings as stored for a new deployment.
pub(crate) fn settings_json(settings: &Settings) -> serde_json::Value {
    serde_json::to_value(settings).expect("settings encode")
}

/// Every release of the deployment, newest first.
#[utoipa::path(get, path = "/deployments/{id}/releases", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 200, description = "Releases, newest first", body = Vec<ReleaseView>),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope)))]
pub async fn list_releases(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<Vec<ReleaseView>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    authorized(&mut conn, &principal, id, Action::Read).await?;
    let releases: Vec<ReleaseView> = sqlx::query_as(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE deployment_id = $1 ORDER BY number DESC"
    ))
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Envelope::ok(releases))
}
