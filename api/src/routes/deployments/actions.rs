//! What a user does to a deployment: redeploy, roll back, stop, restart,
//! cancel, delete. Each is a job (202); cancel stops the one running.

use axum::extract::State;
use berth_deployments::state::{DeploymentStatus, ReleaseState};
use berth_jobs::store::{self, NewJob};
use berth_jobs::{DeploymentDelete, DeploymentRestart, DeploymentStop, Enqueued, JobPayload};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::releases::{Making, ReleaseAccepted, make_release};
use super::{DeploymentRow, authorized, authorized_for_update};
use crate::access::{self, Action, Grant};
use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{Envelope, Path};
use crate::error::ApiError;
use crate::state::AppState;

fn refuse_while_deleting(row: &DeploymentRow) -> Result<(), ApiError> {
    if row.status == DeploymentStatus::Deleting {
        return Err(ApiError::Conflict("the deployment is being deleted".into()));
    }
    Ok(())
}

async fn audited(
    conn: &mut PgConnection,
    client: &Client,
    principal: &Principal,
    action: &'static str,
    id: Uuid,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    audit::record(
        conn,
        client.audit(Some(principal.user_id()), action, "deployment", id, detail),
    )
    .await?;
    Ok(())
}

/// Build and release the deployment again, from its source and its env and
/// settings now (202). A redeploy still queued is superseded by this one.
#[utoipa::path(post, path = "/deployments/{id}/redeploy", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 202, description = "A new release is queued", body = ReleaseAccepted),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Being deleted", body = crate::error::ErrorEnvelope)))]
pub async fn redeploy(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<ReleaseAccepted>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let row = authorized_for_update(&mut tx, &principal, id, Action::Operate).await?;
    refuse_while_deleting(&row)?;
    let (number, job) = make_release(
        &mut tx,
        &state,
        principal.user_id(),
        &row,
        Making::Build {
            trigger: "redeploy",
            commit: None,
        },
    )
    .await?;
    audited(
        &mut tx,
        &client,
        &principal,
        "deployment.redeploy",
        id,
        serde_json::json!({ "release": number }),
    )
    .await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Envelope::accepted(ReleaseAccepted::new(number, &job)))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release to run again; default: the one live before the current.
    #[serde(default, deserialize_with = "crate::validate::whole_number")]
    #[schema(value_type = Option<i32>, minimum = 1)]
    release: Option<i32>,
}

/// Run a kept release again, with its own image, env and settings, through
/// the same health-checked switch; nothing is rebuilt (202).
#[utoipa::path(post, path = "/deployments/{id}/rollback", tag = "deployments",
    request_body(content = Option<RollbackRequest>, description = "Optional; `{}` rolls back to the previous live release"),
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 202, description = "A rollback release is queued", body = ReleaseAccepted),
    (status = 404, description = "No such deployment of yours, or no such release", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Nothing to roll back to, or that release's image is gone", body = crate::error::ErrorEnvelope)))]
pub async fn rollback(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    body: axum::body::Bytes,
) -> Result<Envelope<ReleaseAccepted>, ApiError> {
    // The body is optional: none (or `{}`) rolls back to the previous release.
    let request: RollbackRequest =
        if body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null" {
            RollbackRequest::default()
        } else {
            crate::envelope::json_object(&body)?
        };
    let mut tx = state.pool.begin().await?;
    let row = authorized_for_update(&mut tx, &principal, id, Action::Operate).await?;
    refuse_while_deleting(&row)?;
    let target: Option<(i32, ReleaseState, bool, Option<String>)> = match request.release {
        Some(n) => {
            sqlx::query_as(
                "SELECT number, state, image_pruned, image_tag FROM releases \
                 WHERE deployment_id = $1 AND number = $2",
            )
            .bind(id)
            .bind(n)
            .fetch_optional(&mut *tx)
            .await?
        }
        None => {
            sqlx::query_as(
                "SELECT number, state, image_pruned, image_tag FROM releases \
                 WHERE deployment_id = $1 AND state = 'superseded' AND NOT image_pruned \
                   AND image_tag IS NOT NULL AND number <> COALESCE($2, 0) \
                 ORDER BY finished_at DESC NULLS LAST, number DESC LIMIT 1",
            )
            .bind(id)
            .bind(row.live_release)
            .fetch_optional(&mut *tx)
            .await?
        }
    };
    let Some((to, target_state, pruned, tag)) = target else {
        return Err(match request.release {
            Some(n) => ApiError::NotFound(format!("no release v{n}")),
            None => ApiError::Conflict("no earlier release to roll back to".into()),
        });
    };
    if Some(to) == row.live_release {
        return Err(ApiError::Conflict(format!("v{to} is the live release")));
    }
    if !matches!(target_state, ReleaseState::Superseded) || tag.is_none() {
        return Err(ApiError::Conflict(format!(
            "v{to} never went live: only a release that served can be rolled back to"
        )));
    }
    if pruned {
        return Err(ApiError::Conflict(format!(
            "v{to}'s image was pruned (beyond keepReleases): redeploy instead"
        )));
    }
    let (number, job) = make_release(
        &mut tx,
        &state,
        principal.user_id(),
        &row,
        Making::Rollback { to },
    )
    .await?;
    audited(
        &mut tx,
        &client,
        &principal,
        "deployment.rollback",
        id,
        serde_json::json!({ "release": number, "to": to }),
    )
    .await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Envelope::accepted(ReleaseAccepted::new(number, &job)))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlAccepted {
    /// The job (`GET /jobs/{jobId}`).
    job_id: String,
}

