//! What is stored of a checked request besides its source and env: the
//! settings a release is built and run with. A release keeps a sealed
//! [`Snapshot`] of them with the env, so a rollback runs as it did.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{DeploymentSpec, HealthCheck};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// The port the app listens on in its container.
    pub port: u16,
    pub dockerfile_path: Option<String>,
    pub build_command: Option<String>,
    pub start_command: Option<String>,
    /// `null`: turned off.
    pub health_check: Option<HealthCheck>,
    pub drain_seconds: u32,
    pub memory_mb: Option<u32>,
    pub cpus: Option<f64>,
    pub keep_releases: u32,
}

impl Settings {
    pub fn of(spec: &DeploymentSpec) -> Self {
        Settings {
            port: spec.port,
            dockerfile_path: spec.dockerfile_path.clone(),
            build_command: spec.build_command.clone(),
            start_command: spec.start_command.clone(),
            health_check: spec.health_check.clone(),
            drain_seconds: spec.drain_seconds,
            memory_mb: spec.memory_mb,
            cpus: spec.cpus,
            keep_releases: spec.keep_releases,
        }
    }

    pub fn build(&self) -> berth_build::BuildSettings {
        berth_build::BuildSettings {
            dockerfile_path: self.dockerfile_path.clone(),
            build_command: self.build_command.clone(),
            start_command: self.start_command.clone(),
            port: self.port,
        }
    }
}

/// What a release runs with, sealed in its row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub env: BTreeMap<String, String>,
    pub settings: Settings,
}
