//! Moving a deployment into a project, out of it, or between two
//! (`PUT /deployments/{id}/project`).

use axum::extract::State;
use serde::Deserialize;
use uuid::Uuid;

use super::{DeploymentView, view};
use crate::access::{self, Action, ProjectRole, Relation, Resource};
use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{Envelope, Json, Path};
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectMove {
    /// The project to move it into; `null` takes it out of its project.
    project_id: Option<Uuid>,
}

/// Move the deployment into a project (its owner, as OWNER or ADMIN of the
/// project), or out of one (its owner, or the project's OWNER or ADMIN).
/// Members of the project it leaves lose it at once.
#[utoipa::path(put, path = "/deployments/{id}/project", tag = "deployments", request_body = ProjectMove,
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 200, description = "The deployment now", body = DeploymentView),
    (status = 403, description = "Not its owner, or not OWNER/ADMIN of a project involved", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such deployment or project of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The server's owner is not a DEVELOPER of the project", body = crate::error::ErrorEnvelope)))]
pub async fn move_project(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<ProjectMove>,
) -> Result<Envelope<DeploymentView>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let grant = access::authorize(
        &mut tx,
        &principal,
        Resource::Deployment(id),
        Action::Manage,
    )
    .await?;
    let row = super::load(&mut tx, &grant, true).await?;
    let from = row.project_id;
    if from == req.project_id {
        let view = view(&mut tx, row).await?;
        return Ok(Envelope::ok(view));
    }
    if let Some(to) = req.project_id {
        // Into a project: the deployment's owner brings it, as someone who
        // manages that project.
        if grant.relation() != Relation::Owner {
            return Err(ApiError::Forbidden(
                "only the deployment's owner moves it into a project".into(),
            ));
        }
        access::authorize(&mut tx, &principal, Resource::Project(to), Action::Manage).await?;
        // The owner's servers go with it: they must be a DEVELOPER there.
        let server_owner_role: Option<ProjectRole> = sqlx::query_scalar(
            "SELECT m.role FROM servers s JOIN project_members m \
             ON m.user_id = s.owner_user_id AND m.project_id = $2 WHERE s.id = $1",
        )
        .bind(row.server_id)
        .bind(to)
        .fetch_optional(&mut *tx)
        .await?;
        if server_owner_role.is_none_or(|r| r < ProjectRole::Developer) {
            return Err(ApiError::Conflict(
                "the server's owner is not a DEVELOPER of that project".into(),
            ));
        }
    }
    sqlx::query("UPDATE deployments SET project_id = $2, updated_at = now() WHERE id = $1")
        .bind(row.id)
        .bind(req.project_id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "deployment.move",
            "deployment",
            id,
            serde_json::json!({ "from": from, "to": req.project_id }),
        ),
    )
    .await?;
    let row = super::load(&mut tx, &grant, false).await?;
    let view = view(&mut tx, row).await?;
    tx.commit().await?;
    if let Some(from) = from {
        crate::realtime::revoke(&state, crate::realtime::Revocation::deployment(from, id)).await;
    }
    Ok(Envelope::ok(view))
}