/// Who asks for a control job, and so what they must be allowed.
#[derive(Clone, Copy)]
enum By<'a> {
    /// Stop, restart: a DEVELOPER's action.
    Operator,
    /// Delete: the deployment's owner, or a project's ADMIN.
    Manager,
    /// Delete, by an administrator of the platform.
    Administrator(&'a Grant),
}

async fn control<P: JobPayload>(
    state: &AppState,
    principal: &Principal,
    client: &Client,
    id: Uuid,
    action: &'static str,
    payload: P,
    by: By<'_>,
) -> Result<Envelope<ControlAccepted>, ApiError> {
    let deleting = !matches!(by, By::Operator);
    let administrator = match by {
        By::Administrator(platform) => Some(platform),
        By::Operator | By::Manager => None,
    };
    // Deleting is more than operating: the deployment's owner, or a
    // project's ADMIN.
    let needed = if deleting {
        Action::Manage
    } else {
        Action::Operate
    };
    let mut tx = state.pool.begin().await?;
    let row = match administrator {
        Some(platform) => {
            super::load(
                &mut tx,
                &access::administered_deployment(platform, id),
                true,
            )
            .await?
        }
        None => authorized_for_update(&mut tx, principal, id, needed).await?,
    };
    refuse_while_deleting(&row)?;
    if !deleting && row.live_release.is_none() {
        return Err(ApiError::Conflict(
            "no release is live yet: deploy first".into(),
        ));
    }
    let job: Enqueued = store::enqueue(
        &mut tx,
        state.jobs.policies(),
        NewJob::new(payload)
            .owner(principal.user_id())
            .server(row.server_id)
            .deployment(id),
    )
    .await?;
    if deleting {
        sqlx::query(
            "UPDATE deployments SET status = 'deleting', status_reason = NULL, updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // Releases still waiting will not run.
        for queued in sqlx::query_scalar::<_, String>(
            "SELECT job_id FROM releases WHERE deployment_id = $1 AND state = 'queued' AND job_id IS NOT NULL",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        {
            store::cancel(&mut tx, &queued, "the deployment is being deleted").await?;
        }
    }
    audited(
        &mut tx,
        client,
        principal,
        action,
        id,
        serde_json::json!({ "jobId": job.id }),
    )
    .await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Envelope::accepted(ControlAccepted { job_id: job.id }))
}

/// Take the site down and stop the live container (202).
#[utoipa::path(post, path = "/deployments/{id}/stop", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 202, description = "Stop queued", body = ControlAccepted),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Nothing live, or being deleted", body = crate::error::ErrorEnvelope)))]
pub async fn stop(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<ControlAccepted>, ApiError> {
    let job = DeploymentStop { deployment_id: id };
    control(
        &state,
        &principal,
        &client,
        id,
        "deployment.stop",
        job,
        By::Operator,
    )
    .await
}

/// Restart the live release's container, health-check it and serve it (202).
#[utoipa::path(post, path = "/deployments/{id}/restart", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 202, description = "Restart queued", body = ControlAccepted),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Nothing live, or being deleted", body = crate::error::ErrorEnvelope)))]
pub async fn restart(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<ControlAccepted>, ApiError> {
    let job = DeploymentRestart { deployment_id: id };
    control(
        &state,
        &principal,
        &client,
        id,
        "deployment.restart",
        job,
        By::Operator,
    )
    .await
}

/// Delete the deployment: a job removes its containers, site, images and
/// release directories, then the record (202).
#[utoipa::path(delete, path = "/deployments/{id}", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 202, description = "Deletion queued", body = ControlAccepted),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Already being deleted", body = crate::error::ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<ControlAccepted>, ApiError> {
    let job = DeploymentDelete { deployment_id: id };
    control(
        &state,
        &principal,
        &client,
        id,
        "deployment.delete",
        job,
        By::Manager,
    )
    .await
}

/// `DELETE /admin/deployments/{id}`: the same delete job, asked for by an
/// administrator (`platform` is their grant for the platform).
pub(crate) async fn delete_as_administrator(
    state: &AppState,
    principal: &Principal,
    client: &Client,
    platform: &Grant,
    id: Uuid,
) -> Result<Envelope<ControlAccepted>, ApiError> {
    let job = DeploymentDelete { deployment_id: id };
    control(
        state,
        principal,
        client,
        id,
        "admin.deployment_delete",
        job,
        By::Administrator(platform),
    )
    .await
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cancelled {
    /// The release whose job was stopped.
    release: i32,
    job_id: String,
    /// `true`: it was running and is being stopped (it ends `cancelled`
    /// within seconds); `false`: it had not started and is cancelled.
    was_running: bool,
}

/// Stop the release on its way (building or starting), or a queued one;
/// the live release keeps serving.
#[utoipa::path(post, path = "/deployments/{id}/cancel", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 200, description = "Cancelled before it started", body = Cancelled),
    (status = 202, description = "Being stopped", body = Cancelled),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "No release is on its way", body = crate::error::ErrorEnvelope)))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<Cancelled>, ApiError> {
    let mut tx = state.pool.begin().await?;
    authorized(&mut tx, &principal, id, Action::Operate).await?;
    // The running one first, else the newest waiting.
    let found: Option<(i32, String)> = sqlx::query_as(
        "SELECT r.number, r.job_id FROM releases r JOIN jobs j ON j.id = r.job_id \
         WHERE r.deployment_id = $1 AND r.state IN ('queued', 'building', 'starting') \
           AND j.state IN ('queued', 'running') \
         ORDER BY (j.state = 'running') DESC, r.number DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((release, job_id)) = found else {
        return Err(ApiError::Conflict("no release is on its way".into()));
    };
    let reason = format!("cancelled by {}", principal.user.email);
    let running = match store::cancel(&mut tx, &job_id, &reason).await? {
        store::CancelOutcome::Requested => true,
        store::CancelOutcome::Cancelled => false,
        store::CancelOutcome::Finished | store::CancelOutcome::NotFound => {
            return Err(ApiError::Conflict("the release already finished".into()));
        }
    };
    audited(
        &mut tx,
        &client,
        &principal,
        "deployment.cancel",
        id,
        serde_json::json!({ "release": release, "jobId": job_id }),
    )
    .await?;
    tx.commit().await?;
    if running {
        berth_jobs::events::publish_cancel(&state.redis, &job_id).await;
    }
    let answer = Cancelled {
        release,
        job_id,
        was_running: running,
    };
    Ok(if running {
        Envelope::accepted(answer)
    } else {
        Envelope::ok(answer)
    })
}
