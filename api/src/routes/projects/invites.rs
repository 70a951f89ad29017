//! Invitations: an OWNER or ADMIN invites an address with a role; the
//! address gets a single-use link by mail (the `email` queue) and, when it
//! has an account, an in-app notification. Whoever signs in with that
//! address, verified (an account made after the invite included), accepts
//! or declines it. A new invite for the same address replaces the old one.

use axum::extract::State;
use berth_jobs::store::{self, NewJob};
use berth_jobs::{EmailJob, EmailMessage, Sealed};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::members::grantable_role;
use super::{load, notice};
use crate::access::{self, Action, ProjectRole, Resource};
use crate::audit;
use crate::auth::sessions::Client;
use crate::auth::tokens::{random_token, token_hash};
use crate::auth::{Principal, Scope, users};
use crate::envelope::{Envelope, Json, Path};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;
use crate::validate::{self, email_field};

/// How long an invitation's link works.
pub const INVITE_TTL_DAYS: i64 = 7;

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct InviteView {
    id: Uuid,
    email: String,
    role: ProjectRole,
    invited_by: Option<Uuid>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// Past `expiresAt`: it can no longer be accepted; invite again.
    expired: bool,
}

pub(super) const INVITE_COLUMNS: &str = "i.id, i.email, i.role, i.invited_by, i.created_at, i.expires_at, (i.expires_at <= now()) AS expired";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InviteRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// ADMIN, DEVELOPER or VIEWER.
    #[schema(value_type = String, pattern = "^(ADMIN|DEVELOPER|VIEWER)$")]
    role: String,
}

/// Invite an address to the project (OWNER, ADMIN): mailed a link valid
/// for 7 days; inviting it again replaces the invite.
#[utoipa::path(post, path = "/projects/{id}/invites", tag = "projects", request_body = InviteRequest,
    params(("id" = Uuid, Path, description = "Project id")), responses(
    (status = 201, description = "Invited; the mail is queued", body = InviteView),
    (status = 400, description = "Invalid address or role", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Needs ADMIN or OWNER", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such project of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Already a member", body = crate::error::ErrorEnvelope),
    (status = 429, description = "Too many messages to this address", body = crate::error::ErrorEnvelope)))]
pub async fn invite(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<InviteRequest>,
) -> Result<Envelope<InviteView>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let grant =
        access::authorize(&mut tx, &principal, Resource::Project(id), Action::Manage).await?;
    let mut errors = Vec::new();
    let email = email_field("email", &req.email, &mut errors).to_lowercase();
    let role = match grantable_role(&req.role) {
        Ok(role) => Some(role),
        Err(ApiError::Validation { details, .. }) => {
            errors.extend(details);
            None
        }
        Err(other) => return Err(other),
    };
    validate::finish(errors)?;
    let role = role.expect("checked");
    let invitee = users::by_email(&mut *tx, &email).await?;
    if let Some(user) = &invitee {
        let member: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM project_members WHERE project_id = $1 AND user_id = $2)",
        )
        .bind(grant.id())
        .bind(user.id)
        .fetch_one(&mut *tx)
        .await?;
        if member {
            return Err(ApiError::Conflict(
                "that address's account is a member already".into(),
            ));
        }
    }
    crate::routes::auth::limit_mail_to(&state, "invite", &email).await?;
    let token = random_token();
    let invite: InviteView = sqlx::query_as(&format!(
        "INSERT INTO project_invites AS i (id, project_id, email, role, token_hash, invited_by, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(days => $7)) \
         ON CONFLICT (project_id, email) DO UPDATE SET id = EXCLUDED.id, role = EXCLUDED.role, \
           token_hash = EXCLUDED.token_hash, invited_by = EXCLUDED.invited_by, \
           created_at = now(), expires_at = EXCLUDED.expires_at \
         RETURNING {INVITE_COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(grant.id())
    .bind(&email)
    .bind(role)
    .bind(token_hash(&token))
    .bind(principal.user_id())
    .bind(INVITE_TTL_DAYS as i32)
    .fetch_one(&mut *tx)
    .await?;
    let project = load(&mut tx, &principal, &grant).await?;
    let mail = store::enqueue(
        &mut tx,
        state.jobs.policies(),
        NewJob::new(EmailJob {
            to: email.clone(),
            message: EmailMessage::ProjectInvite {
                inviter_name: principal.user.name.clone(),
                project_name: project.name.clone(),
                role: role.name().to_owned(),
                invitation_id: invite.id,
                token: Sealed::seal(&state.keys, &email, &token),
                expires_in_days: INVITE_TTL_DAYS as u32,
            },
        })
        .owner(principal.user_id()),
    )
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "project.invite",
            "project",
            id,
            serde_json::json!({ "email": email, "role": role, "inviteId": invite.id }),
        ),
    )
    .await?;
    let event = match &invitee {
        Some(user) => Some(
            notice::send(
                &mut tx,
                user.id,
                &format!("Invitation to {}", project.name),
                &format!(
                    "{} invited you to the project {} as {}.",
                    principal.user.name,
                    project.name,
                    role.name()
                ),
                serde_json::json!({ "projectId": id, "invitationId": invite.id, "role": role }),
            )
            .await?,
        ),
        None => None,
    };
    tx.commit().await?;
    state.jobs.dispatch(&mail).await;
    if let Some(event) = event {
        event.publish(&state).await;
    }
    Ok(Envelope::created(invite))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InviteRevoked {
    revoked: bool,
}

