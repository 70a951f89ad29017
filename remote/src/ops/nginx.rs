//! nginx on a server: a site's config written atomically, checked with
//! `nginx -t` before it is used, the previous one put back when the check
//! fails, and a reload (never a restart: open connections are kept).

use std::time::Duration;

use berth_ssh::{Arg, ShellCommand};

use super::{On, OpError, files};

const DEADLINE: Duration = Duration::from_secs(60);

/// Which nginx: the system's (`config: None`), or one started with `-c`.
#[derive(Debug, Clone, Default)]
pub struct Nginx {
    pub config: Option<Arg>,
}

impl Nginx {
    fn command(&self, fixed: &'static str) -> ShellCommand {
        let command = ShellCommand::new("nginx");
        let command = match &self.config {
            Some(config) => command.raw("-c").arg(config),
            None => command,
        };
        command.raw(fixed)
    }

    /// `nginx -t`: the whole configuration as nginx would load it.
    pub async fn test(&self, on: &On<'_>) -> Result<(), OpError> {
        on.run("nginx -t", &self.command("-t"), DEADLINE)
            .await
            .map(|_| ())
    }

    /// Reloads gracefully: workers finish their requests on the old config.
    pub async fn reload(&self, on: &On<'_>) -> Result<(), OpError> {
        on.run("nginx reload", &self.command("-s reload"), DEADLINE)
            .await
            .map(|_| ())
    }

    /// Installs `content` at `path` (a file nginx includes), checks the whole
    /// configuration and reloads. When the check fails, the previous file (or
    /// none) is put back, nginx keeps serving what it served, and the error
    /// carries `nginx -t`'s own words.
    pub async fn install_site(
        &self,
        on: &On<'_>,
        path: &Arg,
        content: &str,
    ) -> Result<(), OpError> {
        let backup = Arg::path(&format!("{}.berth-previous", path.as_str()))?;
        on.run(
            "keeping the previous site",
            &ShellCommand::new("rm -f --")
                .arg(&backup)
                .raw("; if [ -e")
                .arg(path)
                .raw("]; then cp -p --")
                .arg(path)
                .arg(&backup)
                .raw("; fi"),
            DEADLINE,
        )
        .await?;
        files::put(on, path, content.as_bytes(), 0o644).await?;
        if let Err(error) = self.test(on).await {
            let restore = ShellCommand::new("if [ -e")
                .arg(&backup)
                .raw("]; then mv -f --")
                .arg(&backup)
                .arg(path)
                .raw("; else rm -f --")
                .arg(path)
                .raw("; fi");
            on.run("putting the previous site back", &restore, DEADLINE)
                .await?;
            return Err(error);
        }
        files::remove(on, &backup).await?;
        self.reload(on).await
    }

    /// Removes the site at `path` and reloads.
    pub async fn remove_site(&self, on: &On<'_>, path: &Arg) -> Result<(), OpError> {
        files::remove(on, path).await?;
        self.test(on).await?;
        self.reload(on).await
    }
}

/// What every proxy site shares, written once into the conf dir before any
/// of them (it sorts first): the `Connection` header for the upstream,
/// `upgrade` for a WebSocket and empty otherwise, so upstream keepalive
/// works. One map for all sites: nginx refuses a variable defined twice,
/// and long per-site names overflow its variables hash.
const SHARED_FILE: &str = "00-berth.conf";
const SHARED: &str = "# Written by Berth; shared by its sites.\n\
     map $http_upgrade $berth_connection {\n    default upgrade;\n    '' '';\n}\n";

impl Nginx {
    /// Installs a deployment's proxy site in `conf_dir` (as
    /// `berth-<id>.conf`), with the shared map in place first; see
    /// [`Self::install_site`].
    pub async fn install_proxy_site(
        &self,
        on: &On<'_>,
        conf_dir: &Arg,
        site: &ProxySite,
    ) -> Result<(), OpError> {
        let shared = Arg::path(&format!("{}/{SHARED_FILE}", conf_dir.as_str()))?;
        let found = on
            .run(
                "looking for Berth's shared nginx map",
                &ShellCommand::new("if [ -e")
                    .arg(&shared)
                    .raw("]; then echo present; fi"),
                DEADLINE,
            )
            .await?;
        if found.stdout.trim() != "present" {
            files::put(on, &shared, SHARED.as_bytes(), 0o644).await?;
        }
        self.install_site(on, &proxy_site_path(conf_dir, site.id)?, &site.render()?)
            .await
    }

    /// Removes a deployment's proxy site, if there is one, and reloads.
    pub async fn remove_proxy_site(
        &self,
        on: &On<'_>,
        conf_dir: &Arg,
        id: uuid::Uuid,
    ) -> Result<(), OpError> {
        self.remove_site(on, &proxy_site_path(conf_dir, id)?).await
    }
}

fn proxy_site_path(conf_dir: &Arg, id: uuid::Uuid) -> Result<Arg, berth_ssh::Refused> {
    Arg::path(&format!("{}/berth-{id}.conf", conf_dir.as_str()))
}

/// An nginx site that sends a deployment's host names to its live
/// container: HTTP/1.1 to the upstream with keepalive, WebSocket upgrades
/// passed through, long-lived connections kept for an hour. Switching a
/// release is installing this site with the new container's port: a reload
/// starts new workers on the new upstream while the old workers finish
/// their open requests and connections on the old one, which is why the
/// old container is kept for the drain time.
#[derive(Debug, Clone)]
pub struct ProxySite {
    /// Names the upstream (unique per deployment, so many sites live in
    /// one nginx) and the site's file.
    pub id: uuid::Uuid,
    /// DNS names, checked ([`berth_ssh::command::check_host`]).
    pub server_names: Vec<String>,
    pub listen_port: u16,
    /// The live container's port on the server's loopback.
    pub upstream_port: u16,
}

impl ProxySite {
    pub fn render(&self) -> Result<String, berth_ssh::Refused> {
        for name in &self.server_names {
            berth_ssh::command::check_host(name)?;
            if name.parse::<std::net::IpAddr>().is_ok() {
                return Err(berth_ssh::Refused {
                    what: "server name",
                    value: name.clone(),
                    rule: "must be a DNS name",
                });
            }
        }
        let id = self.id.simple();
        let names = if self.server_names.is_empty() {
            "_".to_owned()
        } else {
            self.server_names.join(" ")
        };
        Ok(format!(
            "# Berth deployment {uuid}: written by Berth, replaced at every release switch.\n\
             upstream berth_{id} {{\n    server 127.0.0.1:{upstream};\n    keepalive 16;\n}}\n\
             server {{\n    listen {listen};\n    server_name {names};\n    client_max_body_size 100m;\n\
             \x20   location / {{\n        proxy_pass http://berth_{id};\n        proxy_http_version 1.1;\n\
             \x20       proxy_set_header Host $host;\n        proxy_set_header X-Real-IP $remote_addr;\n\
             \x20       proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             \x20       proxy_set_header X-Forwarded-Proto $scheme;\n\
             \x20       proxy_set_header Upgrade $http_upgrade;\n\
             \x20       proxy_set_header Connection $berth_connection;\n\
             \x20       proxy_read_timeout 3600s;\n        proxy_send_timeout 3600s;\n    }}\n}}\n",
            uuid = self.id,
            upstream = self.upstream_port,
            listen = self.listen_port,
        ))
    }
}
