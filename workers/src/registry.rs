//! Every job kind this worker build runs: one line per kind.

use std::sync::Arc;

use berth_jobs::runtime::{DuplicateKind, Registry};
use redis::aio::ConnectionManager;
use sqlx::PgPool;

use crate::backups::{BackupJobs, CreateBackup, RestoreBackup};
use crate::deploy::{
    DeleteDeployment, DeployRelease, DeploymentJobs, RestartDeployment, RollbackRelease,
    StopDeployment,
};
use crate::diagnostic::DiagnosticSleep;
use crate::diagnostic_remote_sleep::RemoteSleeper;
use crate::domains::{AttachDomain, DetachDomain, DomainJobs, IssueCertificate, RenewCertificates};
use crate::email::{Mailer, SendEmail};
use crate::maintenance::{Pruner, Reconciler};
use crate::server_probe::ProbeServer;
use crate::server_validate::ValidateServer;
use crate::servers::ServerJobs;

pub fn registry(
    mailer: Arc<Mailer>,
    servers: Arc<ServerJobs>,
    deployments: Arc<DeploymentJobs>,
    domains: Arc<DomainJobs>,
    backups: Arc<BackupJobs>,
    pool: PgPool,
    redis: ConnectionManager,
) -> Result<Registry, DuplicateKind> {
    Registry::new()
        .with(SendEmail(mailer))?
        .with(DiagnosticSleep)?
        .with(RemoteSleeper(servers.clone()))?
        .with(ValidateServer(servers.clone()))?
        .with(ProbeServer(servers))?
        .with(DeployRelease(deployments.clone()))?
        .with(RollbackRelease(deployments.clone()))?
        .with(StopDeployment(deployments.clone()))?
        .with(RestartDeployment(deployments.clone()))?
        .with(DeleteDeployment(deployments))?
        .with(AttachDomain(domains.clone()))?
        .with(IssueCertificate(domains.clone()))?
        .with(DetachDomain(domains.clone()))?
        .with(RenewCertificates(domains))?
        .with(CreateBackup(backups.clone()))?
        .with(RestoreBackup(backups))?
        .with(Pruner {
            pool: pool.clone(),
            redis,
        })?
        .with(Reconciler { pool })
}