/// Revoke a pending invite (OWNER, ADMIN): its link stops working.
#[utoipa::path(delete, path = "/projects/{id}/invites/{inviteId}", tag = "projects",
    params(("id" = Uuid, Path, description = "Project id"), ("inviteId" = Uuid, Path, description = "Invite id")),
    responses(
    (status = 200, description = "Revoked", body = InviteRevoked),
    (status = 403, description = "Needs ADMIN or OWNER", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such project of yours, or no such invite", body = crate::error::ErrorEnvelope)))]
pub async fn revoke_invite(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path((id, invite_id)): Path<(Uuid, Uuid)>,
) -> Result<Envelope<InviteRevoked>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let grant =
        access::authorize(&mut tx, &principal, Resource::Project(id), Action::Manage).await?;
    let email: Option<String> = sqlx::query_scalar(
        "DELETE FROM project_invites WHERE id = $1 AND project_id = $2 RETURNING email",
    )
    .bind(invite_id)
    .bind(grant.id())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(email) = email else {
        return Err(ApiError::NotFound("no such invite".into()));
    };
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "project.invite_revoke",
            "project",
            id,
            serde_json::json!({ "email": email, "inviteId": invite_id }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(InviteRevoked { revoked: true }))
}

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct InvitationView {
    id: Uuid,
    project_id: Uuid,
    project_name: String,
    role: ProjectRole,
    /// Who invited, by name.
    invited_by: Option<String>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// The caller's address, when verified: invitations match on it alone.
fn verified_address(principal: &Principal) -> Option<String> {
    principal
        .user
        .email_verified
        .then(|| principal.user.email.to_lowercase())
}

/// Invitations to the signed-in user's verified address, not expired.
#[utoipa::path(get, path = "/invitations", tag = "projects", responses(
    (status = 200, description = "Pending invitations, newest first", body = Vec<InvitationView>)))]
