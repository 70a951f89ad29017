//! A deployment's request, checked. Every problem is reported at once, by
//! field (`healthCheck.path`, `env.API_KEY`), so a client fixes all of them
//! in one round; a request with any problem writes nothing.

use std::collections::BTreeMap;

use berth_ssh::Arg;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// `POST /deployments`' body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentRequest {
    pub server_id: Uuid,
    pub project_id: Option<Uuid>,
    /// 2–40 of `a-z`, `0-9`, `-`, starting with a letter: it becomes part of
    /// a host name.
    #[schema(pattern = "^[a-z][a-z0-9-]{0,38}[a-z0-9]$")]
    pub name: String,
    pub source: SourceRequest,
    /// Variable names to values; sealed at rest, never on a command line.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The port the app listens on in its container (default 3000).
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<i64>,
    /// The Dockerfile's path in the source, when not `Dockerfile`.
    pub dockerfile_path: Option<String>,
    #[schema(max_length = 1000)]
    pub build_command: Option<String>,
    #[schema(max_length = 1000)]
    pub start_command: Option<String>,
    pub health_check: Option<HealthCheckRequest>,
    /// How long the previous release keeps running after a switch, for its
    /// open connections to finish (0–3600, default 30).
    #[schema(minimum = 0, maximum = 3600)]
    pub drain_seconds: Option<i64>,
    pub resources: Option<ResourcesRequest>,
    /// Releases whose images are kept for rollback (1–50, default 5).
    #[schema(minimum = 1, maximum = 50)]
    pub keep_releases: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum SourceRequest {
    /// A Git repository: https, http, ssh or git URL without credentials.
    #[serde(rename_all = "camelCase")]
    Git {
        repo_url: String,
        /// Default `main`.
        branch: Option<String>,
    },
    /// A repository of the caller's linked GitHub account, as synced
    /// (`POST /github/repos/sync`): cloned over https with the account's
    /// token, so private ones need no deploy key.
    Github {
        /// `owner/name`.
        repo: String,
        /// Default: the repository's default branch.
        branch: Option<String>,
    },
    /// An image reference, pulled on the server.
    Image { image: String },
    /// An archive: only `POST /deployments/upload` takes it (the archive is
    /// its `file` part).
    Upload {},
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheckRequest {
    /// `false` turns the check off (it is on by default).
    pub enabled: Option<bool>,
    /// Default `/`.
    pub path: Option<String>,
    /// 100–599, default 200.
    pub expected_status: Option<i64>,
    /// Per attempt, 1–120, default 5.
    pub timeout_seconds: Option<i64>,
    /// Attempts after the start period, 1–100, default 10.
    pub retries: Option<i64>,
    /// 0–600, default 0.
    pub start_period_seconds: Option<i64>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourcesRequest {
    /// 16–262144.
    pub memory_mb: Option<i64>,
    /// 0.05–64.
    pub cpus: Option<f64>,
}

/// A problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Git {
        repo_url: String,
        branch: String,
    },
    /// A synced GitHub repository; the api resolves it to its clone URL.
    Github {
        repo: String,
        branch: Option<String>,
    },
    Image {
        image: String,
    },
    /// An archive sent to `POST /deployments/upload` (multipart, whose
    /// fields are checked as this request's).
    Upload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub path: String,
    pub expected_status: u16,
    pub timeout_seconds: u32,
    pub retries: u32,
    pub start_period_seconds: u32,
}

/// A checked deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSpec {
    pub server_id: Uuid,
    pub project_id: Option<Uuid>,
    pub name: String,
    pub source: Source,
    pub env: BTreeMap<String, String>,
    pub port: u16,
    pub dockerfile_path: Option<String>,
    pub build_command: Option<String>,
    pub start_command: Option<String>,
    /// `None`: turned off.
    pub health_check: Option<HealthCheck>,
    pub drain_seconds: u32,
    pub memory_mb: Option<u32>,
    pub cpus: Option<f64>,
    pub keep_releases: u32,
}

pub const MAX_ENV_VARS: usize = 200;
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
pub const MAX_ENV_TOTAL_BYTES: usize = 256 * 1024;

/// Collects problems while fields are checked.
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }

    /// `value` (or `default`) when within `range`, else a problem.
    fn ranged(
        &mut self,
        field: &str,
        value: Option<i64>,
        default: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> i64 {
        let value = value.unwrap_or(default);
        if !range.contains(&value) {
            self.add(
                field,
                format!("must be {} to {}", range.start(), range.end()),
            );
            return default;
        }
        value
    }

    /// A one-line command: 1–1000 characters, no control characters.
    fn command(&mut self, field: &str, value: &Option<String>) -> Option<String> {
        let value = value.as_ref()?.trim();
        if value.is_empty() || value.len() > 1000 || value.chars().any(char::is_control) {
            self.add(field, "must be one line of 1 to 1000 characters");
        }
        Some(value.to_owned())
    }
}

