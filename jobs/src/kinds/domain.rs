//! The domain kinds (SPEC §3.5) on the `ssl` queue: attaching a domain
//! (its server block), issuing or renewing its certificate, and detaching
//! it. Each rewrites the deployment's nginx site, so each runs under the
//! deployment's concurrency key: never beside a release's switch, which
//! writes the same file. `certificates.renew` (maintenance) finds the
//! certificates due and enqueues their renewals.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{JobPayload, deployment_key};
use crate::Queue;

/// Writes the deployment's site with the domain in it and checks where the
/// domain points.
///
/// Idempotency: the site is rendered from what is stored, so a rerun
/// writes the same file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DomainAttach {
    pub domain_id: Uuid,
    pub deployment_id: Uuid,
}

impl JobPayload for DomainAttach {
    const KIND: &'static str = "domain.attach";
    const QUEUE: Queue = Queue::Ssl;

    fn concurrency_key(&self) -> Option<String> {
        Some(deployment_key(self.deployment_id))
    }
}

/// The dedupe key of a domain's certificate job: one waits at a time,
/// whether its user or the renewal schedule asked.
pub fn certificate_dedupe(domain_id: Uuid) -> String {
    format!("domain.certificate:{domain_id}")
}

/// Checks the domain's DNS, orders a certificate over HTTP-01, installs it
/// (key 0600 under Berth's data directory) and serves the domain over
/// HTTPS. Retries back off from 1 minute to 6 hours (the `ssl` queue's
/// policy), so a CA is never hammered.
///
/// Idempotency: a rerun orders again; files are named by the
/// certificate's serial and the site points at one set only, so an
/// interrupted attempt leaves the previous certificate serving.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DomainCertificate {
    pub domain_id: Uuid,
    pub deployment_id: Uuid,
    /// Made by the renewal schedule, not by its user.
    #[serde(default)]
    pub renewal: bool,
}

impl JobPayload for DomainCertificate {
    const KIND: &'static str = "domain.certificate";
    const QUEUE: Queue = Queue::Ssl;

    fn concurrency_key(&self) -> Option<String> {
        Some(deployment_key(self.deployment_id))
    }
}

/// Takes the domain out of the site, removes its certificate files and the
/// record.
///
/// Idempotency: each step checks what is there; a rerun after the record
/// is gone does nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DomainDetach {
    pub domain_id: Uuid,
    pub deployment_id: Uuid,
}

impl JobPayload for DomainDetach {
    const KIND: &'static str = "domain.detach";
    const QUEUE: Queue = Queue::Ssl;

    fn concurrency_key(&self) -> Option<String> {
        Some(deployment_key(self.deployment_id))
    }
}

/// Finds the certificates with less than `renew_fraction` of their
/// lifetime left and enqueues their renewals (one `domain.certificate`
/// each, not while one is queued); sends the 21-day expiry warning once.
///
/// Idempotency: a domain with a renewal already waiting gets no second
/// one; the warning is marked sent in the same statement that picks it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificatesRenew {
    pub renew_fraction: f64,
    pub warn_days: u32,
}

impl JobPayload for CertificatesRenew {
    const KIND: &'static str = "certificates.renew";
    const QUEUE: Queue = Queue::Maintenance;

    fn concurrency_key(&self) -> Option<String> {
        Some("maintenance:certificates".into())
    }

    fn superseded_by_newer(&self) -> bool {
        true
    }
}
