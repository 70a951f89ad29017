//! The domain jobs (SPEC §3.5): `domain.attach`, `domain.certificate`,
//! `domain.detach` on the `ssl` queue, and `certificates.renew` on
//! `maintenance`. Each domain job rewrites the deployment's nginx site
//! from what is stored ([`crate::deploy::site`]), under the deployment's
//! concurrency key.

mod attach;
mod certificate;
mod renew;
mod store;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_config::{ConfigError, Env};
use berth_deployments::state::DeploymentStatus;
use berth_domains::acme::{AcmeConfig, LETS_ENCRYPT};
use berth_domains::dns::{Dns, Pointing};
use berth_jobs::runtime::{JobContext, JobFailure};
use berth_remote::ops::On;
use berth_remote::{Server, Session};

use crate::deploy::store::DeploymentRow;

/// Fresh connections in a row that must see the new site after a reload.
const REDIRECTS_IN_A_ROW: u32 = 3;

/// How long a reload may take to be answered by every nginx worker.
const REDIRECT_CONFIRM: Duration = Duration::from_secs(15);
use crate::deploy::{DeploymentJobs, log_lines, nginx_of, op_failure, stored};

pub use attach::{AttachDomain, DetachDomain};
pub use certificate::IssueCertificate;
pub use renew::RenewCertificates;

/// How domains are checked and certificates obtained, from the worker's
/// environment.
#[derive(Debug, Clone)]
pub struct DomainConfig {
    pub acme: AcmeConfig,
    /// `BERTH_DNS_RESOLVER` (`IP:PORT`); `None`: the system's resolver.
    pub resolver: Option<SocketAddr>,
}

impl DomainConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let resolver = env
            .optional("BERTH_DNS_RESOLVER")
            .map(|v| {
                v.parse::<SocketAddr>().map_err(|_| ConfigError::Malformed {
                    name: "BERTH_DNS_RESOLVER".into(),
                    reason: "expected IP:PORT, e.g. 127.0.0.1:53".into(),
                })
            })
            .transpose()?;
        let directory_url = env
            .optional("ACME_DIRECTORY_URL")
            .unwrap_or_else(|| LETS_ENCRYPT.to_owned());
        if !directory_url.starts_with("https://") {
            return Err(ConfigError::Malformed {
                name: "ACME_DIRECTORY_URL".into(),
                reason: "an ACME directory is reached over https://".into(),
            });
        }
        Ok(Self {
            acme: AcmeConfig {
                directory_url,
                directory_root: env.optional("BERTH_ACME_CA_BUNDLE").map(Into::into),
                contact: env
                    .optional("BERTH_ACME_EMAIL")
                    .map(|email| format!("mailto:{email}")),
                validation_timeout: Duration::from_secs(
                    env.parsed("BERTH_ACME_VALIDATION_TIMEOUT_SECS", 120)?,
                ),
            },
            resolver,
        })
    }
}

/// What every domain job needs.
pub struct DomainJobs {
    deployments: Arc<DeploymentJobs>,
    dns: Dns,
    config: DomainConfig,
}

impl DomainJobs {
    pub fn new(
        deployments: Arc<DeploymentJobs>,
        config: DomainConfig,
    ) -> Result<Arc<Self>, berth_domains::dns::DnsError> {
        Ok(Arc::new(Self {
            dns: Dns::new(config.resolver)?,
            deployments,
            config,
        }))
    }

    fn pool(&self) -> &sqlx::PgPool {
        &self.deployments.pool
    }

    /// Where `name` points, compared with the server's addresses (its
    /// address itself, or what its host name resolves to), recorded on the
    /// domain.
    async fn check_dns(
        &self,
        domain: &store::DomainRow,
        server: &Server,
    ) -> Result<(Pointing, Vec<IpAddr>), JobFailure> {
        let lookup = domain.name.trim_start_matches("*.");
        let found = self
            .dns
            .addresses(lookup)
            .await
            .map_err(|e| JobFailure::retryable(e.to_string()))?;
        let expected = match server.host().parse::<IpAddr>() {
            Ok(address) => vec![address],
            Err(_) => self
                .dns
                .addresses(server.host())
                .await
                .map_err(|e| JobFailure::retryable(e.to_string()))?,
        };
        let pointing = berth_domains::dns::compare(&found, &expected);
        store::record_dns(self.pool(), domain.id, &pointing)
            .await
            .map_err(stored)?;
        Ok((pointing, expected))
    }

