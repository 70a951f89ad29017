//! The realtime hub: each api process's local sockets by user and by topic,
//! and the one Redis pattern subscription that feeds them. It knows nothing
//! of requests or the api's state; `super` authorizes what a socket follows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events a slow socket may fall behind by before it is closed.
const SOCKET_BUFFER: usize = 256;

/// Topics one socket may follow at once.
const MAX_TOPICS_PER_SOCKET: usize = 32;

#[derive(Default)]
struct Sockets {
    senders: HashMap<u64, mpsc::Sender<String>>,
    by_user: HashMap<Uuid, Vec<u64>>,
    by_topic: HashMap<String, Vec<u64>>,
}

impl Sockets {
    /// Hands `event` to `sockets`; a socket too far behind is dropped.
    fn send(&mut self, sockets: &[u64], event: &str) -> Vec<u64> {
        sockets
            .iter()
            .copied()
            .filter(|id| {
                self.senders
                    .get(id)
                    .is_some_and(|tx| tx.try_send(event.to_owned()).is_err())
            })
            .collect()
    }

    fn remove(&mut self, id: u64) {
        self.senders.remove(&id);
        for list in self.by_user.values_mut().chain(self.by_topic.values_mut()) {
            list.retain(|s| *s != id);
        }
        self.by_user.retain(|_, l| !l.is_empty());
        self.by_topic.retain(|_, l| !l.is_empty());
    }
}

/// The local sockets of each user, and the topics each follows.
#[derive(Clone, Default)]
pub struct Hub {
    sockets: Arc<Mutex<Sockets>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sockets> {
        self.sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn register(&self, user_id: Uuid) -> (u64, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(SOCKET_BUFFER);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut sockets = self.lock();
        sockets.senders.insert(id, tx);
        sockets.by_user.entry(user_id).or_default().push(id);
        (id, rx)
    }

    pub(super) fn unregister(&self, id: u64) {
        self.lock().remove(id);
    }

    /// Adds `topic` to socket `id`'s; the caller checked it may read it.
    /// False when the socket already follows as many topics as it may.
    pub(super) fn subscribe(&self, id: u64, topic: String) -> bool {
        let mut sockets = self.lock();
        let following = sockets
            .by_topic
            .values()
            .filter(|l| l.contains(&id))
            .count();
        let list = sockets.by_topic.entry(topic).or_default();
        if list.contains(&id) {
            return true;
        }
        if following >= MAX_TOPICS_PER_SOCKET {
            return false;
        }
        list.push(id);
        true
    }

    fn deliver_to_user(&self, user_id: Uuid, event: &str) {
        let mut sockets = self.lock();
        let ids = sockets.by_user.get(&user_id).cloned().unwrap_or_default();
        for slow in sockets.send(&ids, event) {
            sockets.remove(slow);
        }
    }

    fn deliver_to_topic(&self, topic: &str, event: &str) {
        let mut sockets = self.lock();
        let ids = sockets.by_topic.get(topic).cloned().unwrap_or_default();
        for slow in sockets.send(&ids, event) {
            sockets.remove(slow);
        }
    }

    /// Follows every user's channel until `shutdown`, reconnecting after errors.
    pub async fn run(self, redis_url: String, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let subscribed = async {
                let client = redis::Client::open(redis_url.as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.psubscribe(berth_jobs::events::PATTERN).await?;
                pubsub.psubscribe(berth_jobs::events::TOPIC_PATTERN).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match subscribed.await {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(200);
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            message = messages.next() => {
                                let Some(message) = message else { break };
                                let Ok(payload) = message.get_payload::<String>() else {
                                    continue;
                                };
                                let channel = message.get_channel_name();
                                if let Some(user) = berth_jobs::events::user_of(channel) {
                                    self.deliver_to_user(user, &payload);
                                } else if let Some(topic) = berth_jobs::events::topic_of(channel) {
                                    self.deliver_to_topic(topic, &payload);
                                }
                            }
                        }
                    }
                    tracing::warn!("realtime subscription ended; reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, "realtime subscription failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}
