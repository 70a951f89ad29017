//! SPEC §3.8: projects share deployments among their members. Every route
//! here asks [`crate::access::authorize`] with the project as the resource;
//! what a role may do is decided there, the creator's protections here.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::access::{self, Action, Grant, ProjectRole, Resource};
use crate::audit;
use crate::auth::sessions::Client;
use crate::auth::{Principal, Scope};
use crate::envelope::{Envelope, Json, Page, PageQuery, Path, Query};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;
use crate::validate::{self, text_field};

mod invites;
mod members;
mod notice;

pub use invites::*;
pub use members::*;

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ProjectView {
    id: Uuid,
    name: String,
    description: Option<String>,
    /// The caller's role in it.
    role: ProjectRole,
    /// Who created it: never removed nor demoted by anyone else.
    created_by: Uuid,
    /// The member whose role is OWNER.
    owner_user_id: Uuid,
    member_count: i64,
    deployment_count: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Projects with the caller's role; `$1` is the caller.
const VIEW_SELECT: &str = "SELECT p.id, p.name, p.description, me.role, p.created_by, \
    (SELECT user_id FROM project_members WHERE project_id = p.id AND role = 'OWNER') AS owner_user_id, \
    (SELECT count(*) FROM project_members WHERE project_id = p.id) AS member_count, \
    (SELECT count(*) FROM deployments WHERE project_id = p.id) AS deployment_count, \
    p.created_at, p.updated_at \
    FROM projects p JOIN project_members me ON me.project_id = p.id AND me.user_id = $1";

/// The project a grant is for, as the caller sees it.
pub(crate) async fn load(
    conn: &mut PgConnection,
    principal: &Principal,
    grant: &Grant,
) -> Result<ProjectView, ApiError> {
    sqlx::query_as(&format!("{VIEW_SELECT} WHERE p.id = $2"))
        .bind(principal.user_id())
        .bind(grant.id())
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| ApiError::NotFound("no such project".into()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewProject {
    #[schema(value_type = String, min_length = 1, max_length = 100, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    name: String,
    /// Up to 500 characters.
    #[schema(value_type = Option<String>, max_length = 500, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    description: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectChange {
    #[serde(default, deserialize_with = "validate::present")]
    #[schema(value_type = Option<String>, nullable = false, min_length = 1, max_length = 100, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    name: Option<Option<String>>,
    /// Up to 500 characters; `null` or `""` clears it.
    #[serde(default, deserialize_with = "validate::present")]
    #[schema(value_type = Option<String>, max_length = 500, pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$")]
    description: Option<Option<String>>,
}

/// A description: trimmed, at most 500 characters, line breaks and tabs
/// the only control characters.
fn description_field(value: &str, errors: &mut Vec<FieldError>) -> String {
    let value = value.trim();
    if value.chars().count() > 500 {
        errors.push(FieldError::new(
            "description",
            "must be at most 500 characters",
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        errors.push(FieldError::new(
            "description",
            "must not contain control characters",
        ));
    }
    value.to_owned()
}

/// Create a project; its creator is its OWNER.
#[utoipa::path(post, path = "/projects", tag = "projects", request_body = NewProject, responses(
    (status = 201, description = "Created", body = ProjectView),
    (status = 400, description = "Invalid fields", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Needs projects:write", body = crate::error::ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<NewProject>,
) -> Result<Envelope<ProjectView>, ApiError> {
    principal.require(Scope::ProjectsWrite)?;
    let mut errors = Vec::new();
    let name = text_field("name", &req.name, 100, &mut errors);
    let description = req
        .description
        .as_deref()
        .map(|d| description_field(d, &mut errors));
    validate::finish(errors)?;
    let id = Uuid::new_v4();
    let mut tx = state.pool.begin().await?;
    sqlx::query("INSERT INTO projects (id, name, description, created_by) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(&name)
        .bind(description.filter(|d| !d.is_empty()))
        .bind(principal.user_id())
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO project_members (project_id, user_id, role) VALUES ($1, $2, 'OWNER')")
        .bind(id)
        .bind(principal.user_id())
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "project.create",
            "project",
            id,
            serde_json::json!({ "name": name }),
        ),
    )
    .await?;
    let grant = access::authorize(&mut tx, &principal, Resource::Project(id), Action::Read).await?;
    let view = load(&mut tx, &principal, &grant).await?;
    tx.commit().await?;
    Ok(Envelope::created(view))
}

/// The projects the caller is a member of.
#[utoipa::path(get, path = "/projects", tag = "projects", params(PageQuery), responses(
    (status = 200, description = "Projects, newest first", body = Page<ProjectView>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageQuery>,
) -> Result<Envelope<Page<ProjectView>>, ApiError> {
    principal.require(Scope::ProjectsRead)?;
    let request = page.validate()?;
    let mut conn = state.pool.acquire().await?;
    let items: Vec<ProjectView> = sqlx::query_as(&format!(
        "{VIEW_SELECT} ORDER BY p.created_at DESC, p.id OFFSET $2 LIMIT $3"
    ))
    .bind(principal.user_id())
    .bind(request.offset())
    .bind(request.limit)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM project_members WHERE user_id = $1")
        .bind(principal.user_id())
        .fetch_one(&mut *conn)
        .await?;
    Ok(Envelope::ok(Page::new(items, request, total)))
}

/// One project.
#[utoipa::path(get, path = "/projects/{id}", tag = "projects",
    params(("id" = Uuid, Path, description = "Project id")), responses(
    (status = 200, description = "The project", body = ProjectView),
    (status = 404, description = "No such project of yours", body = crate::error::ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<ProjectView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let grant =
        access::authorize(&mut conn, &principal, Resource::Project(id), Action::Read).await?;
    Ok(Envelope::ok(load(&mut conn, &principal, &grant).await?))
}

/// Rename a project or change its description (OWNER, ADMIN).
#[utoipa::path(patch, path = "/projects/{id}", tag = "projects", request_body = ProjectChange,
    params(("id" = Uuid, Path, description = "Project id")), responses(
    (status = 200, description = "The project now", body = ProjectView),
    (status = 400, description = "Invalid fields", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Needs ADMIN or OWNER", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such project of yours", body = crate::error::ErrorEnvelope)))]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<ProjectChange>,
) -> Result<Envelope<ProjectView>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let grant =
        access::authorize(&mut tx, &principal, Resource::Project(id), Action::Manage).await?;
    let mut errors = Vec::new();
    let name = match &req.name {
        Some(Some(name)) => Some(text_field("name", name, 100, &mut errors)),
        Some(None) => {
            errors.push(FieldError::new("name", "must be a name, not null"));
            None
        }
        None => None,
    };
    // `null` or `""` clears the description; absent keeps it.
    let description = req.description.as_ref().map(|d| {
        d.as_deref()
            .map(|d| description_field(d, &mut errors))
            .unwrap_or_default()
    });
    validate::finish(errors)?;
    sqlx::query(
        "UPDATE projects SET name = COALESCE($2, name), \
         description = CASE WHEN $3::text IS NULL THEN description ELSE NULLIF($3, '') END, \
         updated_at = now() WHERE id = $1",
    )
    .bind(grant.id())
    .bind(&name)
    .bind(&description)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "project.update",
            "project",
            id,
            serde_json::json!({ "name": name, "description": description }),
        ),
    )
    .await?;
    let view = load(&mut tx, &principal, &grant).await?;
    tx.commit().await?;
    Ok(Envelope::ok(view))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectDeleted {
    deleted: bool,
    /// Deployments handed back to their owners (they keep running).
    deployments_released: u64,
}

