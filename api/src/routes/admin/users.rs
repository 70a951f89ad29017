//! `/admin/users`: administrators see every account, change roles and
//! status, delete accounts. Admin roles are a super admin's to give and take;
//! an admin never acts on a super admin; the last super admin stays.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{like_pattern, platform};
use crate::access::Action;
use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::{self, Client};
use crate::auth::users::Role;
use crate::envelope::{
    Binds, Deleted, Envelope, Json, Page, PageQuery, Path, Query, filtered_page,
};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum AccountStatus {
    Active,
    Suspended,
}

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AdminUser {
    id: Uuid,
    email: String,
    username: Option<String>,
    name: String,
    role: Role,
    status: AccountStatus,
    email_verified: bool,
    two_factor_enabled: bool,
    created_at: DateTime<Utc>,
    /// When they last signed in (their newest session).
    last_sign_in_at: Option<DateTime<Utc>>,
    server_count: i64,
    deployment_count: i64,
    active_sessions: i64,
}

const USER_COLUMNS: &str = "u.id, u.email, u.username, u.name, u.role, u.status, u.email_verified, \
    u.totp_enabled AS two_factor_enabled, u.created_at, \
    (SELECT max(created_at) FROM sessions WHERE user_id = u.id) AS last_sign_in_at, \
    (SELECT count(*) FROM servers WHERE owner_user_id = u.id) AS server_count, \
    (SELECT count(*) FROM deployments WHERE owner_user_id = u.id) AS deployment_count, \
    (SELECT count(*) FROM sessions s WHERE s.user_id = u.id AND s.revoked_at IS NULL AND s.expires_at > now()) \
        AS active_sessions";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersQuery {
    /// Part of an email, name or username (case-insensitive).
    #[param(max_length = 100, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    search: Option<String>,
    role: Option<Role>,
    status: Option<AccountStatus>,
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

/// Every account, newest first.
#[utoipa::path(get, path = "/admin/users", tag = "admin", params(UsersQuery), responses(
    (status = 200, description = "A page of accounts", body = Page<AdminUser>),
    (status = 400, description = "Bad filter", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope)))]
pub async fn list_users(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<UsersQuery>,
) -> Result<Envelope<Page<AdminUser>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    platform(&mut conn, &principal, Action::Read).await?;
    let page = PageQuery {
        page: query.page,
        limit: query.limit,
    }
    .validate()?;
    let search = like_pattern("search", query.search.as_deref())?;
    let filter = "WHERE ($1::text IS NULL OR u.email ILIKE $1 OR u.name ILIKE $1 OR u.username ILIKE $1) \
                  AND ($2::text IS NULL OR u.role = $2) AND ($3::text IS NULL OR u.status = $3)";
    let binds = Binds::default()
        .bind(search)
        .bind(query.role)
        .bind(query.status);
    let users = filtered_page(
        &mut conn,
        USER_COLUMNS,
        "FROM users u",
        filter,
        "u.created_at DESC, u.id",
        binds,
        page,
    )
    .await?;
    Ok(Envelope::ok(users))
}

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Owned {
    id: Uuid,
    name: String,
    status: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminUserDetail {
    #[serde(flatten)]
    user: AdminUser,
    servers: Vec<Owned>,
    deployments: Vec<Owned>,
}

async fn one(conn: &mut PgConnection, id: Uuid) -> Result<AdminUser, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users u WHERE u.id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::NotFound("no such user".into()))
}

/// One account, with its servers, deployments and sessions.
#[utoipa::path(get, path = "/admin/users/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "User id")), responses(
    (status = 200, description = "The account", body = AdminUserDetail),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such user", body = crate::error::ErrorEnvelope)))]
