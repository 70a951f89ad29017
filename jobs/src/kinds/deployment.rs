//! The deployment kinds (SPEC §3.4): a deploy on the `deploy` queue, a
//! rollback on `rollback`, and stop, restart and delete on `deploy`. All of
//! one deployment share its concurrency key, so they never overlap.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::JobPayload;
use crate::Queue;

/// The key every job of one deployment runs under.
pub fn deployment_key(deployment_id: Uuid) -> String {
    format!("deployment:{deployment_id}")
}

/// A deployment's job is worth running again after its worker died: each
/// step finds what the last attempt left (a container of the release's name,
/// an installed site) and goes on from there.
const DEPLOYMENT_ATTEMPTS: u32 = 3;

/// Builds release `release` and switches to it once healthy.
///
/// Idempotency: a rerun starts the release again (its container, if one was
/// started, is replaced); a release already live only finishes the drain and
/// clean-up; one already ended is left as it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentDeploy {
    pub deployment_id: Uuid,
    pub release: i32,
}

impl JobPayload for DeploymentDeploy {
    const KIND: &'static str = "deployment.deploy";
    const QUEUE: Queue = Queue::Deploy;

    fn min_attempts(&self) -> u32 {
        DEPLOYMENT_ATTEMPTS
    }

    fn concurrency_key(&self) -> Option<String> {
        Some(deployment_key(self.deployment_id))
    }

    fn superseded_by_newer(&self) -> bool {
        true
    }
}

/// Runs release `release` (made by the rollback route from a kept release's
/// image and snapshot) through the same health-checked switch, no build.
///
/// Idempotency: as [`DeploymentDeploy`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRollback {
    pub deployment_id: Uuid,
    pub release: i32,
}

impl JobPayload for DeploymentRollback {
    const KIND: &'static str = "deployment.rollback";
    const QUEUE: Queue = Queue::Rollback;

    fn min_attempts(&self) -> u32 {
        DEPLOYMENT_ATTEMPTS
    }

    fn concurrency_key(&self) -> Option<String> {
        Some(deployment_key(self.deployment_id))
    }
}

/// What a control job does to a deployment.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Control {
    /// Takes the site down and stops the live container (kept for a restart).
    Stop,
    /// Starts the live release's container again (or restarts it), waits for
    /// it to be healthy and puts the site back.
    Restart,
    /// Removes the containers, the site, the images and the release
    /// directories, then the record.
    Delete,
}

macro_rules! control_kind {
    ($name:ident, $kind:literal, $control:expr) => {
        /// A deployment's control job; idempotent (each step checks what is
        /// there first).
        #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            pub deployment_id: Uuid,
        }

        impl $name {
            pub const CONTROL: Control = $control;
        }

        impl JobPayload for $name {
            const KIND: &'static str = $kind;
            const QUEUE: Queue = Queue::Deploy;

            fn min_attempts(&self) -> u32 {
                DEPLOYMENT_ATTEMPTS
            }

            fn concurrency_key(&self) -> Option<String> {
                Some(deployment_key(self.deployment_id))
            }
        }
    };
}

control_kind!(DeploymentStop, "deployment.stop", Control::Stop);
control_kind!(DeploymentRestart, "deployment.restart", Control::Restart);
control_kind!(DeploymentDelete, "deployment.delete", Control::Delete);