/// Delete a project (OWNER). Its deployments keep running and go back to
/// their owners; its members lose access at once.
#[utoipa::path(delete, path = "/projects/{id}", tag = "projects",
    params(("id" = Uuid, Path, description = "Project id")), responses(
    (status = 200, description = "Deleted", body = ProjectDeleted),
    (status = 403, description = "Needs OWNER", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such project of yours", body = crate::error::ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<ProjectDeleted>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let grant = access::authorize(&mut tx, &principal, Resource::Project(id), Action::Own).await?;
    let released = sqlx::query(
        "UPDATE deployments SET project_id = NULL, updated_at = now() WHERE project_id = $1",
    )
    .bind(grant.id())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let members: Vec<Uuid> =
        sqlx::query_scalar("SELECT user_id FROM project_members WHERE project_id = $1")
            .bind(grant.id())
            .fetch_all(&mut *tx)
            .await?;
    sqlx::query("DELETE FROM projects WHERE id = $1")
        .bind(grant.id())
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "project.delete",
            "project",
            id,
            serde_json::json!({ "members": members, "deploymentsReleased": released }),
        ),
    )
    .await?;
    tx.commit().await?;
    crate::realtime::revoke(&state, crate::realtime::Revocation::project(id)).await;
    Ok(Envelope::ok(ProjectDeleted {
        deleted: true,
        deployments_released: released,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransferRequest {
    /// A member of the project; they become OWNER, the caller ADMIN.
    user_id: Uuid,
}

/// Hand the project to another member (OWNER).
#[utoipa::path(post, path = "/projects/{id}/transfer", tag = "projects", request_body = TransferRequest,
    params(("id" = Uuid, Path, description = "Project id")), responses(
    (status = 200, description = "The project now", body = ProjectView),
    (status = 403, description = "Needs OWNER", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such project of yours, or no such member", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The caller owns it already", body = crate::error::ErrorEnvelope)))]
pub async fn transfer(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<TransferRequest>,
) -> Result<Envelope<ProjectView>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let grant = access::authorize(&mut tx, &principal, Resource::Project(id), Action::Own).await?;
    let target: Option<ProjectRole> = sqlx::query_scalar(
        "SELECT role FROM project_members WHERE project_id = $1 AND user_id = $2 FOR UPDATE",
    )
    .bind(grant.id())
    .bind(req.user_id)
    .fetch_optional(&mut *tx)
    .await?;
    if req.user_id == principal.user_id() {
        return Err(ApiError::Conflict(
            "you are the project's OWNER already".into(),
        ));
    }
    if target.is_none() {
        return Err(ApiError::NotFound("no such member of this project".into()));
    }
    // The unique OWNER index holds at every statement: step down first.
    sqlx::query("UPDATE project_members SET role = 'ADMIN', updated_at = now() WHERE project_id = $1 AND user_id = $2")
        .bind(grant.id())
        .bind(principal.user_id())
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE project_members SET role = 'OWNER', updated_at = now() WHERE project_id = $1 AND user_id = $2")
        .bind(grant.id())
        .bind(req.user_id)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "project.transfer",
            "project",
            id,
            serde_json::json!({ "from": principal.user_id(), "to": req.user_id, "previousRole": target }),
        ),
    )
    .await?;
    let project = load(&mut tx, &principal, &grant).await?;
    let event = notice::send(
        &mut tx,
        req.user_id,
        &format!("You own the project {}", project.name),
        &format!(
            "{} handed the project {} to you.",
            principal.user.name, project.name
        ),
        serde_json::json!({ "projectId": id, "role": "OWNER" }),
    )
    .await?;
    tx.commit().await?;
    event.publish(&state).await;
    Ok(Envelope::ok(project))
}
