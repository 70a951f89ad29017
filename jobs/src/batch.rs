//! Opportunistic batching: requests that arrive while a batch is being written
//! wait and go together in the next one, so a busy system turns many small
//! statements into few large ones, which is what bounds throughput on a small
//! machine. While busy (the previous batch ended moments ago) a batch also lingers
//! briefly for company; an idle system writes each request at once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

type Reply<R> = oneshot::Sender<Result<R, Arc<sqlx::Error>>>;

/// A batcher that wrote within this long counts as busy.
const BUSY_WITHIN: Duration = Duration::from_millis(5);

pub(crate) struct Batcher<Q, R> {
    requests: mpsc::Sender<(Q, Reply<R>)>,
}

impl<Q, R> Clone for Batcher<Q, R> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Database(#[from] Arc<sqlx::Error>),
    #[error(transparent)]
    Query(#[from] sqlx::Error),
    #[error("the batch writer stopped")]
    Stopped,
}

impl<Q: Send + 'static, R: Send + 'static> Batcher<Q, R> {
    /// `write` gets up to `max_batch` requests and returns one answer per request,
    /// in order. One batch is written at a time; while busy, up to `linger` is
    /// spent after a batch's first request waiting for more.
    pub(crate) fn spawn<F, Fut>(max_batch: usize, linger: Duration, write: F) -> Self
    where
        F: Fn(Vec<Q>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, sqlx::Error>> + Send,
    {
        let (requests, mut receiver) = mpsc::channel::<(Q, Reply<R>)>(max_batch * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            let mut last_write = tokio::time::Instant::now() - BUSY_WITHIN;
            while receiver.recv_many(&mut batch, max_batch).await > 0 {
                if !linger.is_zero() && last_write.elapsed() < BUSY_WITHIN {
                    let deadline = tokio::time::Instant::now() + linger;
                    while batch.len() < max_batch {
                        let room = max_batch - batch.len();
                        let more = receiver.recv_many(&mut batch, room);
                        match tokio::time::timeout_at(deadline, more).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
                let (queries, replies): (Vec<Q>, Vec<Reply<R>>) = batch.drain(..).unzip();
                let written = write(queries).await;
                last_write = tokio::time::Instant::now();
                match written {
                    Ok(answers) => {
                        debug_assert_eq!(answers.len(), replies.len());
                        for (reply, answer) in replies.into_iter().zip(answers) {
                            let _ = reply.send(Ok(answer));
                        }
                    }
                    Err(e) => {
                        let e = Arc::new(e);
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Self { requests }
    }

    pub(crate) async fn call(&self, query: Q) -> Result<R, BatchError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((query, reply))
            .await
            .map_err(|_| BatchError::Stopped)?;
        answer
            .await
            .map_err(|_| BatchError::Stopped)?
            .map_err(BatchError::from)
    }
}
