//! What a handler is: the trait a worker implements per job kind, what it is
//! given (`JobContext`), how it says it failed, and the registry of handlers
//! by kind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::joblog::JobLog;
use crate::{JobPayload, Queue};

/// How a handler says its job did not succeed, or not yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobFailure {
    /// Worth another attempt (network errors, a busy remote host).
    Retryable(String),
    /// Will fail the same way again (bad input); the job fails now.
    Permanent(String),
    /// Not a failure: "not now, try again after this long" (a server busy
    /// with other work). The attempt is given back and the job waits, its
    /// reason shown as `waitingFor`.
    Later { after: Duration, reason: String },
}

impl JobFailure {
    pub fn retryable(reason: impl std::fmt::Display) -> Self {
        Self::Retryable(reason.to_string())
    }

    pub fn permanent(reason: impl std::fmt::Display) -> Self {
        Self::Permanent(reason.to_string())
    }

    pub fn later(after: Duration, reason: impl std::fmt::Display) -> Self {
        Self::Later {
            after,
            reason: reason.to_string(),
        }
    }

    /// What went wrong, or why it waits.
    pub fn reason(&self) -> &str {
        match self {
            Self::Retryable(r) | Self::Permanent(r) | Self::Later { reason: r, .. } => r,
        }
    }
}

/// What a handler knows about the job it runs.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub job_id: String,
    pub attempt: u32,
    pub max_attempts: u32,
    /// Fires when the job is cancelled (`POST /jobs/{id}/cancel`) or runs past
    /// its timeout: pass it to every remote command, which then kills its
    /// remote process group. The handler is dropped [`STOP_GRACE`] later if it
    /// has not returned by then.
    pub cancel: CancellationToken,
    /// The job's log: steps and command output, live to its followers.
    pub log: JobLog,
}

/// How a worker runs one kind of job. One handler per kind; its docs (or its
/// payload's) say why running it twice is safe.
pub trait JobHandler: Send + Sync + 'static {
    type Job: JobPayload;

    fn run(
        &self,
        job: Self::Job,
        ctx: JobContext,
    ) -> impl Future<Output = Result<(), JobFailure>> + Send;

    /// Told, once, that a job of this kind ended `failed` (its error given)
    /// or was stopped by a cancellation while it ran: after its last attempt's
    /// failure, a permanent failure, its worker dying at the attempt cap, or a
    /// cancel, so the resource it acted on can be left in a truthful state even
    /// when the job never ran to its end.
    fn failed(&self, job: Self::Job, error: String) -> impl Future<Output = ()> + Send {
        let _ = (job, error);
        async {}
    }
}

pub(super) type RunFn = Arc<
    dyn Fn(serde_json::Value, JobContext) -> BoxFuture<'static, Result<(), JobFailure>>
        + Send
        + Sync,
>;
pub(super) type FailedFn =
    Arc<dyn Fn(serde_json::Value, String) -> BoxFuture<'static, ()> + Send + Sync>;

/// A registered handler with its payload type erased.
#[derive(Clone)]
pub(super) struct KindHandler {
    pub(super) queue: Queue,
    pub(super) run: RunFn,
    pub(super) failed: FailedFn,
}

/// A kind registered twice: a start-up error, never a silent replacement.
#[derive(Debug, thiserror::Error)]
#[error("two handlers are registered for job kind {0}")]
pub struct DuplicateKind(pub &'static str);

/// The handlers a worker build has, by kind.
#[derive(Clone, Default)]
pub struct Registry {
    kinds: HashMap<&'static str, KindHandler>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with<H: JobHandler>(mut self, handler: H) -> Result<Self, DuplicateKind> {
        let kind = <H::Job as JobPayload>::KIND;
        if self.kinds.contains_key(kind) {
            return Err(DuplicateKind(kind));
        }
        let handler = Arc::new(handler);
        let runs = handler.clone();
        let run: RunFn = Arc::new(move |payload, ctx| {
            let handler = runs.clone();
            async move {
                let job: H::Job = serde_json::from_value(payload)
                    .map_err(|e| JobFailure::permanent(format!("invalid payload: {e}")))?;
                handler.run(job, ctx).await
            }
            .boxed()
        });
        let failed: FailedFn = Arc::new(move |payload, error| {
            let handler = handler.clone();
            async move {
                match serde_json::from_value::<H::Job>(payload) {
                    Ok(job) => handler.failed(job, error).await,
                    Err(e) => tracing::warn!(error = %e, "failure hook skipped: invalid payload"),
                }
            }
            .boxed()
        });
        self.kinds.insert(
            kind,
            KindHandler {
                queue: <H::Job as JobPayload>::QUEUE,
                run,
                failed,
            },
        );
        Ok(self)
    }

    /// Queues with at least one handler.
    pub fn queues(&self) -> Vec<Queue> {
        Queue::ALL
            .into_iter()
            .filter(|q| self.kinds.values().any(|h| h.queue == *q))
            .collect()
    }

    /// Every kind of the catalog on `queue` needs a handler here, or a job of
    /// it would be claimed and fail for want of one.
    pub(super) fn check_serves(&self, queue: Queue) -> anyhow::Result<()> {
        for kind in crate::kinds::CATALOG.iter().filter(|k| k.queue == queue) {
            if !self.kinds.contains_key(kind.name) {
                anyhow::bail!(
                    "queue {queue} carries job kind {} which has no handler in this build of berth-worker",
                    kind.name
                );
            }
        }
        Ok(())
    }

    pub(super) fn of_queue(&self, queue: Queue) -> HashMap<&'static str, KindHandler> {
        self.kinds
            .iter()
            .filter(|(_, h)| h.queue == queue)
            .map(|(k, h)| (*k, h.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiagnosticJob;

    struct Sleeps;

    impl JobHandler for Sleeps {
        type Job = DiagnosticJob;

        async fn run(&self, _job: DiagnosticJob, _ctx: JobContext) -> Result<(), JobFailure> {
            Ok(())
        }
    }

    #[test]
    fn a_kind_registered_twice_is_refused() {
        let registry = Registry::new().with(Sleeps).unwrap();
        let err = registry
            .with(Sleeps)
            .err()
            .expect("a second handler is refused");
        assert_eq!(err.0, "diagnostic.sleep");
    }

    struct Mails;

    impl JobHandler for Mails {
        type Job = crate::EmailJob;

        async fn run(&self, _job: crate::EmailJob, _ctx: JobContext) -> Result<(), JobFailure> {
            Ok(())
        }
    }

    #[test]
    fn a_queue_needs_a_handler_for_every_kind_it_carries() {
        let registry = Registry::new().with(Sleeps).unwrap().with(Mails).unwrap();
        assert_eq!(registry.queues(), vec![Queue::Email, Queue::Diagnostic]);
        registry.check_serves(Queue::Email).unwrap();
        // The diagnostic queue carries diagnostic.remote_sleep too.
        let err = registry
            .check_serves(Queue::Diagnostic)
            .unwrap_err()
            .to_string();
        assert!(err.contains("diagnostic.remote_sleep"), "{err}");
        let err = registry.check_serves(Queue::Probe).unwrap_err().to_string();
        assert!(err.contains("server.validate"), "{err}");
    }
}
