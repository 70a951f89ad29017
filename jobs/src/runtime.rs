//! The worker side: one apalis worker per served queue, each delivery claimed in
//! Postgres, run under the queue's timeout with panics captured, then marked
//! succeeded, re-queued with backoff, or failed with its error.
//!
//! apalis is configured around the pitfalls in APALIS.md: batch size 1 (prefetch
//! stalls heartbeats and causes duplicate runs), wake-up by Redis pub/sub with a
//! polling fallback (idle workers otherwise wait a whole heartbeat), a short
//! heartbeat so a dead worker's tasks come back in seconds, and handlers that never
//! return job failures to apalis (its durable retry ignores attempt caps).

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{BackendExt, BoxDynError, Data, Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_redis::RedisStorage;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{IntervalStream, ReceiverStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::batch::{BatchError, Batcher};
use crate::joblog::{JobLog, LogSink};
use crate::relay::{Delivery, Relay};
use crate::{JobPayload, Policies, Queue, store};

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

    fn reason(&self) -> &str {
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

/// How long a handler has to stop its remote work once its job is cancelled
/// or timed out, before it is dropped.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// How often a worker asks Postgres whether one of its running jobs was
/// cancelled, in case the Redis message saying so was lost.
const CANCEL_POLL: Duration = Duration::from_secs(2);

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

type RunFn = Arc<
    dyn Fn(serde_json::Value, JobContext) -> BoxFuture<'static, Result<(), JobFailure>>
        + Send
        + Sync,
>;
type FailedFn = Arc<dyn Fn(serde_json::Value, String) -> BoxFuture<'static, ()> + Send + Sync>;

/// A registered handler with its payload type erased.
#[derive(Clone)]
struct KindHandler {
    queue: Queue,
    run: RunFn,
    failed: FailedFn,
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
    fn check_serves(&self, queue: Queue) -> anyhow::Result<()> {
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

    fn of_queue(&self, queue: Queue) -> HashMap<&'static str, KindHandler> {
        self.kinds
            .iter()
            .filter(|(_, h)| h.queue == queue)
            .map(|(k, h)| (*k, h.clone()))
            .collect()
    }
}

/// Timing of a worker in Redis. A worker that misses `missed_heartbeats` beats has
/// its in-flight tasks handed to live workers. Idle workers are woken by Redis
/// pub/sub on each push; `poll_fallback` covers a missed message (pub/sub is
/// fire-and-forget) and deliveries apalis re-queues itself.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub heartbeat: Duration,
    pub missed_heartbeats: usize,
    pub poll_fallback: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(2),
            missed_heartbeats: 3,
            poll_fallback: Duration::from_secs(1),
        }
    }
}

pub(crate) fn apalis_config(queue: Queue) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(queue.redis_namespace())
        .batch_size(1)
}

fn push_channel(queue: Queue) -> String {
    format!(
        "tasks:{}:available",
        apalis_config(queue).active_jobs_list()
    )
}

pub struct WorkerRuntime {
    pool: PgPool,
    redis_url: String,
    policies: Policies,
    liveness: Liveness,
    grace: Duration,
    registry: Registry,
    log_max_bytes: u64,
}

impl WorkerRuntime {
    pub fn new(pool: PgPool, redis_url: String, policies: Policies, registry: Registry) -> Self {
        Self {
            pool,
            redis_url,
            policies,
            liveness: Liveness::default(),
            grace: Duration::from_secs(30),
            registry,
            log_max_bytes: crate::joblog::DEFAULT_MAX_BYTES,
        }
    }

    /// The cap of one job's log (`BERTH_JOB_LOG_MAX_BYTES`).
    pub fn job_log_max_bytes(mut self, max_bytes: u64) -> Self {
        self.log_max_bytes = max_bytes;
        self
    }

    pub fn liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    /// How long running jobs may take to finish after SIGTERM before the process
    /// exits; unfinished ones are handed to other workers by Redis orphan recovery.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Queues this build can serve, for the `--queues` default.
    pub fn served_queues(&self) -> Vec<Queue> {
        self.registry.queues()
    }

