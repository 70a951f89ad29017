//! Every job kind this worker build runs: one line per kind.

use std::sync::Arc;

use berth_jobs::runtime::{DuplicateKind, Registry};

use crate::diagnostic::DiagnosticSleep;
use crate::diagnostic_remote_sleep::RemoteSleeper;
use crate::email::{Mailer, SendEmail};
use crate::server_probe::ProbeServer;
use crate::server_validate::ValidateServer;
use crate::servers::ServerJobs;

pub fn registry(mailer: Arc<Mailer>, servers: Arc<ServerJobs>) -> Result<Registry, DuplicateKind> {
    Registry::new()
        .with(SendEmail(mailer))?
        .with(DiagnosticSleep)?
        .with(RemoteSleeper(servers.clone()))?
        .with(ValidateServer(servers.clone()))?
        .with(ProbeServer(servers))
}
