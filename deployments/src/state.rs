//! Where a deployment and each of its releases stand, as stored (Postgres
//! enums) and as shown.

use serde::{Deserialize, Serialize};

/// A deployment's status: what it is doing, or what it is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "deployment_status", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    /// Its first release waits for a worker (or its turn).
    Queued,
    Building,
    Starting,
    /// A release is live (a newer one may have failed: see `statusReason`).
    Running,
    /// No release is live: the last one failed.
    Failed,
    /// Taken down by its user (or never brought up: a cancelled first release).
    Stopped,
    Deleting,
}

/// A release's state.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "release_state", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum ReleaseState {
    Queued,
    Building,
    Starting,
    /// Serving: nginx sends the deployment's traffic to it.
    Live,
    /// Was live; a newer release (or a rollback) took over.
    Superseded,
    Failed,
    Cancelled,
}

impl ReleaseState {
    /// Still on its way to live or not.
    pub fn in_progress(self) -> bool {
        matches!(self, Self::Queued | Self::Building | Self::Starting)
    }
}
