//! Stopping running jobs: cancellations heard over Redis (and polled), the
//! running jobs' tokens, and the race of a handler against its cancellation
//! and its timeout.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store;

/// How long a handler has to stop its remote work once its job is cancelled
/// or timed out, before it is dropped.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// How often a worker asks Postgres whether one of its running jobs was
/// cancelled, in case the Redis message saying so was lost.
pub(super) const CANCEL_POLL: Duration = Duration::from_secs(2);

/// How a job's handler ended.
pub(super) enum Stop<T> {
    Returned(T),
    /// Cancelled by its user: the handler stopped (or was dropped).
    Cancelled,
    /// Past its timeout: the handler stopped (or was dropped).
    TimedOut,
}

/// Runs `run` until it returns, is cancelled, or passes `timeout`; in the last
/// two cases `cancel` fires (so remote commands kill their process groups)
/// and the handler gets [`STOP_GRACE`] to return before it is dropped.
pub(super) async fn stop_on_cancel_or_timeout<F: Future>(
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
pub(super) struct Running(Arc<std::sync::Mutex<HashMap<String, CancellationToken>>>);

impl Running {
    pub(super) fn start(&self, job_id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        self.lock().insert(job_id.to_owned(), token.clone());
        token
    }

    pub(super) fn end(&self, job_id: &str) {
        self.lock().remove(job_id);
    }

    pub(super) fn cancel(&self, job_id: &str) {
        if let Some(token) = self.lock().get(job_id) {
            token.cancel();
        }
    }

    pub(super) fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CancellationToken>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Cancels running jobs of this process when asked: at once on the Redis
/// message the api publishes, and by polling Postgres every [`CANCEL_POLL`]
/// in case that message was lost (pub/sub is fire-and-forget).
pub(super) async fn listen_for_cancels(
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

pub(super) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
