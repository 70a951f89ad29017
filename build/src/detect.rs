//! Telling what a source is, in order: the user's Dockerfile, a Node app
//! (`package.json`), a Python app (`requirements.txt` or `pyproject.toml`),
//! a static site (`index.html`).

use crate::{BuildSettings, SourceFacts};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePackageManager {
    Npm,
    Yarn,
    Pnpm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stack {
    /// The source's own Dockerfile, at `path`; `exposes` the ports its
    /// `EXPOSE` lines name.
    Dockerfile {
        path: String,
        exposes: Vec<u16>,
    },
    Node {
        manager: NodePackageManager,
        /// `npm ci` and the like: a lock file is there.
        locked: bool,
        /// `package.json` has a `build` script.
        build_script: bool,
        /// The command that starts it, when one was found.
        start: Option<String>,
    },
    Python {
        requirements: bool,
        start: Option<String>,
    },
    Static,
    Unknown,
}

impl Stack {
    pub fn name(&self) -> &'static str {
        match self {
            Stack::Dockerfile { .. } => "dockerfile",
            Stack::Node { .. } => "node",
            Stack::Python { .. } => "python",
            Stack::Static => "static",
            Stack::Unknown => "unknown",
        }
    }
}

/// What detection found, and what it could not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub stack: Stack,
    /// Problems met on the way (a `package.json` that does not parse).
    pub notes: Vec<String>,
}

pub fn detect(facts: &SourceFacts, settings: &BuildSettings) -> Detected {
    let mut notes = Vec::new();
    let dockerfile = settings
        .dockerfile_path
        .clone()
        .unwrap_or_else(|| "Dockerfile".into());
    if let Some(text) = facts.read(&dockerfile) {
        return Detected {
            stack: Stack::Dockerfile {
                path: dockerfile,
                exposes: exposed_ports(text),
            },
            notes,
        };
    }
    if settings.dockerfile_path.is_some() {
        notes.push(format!("no Dockerfile at {dockerfile}"));
    }
    if facts.has("package.json") {
        let package = match facts
            .read("package.json")
            .map(serde_json::from_str::<serde_json::Value>)
        {
            Some(Ok(value)) => value,
            Some(Err(e)) => {
                notes.push(format!("package.json does not parse: {e}"));
                serde_json::Value::Null
            }
            None => {
                notes.push("package.json is larger than 64 KiB and was not read".into());
                serde_json::Value::Null
            }
        };
        let script = |name: &str| package["scripts"][name].as_str().is_some();
        let manager = if facts.has("pnpm-lock.yaml") {
            NodePackageManager::Pnpm
        } else if facts.has("yarn.lock") {
            NodePackageManager::Yarn
        } else {
            NodePackageManager::Npm
        };
        let locked = match manager {
            NodePackageManager::Npm => facts.has("package-lock.json"),
            _ => true,
        };
        let start = settings.start_command.clone().or_else(|| {
            if script("start") {
                Some(run_script(manager, "start"))
            } else if let Some(main) = package["main"].as_str().filter(|m| safe_word(m)) {
                Some(format!("node {main}"))
            } else {
                ["server.js", "index.js"]
                    .into_iter()
                    .find(|f| facts.has(f))
                    .map(|f| format!("node {f}"))
            }
        });
        return Detected {
            stack: Stack::Node {
                manager,
                locked,
                build_script: script("build"),
                start,
            },
            notes,
        };
    }
    let requirements = facts.has("requirements.txt");
    if requirements || facts.has("pyproject.toml") {
        let start = settings
            .start_command
            .clone()
            .or_else(|| procfile_web(facts))
            .or_else(|| {
                ["app.py", "main.py"]
                    .into_iter()
                    .find(|f| facts.has(f))
                    .map(|f| format!("python {f}"))
            });
        return Detected {
            stack: Stack::Python {
                requirements,
                start,
            },
            notes,
        };
    }
    let stack = if facts.has("index.html") {
        Stack::Static
    } else {
        Stack::Unknown
    };
    Detected { stack, notes }
}

/// `npm run build`, `yarn build`, `pnpm run build`.
pub(crate) fn run_script(manager: NodePackageManager, script: &str) -> String {
    match manager {
        NodePackageManager::Npm => format!("npm run {script}"),
        NodePackageManager::Yarn => format!("yarn {script}"),
        NodePackageManager::Pnpm => format!("pnpm run {script}"),
    }
}

