//! `POST /admin/broadcast`: an announcement to every user — an in-app
//! notification for each active account and a realtime event to every open
//! socket.

use axum::extract::State;
use berth_jobs::events::{self, RealtimeEvent};
use serde::{Deserialize, Serialize};

use super::platform;
use crate::access::Action;
use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::Client;
use crate::envelope::{Envelope, Json};
use crate::error::ApiError;
use crate::state::AppState;
use crate::validate::{self, text_field};

const MESSAGE_MAX_CHARS: usize = 2000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Broadcast {
    /// 1 to 2000 characters.
    #[schema(
        min_length = 1,
        max_length = 2000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    message: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Broadcasted {
    /// Accounts that got the in-app notification.
    recipients: u64,
}

/// Announce something to every user.
#[utoipa::path(post, path = "/admin/broadcast", tag = "admin", request_body = Broadcast, responses(
    (status = 200, description = "Sent", body = Broadcasted),
    (status = 400, description = "No message, or too long", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Not an administrator", body = crate::error::ErrorEnvelope)))]
pub async fn broadcast(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<Broadcast>,
) -> Result<Envelope<Broadcasted>, ApiError> {
    let mut errors = Vec::new();
    let message = text_field("message", &req.message, MESSAGE_MAX_CHARS, &mut errors);
    validate::finish(errors)?;
    let mut tx = state.pool.begin().await?;
    platform(&mut tx, &principal, Action::Manage).await?;
    let recipients = sqlx::query(
        "INSERT INTO notifications (id, user_id, kind, title, body, data) \
         SELECT gen_random_uuid(), id, 'announcement', 'Announcement', $1, $2 FROM users WHERE status = 'active'",
    )
    .bind(&message)
    .bind(serde_json::json!({ "from": principal.user_id() }))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "admin.broadcast",
            "platform",
            "announcement",
            serde_json::json!({ "message": message, "recipients": recipients }),
        ),
    )
    .await?;
    tx.commit().await?;
    events::publish_broadcast(
        &state.redis,
        &RealtimeEvent::Announcement {
            message,
            created_at: chrono::Utc::now(),
        },
    )
    .await;
    Ok(Envelope::ok(Broadcasted { recipients }))
}