    /// Installs the deployment's site as stored (with `tls_override` for
    /// a certificate not recorded yet); `false` when the deployment serves
    /// nothing now (no live release, or stopped): its next switch or
    /// restart writes the site.
    async fn install_site(
        &self,
        ctx: &JobContext,
        session: &Session,
        deployment: &DeploymentRow,
        server: &Server,
        tls_override: Option<(&str, berth_remote::ops::nginx::TlsName)>,
    ) -> Result<bool, JobFailure> {
        let Some(port) = self.serving_port(deployment).await? else {
            return Ok(false);
        };
        let mut site = crate::deploy::site::proxy_site(self.pool(), deployment, server, port)
            .await
            .map_err(stored)?;
        if let Some((name, tls)) = tls_override {
            site.server_names.retain(|n| n != name);
            site.tls.retain(|t| t.name != name);
            site.tls.push(tls);
        }
        let (nginx, conf_dir) = nginx_of(server).map_err(JobFailure::permanent)?;
        let on = On::new(session, &ctx.cancel).with_lines(log_lines(ctx));
        nginx
            .install_proxy_site(&on, &conf_dir, &site)
            .await
            .map_err(|e| op_failure("installing the site", &e))?;
        Ok(true)
    }

    /// Waits until nginx answers with the new site: plain HTTP for `name`
    /// redirects, on three fresh connections in a row. For a moment after a
    /// reload an old worker may still take a new connection with the old
    /// configuration; the job says HTTPS is served only once it is.
    async fn confirm_redirect(
        &self,
        ctx: &JobContext,
        session: &Session,
        server: &Server,
        name: &str,
    ) -> Result<(), JobFailure> {
        use berth_remote::ops::http;
        use berth_ssh::Arg;
        let url = Arg::url(&format!("http://127.0.0.1:{}/", server.http_port))
            .map_err(JobFailure::permanent)?;
        let host = Arg::host_header(name).map_err(JobFailure::permanent)?;
        let on = On::new(session, &ctx.cancel);
        let started = std::time::Instant::now();
        let mut in_a_row = 0;
        while in_a_row < REDIRECTS_IN_A_ROW {
            let answer = http::check_as(&on, &url, Some(&host), Duration::from_secs(5))
                .await
                .map_err(|e| op_failure("checking the redirect to HTTPS", &e))?;
            if answer.status == Some(301) {
                in_a_row += 1;
                continue;
            }
            in_a_row = 0;
            if started.elapsed() > REDIRECT_CONFIRM {
                return Err(JobFailure::retryable(format!(
                    "nginx does not redirect {name} to HTTPS after the reload (status {})",
                    answer
                        .status
                        .map_or_else(|| "none".to_owned(), |s| s.to_string())
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The live container's port while the deployment serves.
    async fn serving_port(&self, deployment: &DeploymentRow) -> Result<Option<u16>, JobFailure> {
        if matches!(
            deployment.status,
            DeploymentStatus::Stopped | DeploymentStatus::Deleting
        ) {
            return Ok(None);
        }
        let Some(live) = deployment.live_release else {
            return Ok(None);
        };
        Ok(
            crate::deploy::store::release(self.pool(), deployment.id, live)
                .await
                .map_err(stored)?
                .and_then(|r| r.port)
                .and_then(|p| u16::try_from(p).ok()),
        )
    }

    async fn notify(
        &self,
        domain: &store::DomainRow,
        kind: &'static str,
        title: String,
        body: String,
    ) {
        let notice = crate::alerts::Notice {
            kind,
            title,
            body,
            data: serde_json::json!({
                "domainId": domain.id,
                "deploymentId": domain.deployment_id,
                "domainName": domain.name,
            }),
        };
        self.deployments
            .servers
            .notify(domain.owner_user_id, &notice)
            .await;
    }
}

/// The domain and its deployment, or `None` when either is gone (or the
/// domain is being removed): nothing to do.
async fn load(
    jobs: &DomainJobs,
    domain_id: uuid::Uuid,
) -> Result<Option<(store::DomainRow, DeploymentRow)>, JobFailure> {
    let Some(domain) = store::domain(jobs.pool(), domain_id)
        .await
        .map_err(stored)?
    else {
        return Ok(None);
    };
    let Some(deployment) = crate::deploy::store::deployment(jobs.pool(), domain.deployment_id)
        .await
        .map_err(stored)?
    else {
        return Ok(None);
    };
    Ok(Some((domain, deployment)))
}
