//! Docker on a server (the `docker` CLI; podman behind it works too): build
//! with labels, run, inspect (parsed), stop, remove, and prune only what
//! carries Berth's label.

use std::collections::HashMap;
use std::time::Duration;

use berth_ssh::{Arg, ShellCommand};
use serde::Deserialize;

use super::{On, OpError};

/// The label on everything Berth builds or runs; pruning touches nothing else.
pub const MANAGED_LABEL: &str = "berth.managed";

/// Short commands (inspect, stop, rm) end within this.
const SHORT: Duration = Duration::from_secs(120);

/// What to build.
pub struct Build {
    /// The build context, a directory on the server.
    pub context: Arg,
    /// The Dockerfile, when not `Dockerfile` in the context.
    pub dockerfile: Option<Arg>,
    pub tag: Arg,
    /// `key=value` labels ([`Arg::label`]); [`MANAGED_LABEL`] is always added.
    pub labels: Vec<Arg>,
}

fn managed() -> Arg {
    Arg::label(MANAGED_LABEL, "true").expect("a valid label")
}

/// Builds an image, streaming the build's output.
pub async fn build(on: &On<'_>, spec: &Build, deadline: Duration) -> Result<(), OpError> {
    let mut command = ShellCommand::new("docker build")
        .raw("--label")
        .arg(&managed());
    for label in &spec.labels {
        command = command.raw("--label").arg(label);
    }
    if let Some(dockerfile) = &spec.dockerfile {
        command = command.raw("-f").arg(dockerfile);
    }
    let command = command
        .raw("-t")
        .arg(&spec.tag)
        .raw("--")
        .arg(&spec.context);
    on.run("docker build", &command, deadline).await.map(|_| ())
}

/// What to run.
pub struct Run {
    pub name: Arg,
    pub image: Arg,
    pub labels: Vec<Arg>,
    /// An env file on the server ([`super::files::put_secret`]): values never
    /// on the command line.
    pub env_file: Option<Arg>,
    /// [`Arg::port_mapping`]s.
    pub publish: Vec<Arg>,
    /// Bytes.
    pub memory: Option<u64>,
    pub cpus: Option<Arg>,
}

/// Starts a container detached (restarted unless stopped); returns its id.
pub async fn run(on: &On<'_>, spec: &Run) -> Result<String, OpError> {
    let mut command = ShellCommand::new("docker run -d --restart unless-stopped")
        .raw("--name")
        .arg(&spec.name)
        .raw("--label")
        .arg(&managed());
    for label in &spec.labels {
        command = command.raw("--label").arg(label);
    }
    if let Some(file) = &spec.env_file {
        command = command.raw("--env-file").arg(file);
    }
    for mapping in &spec.publish {
        command = command.raw("-p").arg(mapping);
    }
    if let Some(bytes) = spec.memory {
        command = command.raw("--memory").arg(&Arg::number(bytes));
    }
    if let Some(cpus) = &spec.cpus {
        command = command.raw("--cpus").arg(cpus);
    }
    let command = command.raw("--").arg(&spec.image);
    let output = on.run("docker run", &command, SHORT).await?;
    let id = output.stdout.lines().last().unwrap_or("").trim().to_owned();
    if id.len() < 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OpError::Unreadable {
            what: "docker run",
            detail: format!("no container id in its answer: {:?}", output.stdout),
        });
    }
    Ok(id)
}

/// A container as `docker inspect` describes it (the fields Berth reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Container {
    pub id: String,
    pub name: String,
    pub state: ContainerState,
    pub config: ContainerConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    pub status: String,
    pub running: bool,
    #[serde(default)]
    pub exit_code: i64,
    #[serde(default)]
    pub health: Option<Health>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    pub image: String,
    #[serde(default)]
    pub labels: Option<HashMap<String, String>>,
}

/// An image as `docker inspect` describes it (the fields Berth reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Image {
    pub id: String,
    /// Bytes.
    pub size: u64,
    /// `name@sha256:…` for images pulled from (or pushed to) a registry.
    #[serde(default)]
    pub repo_digests: Option<Vec<String>>,
    pub config: ImageConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub labels: Option<HashMap<String, String>>,
}

/// The container called `name`, or `None` when there is none.
pub async fn inspect(on: &On<'_>, name: &Arg) -> Result<Option<Container>, OpError> {
    inspect_json(on, Kind::Container, name).await
}

/// The image `reference` names, or `None` when there is none: its size (for
/// pre-flight) and digests (what a release records it ran).
pub async fn inspect_image(on: &On<'_>, reference: &Arg) -> Result<Option<Image>, OpError> {
    inspect_json(on, Kind::Image, reference).await
}

enum Kind {
    Container,
    Image,
}

