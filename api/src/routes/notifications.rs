//! SPEC §3.6: alert rules and notifications. Both belong to the signed-in
//! user's account, so they need a session (not an API token).

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::access::{self, Action, Resource};
use crate::audit;
use crate::auth::sessions::Client;
use crate::auth::{Principal, Scope};
use crate::envelope::{Envelope, Json, Page, Path, Query};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AlertRules {
    /// Percent; an alert is raised when use goes above it (100 turns it off).
    cpu_threshold: f32,
    ram_threshold: f32,
    disk_threshold: f32,
    swap_threshold: f32,
    /// Mail each alert (through the email queue).
    email_alerts: bool,
    /// Keep each alert as an in-app notification.
    browser_alerts: bool,
    /// Push each alert to open WebSockets.
    realtime_alerts: bool,
}

const RULE_COLUMNS: &str = "cpu_threshold, ram_threshold, disk_threshold, swap_threshold, \
    email_alerts, browser_alerts, realtime_alerts";

/// The caller's alert thresholds and delivery choices (defaults until changed).
#[utoipa::path(get, path = "/alerts/rules", tag = "alerts", responses(
    (status = 200, description = "The rules", body = AlertRules)))]
pub async fn get_rules(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Envelope<AlertRules>, ApiError> {
    principal.require(Scope::NotificationsRead)?;
    // The schema holds the defaults: the row is made with them on first read.
    let rules: AlertRules = sqlx::query_as(&format!(
        "INSERT INTO alert_rules (user_id) VALUES ($1) \
         ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id RETURNING {RULE_COLUMNS}"
    ))
    .bind(principal.user_id())
    .fetch_one(&state.pool)
    .await?;
    Ok(Envelope::ok(rules))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RulesUpdate {
    #[schema(minimum = 1, maximum = 100)]
    cpu_threshold: Option<f32>,
    #[schema(minimum = 1, maximum = 100)]
    ram_threshold: Option<f32>,
    #[schema(minimum = 1, maximum = 100)]
    disk_threshold: Option<f32>,
    #[schema(minimum = 1, maximum = 100)]
    swap_threshold: Option<f32>,
    email_alerts: Option<bool>,
    browser_alerts: Option<bool>,
    realtime_alerts: Option<bool>,
}

/// Change thresholds (1–100 %) or delivery choices.
#[utoipa::path(put, path = "/alerts/rules", tag = "alerts", request_body = RulesUpdate, responses(
    (status = 200, description = "The rules now", body = AlertRules),
    (status = 400, description = "A threshold outside 1–100", body = crate::error::ErrorEnvelope)))]
pub async fn put_rules(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<RulesUpdate>,
) -> Result<Envelope<AlertRules>, ApiError> {
    principal.require(Scope::NotificationsWrite)?;
    let mut errors = Vec::new();
    for (field, value) in [
        ("cpuThreshold", req.cpu_threshold),
        ("ramThreshold", req.ram_threshold),
        ("diskThreshold", req.disk_threshold),
        ("swapThreshold", req.swap_threshold),
    ] {
        if value.is_some_and(|v| !(1.0..=100.0).contains(&v)) {
            errors.push(FieldError::new(field, "must be between 1 and 100"));
        }
    }
    crate::validate::finish(errors)?;
    let mut tx = state.pool.begin().await?;
    sqlx::query("INSERT INTO alert_rules (user_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(principal.user_id())
        .execute(&mut *tx)
        .await?;
    let rules: AlertRules = sqlx::query_as(&format!(
        "UPDATE alert_rules SET cpu_threshold = COALESCE($2, cpu_threshold), \
           ram_threshold = COALESCE($3, ram_threshold), disk_threshold = COALESCE($4, disk_threshold), \
           swap_threshold = COALESCE($5, swap_threshold), email_alerts = COALESCE($6, email_alerts), \
           browser_alerts = COALESCE($7, browser_alerts), realtime_alerts = COALESCE($8, realtime_alerts), \
           updated_at = now() WHERE user_id = $1 RETURNING {RULE_COLUMNS}"
    ))
    .bind(principal.user_id())
    .bind(req.cpu_threshold)
    .bind(req.ram_threshold)
    .bind(req.disk_threshold)
    .bind(req.swap_threshold)
    .bind(req.email_alerts)
    .bind(req.browser_alerts)
    .bind(req.realtime_alerts)
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "alerts.rules_update",
            "user",
            principal.user_id(),
            serde_json::to_value(&rules).map_err(|e| ApiError::Internal(e.into()))?,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(rules))
}

