//! The one access-control path (SPEC §3.8). Every route that acts on a
//! server, deployment, domain, job, notification or project asks
//! [`authorize`] first; it answers 404 when the caller may not see the
//! resource (another user's id and no such id alike), 403 when they may see
//! it but not do this, and otherwise a [`Grant`]: the only thing the routes'
//! loaders accept, so nothing is read by id without passing here.
//!
//! What a caller is to a resource decides: its owner may do everything, a
//! project member what their role allows, a token only what its scopes
//! cover. Servers are never shared: members see a server's name and status
//! through the deployments on it, never the server itself.

use berth_jobs::Queue;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::auth::users::Role;
use crate::auth::{Credential, Principal, Scope};
use crate::error::ApiError;

mod role;

pub use role::ProjectRole;

/// What a route does to a resource, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// See it, its releases, logs, domains and job status.
    Read,
    /// Deploy, redeploy, roll back, cancel, stop, restart, set env vars and
    /// domains, see its secrets.
    Operate,
    /// Delete a deployment, move it between projects, manage members and invites.
    Manage,
    /// Delete the project, transfer its ownership.
    Own,
}

impl Action {
    /// The least project role that may do this.
    fn least_role(self) -> ProjectRole {
        match self {
            Action::Read => ProjectRole::Viewer,
            Action::Operate => ProjectRole::Developer,
            Action::Manage => ProjectRole::Admin,
            Action::Own => ProjectRole::Owner,
        }
    }
}

/// What a route acts on, by id.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    Server(Uuid),
    Deployment(Uuid),
    /// A deployment's set of domains (attaching one), by the deployment's id:
    /// the deployment's access, the domain scopes.
    DeploymentDomains(Uuid),
    Domain(Uuid),
    Job(&'a str),
    Notification(Uuid),
    Project(Uuid),
    /// The platform itself (SPEC §3.9: users, stats, every deployment, the
    /// audit log, contact messages, backups): administrators only; `Own`
    /// is a super admin's.
    Platform,
}

impl Resource<'_> {
    fn noun(self) -> &'static str {
        match self {
            Resource::Server(_) => "server",
            Resource::Deployment(_) | Resource::DeploymentDomains(_) => "deployment",
            Resource::Domain(_) => "domain",
            Resource::Job(_) => "job",
            Resource::Notification(_) => "notification",
            Resource::Project(_) => "project",
            Resource::Platform => "platform",
        }
    }

    fn not_found(self) -> ApiError {
        ApiError::NotFound(format!("no such {}", self.noun()))
    }
}

/// Why the caller may reach a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// It is theirs.
    Owner,
    /// Through their role in the resource's project.
    Member(ProjectRole),
    /// A platform administrator, for the platform's jobs.
    Administrator,
}

/// Permission to act on one resource, as [`authorize`] decided it. Its
/// fields are private: only this module makes one.
#[derive(Debug, Clone)]
pub struct Grant {
    id: GrantId,
    relation: Relation,
    project_id: Option<Uuid>,
    deployment_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
enum GrantId {
    Uuid(Uuid),
    Job(String),
    Platform,
}

impl Grant {
    /// The resource's id (a job's is [`Grant::job_id`]).
    pub fn id(&self) -> Uuid {
        match &self.id {
            GrantId::Uuid(id) => *id,
            GrantId::Job(_) => unreachable!("a job's grant is read by job_id"),
            GrantId::Platform => unreachable!("the platform has no id"),
        }
    }

    pub fn job_id(&self) -> &str {
        match &self.id {
            GrantId::Job(id) => id,
            GrantId::Uuid(_) | GrantId::Platform => {
                unreachable!("only a job's grant has a job id")
            }
        }
    }

    pub fn relation(&self) -> Relation {
        self.relation
    }

    /// The project the resource belongs to (a project's own id for a project).
    pub fn project_id(&self) -> Option<Uuid> {
        self.project_id
    }

