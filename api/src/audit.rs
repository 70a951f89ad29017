//! The audit log (SPEC §3.9): one row per state-changing call, written on the
//! transaction of the change so a change is never recorded without its row, nor
//! a row without its change.

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::middleware::REQUEST_ID_HEADER;

/// The request's id, as the request wrapper set it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let id = parts
            .headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        Ok(RequestId(id.to_owned()))
    }
}

/// One audited action. `action` is `noun.verb`, e.g. `contact.create`.
pub struct AuditEntry<'a> {
    pub actor_user_id: Option<Uuid>,
    pub action: &'static str,
    pub target_type: &'static str,
    pub target_id: String,
    pub client_ip: IpAddr,
    pub request_id: &'a RequestId,
    pub details: serde_json::Value,
}

/// One row on a connection of its own, for an action with no transaction
/// to join (a file written on a server, a terminal opened).
pub async fn record_alone(pool: &sqlx::PgPool, entry: AuditEntry<'_>) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    record(&mut conn, entry).await
}

pub async fn record(conn: &mut PgConnection, entry: AuditEntry<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_logs (id, actor_user_id, action, target_type, target_id, client_ip, request_id, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(Uuid::new_v4())
    .bind(entry.actor_user_id)
    .bind(entry.action)
    .bind(entry.target_type)
    .bind(entry.target_id)
    .bind(entry.client_ip.to_string())
    .bind(&entry.request_id.0)
    .bind(entry.details)
    .execute(conn)
    .await?;
    Ok(())
}
