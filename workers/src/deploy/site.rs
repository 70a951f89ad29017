//! The deployment's nginx site as stored: its generated host name, its
//! attached domains (over HTTPS once their certificate is installed), the
//! live container's port. Every job that writes the site renders it from
//! here, under the deployment's concurrency key, so a switch and a domain
//! change never write different versions of one file.

use berth_deployments::names;
use berth_remote::Server;
use berth_remote::ops::nginx::{ProxySite, TlsName};
use sqlx::PgPool;
use uuid::Uuid;

use super::store::DeploymentRow;

#[derive(sqlx::FromRow)]
struct SiteDomain {
    id: Uuid,
    name: String,
    cert_serial: Option<String>,
    cert_installed: bool,
}

/// The deployment's site sending its names to `upstream_port`.
pub(crate) async fn proxy_site(
    pool: &PgPool,
    deployment: &DeploymentRow,
    server: &Server,
    upstream_port: u16,
) -> Result<ProxySite, sqlx::Error> {
    let domains: Vec<SiteDomain> = sqlx::query_as(
        "SELECT id, name, cert_serial, cert_installed FROM domains \
         WHERE deployment_id = $1 AND status <> 'deleting' ORDER BY name",
    )
    .bind(deployment.id)
    .fetch_all(pool)
    .await?;
    let mut server_names = vec![super::host_of(deployment, server)];
    let mut tls = Vec::new();
    for domain in domains {
        match domain.cert_serial.filter(|_| domain.cert_installed) {
            Some(serial) => {
                let (certificate, key) =
                    names::certificate_files(&server.data_dir, deployment.id, domain.id, &serial);
                tls.push(TlsName {
                    name: domain.name,
                    certificate,
                    key,
                });
            }
            None => server_names.push(domain.name),
        }
    }
    Ok(ProxySite {
        id: deployment.id,
        server_names,
        tls,
        listen_port: u16::try_from(server.http_port).unwrap_or(80),
        https_port: u16::try_from(server.https_port).unwrap_or(443),
        upstream_port,
        acme_root: names::acme_root(&server.data_dir),
    })
}

/// The deployment's pending domains are served now that a site with them
/// is installed.
pub(crate) async fn domains_served(pool: &PgPool, deployment_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE domains SET status = 'active', status_reason = NULL, updated_at = now() \
         WHERE deployment_id = $1 AND status = 'pending'",
    )
    .bind(deployment_id)
    .execute(pool)
    .await
    .map(|_| ())
}
