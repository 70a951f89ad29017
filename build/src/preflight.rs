//! The pre-flight report (`GET /deployments/{id}/preflight`): what will go
//! wrong before a build spends minutes finding out, and what the app will
//! need. Estimates are per stack, from the source's size, and from the image
//! once one was built.

use serde::Serialize;

use crate::dockerfile::{self, NotGenerated};
use crate::{BaseImages, BuildSettings, Detected, SourceFacts, Stack};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The build or the start will fail.
    Error,
    /// It will work, but not as it should.
    Warning,
    Info,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Issue {
    pub severity: Severity,
    /// A stable name for it, e.g. `PORT_MISMATCH`.
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// No errors, no warnings.
    Pass,
    /// Warnings only.
    Warn,
    /// At least one error: a deploy would fail.
    Fail,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preflight {
    /// 100 less 35 per error, 10 per warning and 2 per note, at least 0.
    pub score: u8,
    pub status: Status,
    /// `dockerfile`, `node`, `python`, `static` or `unknown`.
    pub stack: &'static str,
    pub issues: Vec<Issue>,
    /// CPU cores the app is expected to use.
    #[serde(rename = "estimatedCPU")]
    pub estimated_cpu: f64,
    /// Memory in MB.
    #[serde(rename = "estimatedRAM")]
    pub estimated_ram: u64,
    /// Disk in MB for one release (its image; the source's size and the
    /// base image before a build).
    #[serde(rename = "estimatedDisk")]
    pub estimated_disk: u64,
}

/// What the pre-flight is told besides the source.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The built image's size, once there is one.
    pub image_bytes: Option<u64>,
    /// The deployment's memory limit.
    pub memory_limit_mb: Option<u64>,
}

const MB: u64 = 1024 * 1024;
const LARGE_SOURCE: u64 = 500 * MB;
const MANY_FILES: u64 = 20_000;