    /// Runs until `shutdown` is cancelled. Returns an error if any queue's worker
    /// stops on its own (e.g. a Redis error), so the process exits non-zero and its
    /// supervisor restarts it instead of leaving a live process that runs nothing.
    pub async fn run(self, queues: &[Queue], shutdown: CancellationToken) -> anyhow::Result<()> {
        for &queue in queues {
            if self.registry.of_queue(queue).is_empty() {
                anyhow::bail!("queue {queue} has no handler in this build of berth-worker");
            }
            self.registry.check_serves(queue)?;
        }
        let redis = crate::redis_conn::connect(&self.redis_url).await?;
        let identity = process_identity();

        let relay_task =
            tokio::spawn(Relay::new(self.pool.clone(), redis.clone()).run(shutdown.clone()));

        let runs = TaskTracker::new();
        let running = Running::default();
        let logs = LogSink::new(self.pool.clone(), redis.clone(), self.log_max_bytes);
        let cancels = tokio::spawn(listen_for_cancels(
            redis::Client::open(self.redis_url.as_str())?,
            self.pool.clone(),
            running.clone(),
            shutdown.clone(),
        ));
        let mut wakers = HashMap::new();
        let mut monitor = Monitor::new()
            .shutdown_timeout(self.grace)
            .should_restart(|_, _| false);
        for &queue in queues {
            let (tx, rx) = mpsc::channel(1);
            wakers.insert(push_channel(queue), tx);
            // apalis wants a factory closure (for restarts, which are off: a stopped
            // worker ends the process); the push receiver moves into its one call.
            let wake = Arc::new(tokio::sync::Mutex::new(Some(rx)));
            let concurrency = self.policies.get(queue).concurrency;
            let dispatch = Arc::new(Dispatch::new(
                ProcessParts {
                    pool: self.pool.clone(),
                    redis: redis.clone(),
                    policies: self.policies.clone(),
                    runs: runs.clone(),
                    running: running.clone(),
                    logs: logs.clone(),
                },
                queue,
                self.registry.of_queue(queue),
                format!("{identity}/{queue}"),
            ));
            let liveness = self.liveness;
            let redis = redis.clone();
            let name = format!("{queue}@{identity}");
            monitor = monitor.register(move |_restarts| {
                let receiver = wake
                    .try_lock()
                    .ok()
                    .and_then(|mut r| r.take())
                    .map(ReceiverStream::new);
                let ticks =
                    IntervalStream::new(tokio::time::interval(liveness.poll_fallback)).map(|_| ());
                let wake_stream = match receiver {
                    Some(pushes) => futures::stream::select(pushes, ticks).boxed(),
                    None => ticks.boxed(),
                };
                let config = apalis_config(queue)
                    .heartbeat_interval(liveness.heartbeat)
                    .missed_heartbeats(liveness.missed_heartbeats);
                let storage = RedisStorage::<Delivery, _>::new(redis.clone())
                    .with_config(config)
                    .poll_with_stream(wake_stream);
                WorkerBuilder::new(name.clone())
                    .backend(storage)
                    .data(dispatch.clone())
                    .concurrency(concurrency)
                    .build(run_delivery)
            });
        }
        let client = redis::Client::open(self.redis_url.as_str())?;
        let listener_task = tokio::spawn(wake_on_push(
            client,
            wakers,
            self.liveness.poll_fallback,
            shutdown.clone(),
        ));

        let stop = shutdown.clone();
        let result = monitor
            .run_with_signal(async move {
                stop.cancelled().await;
                Ok(())
            })
            .await;
        let expected = shutdown.is_cancelled();
        runs.close();
        if tokio::time::timeout(self.grace, runs.wait()).await.is_err() {
            tracing::warn!(
                "jobs still running after the shutdown grace; they are re-issued once their timeout passes"
            );
        }
        shutdown.cancel();
        listener_task.abort();
        cancels.abort();
        let _ = relay_task.await;
        match (expected, result) {
            (true, Ok(())) => Ok(()),
            (true, Err(e)) => Err(anyhow::anyhow!("workers did not shut down cleanly: {e}")),
            (false, Ok(())) => Err(anyhow::anyhow!("a queue worker stopped on its own")),
            (false, Err(e)) => Err(anyhow::anyhow!("a queue worker failed: {e}")),
        }
    }
}

fn process_identity() -> String {
    let host = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into());
    // The random part keeps names unique when a pid is reused on a restarted host:
    // apalis hides a dead worker's tasks behind a live worker of the same name.
    let nonce: u16 = rand::random();
    format!("{host}:{}:{nonce:04x}", std::process::id())
}

/// Relays apalis-redis' push notifications to the waiting queue workers.
async fn wake_on_push(
    client: redis::Client,
    wakers: HashMap<String, mpsc::Sender<()>>,
    resubscribe_after: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            for channel in wakers.keys() {
                pubsub.subscribe(channel).await?;
            }
            Ok::<_, redis::RedisError>(pubsub)
        };
        match subscribed.await {
            Ok(mut pubsub) => {
                let mut messages = pubsub.on_message();
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        message = messages.next() => match message {
                            Some(message) => {
                                if let Some(waker) = wakers.get(message.get_channel_name()) {
                                    // A full channel already holds a pending wake-up.
                                    let _ = waker.try_send(());
                                }
                            }
                            None => break,
                        }
                    }
                }
                tracing::warn!("push notifications lost; polling until resubscribed");
            }
            Err(e) => tracing::warn!(error = %e, "could not subscribe to push notifications"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(resubscribe_after) => {}
        }
    }
}

type DeliveryKey = (String, String);