pub async fn get_user(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<AdminUserDetail>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    platform(&mut conn, &principal, Action::Read).await?;
    let user = one(&mut conn, id).await?;
    let servers: Vec<Owned> = sqlx::query_as(
        "SELECT id, name, status FROM servers WHERE owner_user_id = $1 ORDER BY created_at DESC LIMIT 100",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let deployments: Vec<Owned> = sqlx::query_as(
        "SELECT id, name, status::text AS status FROM deployments WHERE owner_user_id = $1 \
         ORDER BY created_at DESC LIMIT 100",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Envelope::ok(AdminUserDetail {
        user,
        servers,
        deployments,
    }))
}

/// The target's role, locked; refused when the caller may not act on them.
async fn target(
    conn: &mut PgConnection,
    principal: &Principal,
    id: Uuid,
) -> Result<(Role, AccountStatus), ApiError> {
    let (role, status): (Role, AccountStatus) =
        sqlx::query_as("SELECT role, status FROM users WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| ApiError::NotFound("no such user".into()))?;
    if role == Role::SuperAdmin && principal.role() != Role::SuperAdmin {
        return Err(ApiError::Forbidden(
            "an admin cannot act on a super admin".into(),
        ));
    }
    Ok((role, status))
}

/// Whether `id` is the only active super admin (after locking them all).
async fn last_super_admin(conn: &mut PgConnection, id: Uuid) -> Result<bool, ApiError> {
    let others: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM users WHERE role = 'super_admin' AND status = 'active' AND id <> $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    Ok(others.is_empty())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleChange {
    role: Role,
}

/// Change an account's role. Giving or taking `admin` or `super_admin` is a
/// super admin's; the last super admin keeps the role.
#[utoipa::path(put, path = "/admin/users/{id}/role", tag = "admin", request_body = RoleChange,
    params(("id" = Uuid, Path, description = "User id")), responses(
    (status = 200, description = "The account now", body = AdminUser),
    (status = 403, description = "Not allowed to give or take this role", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such user", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The last super admin", body = crate::error::ErrorEnvelope)))]
pub async fn change_role(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<RoleChange>,
) -> Result<Envelope<AdminUser>, ApiError> {
    let mut tx = state.pool.begin().await?;
    platform(&mut tx, &principal, Action::Manage).await?;
    let (current, _) = target(&mut tx, &principal, id).await?;
    if (current.is_admin() || req.role.is_admin()) && principal.role() != Role::SuperAdmin {
        return Err(ApiError::Forbidden(
            "only a super admin gives or takes the admin roles".into(),
        ));
    }
    if current == Role::SuperAdmin
        && req.role != Role::SuperAdmin
        && last_super_admin(&mut tx, id).await?
    {
        return Err(ApiError::Conflict(
            "the last super admin cannot be demoted: make another super admin first".into(),
        ));
    }
    sqlx::query("UPDATE users SET role = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(req.role)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "admin.user_role",
            "user",
            id,
            serde_json::json!({ "from": current, "to": req.role }),
        ),
    )
    .await?;
    let user = one(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Envelope::ok(user))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusChange {
    status: AccountStatus,
}

/// Suspend an account (every session and API token of it stops working at
/// once) or activate it again.
#[utoipa::path(put, path = "/admin/users/{id}/status", tag = "admin", request_body = StatusChange,
    params(("id" = Uuid, Path, description = "User id")), responses(
    (status = 200, description = "The account now", body = AdminUser),
    (status = 403, description = "Not an administrator, or the target is a super admin", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such user", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Oneself, or the last super admin", body = crate::error::ErrorEnvelope)))]
pub async fn change_status(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<StatusChange>,
) -> Result<Envelope<AdminUser>, ApiError> {
    let mut tx = state.pool.begin().await?;
    platform(&mut tx, &principal, Action::Manage).await?;
    let (role, current) = target(&mut tx, &principal, id).await?;
    let mut revoked = (0, 0);
    if req.status == AccountStatus::Suspended {
        if id == principal.user_id() {
            return Err(ApiError::Conflict("you cannot suspend yourself".into()));
        }
        if role == Role::SuperAdmin && last_super_admin(&mut tx, id).await? {
            return Err(ApiError::Conflict(
                "the last super admin cannot be suspended".into(),
            ));
        }
        revoked.0 =
            sessions::revoke_all(&mut tx, id, None, "suspended by an administrator").await?;
        revoked.1 = sqlx::query("DELETE FROM api_tokens WHERE user_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    sqlx::query("UPDATE users SET status = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(req.status)
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "admin.user_status",
            "user",
            id,
            serde_json::json!({ "from": current, "to": req.status,
                                "sessionsRevoked": revoked.0, "tokensRevoked": revoked.1 }),
        ),
    )
    .await?;
    let user = one(&mut tx, id).await?;
    tx.commit().await?;
    if req.status == AccountStatus::Suspended {
        crate::realtime::sign_out(&state, id).await;
    }
    Ok(Envelope::ok(user))
}

/// Delete an account and everything it owns, as the account's own deletion
/// does (its audit rows stay, without their actor).
#[utoipa::path(delete, path = "/admin/users/{id}", tag = "admin",
    params(("id" = Uuid, Path, description = "User id")), responses(
    (status = 200, description = "Deleted", body = Deleted),
    (status = 403, description = "Not an administrator, or the target is a super admin", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such user", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Oneself (use DELETE /account), or the last super admin", body = crate::error::ErrorEnvelope)))]
pub async fn delete_user(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<Deleted>, ApiError> {
    let mut tx = state.pool.begin().await?;
    platform(&mut tx, &principal, Action::Manage).await?;
    let (role, _) = target(&mut tx, &principal, id).await?;
    if id == principal.user_id() {
        return Err(ApiError::Conflict(
            "delete your own account with DELETE /account".into(),
        ));
    }
    if role == Role::SuperAdmin && last_super_admin(&mut tx, id).await? {
        return Err(ApiError::Conflict(
            "the last super admin cannot be deleted".into(),
        ));
    }
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "admin.user_delete",
            "user",
            id,
            serde_json::json!({ "email": email }),
        ),
    )
    .await?;
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    crate::realtime::sign_out(&state, id).await;
    Ok(Envelope::ok(Deleted::DONE))
}

pub(super) fn field(name: &str, message: &str) -> ApiError {
    ApiError::validation(vec![FieldError::new(name, message)])
}
