//! A project's members: listed with its pending invites, their roles
//! changed, removed. The OWNER changes only by a transfer; the creator is
//! never removed nor demoted.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::invites::{INVITE_COLUMNS, InviteView};
use super::{load, notice};
use crate::access::{self, Action, Grant, ProjectRole, Resource};
use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{Envelope, Json, Path};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    user_id: Uuid,
    name: String,
    email: String,
    avatar_url: Option<String>,
    role: ProjectRole,
    /// Created the project: cannot be removed or demoted.
    creator: bool,
    added_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MembersView {
    /// OWNER first, then by role and name.
    members: Vec<MemberView>,
    /// Invitations not yet accepted or declined (expired ones included,
    /// marked), newest first.
    invites: Vec<InviteView>,
}

async fn members_of(conn: &mut PgConnection, grant: &Grant) -> Result<MembersView, ApiError> {
    let members: Vec<MemberView> = sqlx::query_as(
        "SELECT m.user_id, u.name, u.email, u.avatar_url, m.role, (p.created_by = m.user_id) AS creator, m.added_at \
         FROM project_members m JOIN users u ON u.id = m.user_id JOIN projects p ON p.id = m.project_id \
         WHERE m.project_id = $1 ORDER BY m.role DESC, u.name, u.id",
    )
    .bind(grant.id())
    .fetch_all(&mut *conn)
    .await?;
    let invites: Vec<InviteView> = sqlx::query_as(&format!(
        "SELECT {INVITE_COLUMNS} FROM project_invites i WHERE i.project_id = $1 ORDER BY i.created_at DESC, i.id"
    ))
    .bind(grant.id())
    .fetch_all(&mut *conn)
    .await?;
    Ok(MembersView { members, invites })
}

/// The project's members and pending invites.
#[utoipa::path(get, path = "/projects/{id}/members", tag = "projects",
    params(("id" = Uuid, Path, description = "Project id")), responses(
    (status = 200, description = "Members and invites", body = MembersView),
    (status = 404, description = "No such project of yours", body = crate::error::ErrorEnvelope)))]
pub async fn list_members(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<MembersView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let grant =
        access::authorize(&mut conn, &principal, Resource::Project(id), Action::Read).await?;
    Ok(Envelope::ok(members_of(&mut conn, &grant).await?))
}