pub async fn invitations(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Envelope<Vec<InvitationView>>, ApiError> {
    principal.require(Scope::ProjectsRead)?;
    let Some(email) = verified_address(&principal) else {
        return Ok(Envelope::ok(Vec::new()));
    };
    let items: Vec<InvitationView> = sqlx::query_as(
        "SELECT i.id, i.project_id, p.name AS project_name, i.role, u.name AS invited_by, \
         i.created_at, i.expires_at FROM project_invites i JOIN projects p ON p.id = i.project_id \
         LEFT JOIN users u ON u.id = i.invited_by \
         WHERE i.email = $1 AND i.expires_at > now() ORDER BY i.created_at DESC, i.id",
    )
    .bind(&email)
    .fetch_all(&state.pool)
    .await?;
    Ok(Envelope::ok(items))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnswerRequest {
    /// The token of the mailed link; when given it must match.
    token: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InvitationAnswered {
    project_id: Uuid,
    /// `accepted` or `declined`.
    answer: &'static str,
    /// The role now held (accepted).
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<ProjectRole>,
}

/// Accept an invitation: the caller becomes a member with its role.
#[utoipa::path(post, path = "/invitations/{id}/accept", tag = "projects", request_body = AnswerRequest,
    params(("id" = Uuid, Path, description = "Invitation id")), responses(
    (status = 200, description = "A member now", body = InvitationAnswered),
    (status = 404, description = "No such invitation to your verified address", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Expired", body = crate::error::ErrorEnvelope)))]
pub async fn accept(
    state: State<AppState>,
    principal: Principal,
    client: Client,
    id: Path<Uuid>,
    body: axum::body::Bytes,
) -> Result<Envelope<InvitationAnswered>, ApiError> {
    answer(state, principal, client, id, &body, true).await
}

/// Decline an invitation: it is gone.
#[utoipa::path(post, path = "/invitations/{id}/decline", tag = "projects", request_body = AnswerRequest,
    params(("id" = Uuid, Path, description = "Invitation id")), responses(
    (status = 200, description = "Declined", body = InvitationAnswered),
    (status = 404, description = "No such invitation to your verified address", body = crate::error::ErrorEnvelope)))]
pub async fn decline(
    state: State<AppState>,
    principal: Principal,
    client: Client,
    id: Path<Uuid>,
    body: axum::body::Bytes,
) -> Result<Envelope<InvitationAnswered>, ApiError> {
    answer(state, principal, client, id, &body, false).await
}

async fn answer(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    body: &[u8],
    accepting: bool,
) -> Result<Envelope<InvitationAnswered>, ApiError> {
    // The body is optional: the dashboard's list answers without a token.
    let token = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        crate::envelope::json_object::<AnswerRequest>(body)?.token
    };
    let not_found = || ApiError::NotFound("no such invitation to your verified address".into());
    let email = verified_address(&principal).ok_or_else(not_found)?;
    let mut tx = state.pool.begin().await?;
    // The invite is consumed whatever the answer: single use.
    let invite: Option<(Uuid, ProjectRole, String, bool)> = sqlx::query_as(
        "DELETE FROM project_invites WHERE id = $1 AND email = $2 \
         RETURNING project_id, role, token_hash, (expires_at <= now())",
    )
    .bind(id)
    .bind(&email)
    .fetch_optional(&mut *tx)
    .await?;
    let (project_id, role, stored_hash, expired) = invite.ok_or_else(not_found)?;
    // Asked after the lookup, as for every resource: another's invitation is
    // no invitation, whatever the token may do.
    principal.require(Scope::ProjectsWrite)?;
    if let Some(token) = token {
        use subtle::ConstantTimeEq;
        let matches: bool = token_hash(&token)
            .as_bytes()
            .ct_eq(stored_hash.as_bytes())
            .into();
        if !matches {
            return Err(ApiError::validation(vec![FieldError::new(
                "token",
                "does not belong to this invitation",
            )]));
        }
    }
    if expired && accepting {
        return Err(ApiError::Conflict(
            "the invitation expired; ask for a new one".into(),
        ));
    }
    if accepting {
        // A member already (added another way) keeps the higher role.
        sqlx::query(
            "INSERT INTO project_members (project_id, user_id, role) VALUES ($1, $2, $3) \
             ON CONFLICT (project_id, user_id) DO UPDATE SET role = GREATEST(project_members.role, EXCLUDED.role), \
             updated_at = now()",
        )
        .bind(project_id)
        .bind(principal.user_id())
        .bind(role)
        .execute(&mut *tx)
        .await?;
    }
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            if accepting {
                "project.invite_accept"
            } else {
                "project.invite_decline"
            },
            "project",
            project_id,
            serde_json::json!({ "inviteId": id, "role": role }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(InvitationAnswered {
        project_id,
        answer: if accepting { "accepted" } else { "declined" },
        role: accepting.then_some(role),
    }))
}