#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct NotificationView {
    id: Uuid,
    /// `alert_raised`, `alert_cleared`, `server_offline`, `server_online`, `host_key_mismatch`.
    kind: String,
    title: String,
    body: String,
    data: serde_json::Value,
    read_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

const NOTIFICATION_COLUMNS: &str = "id, kind, title, body, data, read_at, created_at";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct NotificationsQuery {
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Only unread ones.
    #[serde(default)]
    unread_only: bool,
}

/// The caller's notifications, newest first.
#[utoipa::path(get, path = "/notifications", tag = "alerts", params(NotificationsQuery), responses(
    (status = 200, description = "A page of notifications", body = Page<NotificationView>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<NotificationsQuery>,
) -> Result<Envelope<Page<NotificationView>>, ApiError> {
    principal.require(Scope::NotificationsRead)?;
    let page = crate::envelope::PageQuery {
        page: query.page,
        limit: query.limit,
    }
    .validate()?;
    let condition = "user_id = $1 AND (NOT $2 OR read_at IS NULL)";
    let items: Vec<NotificationView> = sqlx::query_as(&format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE {condition} \
         ORDER BY created_at DESC, id OFFSET $3 LIMIT $4"
    ))
    .bind(principal.user_id())
    .bind(query.unread_only)
    .bind(page.offset())
    .bind(page.limit)
    .fetch_all(&state.pool)
    .await?;
    let total: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM notifications WHERE {condition}"
    ))
    .bind(principal.user_id())
    .bind(query.unread_only)
    .fetch_one(&state.pool)
    .await?;
    Ok(Envelope::ok(Page::new(items, page, total)))
}

/// Mark one notification read.
#[utoipa::path(patch, path = "/notifications/{id}/read", tag = "alerts",
    params(("id" = Uuid, Path, description = "Notification id")), responses(
    (status = 200, description = "Read", body = NotificationView),
    (status = 404, description = "No such notification of yours", body = crate::error::ErrorEnvelope)))]
pub async fn mark_read(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<NotificationView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let grant = access::authorize(
        &mut conn,
        &principal,
        Resource::Notification(id),
        Action::Operate,
    )
    .await?;
    let view: Option<NotificationView> = sqlx::query_as(&format!(
        "UPDATE notifications SET read_at = COALESCE(read_at, now()) \
         WHERE id = $1 RETURNING {NOTIFICATION_COLUMNS}"
    ))
    .bind(grant.id())
    .fetch_optional(&mut *conn)
    .await?;
    view.map(Envelope::ok)
        .ok_or_else(|| ApiError::NotFound("no such notification".into()))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Updated {
    updated: u64,
}

/// Mark every notification read.
#[utoipa::path(post, path = "/notifications/read-all", tag = "alerts", responses(
    (status = 200, description = "How many were unread", body = Updated)))]
pub async fn read_all(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Envelope<Updated>, ApiError> {
    principal.require(Scope::NotificationsWrite)?;
    let updated = sqlx::query(
        "UPDATE notifications SET read_at = now() WHERE user_id = $1 AND read_at IS NULL",
    )
    .bind(principal.user_id())
    .execute(&state.pool)
    .await?
    .rows_affected();
    Ok(Envelope::ok(Updated { updated }))
}

/// Delete one notification.
#[utoipa::path(delete, path = "/notifications/{id}", tag = "alerts",
    params(("id" = Uuid, Path, description = "Notification id")), responses(
    (status = 200, description = "Deleted", body = Updated),
    (status = 404, description = "No such notification of yours", body = crate::error::ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<Updated>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let grant = access::authorize(
        &mut conn,
        &principal,
        Resource::Notification(id),
        Action::Manage,
    )
    .await?;
    let updated = sqlx::query("DELETE FROM notifications WHERE id = $1")
        .bind(grant.id())
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if updated == 0 {
        return Err(ApiError::NotFound("no such notification".into()));
    }
    Ok(Envelope::ok(Updated { updated }))
}