const CLAIM_LINGER: Duration = Duration::from_millis(1);
const SUCCESS_LINGER: Duration = Duration::from_millis(2);
/// A job over its owner's share is offered again this much later (plus the
/// relay's sweep), by when one of the owner's running jobs may have ended.
const FAIR_SHARE_DEFERRAL: Duration = Duration::from_secs(1);

struct Dispatch {
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
struct ProcessParts {
    pool: PgPool,
    redis: ConnectionManager,
    policies: Policies,
    runs: TaskTracker,
    running: Running,
    logs: LogSink,
}

impl Dispatch {
    fn new(
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
async fn run_delivery(
    delivery: Delivery,
    dispatch: Data<Arc<Dispatch>>,
) -> Result<(), BoxDynError> {
    Arc::clone(&dispatch).run(delivery).await.map_err(|e| {
        tracing::error!(error = %e, "could not record a job's progress; the delivery will be retried");
        Box::new(e) as BoxDynError
    })
}

impl Dispatch {
    /// Runs the delivery in a task of its own, tracked by `runs`: when the
    /// apalis worker stops on its own (Redis gone), its futures are dropped, and
    /// a job dropped between its side effect (a mail sent) and its Postgres
    /// record would stay `running` and later run again. Detached, it finishes
    /// and is recorded; the process waits for it before exiting.
    async fn run(self: Arc<Self>, delivery: Delivery) -> Result<(), BatchError> {
        let span = tracing::info_span!("job", job.id = %delivery.job_id, job.queue = %self.queue, job.kind = tracing::field::Empty);
        let this = self.clone();
        self.runs
            .spawn(async move { this.run_in_span(delivery).await }.instrument(span))
            .await
            .map_err(|_| BatchError::Stopped)?
    }

    async fn run_in_span(&self, delivery: Delivery) -> Result<(), BatchError> {
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

/// How a job's handler ended.
enum Stop<T> {
    Returned(T),
    /// Cancelled by its user: the handler stopped (or was dropped).
    Cancelled,
    /// Past its timeout: the handler stopped (or was dropped).
    TimedOut,
}

/// Runs `run` until it returns, is cancelled, or passes `timeout`; in the last
/// two cases `cancel` fires (so remote commands kill their process groups)
/// and the handler gets [`STOP_GRACE`] to return before it is dropped.
async fn stop_on_cancel_or_timeout<F: Future>(
    run: F,
    cancel: &CancellationToken,
    timeout: Duration,
) -> Stop<F::Output> {
    tokio::pin!(run);
    let timed_out = tokio::select! {
        output = &mut run => return Stop::Returned(output),
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(timeout) => {
            cancel.cancel();
            true
        }
    };
    // Whatever the handler answers now, the job was stopped.
    let _ = tokio::time::timeout(STOP_GRACE, run).await;
    if timed_out {
        Stop::TimedOut
    } else {
        Stop::Cancelled
    }
}

/// The jobs this process runs, with the token that stops each.
#[derive(Clone, Default)]
struct Running(Arc<std::sync::Mutex<HashMap<String, CancellationToken>>>);

impl Running {
    fn start(&self, job_id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        self.lock().insert(job_id.to_owned(), token.clone());
        token
    }

    fn end(&self, job_id: &str) {
        self.lock().remove(job_id);
    }

    fn cancel(&self, job_id: &str) {
        if let Some(token) = self.lock().get(job_id) {
            token.cancel();
        }
    }

    fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Cancels running jobs of this process when asked: at once on the Redis
/// message the api publishes, and by polling Postgres every [`CANCEL_POLL`]
/// in case that message was lost (pub/sub is fire-and-forget).
async fn listen_for_cancels(
    client: redis::Client,
    pool: PgPool,
    running: Running,
    shutdown: CancellationToken,
) {
    let messages = {
        let running = running.clone();
        let shutdown = shutdown.clone();
        async move {
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => {
                        if pubsub
                            .subscribe(crate::events::CANCEL_CHANNEL)
                            .await
                            .is_ok()
                        {
                            let mut stream = pubsub.on_message();
                            while let Some(message) = stream.next().await {
                                if let Ok(job_id) = message.get_payload::<String>() {
                                    running.cancel(&job_id);
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot subscribe to cancellations"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(CANCEL_POLL) => {}
                }
            }
        }
    };
    let polls = async move {
        loop {
            tokio::time::sleep(CANCEL_POLL).await;
            let ids = running.ids();
            if ids.is_empty() {
                continue;
            }
            match store::cancel_requested(&pool, &ids).await {
                Ok(cancelled) => cancelled.iter().for_each(|id| running.cancel(id)),
                Err(e) => tracing::warn!(error = %e, "cannot check for cancellations"),
            }
        }
    };
    tokio::select! {
        () = messages => {}
        () = polls => {}
        () = shutdown.cancelled() => {}
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
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
