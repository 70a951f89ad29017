//! One delivery's way through a worker: claimed (batched), run under its
//! timeout with panics caught and its cancellation heard, then recorded.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data};
use redis::aio::ConnectionManager;

use futures::FutureExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::handler::{JobContext, JobFailure, KindHandler};
use super::stopping::{Running, Stop, panic_message, stop_on_cancel_or_timeout};
use crate::batch::{BatchError, Batcher};
use crate::joblog::LogSink;
use crate::transport::Delivery;
use crate::{Policies, Queue, store};

pub(super) type DeliveryKey = (String, String);

pub(super) const CLAIM_LINGER: Duration = Duration::from_millis(1);
pub(super) const SUCCESS_LINGER: Duration = Duration::from_millis(2);
/// A job over its owner's share is offered again this much later (plus the
/// relay's sweep), by when one of the owner's running jobs may have ended.
pub(super) const FAIR_SHARE_DEFERRAL: Duration = Duration::from_secs(1);

pub(super) struct Dispatch {
    pool: PgPool,
    /// Publishes owned jobs' state changes to their owner (`events`).
    redis: ConnectionManager,
    queue: Queue,
    handlers: HashMap<&'static str, KindHandler>,
    policies: Policies,
    /// Claims and successes of concurrently running jobs share statements.
    claims: Batcher<DeliveryKey, Option<store::Claimed>>,
    successes: Batcher<DeliveryKey, ()>,
    runs: TaskTracker,
    running: Running,
    logs: LogSink,
}

/// What every queue's dispatch of one worker process shares.
#[derive(Clone)]
pub(super) struct ProcessParts {
    pub(super) pool: PgPool,
    pub(super) redis: ConnectionManager,
    pub(super) policies: Policies,
    pub(super) runs: TaskTracker,
    pub(super) running: Running,
    pub(super) logs: LogSink,
}

impl Dispatch {
    pub(super) fn new(
        parts: ProcessParts,
        queue: Queue,
        handlers: HashMap<&'static str, KindHandler>,
        worker: String,
    ) -> Self {
        let ProcessParts {
            pool,
            redis,
            policies,
            runs,
            running,
            logs,
        } = parts;
        let policy = policies.get(queue);
        let concurrency = policy.concurrency;
        let fairness = store::Fairness {
            queue,
            per_user_running: policy.per_user_running,
            deferral: FAIR_SHARE_DEFERRAL,
        };
        let claims = {
            let (pool, worker) = (pool.clone(), worker.clone());
            // Claims gate a job's start: they linger only under load, and briefly.
            Batcher::spawn(concurrency, CLAIM_LINGER, move |deliveries| {
                let (pool, worker) = (pool.clone(), worker.clone());
                async move { store::claim_many(&pool, &worker, fairness, deliveries).await }
            })
        };
        let successes = {
            let pool = pool.clone();
            // A success only holds back the job's Redis ack, so it may wait a
            // little for others finishing at the same time.
            Batcher::spawn(concurrency, SUCCESS_LINGER, move |deliveries| {
                let pool = pool.clone();
                async move { store::mark_succeeded_many(&pool, deliveries).await }
            })
        };
        Self {
            pool,
            redis,
            queue,
            handlers,
            policies,
            claims,
            successes,
            runs,
            running,
            logs,
        }
    }
}

/// The apalis handler. Job outcomes are recorded in Postgres and never returned
/// to apalis; only an infrastructure error (Postgres unreachable) is, so apalis
/// delivers the task again later.
pub(super) async fn run_delivery(
    delivery: Delivery,
    dispatch: Data<Arc<Dispatch>>,
) -> Result<(), BoxDynError> {
    Arc::clone(&dispatch).run(delivery).await.map_err(|e| {
        tracing::error!(error = %e, "could not record a job's progress; the delivery will be retried");
        Box::new(e) as BoxDynError
    })
}

impl Dispatch {
    /// A deployment's job concerns more than whoever enqueued it: its owner
    /// hears of it, and so does every socket following its project's topic
    /// (the api checked each may). Looked up at each event, so a deployment
    /// that moved is followed where it is now.
    async fn tell_deployment_readers(
        &self,
        deployment: uuid::Uuid,
        job_owner: Option<uuid::Uuid>,
        event: &crate::events::RealtimeEvent,
    ) {
        let found: Result<Option<(uuid::Uuid, Option<uuid::Uuid>)>, sqlx::Error> =
            sqlx::query_as("SELECT owner_user_id, project_id FROM deployments WHERE id = $1")
                .bind(deployment)
                .fetch_optional(&self.pool)
                .await;
        let Ok(Some((owner, project))) = found else {
            return;
        };
        if job_owner != Some(owner) {
            crate::events::publish(&self.redis, owner, event).await;
        }
        if let Some(project) = project {
            let topic = crate::events::project_topic(project);
            crate::events::publish_topic(&self.redis, &topic, event).await;
        }
    }

    /// Runs the delivery in a task of its own, tracked by `runs`: when the
    /// apalis worker stops on its own (Redis gone), its futures are dropped, and
    /// a job dropped between its side effect (a mail sent) and its Postgres
    /// record would stay `running` and later run again. Detached, it finishes
    /// and is recorded; the process waits for it before exiting.
    pub(super) async fn run(self: Arc<Self>, delivery: Delivery) -> Result<(), BatchError> {
        let span = tracing::info_span!("job", job.id = %delivery.job_id, job.queue = %self.queue, job.kind = tracing::field::Empty);
        let this = self.clone();
        self.runs
            .spawn(async move { this.run_in_span(delivery).await }.instrument(span))
            .await
            .map_err(|_| BatchError::Stopped)?
    }

