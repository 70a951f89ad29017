//! SPEC §3.9: the public contact form. Admins read the messages (`/admin/contact`,
//! with the administration issue).

use axum::extract::State;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::{self, AuditEntry, RequestId};
use crate::client_ip::ClientIp;
use crate::envelope::{Envelope, Json};
use crate::error::ApiError;
use crate::state::AppState;
use crate::validate::{self, email_field, text_field};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContactRequest {
    /// 1 to 100 characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    name: String,
    /// The sender's email address.
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// 1 to 200 characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    subject: String,
    /// 1 to 5000 characters.
    #[schema(
        min_length = 1,
        max_length = 5000,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    message: String,
}

/// A contact request whose every field has been checked.
struct ContactMessage {
    name: String,
    email: String,
    subject: String,
    message: String,
}

impl TryFrom<ContactRequest> for ContactMessage {
    type Error = ApiError;

    fn try_from(req: ContactRequest) -> Result<Self, ApiError> {
        let mut errors = Vec::new();
        let name = text_field("name", &req.name, 100, &mut errors);
        let subject = text_field("subject", &req.subject, 200, &mut errors);
        let message = text_field("message", &req.message, 5000, &mut errors);
        let email = email_field("email", &req.email, &mut errors);
        validate::finish(errors)?;
        Ok(Self {
            name,
            email,
            subject,
            message,
        })
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ContactReceived {
    id: Uuid,
}

/// Leave a message for the platform's admins.
#[utoipa::path(post, path = "/contact", tag = "platform", request_body = ContactRequest, responses(
    (status = 201, description = "Message stored", body = ContactReceived),
    (status = 400, description = "Invalid fields", body = crate::error::ErrorEnvelope),
    (status = 413, description = "Body too large", body = crate::error::ErrorEnvelope),
    (status = 429, description = "Too many messages from this address (BERTH_RATE_LIMIT_CONTACT)", body = crate::error::ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    request_id: RequestId,
    Json(req): Json<ContactRequest>,
) -> Result<Envelope<ContactReceived>, ApiError> {
    let msg = ContactMessage::try_from(req)?;
    let id = Uuid::new_v4();
    let mut tx = state.pool.begin().await?;
    sqlx::query(
        "INSERT INTO contact_messages (id, name, email, subject, message, client_ip) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(&msg.name)
    .bind(&msg.email)
    .bind(&msg.subject)
    .bind(&msg.message)
    .bind(ip.to_string())
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        AuditEntry {
            actor_user_id: None,
            action: "contact.create",
            target_type: "contact_message",
            target_id: id.to_string(),
            client_ip: ip,
            request_id: &request_id,
            details: serde_json::json!({ "email": msg.email }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::created(ContactReceived { id }))
}
