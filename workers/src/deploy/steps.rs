//! The steps of a release up to the switch, each timed into the release's
//! `steps` and streamed to its log: fetch, pre-flight, build (or, for a
//! rollback, the kept image), start, health check, switch.

use std::time::Duration;

use berth_build::{detect, dockerfile, preflight};
use berth_deployments::names::{self, DEPLOYMENT_LABEL, RELEASE_LABEL};
use berth_deployments::settings::Snapshot;
use berth_jobs::runtime::JobContext;
use berth_remote::Server;
use berth_remote::ops::nginx::{Nginx, ProxySite};
use berth_remote::ops::{On, OpError, docker, files, git, health, http, source};
use berth_secrets::{deployment_secret_binding, oauth_identity_row, oauth_token_binding};
use berth_ssh::{Arg, Refused, Stream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::release::Mode;
use super::store::{self, DeploymentRow, ReleaseRow};
use super::{DeploymentJobs, Timer};

/// Why a step failed, and whether another attempt could do better.
pub(super) struct StepError {
    pub(super) message: String,
    pub(super) transient: bool,
}

impl StepError {
    pub(super) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            transient: false,
        }
    }
}

impl From<OpError> for StepError {
    fn from(e: OpError) -> Self {
        Self {
            transient: e.is_transient(),
            message: e.to_string(),
        }
    }
}

impl From<Refused> for StepError {
    fn from(e: Refused) -> Self {
        Self::new(e.to_string())
    }
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> Self {
        Self {
            message: format!("cannot record the release: {e}"),
            transient: true,
        }
    }
}

/// How long a switched site may take to answer through nginx: a reload
/// returns before nginx's new workers serve.
const SWITCH_CONFIRM: Duration = Duration::from_secs(15);
/// How long a container without a health check must stay up.
const UNCHECKED_START: Duration = Duration::from_secs(2);
/// Ports tried when the one picked is taken before the container binds it.
const PORT_TRIES: u32 = 5;
/// Lines of a failed container's own log shown in the release's log.
const FAILED_LOG_LINES: u64 = 50;

/// One release's run: what it acts on and where it is.
pub(super) struct Run<'a> {
    pub(super) jobs: &'a DeploymentJobs,
    pub(super) deployment: &'a DeploymentRow,
    pub(super) release: &'a ReleaseRow,
    pub(super) server: &'a Server,
    pub(super) on: On<'a>,
    pub(super) ctx: &'a JobContext,
    pub(super) snapshot: &'a Snapshot,
    /// The step being run (the failed one when a step fails).
    pub(super) step: &'static str,
    /// The container this run started, removed if the release fails.
    pub(super) started: Option<String>,
    /// nginx may point at this release's container: put the live one back
    /// before removing it.
    pub(super) switching: bool,
}

