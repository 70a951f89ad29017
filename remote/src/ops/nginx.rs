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
        self.install(on, path, content, None).await
    }

    /// The upload, then one command: (write the shared map if `shared` names
    /// where it goes and it is not there,) keep the previous file, move the
    /// new one in, `nginx -t`, and reload or put the previous one back. A
    /// switch is on every deploy's path, so it costs one SFTP write and one
    /// command, not a round trip per step.
    async fn install(
        &self,
        on: &On<'_>,
        path: &Arg,
        content: &str,
        shared: Option<&Arg>,
    ) -> Result<(), OpError> {
        let backup = Arg::path(&format!("{}.berth-previous", path.as_str()))?;
        let staged = Arg::path(&format!(
            "{}.berth-{}",
            path.as_str(),
            ulid::Ulid::generate()
        ))?;
        on.session
            .upload(content.as_bytes(), &staged, 0o644)
            .await?;
        let mut command = self.nginx_function();
        if let Some(shared) = shared {
            command = command.set_var("shared", shared).raw(WRITE_SHARED);
        }
        let command = command
            .set_var("site", path)
            .set_var("backup", &backup)
            .set_var("staged", &staged)
            .raw(
                "; rm -f -- \"$backup\"; if [ -e \"$site\" ]; then cp -p -- \"$site\" \"$backup\"; fi; \
                 chmod 644 -- \"$staged\" && mv -f -- \"$staged\" \"$site\" || { rm -f -- \"$staged\"; exit 97; }; \
                 if berth_nginx -t; then rm -f -- \"$backup\"; berth_nginx -s reload || exit 95; \
                 else if [ -e \"$backup\" ]; then mv -f -- \"$backup\" \"$site\"; else rm -f -- \"$site\"; fi; exit 96; fi",
            );
        match on.run("nginx -t", &command, DEADLINE).await {
            Err(OpError::Failed { status, detail, .. }) if status == 95 => Err(OpError::Failed {
                what: "nginx reload",
                status,
                detail,
            }),
            Err(OpError::Failed { status, detail, .. }) if status == 97 => Err(OpError::Failed {
                what: "moving the site into place",
                status,
                detail,
            }),
            other => other.map(|_| ()),
        }
    }

    /// A shell function `berth_nginx` running this nginx (with `-c` when
    /// set), for scripts that call it more than once.
    fn nginx_function(&self) -> ShellCommand {
        let command = ShellCommand::new("berth_nginx_config=;");
        let command = match &self.config {
            Some(config) => command.set_var("berth_nginx_config", config).raw(";"),
            None => command,
        };
        command.raw(
            "berth_nginx() { if [ -n \"$berth_nginx_config\" ]; then nginx -c \"$berth_nginx_config\" \"$@\"; \
             else nginx \"$@\"; fi; };",
        )
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
macro_rules! shared_map {
    () => {
        "# Written by Berth; shared by its sites.\n\
         map $http_upgrade $berth_connection {\n    default upgrade;\n    '' '';\n}\n"
    };
}

/// Fixed text: writes the shared map at `$shared` (atomically) unless it
/// is there; a quoted here-document, so nothing in it is expanded.
const WRITE_SHARED: &str = concat!(
    "; if [ ! -e \"$shared\" ]; then cat > \"$shared.berth-new\" <<'BERTH_SHARED_MAP'\n",
    shared_map!(),
    "BERTH_SHARED_MAP\nmv -f -- \"$shared.berth-new\" \"$shared\" || exit 97; fi;"
);

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
        self.install(
            on,
            &proxy_site_path(conf_dir, site.id)?,
            &site.render()?,
            Some(&shared),
        )
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
///
/// A domain with a certificate is served over HTTPS, and its plain HTTP
/// redirects there. Every HTTP server block answers ACME's HTTP-01 tokens
/// from `acme_root`, so a certificate can be issued or renewed whatever
/// the app serves.
#[derive(Debug, Clone)]
pub struct ProxySite {
    /// Names the upstream (unique per deployment, so many sites live in
    /// one nginx) and the site's file.
    pub id: uuid::Uuid,
    /// DNS names served over plain HTTP, checked
    /// ([`berth_ssh::command::check_host`]; a `*.` first label allowed).
    pub server_names: Vec<String>,
    /// Names served over HTTPS with their certificate.
    pub tls: Vec<TlsName>,
    pub listen_port: u16,
    pub https_port: u16,
    /// The live container's port on the server's loopback.
    pub upstream_port: u16,
    /// The directory holding `.well-known/acme-challenge/`.
    pub acme_root: String,
}

/// A name served over HTTPS, and the files of its certificate.
#[derive(Debug, Clone)]
pub struct TlsName {
    pub name: String,
    pub certificate: String,
    pub key: String,
}

fn check_server_name(name: &str) -> Result<(), berth_ssh::Refused> {
    let host = name.strip_prefix("*.").unwrap_or(name);
    berth_ssh::command::check_host(host)?;
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(berth_ssh::Refused {
            what: "server name",
            value: name.to_owned(),
            rule: "must be a DNS name",
        });
    }
    Ok(())
}