    /// The deployment a domain or job belongs to (a deployment's own id).
    pub fn deployment_id(&self) -> Option<Uuid> {
        self.deployment_id
    }
}

/// What was found about a resource before deciding.
struct Found {
    relation: Option<Relation>,
    project_id: Option<Uuid>,
    deployment_id: Option<Uuid>,
    /// The role in the project of the owner of the server a deployment runs on.
    server_owner_role: Option<ProjectRole>,
    /// The scopes a token needs to read it, to operate it, to manage it.
    scopes: (Scope, Scope, Scope),
}

/// May `principal` do `action` to `resource`? The one authorization path.
pub async fn authorize(
    conn: &mut PgConnection,
    principal: &Principal,
    resource: Resource<'_>,
    action: Action,
) -> Result<Grant, ApiError> {
    let found = find(conn, principal, resource)
        .await?
        .ok_or_else(|| resource.not_found())?;
    let Some(relation) = found.relation else {
        // That there is a platform is no secret: a user is told why not.
        if matches!(resource, Resource::Platform) {
            return Err(ApiError::Forbidden(
                "this needs an administrator's account".into(),
            ));
        }
        return Err(resource.not_found());
    };
    let scope = match action {
        Action::Read => found.scopes.0,
        Action::Operate => found.scopes.1,
        Action::Manage | Action::Own => found.scopes.2,
    };
    if !token_allows(principal, scope) {
        return Err(ApiError::Forbidden(format!(
            "this token needs the {} scope",
            scope.name()
        )));
    }
    match relation {
        Relation::Administrator
            if matches!(resource, Resource::Platform)
                && action == Action::Own
                && principal.role() != Role::SuperAdmin =>
        {
            return Err(ApiError::Forbidden("this needs a super admin".into()));
        }
        // Administrators reach others' resources only through jobs and the
        // platform's routes.
        Relation::Owner | Relation::Administrator => {}
        Relation::Member(role) => {
            let least = action.least_role();
            if role < least {
                return Err(ApiError::Forbidden(format!(
                    "this needs the {} role in the project (yours is {})",
                    least.name(),
                    role.name()
                )));
            }
            // Deploying onto a server is its owner's consent, given by being
            // a DEVELOPER (or more) of the project.
            if action >= Action::Operate
                && !matches!(resource, Resource::Project(_))
                && found
                    .server_owner_role
                    .is_none_or(|r| r < ProjectRole::Developer)
            {
                return Err(ApiError::Conflict(
                    "the server's owner is no longer a DEVELOPER of this project".into(),
                ));
            }
        }
    }
    Ok(Grant {
        id: match resource {
            Resource::Job(id) => GrantId::Job(id.to_owned()),
            Resource::Server(id)
            | Resource::Deployment(id)
            | Resource::DeploymentDomains(id)
            | Resource::Domain(id)
            | Resource::Notification(id)
            | Resource::Project(id) => GrantId::Uuid(id),
            Resource::Platform => GrantId::Platform,
        },
        relation,
        project_id: found.project_id,
        deployment_id: found.deployment_id,
    })
}

/// An administrator acting on a deployment through the platform's routes
/// (`DELETE /admin/deployments/{id}`): `platform` must be a grant for
/// [`Resource::Platform`]; the deployment's existence is the loader's to check.
pub fn administered_deployment(platform: &Grant, deployment_id: Uuid) -> Grant {
    assert!(
        matches!(platform.id, GrantId::Platform),
        "a platform grant administers deployments"
    );
    Grant {
        id: GrantId::Uuid(deployment_id),
        relation: Relation::Administrator,
        project_id: None,
        deployment_id: Some(deployment_id),
    }
}

/// A push signed with a deployment's webhook secret: the signature, checked
/// by the caller against that deployment's secret, is the authorization, and
/// the push acts as the deployment's owner.
pub fn signed_push(deployment_id: Uuid) -> Grant {
    Grant {
        id: GrantId::Uuid(deployment_id),
        relation: Relation::Owner,
        project_id: None,
        deployment_id: Some(deployment_id),
    }
}

/// A signed-in session has its user's permissions; a token only its scopes.
fn token_allows(principal: &Principal, scope: Scope) -> bool {
    match principal.credential {
        // A session may read its own account's jobs (mail) without `admin`.
        Credential::Session { .. } => true,
        Credential::ApiToken { .. } => principal.allows(scope),
    }
}

/// The owner and the caller's role, by the resource's kind.
type Facts = (Uuid, Option<Uuid>, Option<ProjectRole>, Option<ProjectRole>);

async fn find(
    conn: &mut PgConnection,
    principal: &Principal,
    resource: Resource<'_>,
) -> Result<Option<Found>, ApiError> {
    let me = principal.user_id();
    let found = match resource {
        Resource::Server(id) => {
            let owner: Option<Uuid> =
                sqlx::query_scalar("SELECT owner_user_id FROM servers WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
            owner.map(|owner| Found {
                relation: (owner == me).then_some(Relation::Owner),
                project_id: None,
                deployment_id: None,
                server_owner_role: None,
                scopes: (Scope::ServersRead, Scope::ServersWrite, Scope::ServersWrite),
            })
        }
        Resource::Notification(id) => {
            let owner: Option<Uuid> =
                sqlx::query_scalar("SELECT user_id FROM notifications WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
            owner.map(|owner| Found {
                relation: (owner == me).then_some(Relation::Owner),
                project_id: None,
                deployment_id: None,
                server_owner_role: None,
                scopes: (
                    Scope::NotificationsRead,
                    Scope::NotificationsWrite,
                    Scope::NotificationsWrite,
                ),
            })
        }
        Resource::Deployment(id) => {
            let scopes = (
                Scope::DeploymentsRead,
                Scope::DeploymentsWrite,
                Scope::DeploymentsWrite,
            );
            in_deployment(conn, me, id, scopes).await?
        }
        Resource::DeploymentDomains(id) => {
            let scopes = (Scope::DomainsRead, Scope::DomainsWrite, Scope::DomainsWrite);
            in_deployment(conn, me, id, scopes).await?
        }
        Resource::Domain(id) => {
            let deployment: Option<Uuid> =
                sqlx::query_scalar("SELECT deployment_id FROM domains WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
            match deployment {
                None => None,
                Some(deployment) => {
                    let scopes = (Scope::DomainsRead, Scope::DomainsWrite, Scope::DomainsWrite);
                    in_deployment(conn, me, deployment, scopes).await?
                }
            }
        }
        Resource::Project(id) => {
            let project: Option<(Option<ProjectRole>,)> = sqlx::query_as(
                "SELECT m.role FROM projects p \
                 LEFT JOIN project_members m ON m.project_id = p.id AND m.user_id = $2 \
                 WHERE p.id = $1",
            )
            .bind(id)
            .bind(me)
            .fetch_optional(&mut *conn)
            .await?;
            project.map(|(role,)| Found {
                relation: role.map(Relation::Member),
                project_id: Some(id),
                deployment_id: None,
                server_owner_role: None,
                // Operating a project is deploying into it: a deployment's scope
                // says whether the token may; reading the project is enough here.
                scopes: (
                    Scope::ProjectsRead,
                    Scope::ProjectsRead,
                    Scope::ProjectsWrite,
                ),
            })
        }
        Resource::Platform => Some(Found {
            relation: principal
                .role()
                .is_admin()
                .then_some(Relation::Administrator),
            project_id: None,
            deployment_id: None,
            server_owner_role: None,
            scopes: (Scope::Admin, Scope::Admin, Scope::Admin),
        }),
        Resource::Job(id) => {
            // Job ids are ULIDs; anything longer is no job.
            if id.len() > 32 {
                return Ok(None);
            }
            let job: Option<(Option<Uuid>, Option<Uuid>, Queue)> = sqlx::query_as(
                "SELECT owner_user_id, deployment_id, queue FROM jobs WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some((owner, deployment, queue)) = job else {
                return Ok(None);
            };
            let via_deployment = match deployment {
                Some(d) => deployment_facts(conn, me, d).await?,
                None => None,
            };
            let relation = if owner == Some(me) {
                Some(Relation::Owner)
            } else if let Some(relation) = via_deployment.as_ref().and_then(|f| relation(f, me)) {
                Some(relation)
            } else if principal.role().is_admin() && principal.allows(Scope::Admin) {
                Some(Relation::Administrator)
            } else {
                None
            };
            Some(Found {
                relation,
                project_id: via_deployment.as_ref().and_then(|f| f.1),
                deployment_id: deployment,
                server_owner_role: via_deployment.as_ref().and_then(|f| f.3),
                scopes: queue_scopes(queue),
            })
        }
    };
    Ok(found)
}

/// The caller's relation to a deployment: its owner, or a member of its project.
fn relation((owner, _, role, _): &Facts, me: Uuid) -> Option<Relation> {
    if *owner == me {
        Some(Relation::Owner)
    } else {
        role.map(Relation::Member)
    }
}

/// What is found of something that belongs to deployment `id` (the
/// deployment itself, its domains), with the scopes its routes need.
async fn in_deployment(
    conn: &mut PgConnection,
    me: Uuid,
    id: Uuid,
    scopes: (Scope, Scope, Scope),
) -> Result<Option<Found>, ApiError> {
    Ok(deployment_facts(conn, me, id).await?.map(|facts| Found {
        relation: relation(&facts, me),
        project_id: facts.1,
        deployment_id: Some(id),
        server_owner_role: facts.3,
        scopes,
    }))
}

/// A deployment's owner and project, the caller's role there, and the role
/// there of the owner of the server it runs on.
async fn deployment_facts(
    conn: &mut PgConnection,
    me: Uuid,
    id: Uuid,
) -> Result<Option<Facts>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT d.owner_user_id, d.project_id, mine.role, theirs.role FROM deployments d \
         JOIN servers s ON s.id = d.server_id \
         LEFT JOIN project_members mine ON mine.project_id = d.project_id AND mine.user_id = $2 \
         LEFT JOIN project_members theirs ON theirs.project_id = d.project_id \
              AND theirs.user_id = s.owner_user_id \
         WHERE d.id = $1",
    )
    .bind(id)
    .bind(me)
    .fetch_optional(conn)
    .await?)
}

/// The scopes a token needs to see and to cancel jobs of `queue`. Queues
/// without a resource scope (mail, backups, diagnostics) concern the account
/// or the platform: a signed-in session or the `admin` scope.
pub fn queue_scopes(queue: Queue) -> (Scope, Scope, Scope) {
    let (read, write) = match queue {
        Queue::Deploy | Queue::Rollback => (Scope::DeploymentsRead, Scope::DeploymentsWrite),
        Queue::Ssl => (Scope::DomainsRead, Scope::DomainsWrite),
        Queue::Probe | Queue::Alerts => (Scope::ServersRead, Scope::ServersWrite),
        Queue::Backup | Queue::Email | Queue::Diagnostic | Queue::Maintenance => {
            (Scope::Admin, Scope::Admin)
        }
    };
    (read, write, write)
}

/// May `principal` see jobs of `queue` at all (before any one job)?
pub fn may_see_queue(principal: &Principal, queue: Queue) -> bool {
    token_allows(principal, queue_scopes(queue).0)
}

/// The SQL condition "deployment `d` is visible to user `$n`": theirs, or in
/// a project they are a member of. Lists use it; one item goes through
/// [`authorize`].
pub fn visible_deployments(param: u8) -> String {
    format!(
        "(d.owner_user_id = ${param} OR d.project_id IN \
         (SELECT project_id FROM project_members WHERE user_id = ${param}))"
    )
}
