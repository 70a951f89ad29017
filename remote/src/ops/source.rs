//! What a fetched source is made of, read on the server for detection and
//! pre-flight ([`berth_build::SourceFacts`]): which of a few known files
//! exist (one command, fixed names), their size and the tree's, and the
//! contents of the few detection reads, over SFTP, each bounded.

use std::time::Duration;

use berth_build::{MAX_FACT_BYTES, PRESENCE_FILES, READ_FILES, SourceFacts, relative_path_ok};
use berth_ssh::{Arg, Refused, ShellCommand};

use super::{On, OpError, files};

const DEADLINE: Duration = Duration::from_secs(120);

/// The facts of the source in `dir`; `dockerfile` is the Dockerfile's path
/// inside it (default `Dockerfile`).
pub async fn facts(
    on: &On<'_>,
    dir: &Arg,
    dockerfile: Option<&str>,
) -> Result<SourceFacts, OpError> {
    let dockerfile = dockerfile.unwrap_or("Dockerfile");
    if !relative_path_ok(dockerfile) {
        return Err(Refused {
            what: "dockerfilePath",
            value: dockerfile.to_owned(),
            rule: "must be a relative path inside the source",
        }
        .into());
    }
    let inside = |name: &str| Arg::path(&format!("{}/{name}", dir.as_str()));
    let dockerfile_path = inside(dockerfile)?;
    let names: Vec<&str> = READ_FILES.iter().chain(PRESENCE_FILES).copied().collect();
    let mut command = ShellCommand::new("cd --").arg(dir).raw("|| exit 3;");
    for path in names.iter().map(|n| inside(n)) {
        let path = path?;
        command = command
            .raw("if [ -f")
            .arg(&path)
            .raw("]; then echo \"present $(wc -c <")
            .arg(&path)
            .raw(")\"")
            .arg(&path)
            .raw("; elif [ -e")
            .arg(&path)
            .raw("]; then echo present 0")
            .arg(&path)
            .raw("; fi;");
    }
    let command = command
        .raw("if [ -f")
        .arg(&dockerfile_path)
        .raw("]; then echo \"dockerfile $(wc -c <")
        .arg(&dockerfile_path)
        .raw(
            ")\"; fi; echo \"kib $(du -sk . | cut -f1)\"; echo \"files $(find . -type f | wc -l)\"",
        );
    let output = on
        .run("reading the source's layout", &command, DEADLINE)
        .await?;
    let mut facts = SourceFacts::default();
    let mut to_read: Vec<(String, Arg)> = Vec::new();
    for line in output.stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |w: Option<&&str>| w.and_then(|n| n.parse::<u64>().ok());
        match words.first().copied() {
            // `present <bytes> <absolute path>` (the path may hold spaces).
            Some("present") => {
                let Some((bytes, path)) = line
                    .strip_prefix("present ")
                    .and_then(|rest| rest.split_once(' '))
                else {
                    continue;
                };
                let prefix = format!("{}/", dir.as_str());
                let Some(name) = path.strip_prefix(&prefix).filter(|n| names.contains(n)) else {
                    continue;
                };
                let small = bytes
                    .parse::<u64>()
                    .is_ok_and(|n| n <= MAX_FACT_BYTES as u64);
                if READ_FILES.contains(&name) && small {
                    to_read.push((name.to_owned(), inside(name)?));
                } else {
                    facts.present.push(name.to_owned());
                }
            }
            Some("dockerfile") => {
                if number(words.get(1)).is_some_and(|n| n <= MAX_FACT_BYTES as u64) {
                    to_read.push((dockerfile.to_owned(), dockerfile_path.clone()));
                } else {
                    facts.present.push(dockerfile.to_owned());
                }
            }
            Some("kib") => facts.total_bytes = number(words.get(1)).unwrap_or(0) * 1024,
            Some("files") => facts.file_count = number(words.get(1)).unwrap_or(0),
            _ => {}
        }
    }
    for (name, path) in to_read {
        let bytes = files::get(on, &path, MAX_FACT_BYTES as u64).await?;
        facts
            .files
            .insert(name, String::from_utf8_lossy(&bytes).into_owned());
    }
    Ok(facts)
}
