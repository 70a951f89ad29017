//! The job contract shared by `berth-api`, `berth-worker` and `berth-scheduler`.
//!
//! Postgres is the source of truth for every job (`jobs` table); Redis, through
//! apalis-redis, only carries deliveries to workers. See ARCHITECTURE.md for why
//! and for the invariants this crate keeps.

pub mod batch;
pub mod client;
pub mod events;
pub mod housekeeping;
pub mod joblog;
pub mod kinds;
pub mod maintenance_mode;
pub mod policy;
pub mod queue;
pub mod redis_conn;
pub mod relay;
pub mod runtime;
pub mod store;
pub mod transport;

pub use client::JobClient;
pub use kinds::{
    BackupCreate, BackupRestore, BackupTrigger, CertificatesRenew, CodePurpose, Control,
    DeploymentDelete, DeploymentDeploy, DeploymentRestart, DeploymentRollback, DeploymentStop,
    DiagnosticJob, DomainAttach, DomainCertificate, DomainDetach, EmailJob, EmailMessage,
    JobPayload, Kind, RemoteSleep, Sealed, ServerProbe, ServerValidate, certificate_dedupe,
    deployment_key,
};
pub use policy::{JobPolicy, Policies};
pub use queue::Queue;
pub use store::{Enqueued, JobRecord, JobState, NewJob};
