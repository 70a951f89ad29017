//! What the platform keeps a record of: the audit log, and the messages of
//! the public contact form.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::platform;
use crate::access::Action;
use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{Binds, Envelope, Json, Page, PageQuery, Path, Query, filtered_page};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;
use crate::validate;

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AuditLogEntry {
    id: Uuid,
    /// Who did it (`null`: the system, or an account deleted since).
    actor_user_id: Option<Uuid>,
    actor_email: Option<String>,
    action: String,
    target_type: Option<String>,
    target_id: Option<String>,
    client_ip: Option<String>,
    request_id: Option<String>,
    details: serde_json::Value,
    created_at: DateTime<Utc>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct AuditQuery {
    /// Rows whose actor is this user.
    user_id: Option<Uuid>,
    /// An exact action, e.g. `auth.login`, or a prefix ending in `.`
    /// (`project.`).
    #[param(pattern = r"^[a-z0-9_.]{1,100}$")]
    action: Option<String>,
    /// `user`, `server`, `deployment`, `project`, `backup`, …
    #[param(pattern = r"^[a-z0-9_.]{1,50}$")]
    target_type: Option<String>,
    /// From this time on (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Up to this time (RFC 3339).
    to: Option<DateTime<Utc>>,
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

fn code_like(field: &str, value: Option<&str>, max: usize, errors: &mut Vec<FieldError>) {
    if let Some(value) = value
        && (value.is_empty()
            || value.len() > max
            || !value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'))
    {
        errors.push(FieldError::new(
            field,
            format!("must be 1 to {max} of a-z, 0-9, '_' and '.'"),
        ));
    }
}

/// The audit log, newest first.
#[utoipa::path(get, path = "/admin/audit-logs", tag = "admin", params(AuditQuery), responses(
    (status = 200, description = "A page of audit rows", body = Page<AuditLogEntry>),
    (status = 400, description = "Bad filter", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope)))]
pub async fn audit_logs(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<AuditQuery>,
) -> Result<Envelope<Page<AuditLogEntry>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    platform(&mut conn, &principal, Action::Read).await?;
    let page = PageQuery {
        page: query.page,
        limit: query.limit,
    }
    .validate()?;
    let mut errors = Vec::new();
    code_like("action", query.action.as_deref(), 100, &mut errors);
    code_like("targetType", query.target_type.as_deref(), 50, &mut errors);
    let from = validate::timestamp_field("from", query.from, &mut errors);
    let to = validate::timestamp_field("to", query.to, &mut errors);
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        errors.push(FieldError::new("to", "must not be before from"));
    }
    validate::finish(errors)?;
    // A trailing '.' asks for a family of actions; the names hold no wildcards.
    let (action, prefix) = match query.action {
        Some(a) if a.ends_with('.') => (None, Some(format!("{a}%"))),
        other => (other, None),
    };
    let filter = "WHERE ($1::uuid IS NULL OR a.actor_user_id = $1) AND ($2::text IS NULL OR a.action = $2) \
                  AND ($3::text IS NULL OR a.action LIKE $3) AND ($4::text IS NULL OR a.target_type = $4) \
                  AND ($5::timestamptz IS NULL OR a.created_at >= $5) \
                  AND ($6::timestamptz IS NULL OR a.created_at <= $6)";
    let binds = Binds::default()
        .bind(query.user_id)
        .bind(action)
        .bind(prefix)
        .bind(query.target_type)
        .bind(from)
        .bind(to);
    let rows = filtered_page(
        &mut conn,
        "a.id, a.actor_user_id, u.email AS actor_email, a.action, a.target_type, a.target_id, \
         a.client_ip, a.request_id, a.details, a.created_at",
        "FROM audit_logs a LEFT JOIN users u ON u.id = a.actor_user_id",
        filter,
        "a.created_at DESC, a.id",
        binds,
        page,
    )
    .await?;
    Ok(Envelope::ok(rows))
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum ContactStatus {
    New,
    Read,
    Replied,
    Archived,
}

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ContactEntry {
    id: Uuid,
    name: String,
    email: String,
    subject: String,
    message: String,
    status: ContactStatus,
    client_ip: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContactQuery {
    status: Option<ContactStatus>,
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

const CONTACT_COLUMNS: &str =
    "id, name, email, subject, message, status, client_ip, created_at, updated_at";

/// Messages from the contact form, newest first.
#[utoipa::path(get, path = "/admin/contact", tag = "admin", params(ContactQuery), responses(
    (status = 200, description = "A page of messages", body = Page<ContactEntry>),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope)))]
pub async fn list_contact(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<ContactQuery>,
) -> Result<Envelope<Page<ContactEntry>>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    platform(&mut conn, &principal, Action::Read).await?;
    let page = PageQuery {
        page: query.page,
        limit: query.limit,
    }
    .validate()?;
    let messages = filtered_page(
        &mut conn,
        CONTACT_COLUMNS,
        "FROM contact_messages",
        "WHERE ($1::text IS NULL OR status = $1)",
        "created_at DESC, id",
        Binds::default().bind(query.status),
        page,
    )
    .await?;
    Ok(Envelope::ok(messages))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContactChange {
    status: ContactStatus,
}

/// Mark a message read, replied or archived.
#[utoipa::path(put, path = "/admin/contact/{id}", tag = "admin", request_body = ContactChange,
    params(("id" = Uuid, Path, description = "Message id")), responses(
    (status = 200, description = "The message now", body = ContactEntry),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such message", body = crate::error::ErrorEnvelope)))]
pub async fn update_contact(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(req): Json<ContactChange>,
) -> Result<Envelope<ContactEntry>, ApiError> {
    let mut tx = state.pool.begin().await?;
    platform(&mut tx, &principal, Action::Manage).await?;
    let entry: ContactEntry = sqlx::query_as(&format!(
        "UPDATE contact_messages SET status = $2, updated_at = now() WHERE id = $1 RETURNING {CONTACT_COLUMNS}"
    ))
    .bind(id)
    .bind(req.status)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::NotFound("no such message".into()))?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "admin.contact_status",
            "contact_message",
            id,
            serde_json::json!({ "status": req.status }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(entry))
}