async fn inspect_json<T: serde::de::DeserializeOwned>(
    on: &On<'_>,
    kind: Kind,
    name: &Arg,
) -> Result<Option<T>, OpError> {
    // Fixed text: the template is Go's, not a shell's, and in single quotes.
    let command = match kind {
        Kind::Container => {
            ShellCommand::new("docker inspect --type container --format '{{json .}}' --")
        }
        Kind::Image => ShellCommand::new("docker inspect --type image --format '{{json .}}' --"),
    }
    .arg(name)
    .raw("2>&1; echo \"exit=$?\"");
    let output = on.session.exec(&command, SHORT, on.cancel).await?;
    let (body, status) = match output.stdout.trim_end().rsplit_once('\n') {
        Some((body, status)) => (body, status),
        None => ("", output.stdout.trim_end()),
    };
    if status != "exit=0" {
        if body.to_ascii_lowercase().contains("no such") {
            return Ok(None);
        }
        return Err(OpError::Failed {
            what: "docker inspect",
            status: status.trim_start_matches("exit=").parse().unwrap_or(-1),
            detail: body.chars().take(2000).collect(),
        });
    }
    serde_json::from_str(body.trim())
        .map(Some)
        .map_err(|e| OpError::Unreadable {
            what: "docker inspect",
            detail: e.to_string(),
        })
}

/// Stops a container, giving it `grace` to exit before it is killed.
pub async fn stop(on: &On<'_>, name: &Arg, grace: Duration) -> Result<(), OpError> {
    let command = ShellCommand::new("docker stop -t")
        .arg(&Arg::number(grace.as_secs()))
        .raw("--")
        .arg(name);
    on.run("docker stop", &command, SHORT + grace)
        .await
        .map(|_| ())
}

/// Removes a container (stopping it first), if it is there.
pub async fn remove(on: &On<'_>, name: &Arg) -> Result<(), OpError> {
    let command = ShellCommand::new("docker rm -f --").arg(name);
    match on.run("docker rm", &command, SHORT).await {
        Err(OpError::Failed { detail, .. }) if detail.to_ascii_lowercase().contains("no such") => {
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// Removes images that carry `label` (and Berth's own label) and that no
/// container uses; returns how many went. Nothing without Berth's label is
/// ever touched. (Listed and removed one by one rather than with `docker
/// image prune`, whose label filters podman's service refuses.)
pub async fn prune_images(on: &On<'_>, label: &Arg) -> Result<usize, OpError> {
    // One label filter, and Berth's own label checked per image: podman
    // matches images carrying *any* of several label filters (docker, all),
    // so two filters would reach other deployments' images.
    let command = ShellCommand::new("docker image ls -q --no-trunc --filter")
        .arg(&Arg::label_filter(label))
        .raw(
            "| sort -u | while read -r image; do \
              [ \"$(docker image inspect --format '{{index .Config.Labels \"berth.managed\"}}' -- \"$image\" 2>/dev/null)\" = true ] || continue; \
              if docker rmi -- \"$image\" >/dev/null 2>&1; then echo \"removed $image\"; \
              else echo \"kept $image (in use)\"; fi; done",
        );
    let output = on.run("docker image prune", &command, SHORT).await?;
    Ok(output
        .stdout
        .lines()
        .filter(|l| l.starts_with("removed "))
        .count())
}

/// Pulls `image` on the server (its registry's credentials, if any, are the
/// server's own docker login).
pub async fn pull(on: &On<'_>, image: &Arg, deadline: Duration) -> Result<(), OpError> {
    on.run(
        "docker pull",
        &ShellCommand::new("docker pull --").arg(image),
        deadline,
    )
    .await
    .map(|_| ())
}

/// Gives `source` the tag `tag` as well (an image Berth pulled becomes one of
/// a release's, so it is pruned with it, and only its tag goes).
pub async fn tag(on: &On<'_>, source: &Arg, tag: &Arg) -> Result<(), OpError> {
    on.run(
        "docker tag",
        &ShellCommand::new("docker tag --").arg(source).arg(tag),
        SHORT,
    )
    .await
    .map(|_| ())
}

/// Starts a stopped container.
pub async fn start(on: &On<'_>, name: &Arg) -> Result<(), OpError> {
    on.run(
        "docker start",
        &ShellCommand::new("docker start --").arg(name),
        SHORT,
    )
    .await
    .map(|_| ())
}

/// Names of the containers (running or not) carrying `label` (`key=value`)
/// besides Berth's own.
pub async fn containers_labelled(on: &On<'_>, label: &Arg) -> Result<Vec<String>, OpError> {
    let output = on
        .run(
            "docker ps",
            &ShellCommand::new("docker ps -a --format '{{.Names}}' --filter")
                .arg(&Arg::label_filter(&managed()))
                .raw("--filter")
                .arg(&Arg::label_filter(label)),
            SHORT,
        )
        .await?;
    Ok(output
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Removes the tag `reference`; the image goes with its last tag, unless a
/// container uses it. Gone already is not an error.
pub async fn remove_image(on: &On<'_>, reference: &Arg) -> Result<(), OpError> {
    let command = ShellCommand::new("docker rmi --").arg(reference);
    match on.run("docker rmi", &command, SHORT).await {
        Err(OpError::Failed { detail, .. })
            if detail.to_ascii_lowercase().contains("no such")
                || detail.to_ascii_lowercase().contains("not known")
                || detail.to_ascii_lowercase().contains("not found") =>
        {
            Ok(())
        }
        other => other.map(|_| ()),
    }
}