pub fn report(
    facts: &SourceFacts,
    detected: &Detected,
    settings: &BuildSettings,
    context: &Context,
) -> Preflight {
    let mut issues = Vec::new();
    let mut add = |severity, code, message: String| {
        issues.push(Issue {
            severity,
            code,
            message,
        })
    };
    for note in &detected.notes {
        add(Severity::Warning, "SOURCE_UNREADABLE", note.clone());
    }
    match &detected.stack {
        Stack::Dockerfile { path, exposes } => {
            if exposes.is_empty() {
                add(
                    Severity::Info,
                    "NO_EXPOSE",
                    format!("{path} has no EXPOSE line; Berth uses port {}", settings.port),
                );
            } else if !exposes.contains(&settings.port) {
                add(
                    Severity::Warning,
                    "PORT_MISMATCH",
                    format!(
                        "{path} exposes {}, but the deployment's port is {}: the health check and nginx go to {}",
                        join(exposes),
                        settings.port,
                        settings.port
                    ),
                );
            }
        }
        Stack::Node { locked: false, .. } => add(
            Severity::Info,
            "NO_LOCK_FILE",
            "no package-lock.json, yarn.lock or pnpm-lock.yaml: each build may install other versions".into(),
        ),
        _ => {}
    }
    match dockerfile::generate(&detected.stack, settings, &BaseImages::default()) {
        Ok(_) | Err(NotGenerated::OwnDockerfile) => {}
        Err(e @ NotGenerated::UnknownStack) => add(Severity::Error, "NO_STACK", e.to_string()),
        Err(e @ NotGenerated::NoStartCommand) => {
            add(Severity::Error, "NO_START_COMMAND", e.to_string())
        }
        Err(e @ NotGenerated::BadCommand(_)) => add(Severity::Error, "BAD_COMMAND", e.to_string()),
    }
    if facts.total_bytes > LARGE_SOURCE {
        add(
            Severity::Warning,
            "LARGE_SOURCE",
            format!(
                "the source is {} MB; builds copy all of it",
                facts.total_bytes / MB
            ),
        );
    }
    if facts.file_count > MANY_FILES {
        add(
            Severity::Warning,
            "MANY_FILES",
            format!("the source has {} files", facts.file_count),
        );
    }
    if facts.has("node_modules") {
        add(
            Severity::Warning,
            "NODE_MODULES_IN_SOURCE",
            "node_modules is in the source: it is installed again in the build; leave it out"
                .into(),
        );
    }
    if facts.has(".env") {
        add(
            Severity::Warning,
            "ENV_FILE_IN_SOURCE",
            "a .env file is in the source: secrets belong in the deployment's env vars, sealed"
                .into(),
        );
    }
    let (cpu, ram, base_mb, deps_factor) = match detected.stack {
        Stack::Node { .. } => (0.5, 256, 250, 2),
        Stack::Python { .. } => (0.5, 192, 150, 1),
        Stack::Static => (0.1, 32, 50, 0),
        Stack::Dockerfile { .. } => (0.5, 256, 300, 1),
        Stack::Unknown => (0.0, 0, 0, 0),
    };
    if let Some(limit) = context.memory_limit_mb
        && limit < ram
    {
        add(
            Severity::Warning,
            "MEMORY_LIMIT_LOW",
            format!(
                "the memory limit ({limit} MB) is under the {ram} MB such an app usually needs"
            ),
        );
    }
    let source_mb = facts.total_bytes.div_ceil(MB);
    let disk = match context.image_bytes {
        Some(bytes) => bytes.div_ceil(MB),
        None if base_mb == 0 => source_mb,
        None => base_mb + source_mb * (1 + deps_factor),
    };
    let count = |s| issues.iter().filter(|i| i.severity == s).count() as i32;
    let (errors, warnings, infos) = (
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info),
    );
    let score = (100 - 35 * errors - 10 * warnings - 2 * infos).clamp(0, 100) as u8;
    let status = if errors > 0 {
        Status::Fail
    } else if warnings > 0 {
        Status::Warn
    } else {
        Status::Pass
    };
    Preflight {
        score,
        status,
        stack: detected.stack.name(),
        issues,
        estimated_cpu: cpu,
        estimated_ram: ram,
        estimated_disk: disk,
    }
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect;

    use crate::test_facts as facts;

    fn run(facts: &SourceFacts, port: u16, context: Context) -> Preflight {
        let settings = BuildSettings {
            port,
            ..Default::default()
        };
        report(facts, &detect(facts, &settings), &settings, &context)
    }

    #[test]
    fn a_clean_node_app_passes_with_estimates() {
        let source = facts(
            &[("package.json", r#"{"scripts": {"start": "node s.js"}}"#)],
            &["package-lock.json"],
            3 * MB,
        );
        let report = run(&source, 3000, Context::default());
        assert_eq!(
            (report.score, report.status, report.stack),
            (100, Status::Pass, "node")
        );
        assert_eq!(report.estimated_disk, 250 + 3 * 3);
        let built = run(
            &source,
            3000,
            Context {
                image_bytes: Some(180 * MB + 1),
                memory_limit_mb: None,
            },
        );
        assert_eq!(built.estimated_disk, 181, "the image's size once built");
        let json = serde_json::to_value(&built).unwrap();
        for key in [
            "score",
            "status",
            "issues",
            "estimatedCPU",
            "estimatedRAM",
            "estimatedDisk",
        ] {
            assert!(json.get(key).is_some(), "{key}: {json}");
        }
    }

    #[test]
    fn problems_are_named_and_scored() {
        let source = facts(
            &[("Dockerfile", "FROM x\nEXPOSE 8080\n")],
            &["node_modules", ".env"],
            600 * MB,
        );
        let report = run(
            &source,
            3000,
            Context {
                image_bytes: None,
                memory_limit_mb: Some(64),
            },
        );
        let codes: Vec<&str> = report.issues.iter().map(|i| i.code).collect();
        assert_eq!(
            codes,
            [
                "PORT_MISMATCH",
                "LARGE_SOURCE",
                "NODE_MODULES_IN_SOURCE",
                "ENV_FILE_IN_SOURCE",
                "MEMORY_LIMIT_LOW"
            ]
        );
        assert_eq!((report.score, report.status), (50, Status::Warn));

        let nothing = run(&facts(&[], &[], 10), 3000, Context::default());
        assert_eq!(nothing.status, Status::Fail);
        assert_eq!(nothing.issues[0].code, "NO_STACK");
        let no_start = run(
            &facts(&[("package.json", "{}")], &[], 10),
            3000,
            Context::default(),
        );
        let codes: Vec<&str> = no_start.issues.iter().map(|i| i.code).collect();
        assert_eq!(codes, ["NO_LOCK_FILE", "NO_START_COMMAND"]);
        assert_eq!((no_start.score, no_start.status), (63, Status::Fail));
    }
}