/// A member's role and whether they created the project, locked.
async fn member(
    conn: &mut PgConnection,
    grant: &Grant,
    user_id: Uuid,
) -> Result<(ProjectRole, bool), ApiError> {
    sqlx::query_as(
        "SELECT m.role, (p.created_by = m.user_id) FROM project_members m \
         JOIN projects p ON p.id = m.project_id \
         WHERE m.project_id = $1 AND m.user_id = $2 FOR UPDATE OF m",
    )
    .bind(grant.id())
    .bind(user_id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::NotFound("no such member of this project".into()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleRequest {
    /// ADMIN, DEVELOPER or VIEWER (OWNER moves by `POST /projects/{id}/transfer`).
    #[schema(value_type = String, pattern = "^(ADMIN|DEVELOPER|VIEWER)$")]
    role: String,
}

/// ADMIN, DEVELOPER or VIEWER, for invites and role changes.
pub(super) fn grantable_role(value: &str) -> Result<ProjectRole, ApiError> {
    match ProjectRole::parse(value) {
        Some(ProjectRole::Owner) => Err(ApiError::validation(vec![FieldError::new(
            "role",
            "OWNER is handed over with POST /projects/{id}/transfer",
        )])),
        Some(role) => Ok(role),
        None => Err(ApiError::validation(vec![FieldError::new(
            "role",
            "must be ADMIN, DEVELOPER or VIEWER",
        )])),
    }
}

/// Change a member's role (OWNER, ADMIN).
#[utoipa::path(patch, path = "/projects/{id}/members/{userId}", tag = "projects", request_body = RoleRequest,
    params(("id" = Uuid, Path, description = "Project id"), ("userId" = Uuid, Path, description = "Member's user id")),
    responses(
    (status = 200, description = "Members and invites now", body = MembersView),
    (status = 400, description = "Not a role that can be given", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Needs ADMIN or OWNER", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such project of yours, or no such member", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The OWNER or the creator", body = crate::error::ErrorEnvelope)))]
pub async fn change_role(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path((id, user_id)): Path<(Uuid, Uuid)>,
    Json(req): Json<RoleRequest>,
) -> Result<Envelope<MembersView>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let grant =
        access::authorize(&mut tx, &principal, Resource::Project(id), Action::Manage).await?;
    let role = grantable_role(&req.role)?;
    let (current, creator) = member(&mut tx, &grant, user_id).await?;
    if current == ProjectRole::Owner {
        return Err(ApiError::Conflict(
            "the OWNER's role changes only by a transfer".into(),
        ));
    }
    if creator && role < current {
        return Err(ApiError::Conflict(
            "the project's creator cannot be demoted".into(),
        ));
    }
    sqlx::query(
        "UPDATE project_members SET role = $3, updated_at = now() WHERE project_id = $1 AND user_id = $2",
    )
    .bind(grant.id())
    .bind(user_id)
    .bind(role)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "project.member_role",
            "project",
            id,
            serde_json::json!({ "userId": user_id, "from": current, "to": role }),
        ),
    )
    .await?;
    let project = load(&mut tx, &principal, &grant).await?;
    let event = if current == role {
        None
    } else {
        Some(
            notice::send(
                &mut tx,
                user_id,
                &format!("Your role in {} is now {}", project.name, role.name()),
                &format!(
                    "{} changed your role in the project {} from {} to {}.",
                    principal.user.name,
                    project.name,
                    current.name(),
                    role.name()
                ),
                serde_json::json!({ "projectId": id, "role": role, "previousRole": current }),
            )
            .await?,
        )
    };
    let view = members_of(&mut tx, &grant).await?;
    tx.commit().await?;
    if let Some(event) = event {
        event.publish(&state).await;
    }
    Ok(Envelope::ok(view))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberRemoved {
    removed: bool,
}

/// Remove a member (OWNER, ADMIN), or leave (any member). The OWNER hands
/// the project over first; the creator stays. Their sockets stop receiving
/// the project's events at once.
#[utoipa::path(delete, path = "/projects/{id}/members/{userId}", tag = "projects",
    params(("id" = Uuid, Path, description = "Project id"), ("userId" = Uuid, Path, description = "Member's user id")),
    responses(
    (status = 200, description = "Removed", body = MemberRemoved),
    (status = 403, description = "Needs ADMIN or OWNER to remove someone else", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such project of yours, or no such member", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The OWNER or the creator", body = crate::error::ErrorEnvelope)))]
pub async fn remove_member(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path((id, user_id)): Path<(Uuid, Uuid)>,
) -> Result<Envelope<MemberRemoved>, ApiError> {
    let leaving = user_id == principal.user_id();
    let action = if leaving {
        Action::Read
    } else {
        Action::Manage
    };
    let mut tx = state.pool.begin().await?;
    let grant = access::authorize(&mut tx, &principal, Resource::Project(id), action).await?;
    let (role, creator) = member(&mut tx, &grant, user_id).await?;
    if creator {
        return Err(ApiError::Conflict(
            "the project's creator cannot be removed".into(),
        ));
    }
    if role == ProjectRole::Owner {
        return Err(ApiError::Conflict(
            "the OWNER hands the project over (POST /projects/{id}/transfer) before leaving".into(),
        ));
    }
    sqlx::query("DELETE FROM project_members WHERE project_id = $1 AND user_id = $2")
        .bind(grant.id())
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            if leaving {
                "project.leave"
            } else {
                "project.member_remove"
            },
            "project",
            id,
            serde_json::json!({ "userId": user_id, "role": role }),
        ),
    )
    .await?;
    let project = load_name(&mut tx, &grant).await?;
    let event = if leaving {
        None
    } else {
        Some(
            notice::send(
                &mut tx,
                user_id,
                &format!("You were removed from {project}"),
                &format!(
                    "{} removed you from the project {project}.",
                    principal.user.name
                ),
                serde_json::json!({ "projectId": id }),
            )
            .await?,
        )
    };
    tx.commit().await?;
    crate::realtime::revoke(&state, crate::realtime::Revocation::member(id, user_id)).await;
    if let Some(event) = event {
        event.publish(&state).await;
    }
    Ok(Envelope::ok(MemberRemoved { removed: true }))
}

async fn load_name(conn: &mut PgConnection, grant: &Grant) -> Result<String, ApiError> {
    Ok(
        sqlx::query_scalar("SELECT name FROM projects WHERE id = $1")
            .bind(grant.id())
            .fetch_one(conn)
            .await?,
    )
}
