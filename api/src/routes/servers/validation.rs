//! Validating a server (again) and re-pinning its host key: both end in a
//! `server.validate` job.

use axum::extract::State;
use berth_jobs::store::{self, NewJob};
use berth_jobs::{Enqueued, ServerValidate};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{Envelope, Json, Path};
use crate::error::{ApiError, FieldError};
use crate::rate_limit::Limited;
use crate::state::AppState;

use super::authorized;
use crate::access::Action;

pub(super) async fn enqueue_validation(
    conn: &mut PgConnection,
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<Enqueued, ApiError> {
    let job = NewJob::new(ServerValidate { server_id: id })
        .owner(principal.user_id())
        .server(id)
        .dedupe_key(format!("validate:{id}"));
    Ok(store::enqueue(conn, state.jobs.policies(), job).await?)
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobAccepted {
    job_id: String,
}

/// Validate the server again (202).
#[utoipa::path(post, path = "/servers/{id}/validate", tag = "servers",
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 202, description = "Validation queued", body = JobAccepted),
    (status = 404, description = "No such server of yours", body = crate::error::ErrorEnvelope),
    (status = 429, description = "BERTH_RATE_LIMIT_SERVER_VALIDATE exceeded", body = crate::error::ErrorEnvelope)))]
pub async fn validate_again(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Limited<Envelope<JobAccepted>>, ApiError> {
    let mut tx = state.pool.begin().await?;
    authorized(&mut tx, &principal, id, Action::Operate).await?;
    // Each validation holds an SSH slot of the probe queue: one user cannot
    // keep the queue busy by validating again and again.
    let decision = state
        .rate_limiter
        .enforce(
            "server_validate",
            &principal.user_id().to_string(),
            state.config.server_validate_rate_limit,
            "too many validations recently; try again later",
        )
        .await?;
    let job = enqueue_validation(&mut tx, &state, &principal, id).await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "server.validate",
            "server",
            id,
            serde_json::json!({ "jobId": job.id }),
        ),
    )
    .await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Limited(
        decision,
        Envelope::accepted(JobAccepted { job_id: job.id }),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Repin {
    /// The `hostKeyOffered` the owner checked and accepts.
    fingerprint: String,
}

/// Accept the host key the server now presents (after a reinstall, say), then
/// validate again. The fingerprint must be the one shown as `hostKeyOffered`.
#[utoipa::path(post, path = "/servers/{id}/host-key", tag = "servers", request_body = Repin,
    params(("id" = Uuid, Path, description = "Server id")), responses(
    (status = 202, description = "Re-pinned; validation queued", body = JobAccepted),
    (status = 400, description = "Not the offered key", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours", body = crate::error::ErrorEnvelope)))]
pub async fn repin(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<Repin>,
) -> Result<Envelope<JobAccepted>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let server = authorized(&mut tx, &principal, id, Action::Operate).await?;
    if server.host_key_offered.as_deref() != Some(req.fingerprint.trim()) {
        return Err(ApiError::validation(vec![FieldError::new(
            "fingerprint",
            "must be the host key the server presented (hostKeyOffered)",
        )]));
    }
    sqlx::query(
        "UPDATE servers SET host_key = host_key_offered, host_key_offered = NULL, status = 'pending', \
         status_reason = NULL, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let job = enqueue_validation(&mut tx, &state, &principal, id).await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "server.host_key_repin",
            "server",
            id,
            serde_json::json!({ "old": server.host_key, "new": req.fingerprint.trim() }),
        ),
    )
    .await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Envelope::accepted(JobAccepted { job_id: job.id }))
}
