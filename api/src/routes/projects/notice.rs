//! In-app notifications about projects (invites, role changes, removals),
//! stored with the change and pushed to the member's sockets after commit.

use berth_jobs::events::RealtimeEvent;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// A stored notification, to push once its transaction commits.
#[must_use = "publish it after the commit"]
pub(super) struct Pending {
    user_id: Uuid,
    event: RealtimeEvent,
}

impl Pending {
    pub(super) async fn publish(self, state: &AppState) {
        berth_jobs::events::publish(&state.redis, self.user_id, &self.event).await;
    }
}

pub(super) async fn send(
    tx: &mut PgConnection,
    user_id: Uuid,
    title: &str,
    body: &str,
    data: serde_json::Value,
) -> Result<Pending, ApiError> {
    let id = Uuid::new_v4();
    let created_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "INSERT INTO notifications (id, user_id, kind, title, body, data) \
         VALUES ($1, $2, 'project', $3, $4, $5) RETURNING created_at",
    )
    .bind(id)
    .bind(user_id)
    .bind(title)
    .bind(body)
    .bind(&data)
    .fetch_one(tx)
    .await?;
    Ok(Pending {
        user_id,
        event: RealtimeEvent::Notification {
            id: Some(id),
            kind: "project".into(),
            title: title.to_owned(),
            body: body.to_owned(),
            data,
            created_at,
        },
    })
}