/// A file name safe to put after `node` in a generated command.
fn safe_word(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 200
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        && !text.starts_with('-')
}

/// The `web:` line of a Procfile.
fn procfile_web(facts: &SourceFacts) -> Option<String> {
    facts.read("Procfile")?.lines().find_map(|line| {
        line.strip_prefix("web:")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
    })
}

/// The ports a Dockerfile's `EXPOSE` lines name (`8080`, `8080/tcp`).
pub(crate) fn exposed_ports(dockerfile: &str) -> Vec<u16> {
    let mut ports = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("EXPOSE"))
        {
            continue;
        }
        for word in words {
            let number = word.split('/').next().unwrap_or("");
            if let Ok(port) = number.parse::<u16>() {
                ports.push(port);
            }
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(files: &[(&str, &str)], present: &[&str]) -> SourceFacts {
        crate::test_facts(files, present, 1000)
    }

    fn settings() -> BuildSettings {
        BuildSettings {
            port: 3000,
            ..Default::default()
        }
    }

    #[test]
    fn the_sources_own_dockerfile_wins() {
        let found = detect(
            &facts(
                &[
                    ("Dockerfile", "FROM x\nexpose 8080/tcp 9000\n"),
                    ("package.json", "{}"),
                ],
                &[],
            ),
            &settings(),
        );
        assert_eq!(
            found.stack,
            Stack::Dockerfile {
                path: "Dockerfile".into(),
                exposes: vec![8080, 9000]
            }
        );
    }

    #[test]
    fn node_apps_are_told_by_their_lock_files_and_scripts() {
        let found = detect(
            &facts(
                &[(
                    "package.json",
                    r#"{"scripts": {"start": "node srv.js", "build": "tsc"}}"#,
                )],
                &["pnpm-lock.yaml"],
            ),
            &settings(),
        );
        assert_eq!(
            found.stack,
            Stack::Node {
                manager: NodePackageManager::Pnpm,
                locked: true,
                build_script: true,
                start: Some("pnpm run start".into())
            }
        );
        let found = detect(
            &facts(&[("package.json", r#"{"main": "app/server.js"}"#)], &[]),
            &settings(),
        );
        assert!(matches!(
            found.stack,
            Stack::Node { manager: NodePackageManager::Npm, locked: false, start: Some(ref s), .. }
                if s == "node app/server.js"
        ));
        let found = detect(
            &facts(
                &[("package.json", r#"{"main": "$(reboot)"}"#)],
                &["index.js"],
            ),
            &settings(),
        );
        assert!(
            matches!(found.stack, Stack::Node { start: Some(ref s), .. } if s == "node index.js"),
            "an odd main is not put in a command: {found:?}"
        );
        let found = detect(&facts(&[("package.json", "{not json")], &[]), &settings());
        assert!(matches!(found.stack, Stack::Node { start: None, .. }));
        assert!(found.notes[0].contains("package.json does not parse"));
    }

    #[test]
    fn python_static_and_unknown() {
        let found = detect(
            &facts(
                &[
                    ("requirements.txt", "flask\n"),
                    ("Procfile", "web: gunicorn app:app\n"),
                ],
                &[],
            ),
            &settings(),
        );
        assert_eq!(
            found.stack,
            Stack::Python {
                requirements: true,
                start: Some("gunicorn app:app".into())
            }
        );
        let found = detect(&facts(&[("pyproject.toml", "")], &["main.py"]), &settings());
        assert!(
            matches!(found.stack, Stack::Python { requirements: false, start: Some(ref s) } if s == "python main.py")
        );
        assert_eq!(
            detect(&facts(&[], &["index.html"]), &settings()).stack,
            Stack::Static
        );
        assert_eq!(detect(&facts(&[], &[]), &settings()).stack, Stack::Unknown);
        let mut custom = settings();
        custom.dockerfile_path = Some("deploy/Dockerfile".into());
        let found = detect(&facts(&[], &["index.html"]), &custom);
        assert_eq!(found.notes, ["no Dockerfile at deploy/Dockerfile"]);
    }
}
