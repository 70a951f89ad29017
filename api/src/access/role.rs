//! A member's role in a project, ordered from least to most.

use serde::{Deserialize, Serialize};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    sqlx::Type,
)]
#[serde(rename_all = "UPPERCASE")]
#[sqlx(type_name = "project_role", rename_all = "UPPERCASE")]
pub enum ProjectRole {
    /// Reads the project's deployments, releases, logs, domains and jobs.
    Viewer,
    /// Also deploys, redeploys, rolls back, cancels, stops, restarts, sets env
    /// vars and domains.
    Developer,
    /// Also manages members and invites, deletes and moves deployments.
    Admin,
    /// Also deletes the project and transfers its ownership.
    Owner,
}

impl ProjectRole {
    pub const ALL: [ProjectRole; 4] = [
        ProjectRole::Viewer,
        ProjectRole::Developer,
        ProjectRole::Admin,
        ProjectRole::Owner,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProjectRole::Viewer => "VIEWER",
            ProjectRole::Developer => "DEVELOPER",
            ProjectRole::Admin => "ADMIN",
            ProjectRole::Owner => "OWNER",
        }
    }

    pub fn parse(s: &str) -> Option<ProjectRole> {
        ProjectRole::ALL.into_iter().find(|r| r.name() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named_as_the_spec_spells_them() {
        assert!(ProjectRole::Viewer < ProjectRole::Developer);
        assert!(ProjectRole::Developer < ProjectRole::Admin);
        assert!(ProjectRole::Admin < ProjectRole::Owner);
        for role in ProjectRole::ALL {
            assert_eq!(ProjectRole::parse(role.name()), Some(role));
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::json!(role.name())
            );
        }
        assert_eq!(ProjectRole::parse("viewer"), None);
    }
}
