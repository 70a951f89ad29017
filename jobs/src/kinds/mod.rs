//! Job kinds: one file per kind, each a payload type that names its kind and
//! its queue. A kind says what a job does (`server.validate`); its queue says
//! which workers run it (`probe`). Adding a kind: a payload file here plus its
//! line in [`CATALOG`], and a handler file in `berth-workers` plus its line in
//! that crate's registry.

mod backup;
mod deployment;
mod diagnostic_remote_sleep;
mod diagnostic_sleep;
mod domain;
mod email_send;
pub mod maintenance;
mod server_probe;
mod server_validate;

use serde::{Serialize, de::DeserializeOwned};

use crate::Queue;

pub use backup::{BackupCreate, BackupRestore, BackupTrigger};
pub use deployment::{
    Control, DeploymentDelete, DeploymentDeploy, DeploymentRestart, DeploymentRollback,
    DeploymentStop, deployment_key,
};
pub use diagnostic_remote_sleep::RemoteSleep;
pub use diagnostic_sleep::DiagnosticJob;
pub use domain::{
    CertificatesRenew, DomainAttach, DomainCertificate, DomainDetach, certificate_dedupe,
};
pub use email_send::{CodePurpose, EmailJob, EmailMessage, Sealed};
pub use server_probe::ServerProbe;
pub use server_validate::{ServerValidate, VALIDATION_ATTEMPTS};

/// A job's payload type. Its kind and queue are fixed by the type, so a payload
/// can never be enqueued on the wrong queue. Payloads are stored as JSON in
/// `jobs.payload`.
///
/// Handlers must be idempotent: delivery is at-least-once (a worker killed
/// mid-job has its job run again), and each kind's docs say how it stays safe.
pub trait JobPayload: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What the job does, `noun.verb`: shown as `kind` by `GET /jobs`, and what
    /// a worker's handler is registered under.
    const KIND: &'static str;
    const QUEUE: Queue;

    /// Attempts this job gets at least, whatever its queue's cap says: a job a
    /// user waits on is worth retrying past a worker's death or a brief outage.
    fn min_attempts(&self) -> u32 {
        1
    }

    /// At most one job per key runs at a time, across all workers (e.g.
    /// `deployment:<id>`); a later job with the key waits its turn without
    /// spending an attempt.
    fn concurrency_key(&self) -> Option<String> {
        None
    }

    /// Whether a newer job enqueued with the same concurrency key cancels this
    /// one while it is still queued (a newer deploy of the same app makes an
    /// older waiting one pointless).
    fn superseded_by_newer(&self) -> bool {
        false
    }
}

/// A kind as the api and the runtime see it, without its payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub name: &'static str,
    pub queue: Queue,
}

const fn kind<P: JobPayload>() -> Kind {
    Kind {
        name: P::KIND,
        queue: P::QUEUE,
    }
}

/// Every kind this build knows.
pub const CATALOG: &[Kind] = &[
    kind::<EmailJob>(),
    kind::<DiagnosticJob>(),
    kind::<RemoteSleep>(),
    kind::<ServerValidate>(),
    kind::<ServerProbe>(),
    kind::<maintenance::Prune>(),
    kind::<maintenance::Reconcile>(),
    kind::<DeploymentDeploy>(),
    kind::<DeploymentRollback>(),
    kind::<DeploymentStop>(),
    kind::<DeploymentRestart>(),
    kind::<DeploymentDelete>(),
    kind::<DomainAttach>(),
    kind::<DomainCertificate>(),
    kind::<DomainDetach>(),
    kind::<CertificatesRenew>(),
    kind::<BackupCreate>(),
    kind::<BackupRestore>(),
];

/// The catalog's entry for `name`.
pub fn find(name: &str) -> Option<Kind> {
    CATALOG.iter().copied().find(|k| k.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_unique_and_shaped() {
        let mut names: Vec<_> = CATALOG.iter().map(|k| k.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a kind is listed twice");
        for name in names {
            let (noun, verb) = name.split_once('.').expect("noun.verb");
            for part in [noun, verb] {
                assert!(
                    !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{name}"
                );
            }
        }
    }
}