/// A name that is a DNS label part: `<name>-<short id>` stays under 63.
pub fn name_ok(name: &str) -> bool {
    let bytes = name.as_bytes();
    (2..=40).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !name.ends_with('-')
}

/// The problems of an env: names, one-line values, sizes.
pub fn check_env(env: &BTreeMap<String, String>) -> Vec<Problem> {
    let mut problems = Problems(Vec::new());
    if env.len() > MAX_ENV_VARS {
        problems.add("env", format!("at most {MAX_ENV_VARS} variables"));
    }
    let mut total = 0;
    for (name, value) in env {
        if let Err(refused) = Arg::env_name(name) {
            problems.add(format!("env.{name}"), refused.rule);
        }
        if value.len() > MAX_ENV_VALUE_BYTES || value.contains('\0') || value.contains('\n') {
            problems.add(
                format!("env.{name}"),
                format!("the value must be one line of at most {MAX_ENV_VALUE_BYTES} bytes"),
            );
        }
        total += name.len() + value.len();
    }
    if total > MAX_ENV_TOTAL_BYTES {
        problems.add("env", format!("at most {MAX_ENV_TOTAL_BYTES} bytes in all"));
    }
    problems.0
}

/// GitHub's `owner/name`: an owner of 1–39 letters, digits and inner
/// hyphens, a name of 1–100 letters, digits, `-`, `_` and `.` but not `.`
/// or `..`.
pub fn github_repo_name_ok(full_name: &str) -> bool {
    let Some((owner, name)) = full_name.split_once('/') else {
        return false;
    };
    let owner_ok = (1..=39).contains(&owner.len())
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !owner.starts_with('-')
        && !owner.ends_with('-');
    let name_ok = (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name != "."
        && name != "..";
    owner_ok && name_ok
}

pub fn check(request: &DeploymentRequest) -> Result<DeploymentSpec, Vec<Problem>> {
    let mut problems = Problems(Vec::new());
    if !name_ok(&request.name) {
        problems.add(
            "name",
            "must be 2 to 40 of a-z, 0-9 and -, starting with a letter and not ending with -",
        );
    }
    let source = match &request.source {
        SourceRequest::Git { repo_url, branch } => {
            if let Err(refused) = Arg::url(repo_url) {
                problems.add("source.repoUrl", refused.rule);
            }
            let branch = branch.clone().unwrap_or_else(|| "main".into());
            if let Err(refused) = Arg::git_ref(&branch) {
                problems.add("source.branch", refused.rule);
            }
            Source::Git {
                repo_url: repo_url.clone(),
                branch,
            }
        }
        SourceRequest::Github { repo, branch } => {
            if !github_repo_name_ok(repo) {
                problems.add(
                    "source.repo",
                    "must be owner/name as GitHub spells it (letters, digits, -, _ and .)",
                );
            }
            if let Some(branch) = branch
                && let Err(refused) = Arg::git_ref(branch)
            {
                problems.add("source.branch", refused.rule);
            }
            Source::Github {
                repo: repo.clone(),
                branch: branch.clone(),
            }
        }
        SourceRequest::Upload {} => Source::Upload,
        SourceRequest::Image { image } => {
            if let Err(refused) = Arg::image(image) {
                problems.add("source.image", refused.rule);
            }
            Source::Image {
                image: image.clone(),
            }
        }
    };
    problems.0.extend(check_env(&request.env));
    let port = problems.ranged("port", request.port, 3000, 1..=65535) as u16;
    let dockerfile_path = request.dockerfile_path.clone();
    if let Some(path) = &dockerfile_path
        && !berth_build::relative_path_ok(path)
    {
        problems.add(
            "dockerfilePath",
            "must be a relative path inside the source (no .., quotes, backslashes or control characters)",
        );
    }
    let build_command = problems.command("buildCommand", &request.build_command);
    let start_command = problems.command("startCommand", &request.start_command);
    let health = request.health_check.clone().unwrap_or(HealthCheckRequest {
        enabled: None,
        path: None,
        expected_status: None,
        timeout_seconds: None,
        retries: None,
        start_period_seconds: None,
    });
    let path = health.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || Arg::url(&format!("http://127.0.0.1{path}")).is_err() {
        problems.add(
            "healthCheck.path",
            "must be an absolute URL path, e.g. /healthz",
        );
    }
    let health_check = HealthCheck {
        path,
        expected_status: problems.ranged(
            "healthCheck.expectedStatus",
            health.expected_status,
            200,
            100..=599,
        ) as u16,
        timeout_seconds: problems.ranged(
            "healthCheck.timeoutSeconds",
            health.timeout_seconds,
            5,
            1..=120,
        ) as u32,
        retries: problems.ranged("healthCheck.retries", health.retries, 10, 1..=100) as u32,
        start_period_seconds: problems.ranged(
            "healthCheck.startPeriodSeconds",
            health.start_period_seconds,
            0,
            0..=600,
        ) as u32,
    };
    let drain_seconds = problems.ranged("drainSeconds", request.drain_seconds, 30, 0..=3600) as u32;
    let resources = request.resources.clone();
    let memory_mb = resources
        .as_ref()
        .and_then(|r| r.memory_mb)
        .map(|mb| problems.ranged("resources.memoryMb", Some(mb), 16, 16..=262_144) as u32);
    let cpus = resources.as_ref().and_then(|r| r.cpus);
    if let Some(cpus) = cpus
        && !(0.05..=64.0).contains(&cpus)
    {
        problems.add("resources.cpus", "must be 0.05 to 64");
    }
    let keep_releases = problems.ranged("keepReleases", request.keep_releases, 5, 1..=50) as u32;
    if !problems.0.is_empty() {
        return Err(problems.0);
    }
    Ok(DeploymentSpec {
        server_id: request.server_id,
        project_id: request.project_id,
        name: request.name.clone(),
        source,
        env: request.env.clone(),
        port,
        dockerfile_path,
        build_command,
        start_command,
        health_check: (health.enabled != Some(false)).then_some(health_check),
        drain_seconds,
        memory_mb,
        cpus,
        keep_releases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: serde_json::Value) -> DeploymentRequest {
        serde_json::from_value(body).unwrap()
    }

    fn base() -> serde_json::Value {
        json!({"serverId": Uuid::nil(), "name": "web",
               "source": {"type": "git", "repoUrl": "https://example.com/app.git"}})
    }

    #[test]
    fn github_repository_names_are_owner_slash_name() {
        for good in ["octo/app", "a/b", "my-org/app.web_2", "x/..hidden"] {
            assert!(github_repo_name_ok(good), "{good}");
        }
        for bad in [
            "app",
            "/app",
            "octo/",
            "octo/..",
            "octo/.",
            "-octo/app",
            "octo-/app",
            "octo/app/x",
            "octo/a b",
            "octo/app;rm",
            "oc_to/app",
        ] {
            assert!(!github_repo_name_ok(bad), "{bad}");
        }
        let mut body = base();
        body["source"] = json!({"type": "github", "repo": "octo/../x", "branch": "-x"});
        let problems = check(&request(body)).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["source.repo", "source.branch"]);
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let spec = check(&request(base())).unwrap();
        assert_eq!(
            spec.source,
            Source::Git {
                repo_url: "https://example.com/app.git".into(),
                branch: "main".into()
            }
        );
        assert_eq!(
            (spec.port, spec.drain_seconds, spec.keep_releases),
            (3000, 30, 5)
        );
        let health = spec.health_check.unwrap();
        assert_eq!(
            (health.path.as_str(), health.expected_status, health.retries),
            ("/", 200, 10)
        );
        let mut off = base();
        off["healthCheck"] = json!({"enabled": false});
        assert_eq!(check(&request(off)).unwrap().health_check, None);
        let image = json!({"serverId": Uuid::nil(), "name": "api",
                           "source": {"type": "image", "image": "registry.local:5000/api:1.2"}});
        assert!(check(&request(image)).is_ok());
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let mut bad = base();
        bad["name"] = json!("Web App");
        bad["source"] =
            json!({"type": "git", "repoUrl": "https://user:pw@example.com/x.git", "branch": "-x"});
        bad["env"] = json!({"1BAD": "v", "OK": "line\nbreak"});
        bad["port"] = json!(0);
        bad["dockerfilePath"] = json!("../Dockerfile");
        bad["startCommand"] = json!("node a.js\nrm -rf /");
        bad["healthCheck"] = json!({"path": "healthz", "retries": 0});
        bad["drainSeconds"] = json!(7200);
        bad["resources"] = json!({"memoryMb": 1, "cpus": 100.0});
        bad["keepReleases"] = json!(0);
        let problems = check(&request(bad)).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "name",
                "source.repoUrl",
                "source.branch",
                "env.1BAD",
                "env.OK",
                "port",
                "dockerfilePath",
                "startCommand",
                "healthCheck.path",
                "healthCheck.retries",
                "drainSeconds",
                "resources.memoryMb",
                "resources.cpus",
                "keepReleases"
            ]
        );
        let image = json!({"serverId": Uuid::nil(), "name": "ok",
                           "source": {"type": "image", "image": "bad image; reboot"}});
        let problems = check(&request(image)).unwrap_err();
        assert_eq!(problems[0].field, "source.image");
        let unknown: Result<DeploymentRequest, _> = serde_json::from_value(
            json!({"serverId": Uuid::nil(), "name": "x1", "source": {"type": "ftp"}}),
        );
        assert!(unknown.is_err(), "an unknown source type is refused");
    }

    #[test]
    fn names_fit_in_a_host_name() {
        for good in ["ab", "web-2", "a23456789012345678901234567890123456789x"] {
            assert!(name_ok(good), "{good}");
        }
        for bad in ["a", "-web", "web-", "Web", "we_b", "9web", &"a".repeat(41)] {
            assert!(!name_ok(bad), "{bad}");
        }
    }
}