impl Run<'_> {
    fn id(&self) -> Uuid {
        self.deployment.id
    }

    fn number(&self) -> i32 {
        self.release.number
    }

    fn log(&self, line: &str) {
        (self.on.lines)(Stream::Stdout, line);
    }

    fn begin(&mut self, step: &'static str, what: &str) -> Timer {
        self.step = step;
        self.ctx.log.step(what);
        Timer::start()
    }

    async fn end(&self, timer: Timer) -> Result<(), StepError> {
        store::step_done(
            &self.jobs.pool,
            self.id(),
            self.number(),
            self.step,
            timer.at,
            timer.ms(),
        )
        .await?;
        Ok(())
    }

    fn dir(&self) -> String {
        names::release_dir(&self.server.data_dir, self.id(), self.number())
    }

    fn inside(&self, name: &str) -> Result<Arg, StepError> {
        Ok(Arg::path(&format!("{}/{name}", self.dir()))?)
    }

    pub(super) async fn through_switch(&mut self, mode: Mode) -> Result<(), StepError> {
        let image = match mode {
            Mode::Build => self.fetch_and_build().await?,
            Mode::Rollback => self.kept_image().await?,
        };
        let port = self.start(&image).await?;
        self.health(port).await?;
        self.switch(port).await
    }

    async fn kept_image(&mut self) -> Result<Arg, StepError> {
        let timer = self.begin("fetch", "checking the kept image");
        let tag = self
            .release
            .image_tag
            .clone()
            .ok_or_else(|| StepError::new("the release to roll back to has no image"))?;
        let image = Arg::image(&tag)?;
        if docker::inspect_image(&self.on, &image).await?.is_none() {
            return Err(StepError::new(format!(
                "the image {tag} is no longer on the server"
            )));
        }
        self.end(timer).await?;
        Ok(image)
    }

    async fn fetch_and_build(&mut self) -> Result<Arg, StepError> {
        let (id, number) = (self.id(), self.number());
        let tag = names::image_tag(id, number);
        let image = Arg::image(&tag)?;
        let timer = self.begin("fetch", "fetching the source");
        files::make_dir(&self.on, &Arg::path(&self.dir())?, 0o700).await?;
        let src = self.inside("src")?;
        let source_ref = match self.deployment.source_type.as_str() {
            "git" => self.clone_repository(&src).await?,
            "upload" => {
                let (sha256, bytes) = store::archive(&self.jobs.pool, id, number)
                    .await?
                    .ok_or_else(|| StepError::new("the uploaded archive is gone"))?;
                let archive = self.inside("source.tar.gz")?;
                files::put(&self.on, &archive, &bytes, 0o600).await?;
                files::unpack(&self.on, &archive, &src).await?;
                files::remove(&self.on, &archive).await?;
                format!("sha256:{sha256}")
            }
            _ => {
                let reference = self.deployment.image.clone().unwrap_or_default();
                let pulled = Arg::image(&reference)?;
                docker::pull(&self.on, &pulled, self.jobs.config.build_timeout).await?;
                let found = docker::inspect_image(&self.on, &pulled)
                    .await?
                    .ok_or_else(|| StepError::new("the pulled image is not on the server"))?;
                docker::tag(&self.on, &pulled, &image).await?;
                found
                    .repo_digests
                    .and_then(|d| d.into_iter().next())
                    .unwrap_or(found.id)
            }
        };
        store::fetched(&self.jobs.pool, id, number, &source_ref, &tag).await?;
        self.log(&format!("source: {source_ref}"));
        self.end(timer).await?;
        if self.deployment.source_type == "image" {
            return Ok(image);
        }

        let timer = self.begin("preflight", "pre-flight checks");
        let settings = self.snapshot.settings.build();
        let facts = source::facts(
            &self.on,
            &src,
            self.snapshot.settings.dockerfile_path.as_deref(),
        )
        .await?;
        let detected = detect(&facts, &settings);
        let context = preflight::Context {
            image_bytes: None,
            memory_limit_mb: self.snapshot.settings.memory_mb.map(u64::from),
        };
        let report = preflight::report(&facts, &detected, &settings, &context);
        self.record_preflight(&report).await?;
        for issue in &report.issues {
            self.log(&format!(
                "{:?} {}: {}",
                issue.severity, issue.code, issue.message
            ));
        }
        self.log(&format!(
            "pre-flight: {} ({}), stack {}",
            report.score,
            serde_json::to_value(report.status).unwrap_or_default(),
            report.stack
        ));
        if report.status == preflight::Status::Fail {
            let errors: Vec<String> = report
                .issues
                .iter()
                .filter(|i| i.severity == preflight::Severity::Error)
                .map(|i| format!("{}: {}", i.code, i.message))
                .collect();
            return Err(StepError::new(errors.join("; ")));
        }
        self.end(timer).await?;

        let timer = self.begin("build", "building the image");
        let data_dir = Arg::path(&self.server.data_dir)?;
        let free = files::free_bytes(&self.on, &data_dir).await?;
        let floor = self.jobs.config.min_free_disk_bytes;
        if free < floor {
            return Err(StepError::new(format!(
                "only {} MB free under {}, less than the {} MB a build needs \
                 (BERTH_DEPLOY_MIN_FREE_DISK_MB); free some disk and deploy again",
                free / (1024 * 1024),
                self.server.data_dir,
                floor / (1024 * 1024)
            )));
        }
        let dockerfile = match &detected.stack {
            berth_build::Stack::Dockerfile { path, .. } => self.inside(&format!("src/{path}"))?,
            stack => {
                let text = dockerfile::generate(stack, &settings, &self.jobs.config.base_images)
                    .map_err(|e| StepError::new(e.to_string()))?;
                let path = self.inside("Dockerfile.berth")?;
                files::put(&self.on, &path, text.as_bytes(), 0o644).await?;
                path
            }
        };
        docker::build(
            &self.on,
            &docker::Build {
                context: src,
                dockerfile: Some(dockerfile),
                tag: image.clone(),
                labels: self.labels()?,
            },
            self.jobs.config.build_timeout,
        )
        .await?;
        if let Some(built) = docker::inspect_image(&self.on, &image).await? {
            let context = preflight::Context {
                image_bytes: Some(built.size),
                ..context
            };
            self.record_preflight(&preflight::report(&facts, &detected, &settings, &context))
                .await?;
        }
        self.end(timer).await?;
        Ok(image)
    }

    async fn record_preflight(&self, report: &preflight::Preflight) -> Result<(), StepError> {
        let value = serde_json::to_value(report).unwrap_or_default();
        store::preflight(&self.jobs.pool, self.id(), self.number(), &value).await?;
        Ok(())
    }

    async fn clone_repository(&self, dest: &Arg) -> Result<String, StepError> {
        let url = self.deployment.repo_url.clone().unwrap_or_default();
        let reference = self
            .release
            .requested_commit
            .clone()
            .or_else(|| self.deployment.branch.clone())
            .unwrap_or_else(|| "main".into());
        let over_ssh = url.starts_with("ssh://") || (!url.contains("://") && url.contains('@'));
        let access = match (&self.deployment.deploy_key_sealed, over_ssh) {
            _ if self.deployment.git_access == "github" => {
                let owner = self.deployment.owner_user_id;
                let sealed = store::github_token(&self.jobs.pool, owner)
                    .await?
                    .ok_or_else(|| {
                        StepError::new(
                            "the GitHub account this deployment clones with is no longer linked: \
                             link it again (GET /auth/oauth/github?mode=link) and redeploy",
                        )
                    })?;
                let token = self
                    .jobs
                    .keys
                    .open_string(
                        &sealed,
                        oauth_token_binding(&oauth_identity_row(owner, "github")),
                    )
                    .map_err(|e| StepError::new(format!("the GitHub token does not open: {e}")))?;
                git::Access::Token(token.into())
            }
            (Some(sealed), true) => {
                let id = self.id().to_string();
                let key = self
                    .jobs
                    .keys
                    .open_string(sealed, deployment_secret_binding(&id, "deploy_key"))
                    .map_err(|e| StepError::new(format!("the deploy key does not open: {e}")))?;
                git::Access::DeployKey(key.into())
            }
            _ => git::Access::Anonymous,
        };
        let known_hosts = Arg::path(&format!(
            "{}/known_hosts",
            self.server.data_dir.trim_end_matches('/')
        ))?;
        let commit = git::clone(
            &self.on,
            &git::Clone {
                url: Arg::url(&url)?,
                reference: Arg::git_ref(&reference)?,
                dest: dest.clone(),
                known_hosts,
                access,
            },
            Duration::from_secs(600),
        )
        .await?;
        Ok(commit)
    }

    fn labels(&self) -> Result<Vec<Arg>, StepError> {
        Ok(vec![
            Arg::label(DEPLOYMENT_LABEL, &self.id().to_string())?,
            Arg::label(RELEASE_LABEL, &self.number().to_string())?,
        ])
    }

    async fn start(&mut self, image: &Arg) -> Result<u16, StepError> {
        let timer = self.begin("start", "starting the new container");
        let (id, number) = (self.id(), self.number());
        let settings = &self.snapshot.settings;
        let live_port = match self.deployment.live_release {
            Some(live) => store::release(&self.jobs.pool, id, live)
                .await?
                .and_then(|r| r.port)
                .and_then(|p| u16::try_from(p).ok()),
            None => None,
        };
        let mut busy = health::ports_taken(&self.on).await?;
        files::make_dir(&self.on, &Arg::path(&self.dir())?, 0o700).await?;
        let env_file = self.inside("env")?;
        let env = berth_deployments::env::render(&self.snapshot.env, settings.port);
        files::put_secret(&self.on, &env_file, &env.into()).await?;
        let name = names::container_name(id, number);
        let container = Arg::name(&name)?;
        let mut tries = 0;
        let port = loop {
            let port = health::pick_port(self.jobs.config.ports.clone(), &busy, live_port)
                .ok_or_else(|| StepError::new("no free port is left in BERTH_DEPLOY_PORT_RANGE"))?;
            self.started = Some(name.clone());
            let run = docker::run(
                &self.on,
                &docker::Run {
                    name: container.clone(),
                    image: image.clone(),
                    labels: self.labels()?,
                    env_file: Some(env_file.clone()),
                    publish: vec![Arg::port_mapping(
                        std::net::Ipv4Addr::LOCALHOST.into(),
                        port,
                        settings.port,
                    )],
                    memory: settings.memory_mb.map(|mb| u64::from(mb) * 1024 * 1024),
                    cpus: settings.cpus.map(Arg::decimal).transpose()?,
                },
            )
            .await;
            match run {
                Ok(_) => break port,
                // Taken between the look and the bind: another port.
                Err(OpError::Failed { detail, .. })
                    if detail.contains("address already in use") && tries < PORT_TRIES =>
                {
                    tries += 1;
                    busy.insert(port);
                    // The failed run may have left its container created.
                    docker::remove(&self.on, &container).await?;
                    self.log(&format!("port {port} was taken meanwhile; trying another"));
                }
                // An earlier attempt's container of this name (its worker
                // died after starting it): replaced.
                Err(OpError::Failed { detail, .. })
                    if detail.contains("is already in use") && tries < PORT_TRIES =>
                {
                    tries += 1;
                    docker::remove(&self.on, &container).await?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        store::starting(&self.jobs.pool, id, number, &name, port).await?;
        self.log(&format!("container {name} on 127.0.0.1:{port}"));
        self.end(timer).await?;
        Ok(port)
    }

    async fn health(&mut self, port: u16) -> Result<(), StepError> {
        let timer = self.begin("health", "health check");
        let container = Arg::name(&names::container_name(self.id(), self.number()))?;
        let verdict = match &self.snapshot.settings.health_check {
            Some(check) => {
                let check = health::HealthCheck {
                    path: check.path.clone(),
                    expected_status: check.expected_status,
                    timeout: Duration::from_secs(u64::from(check.timeout_seconds)),
                    retries: check.retries,
                    start_period: Duration::from_secs(u64::from(check.start_period_seconds)),
                    interval: self.jobs.config.health_interval,
                };
                match health::wait_healthy(&self.on, port, &check).await? {
                    health::Health::Healthy { .. } => Ok(()),
                    health::Health::Unhealthy { attempts, last } => {
                        // A refused connection says little; a container that
                        // is no longer running says why.
                        let container_state = match docker::inspect(&self.on, &container).await? {
                            Some(c) if c.state.running => String::new(),
                            Some(c) => format!(
                                " (the container is {}, exit code {})",
                                c.state.status, c.state.exit_code
                            ),
                            None => " (the container is gone)".into(),
                        };
                        Err(format!(
                            "unhealthy after {attempts} checks of {}: {}{container_state}",
                            check.path,
                            last.status.map_or_else(
                                || last.error.unwrap_or_else(|| "no answer".into()),
                                |s| format!("status {s}, expected {}", check.expected_status)
                            )
                        ))
                    }
                }
            }
            None => {
                tokio::select! {
                    () = self.ctx.cancel.cancelled() => {
                        return Err(OpError::Ssh(berth_ssh::SshError::Cancelled("cancelled".into())).into());
                    }
                    () = tokio::time::sleep(UNCHECKED_START) => {}
                }
                match docker::inspect(&self.on, &container).await? {
                    Some(c) if c.state.running => Ok(()),
                    Some(c) => Err(format!(
                        "the container stopped (exit code {})",
                        c.state.exit_code
                    )),
                    None => Err("the container is gone".into()),
                }
            }
        };
        if let Err(reason) = verdict {
            self.show_container_log(&container).await;
            return Err(StepError::new(reason));
        }
        self.end(timer).await
    }

    /// The end of a failed container's own output, in the release's log.
    async fn show_container_log(&self, container: &Arg) {
        let command = berth_ssh::ShellCommand::new("docker logs --tail")
            .arg(&Arg::number(FAILED_LOG_LINES))
            .raw("--")
            .arg(container)
            .raw("2>&1");
        self.ctx.log.step("the container's last lines");
        let lines = self.on.lines.clone();
        let _ = self
            .on
            .session
            .exec_streaming(
                &command,
                Duration::from_secs(30),
                self.on.cancel,
                move |s, l| lines(s, l),
            )
            .await;
    }

    async fn site(&self, upstream_port: u16) -> Result<ProxySite, StepError> {
        Ok(
            super::site::proxy_site(&self.jobs.pool, self.deployment, self.server, upstream_port)
                .await?,
        )
    }

    fn host(&self) -> String {
        super::host_of(self.deployment, self.server)
    }

    fn nginx(&self) -> Result<(Nginx, Arg), StepError> {
        Ok(super::nginx_of(self.server)?)
    }

    /// nginx back on the release that is live (or without the site when
    /// none is), whatever an earlier attempt switched: run before this
    /// release's container is replaced, and when its switch fails.
    pub(super) async fn restore_live_site(&self) -> Result<(), StepError> {
        // Not the job's token: this runs when the job was cancelled too.
        let cancel = CancellationToken::new();
        let on = On::new(self.on.session, &cancel).with_lines(self.on.lines.clone());
        let (nginx, conf_dir) = self.nginx()?;
        match self.previous_port().await? {
            Some(port) => {
                nginx
                    .install_proxy_site(&on, &conf_dir, &self.site(port).await?)
                    .await?
            }
            None => nginx.remove_proxy_site(&on, &conf_dir, self.id()).await?,
        }
        Ok(())
    }

    async fn switch(&mut self, port: u16) -> Result<(), StepError> {
        let timer = self.begin("switch", "switching nginx to the new release");
        let (nginx, conf_dir) = self.nginx()?;
        self.switching = true;
        nginx
            .install_proxy_site(&self.on, &conf_dir, &self.site(port).await?)
            .await?;
        self.confirm().await?;
        store::went_live(&self.jobs.pool, self.id(), self.number()).await?;
        super::site::domains_served(&self.jobs.pool, self.id()).await?;
        self.log(&format!("serving http://{}/", self.host()));
        self.end(timer).await
    }

    async fn previous_port(&self) -> Result<Option<u16>, StepError> {
        let Some(live) = self.deployment.live_release else {
            return Ok(None);
        };
        Ok(store::release(&self.jobs.pool, self.id(), live)
            .await?
            .and_then(|r| r.port)
            .and_then(|p| u16::try_from(p).ok()))
    }

    /// A request through nginx, as a visitor's would go, answers as the
    /// health check expects (or, with no health check, is not a gateway
    /// error).
    async fn confirm(&self) -> Result<(), StepError> {
        let check = self.snapshot.settings.health_check.as_ref();
        let path = check.map_or("/", |c| c.path.as_str());
        let url = Arg::url(&format!("http://127.0.0.1:{}{path}", self.server.http_port))?;
        let host = Arg::host_header(&self.host())?;
        let started = std::time::Instant::now();
        loop {
            let answer =
                http::check_as(&self.on, &url, Some(&host), Duration::from_secs(5)).await?;
            let ok = match (answer.status, check) {
                (Some(status), Some(c)) => status == c.expected_status,
                (Some(status), None) => !(502..=504).contains(&status),
                (None, _) => false,
            };
            if ok {
                return Ok(());
            }
            if started.elapsed() > SWITCH_CONFIRM {
                return Err(StepError::new(format!(
                    "nginx does not serve the new release: {}",
                    answer.status.map_or_else(
                        || answer.error.unwrap_or_else(|| "no answer".into()),
                        |s| format!("status {s} through nginx")
                    )
                )));
            }
            tokio::select! {
                () = self.ctx.cancel.cancelled() => {
                    return Err(OpError::Ssh(berth_ssh::SshError::Cancelled("cancelled".into())).into());
                }
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}