    pub(super) async fn run_in_span(&self, delivery: Delivery) -> Result<(), BatchError> {
        let Delivery {
            job_id,
            delivery_id,
        } = delivery;
        let Some(claimed) = self
            .claims
            .call((job_id.clone(), delivery_id.clone()))
            .await?
        else {
            tracing::debug!(delivery.id = %delivery_id, "stale delivery skipped, or put back past its owner's share");
            return Ok(());
        };
        tracing::Span::current().record("job.kind", claimed.kind.as_str());
        let Some(handler) = self.handlers.get(claimed.kind.as_str()) else {
            let error = format!(
                "no handler for job kind {} on queue {} in this worker",
                claimed.kind, self.queue
            );
            tracing::error!("job failed: {error}");
            store::mark_failed(&self.pool, &job_id, &delivery_id, &error).await?;
            return Ok(());
        };
        if claimed.attempts > claimed.max_attempts {
            let error = format!(
                "attempt cap of {} reached: earlier attempts ended with their worker dying",
                claimed.max_attempts
            );
            tracing::warn!(attempts = claimed.attempts, "job failed: {error}");
            store::mark_failed(&self.pool, &job_id, &delivery_id, &error).await?;
            (handler.failed)(claimed.payload, error).await;
            return Ok(());
        }
        let owner = claimed.owner_user_id;
        let kind = claimed.kind.as_str();
        let tell = |state: &'static str, error: Option<String>| {
            let event = crate::events::job_event(
                &job_id,
                kind,
                state,
                claimed.attempts,
                error.as_deref(),
                claimed.targets,
            );
            async move {
                if let Some(owner) = owner {
                    crate::events::publish(&self.redis, owner, &event).await;
                }
                if let Some(deployment) = claimed.targets.deployment_id {
                    self.tell_deployment_readers(deployment, owner, &event)
                        .await;
                }
            }
        };
        tell("running", None).await;
        let cancel = self.running.start(&job_id);
        let log = self.logs.open(&job_id, claimed.log_seq, claimed.log_bytes);
        let log_done = CancellationToken::new();
        let follow = tokio::spawn({
            let (logs, log, done) = (self.logs.clone(), log.clone(), log_done.clone());
            async move { logs.follow(log, done).await }
        });
        let ctx = JobContext {
            job_id: job_id.clone(),
            attempt: claimed.attempts as u32,
            max_attempts: claimed.max_attempts as u32,
            cancel: cancel.clone(),
            log,
        };
        let started = Instant::now();
        let run = AssertUnwindSafe((handler.run)(claimed.payload.clone(), ctx)).catch_unwind();
        let outcome = stop_on_cancel_or_timeout(run, &cancel, claimed.timeout).await;
        self.running.end(&job_id);
        // The whole log is written before the outcome is: a client that sees
        // the job finished finds every line.
        log_done.cancel();
        let _ = follow.await;
        let failure = match outcome {
            Stop::Returned(Ok(Ok(()))) => None,
            Stop::Returned(Ok(Err(failure))) => Some(failure),
            Stop::Returned(Err(panic)) => Some(JobFailure::Retryable(format!(
                "the job panicked: {}",
                panic_message(&panic)
            ))),
            Stop::TimedOut => Some(JobFailure::Retryable(format!(
                "timed out after {} s",
                claimed.timeout.as_secs_f64()
            ))),
            Stop::Cancelled => {
                tracing::info!(attempt = claimed.attempts, "job cancelled");
                store::mark_cancelled(&self.pool, &job_id, &delivery_id).await?;
                tell("cancelled", None).await;
                // Stopped half-way is not success either: the resource is told.
                (handler.failed)(claimed.payload, "the job was cancelled".into()).await;
                return Ok(());
            }
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        match failure {
            None => {
                tracing::info!(attempt = claimed.attempts, duration_ms, "job succeeded");
                self.successes.call((job_id.clone(), delivery_id)).await?;
                tell("succeeded", None).await;
                Ok(())
            }
            Some(JobFailure::Later { after, reason }) => {
                tracing::info!(
                    attempt = claimed.attempts,
                    duration_ms,
                    retry_in_ms = after.as_millis() as u64,
                    "job deferred: {reason}"
                );
                store::defer(&self.pool, &job_id, &delivery_id, &reason, after).await?;
                tell("queued", None).await;
                Ok(())
            }
            Some(JobFailure::Retryable(reason)) if claimed.attempts < claimed.max_attempts => {
                let delay = self
                    .policies
                    .get(self.queue)
                    .backoff(claimed.attempts as u32);
                tracing::warn!(
                    attempt = claimed.attempts,
                    duration_ms,
                    retry_in_ms = delay.as_millis() as u64,
                    "job attempt failed: {reason}"
                );
                store::schedule_retry(&self.pool, &job_id, &delivery_id, &reason, delay).await?;
                tell("queued", Some(reason)).await;
                Ok(())
            }
            Some(failure) => {
                tracing::warn!(
                    attempt = claimed.attempts,
                    duration_ms,
                    "job failed: {}",
                    failure.reason()
                );
                store::mark_failed(&self.pool, &job_id, &delivery_id, failure.reason()).await?;
                tell("failed", Some(failure.reason().to_owned())).await;
                (handler.failed)(claimed.payload, failure.reason().to_owned()).await;
                Ok(())
            }
        }
    }
}
