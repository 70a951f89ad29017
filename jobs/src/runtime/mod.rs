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
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{BackendExt, Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_redis::RedisStorage;
use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::IntervalStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::joblog::LogSink;
use crate::relay::Relay;
use crate::transport::{Delivery, apalis_config, push_channel};
use crate::{Policies, Queue};

mod dispatch;
mod handler;
mod stopping;

pub use handler::{DuplicateKind, JobContext, JobFailure, JobHandler, Registry};
pub use stopping::STOP_GRACE;

use dispatch::{Dispatch, ProcessParts, run_delivery};
use stopping::{Running, listen_for_cancels};

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

/// apalis-redis stamps heartbeats and judges them in whole seconds, so a live
/// worker's last stamp can look almost two seconds older than it is; a window
/// shorter than this declares busy, healthy workers dead and takes their work.
pub const MIN_ORPHAN_WINDOW: Duration = Duration::from_secs(3);

impl Liveness {
    /// How long a worker may be silent before its tasks are handed on.
    pub fn orphan_window(&self) -> Duration {
        self.heartbeat * self.missed_heartbeats as u32
    }

    pub fn check(&self) -> anyhow::Result<()> {
        if self.heartbeat.is_zero() || self.missed_heartbeats == 0 {
            anyhow::bail!(
                "BERTH_WORKER_HEARTBEAT_MS and BERTH_WORKER_MISSED_HEARTBEATS must be positive"
            );
        }
        if self.orphan_window() < MIN_ORPHAN_WINDOW {
            anyhow::bail!(
                "BERTH_WORKER_HEARTBEAT_MS × BERTH_WORKER_MISSED_HEARTBEATS is {} ms; it must be at least {} ms, because heartbeats are kept in whole seconds",
                self.orphan_window().as_millis(),
                MIN_ORPHAN_WINDOW.as_millis()
            );
        }
        Ok(())
    }
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
        self.liveness.check()?;
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
        let mut monitor =
            Monitor::new()
                .shutdown_timeout(self.grace)
                .should_restart(|worker, error| {
                    // A peer that missed this worker's heartbeat (a stalled process or
                    // Redis) handed its tasks on and struck it from the worker set;
                    // registering again is the whole cure. Any other error ends the
                    // process for its supervisor to restart.
                    let deregistered = error.to_string().contains("worker not registered");
                    if deregistered {
                        tracing::warn!(
                            worker = worker.name(),
                            "a peer declared this queue worker dead; registering it again"
                        );
                    }
                    deregistered
                });
        for &queue in queues {
            let (tx, rx) = mpsc::channel(1);
            wakers.insert(push_channel(queue), tx);
            // The factory runs again on each restart; every incarnation reads the
            // one push receiver (the lock is held by the live stream, released when
            // a stopped worker's stream is dropped).
            let wake = Arc::new(tokio::sync::Mutex::new(rx));
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
                let pushes = futures::stream::unfold(wake.clone(), |wake| async move {
                    let pushed = wake.lock().await.recv().await;
                    pushed.map(|()| ((), wake))
                });
                let ticks =
                    IntervalStream::new(tokio::time::interval(liveness.poll_fallback)).map(|_| ());
                let wake_stream = futures::stream::select(pushes, ticks).boxed();
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
