//! What a deployment's source is and how it is built: the repository's own
//! Dockerfile, or a detected Node, Python or static site with a Dockerfile
//! generated for it ([`dockerfile`]), and the pre-flight report that tells
//! the user before a build what will go wrong ([`preflight`]).
//!
//! It works from [`SourceFacts`]: the few files detection reads and whether a
//! few others exist, gathered on the server by one bounded command after the
//! fetch (or from an upload), so nothing here touches a filesystem.

mod detect;
pub mod dockerfile;
pub mod preflight;

use std::collections::BTreeMap;

pub use detect::{Detected, NodePackageManager, Stack, detect};

/// Files detection reads, each at most [`MAX_FACT_BYTES`].
pub const READ_FILES: &[&str] = &[
    "package.json",
    "requirements.txt",
    "pyproject.toml",
    "Procfile",
];

/// Files and directories whose presence detection and pre-flight look for.
pub const PRESENCE_FILES: &[&str] = &[
    "package-lock.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "index.html",
    "app.py",
    "main.py",
    "server.js",
    "index.js",
    "node_modules",
    ".env",
];

/// The most of one file detection keeps (a larger `package.json` is cut and
/// fails to parse, which pre-flight reports).
pub const MAX_FACT_BYTES: usize = 64 * 1024;

/// What is known of a source tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceFacts {
    /// Contents of the files read ([`READ_FILES`] and the Dockerfile), by
    /// path relative to the source's root.
    pub files: BTreeMap<String, String>,
    /// Which of [`PRESENCE_FILES`] exist.
    pub present: Vec<String>,
    pub total_bytes: u64,
    pub file_count: u64,
}

/// A path inside the source (a Dockerfile's, say): relative, no `..`, no
/// empty parts, no quotes, backslashes or control characters, at most 255
/// bytes.
pub fn relative_path_ok(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 255
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !path
            .chars()
            .any(|c| c.is_control() || matches!(c, '\'' | '"' | '\\'))
}

impl SourceFacts {
    pub fn has(&self, path: &str) -> bool {
        self.files.contains_key(path) || self.present.iter().any(|p| p == path)
    }

    pub fn read(&self, path: &str) -> Option<&str> {
        self.files.get(path).map(String::as_str)
    }
}

/// How the user asked the app to be built and run; `None` is "detect".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildSettings {
    /// Relative path of the Dockerfile to use (default `Dockerfile`).
    pub dockerfile_path: Option<String>,
    pub build_command: Option<String>,
    pub start_command: Option<String>,
    /// The port the app listens on inside its container.
    pub port: u16,
}

/// The images generated Dockerfiles start from (configurable, so a site
/// without Docker Hub can use its own registry's copies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImages {
    pub node: String,
    pub python: String,
    pub static_site: String,
}

impl Default for BaseImages {
    fn default() -> Self {
        BaseImages {
            node: "docker.io/library/node:20-slim".into(),
            python: "docker.io/library/python:3.12-slim".into(),
            static_site: "docker.io/library/nginx:1-alpine".into(),
        }
    }
}

/// Facts for tests: `files` read, `present` found, `total_bytes` in all.
#[cfg(test)]
pub(crate) fn test_facts(
    files: &[(&str, &str)],
    present: &[&str],
    total_bytes: u64,
) -> SourceFacts {
    SourceFacts {
        files: files
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        present: present.iter().map(|p| p.to_string()).collect(),
        total_bytes,
        file_count: 12,
    }
}