/// A path written into nginx's configuration: nothing nginx would read as
/// syntax (spaces, quotes, `;`, braces, `$`).
fn check_config_path(path: &str) -> Result<(), berth_ssh::Refused> {
    let ok = path.starts_with('/')
        && !path.split('/').any(|part| part == "..")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(berth_ssh::Refused {
            what: "path in the nginx site",
            value: path.to_owned(),
            rule: "an absolute path of letters, digits, '/', '.', '_' and '-'",
        })
    }
}

impl ProxySite {
    pub fn render(&self) -> Result<String, berth_ssh::Refused> {
        for name in self
            .server_names
            .iter()
            .chain(self.tls.iter().map(|t| &t.name))
        {
            check_server_name(name)?;
        }
        check_config_path(&self.acme_root)?;
        for tls in &self.tls {
            check_config_path(&tls.certificate)?;
            check_config_path(&tls.key)?;
        }
        let id = self.id.simple();
        let names = if self.server_names.is_empty() {
            "_".to_owned()
        } else {
            self.server_names.join(" ")
        };
        let listen = self.listen_port;
        let acme = format!(
            "    location ^~ /.well-known/acme-challenge/ {{\n        root {root};\n\
             \x20       default_type text/plain;\n        try_files $uri =404;\n    }}\n",
            root = self.acme_root
        );
        let proxy = format!(
            "    location / {{\n        proxy_pass http://berth_{id};\n        proxy_http_version 1.1;\n\
             \x20       proxy_set_header Host $host;\n        proxy_set_header X-Real-IP $remote_addr;\n\
             \x20       proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             \x20       proxy_set_header X-Forwarded-Proto $scheme;\n\
             \x20       proxy_set_header X-Forwarded-Host $host;\n\
             \x20       proxy_set_header Upgrade $http_upgrade;\n\
             \x20       proxy_set_header Connection $berth_connection;\n\
             \x20       proxy_connect_timeout 10s;\n\
             \x20       proxy_read_timeout 3600s;\n        proxy_send_timeout 3600s;\n    }}\n"
        );
        let mut site = format!(
            "# Berth deployment {uuid}: written by Berth, replaced at every release switch.\n\
             upstream berth_{id} {{\n    server 127.0.0.1:{upstream};\n    keepalive 16;\n}}\n\
             server {{\n    listen {listen};\n    server_name {names};\n    client_max_body_size 100m;\n\
             {acme}{proxy}}}\n",
            uuid = self.id,
            upstream = self.upstream_port,
        );
        let https = self.https_port;
        let port_suffix = if https == 443 {
            String::new()
        } else {
            format!(":{https}")
        };
        for tls in &self.tls {
            site.push_str(&format!(
                "server {{\n    listen {listen};\n    server_name {name};\n{acme}\
                 \x20   location / {{\n        return 301 https://$host{port_suffix}$request_uri;\n    }}\n}}\n\
                 server {{\n    listen {https} ssl;\n    server_name {name};\n\
                 \x20   ssl_certificate {certificate};\n    ssl_certificate_key {key};\n\
                 \x20   ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:berth_tls:10m;\n\
                 \x20   client_max_body_size 100m;\n{proxy}}}\n",
                name = tls.name,
                certificate = tls.certificate,
                key = tls.key,
            ));
        }
        Ok(site)
    }
}
