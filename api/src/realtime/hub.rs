//! The realtime hub: each api process's local sockets by user and by topic,
//! and the one Redis pattern subscription that feeds them. It knows nothing
//! of requests or the api's state; `super` authorizes what a socket follows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_jobs::events::Revocation;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events a slow socket may fall behind by before it is closed.
const SOCKET_BUFFER: usize = 256;

/// Topics one socket may follow at once.
const MAX_TOPICS_PER_SOCKET: usize = 32;

/// Why a socket may follow a topic when it is not simply the user's own:
/// their membership of `project` (for `deployment`'s job, when set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Through {
    pub project: Uuid,
    pub deployment: Option<Uuid>,
}

#[derive(Default)]
struct Sockets {
    senders: HashMap<u64, mpsc::Sender<String>>,
    user_of: HashMap<u64, Uuid>,
    by_user: HashMap<Uuid, Vec<u64>>,
    by_topic: HashMap<String, Vec<u64>>,
    /// Topics followed through a project membership, by socket.
    through: HashMap<(u64, String), Through>,
}

impl Sockets {
    fn drop_topic(&mut self, id: u64, topic: &str) {
        self.through.remove(&(id, topic.to_owned()));
        if let Some(list) = self.by_topic.get_mut(topic) {
            list.retain(|s| *s != id);
            if list.is_empty() {
                self.by_topic.remove(topic);
            }
        }
        let notice = serde_json::json!({ "type": "unsubscribed",
            "data": { "topic": topic, "reason": "your access to it ended" } })
        .to_string();
        for slow in self.send(&[id], &notice) {
            self.remove(slow);
        }
    }

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
        self.user_of.remove(&id);
        self.through.retain(|(socket, _), _| *socket != id);
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
    /// When this process last heard that a restore replaced the database
    /// (milliseconds since the epoch; 0: never).
    database_restored_at: Arc<std::sync::atomic::AtomicU64>,
}

impl Hub {
    /// Read by the pool before it hands out a connection: one opened before
    /// this instant was cut by a restore.
    pub fn database_restored_at(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.database_restored_at.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sockets> {
        self.sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn register(&self, user_id: Uuid) -> (u64, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(SOCKET_BUFFER);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut sockets = self.lock();
        sockets.senders.insert(id, tx);
        sockets.user_of.insert(id, user_id);
        sockets.by_user.entry(user_id).or_default().push(id);
        (id, rx)
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.lock().remove(id);
    }

    /// Adds `topic` to socket `id`'s; the caller checked it may read it
    /// (`through` a project membership, or as its own). False when the
    /// socket already follows as many topics as it may.
    pub(super) fn subscribe(&self, id: u64, topic: String, through: Option<Through>) -> bool {
        let mut sockets = self.lock();
        let following = sockets
            .by_topic
            .values()
            .filter(|l| l.contains(&id))
            .count();
        let list = sockets.by_topic.entry(topic.clone()).or_default();
        if !list.contains(&id) {
            if following >= MAX_TOPICS_PER_SOCKET {
                return false;
            }
            list.push(id);
        }
        match through {
            Some(through) => sockets.through.insert((id, topic), through),
            None => sockets.through.remove(&(id, topic)),
        };
        true
    }

    /// The topics socket `id` follows through a project membership.
    pub(super) fn followed_through(&self, id: u64) -> Vec<(String, Through)> {
        self.lock()
            .through
            .iter()
            .filter(|((socket, _), _)| *socket == id)
            .map(|((_, topic), through)| (topic.clone(), *through))
            .collect()
    }

    /// Stops socket `id` following `topic`, and tells it why.
    pub(super) fn unsubscribe(&self, id: u64, topic: &str) {
        let mut sockets = self.lock();
        sockets.drop_topic(id, topic);
    }

    /// Applies a narrowing of access at once, before any later event.
    fn revoke(&self, revocation: &Revocation) {
        let mut sockets = self.lock();
        let lost: Vec<(u64, String)> = sockets
            .through
            .iter()
            .filter(|((socket, _), through)| {
                through.project == revocation.project
                    && revocation
                        .deployment
                        .is_none_or(|d| through.deployment == Some(d))
                    && revocation
                        .user
                        .is_none_or(|u| sockets.user_of.get(socket) == Some(&u))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for (socket, topic) in lost {
            sockets.drop_topic(socket, &topic);
        }
    }

    /// Closes every socket of `user_id`: its serving loop sees its events end.
    fn close_user(&self, user_id: Uuid) {
        let mut sockets = self.lock();
        for id in sockets.by_user.get(&user_id).cloned().unwrap_or_default() {
            sockets.remove(id);
        }
    }

    fn deliver_to_user(&self, user_id: Uuid, event: &str) {
        let mut sockets = self.lock();
        let ids = sockets.by_user.get(&user_id).cloned().unwrap_or_default();
        for slow in sockets.send(&ids, event) {
            sockets.remove(slow);
        }
    }

    fn deliver_to_all(&self, event: &str) {
        let mut sockets = self.lock();
        let ids: Vec<u64> = sockets.user_of.keys().copied().collect();
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
                pubsub
                    .psubscribe(berth_jobs::events::ACCESS_CHANNEL)
                    .await?;
                pubsub
                    .subscribe(berth_jobs::events::BROADCAST_CHANNEL)
                    .await?;
                pubsub
                    .subscribe(berth_jobs::events::SIGNED_OUT_CHANNEL)
                    .await?;
                pubsub
                    .subscribe(berth_jobs::events::DATABASE_RESTORED_CHANNEL)
                    .await?;
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
                                if channel == berth_jobs::events::ACCESS_CHANNEL {
                                    match serde_json::from_str::<Revocation>(&payload) {
                                        Ok(revocation) => self.revoke(&revocation),
                                        Err(e) => tracing::warn!(error = %e, "unreadable access revocation"),
                                    }
                                } else if channel == berth_jobs::events::BROADCAST_CHANNEL {
                                    self.deliver_to_all(&payload);
                                } else if channel == berth_jobs::events::DATABASE_RESTORED_CHANNEL {
                                    self.database_restored_at.store(
                                        crate::state::unix_millis(),
                                        std::sync::atomic::Ordering::Relaxed,
                                    );
                                } else if channel == berth_jobs::events::SIGNED_OUT_CHANNEL {
                                    if let Ok(user) = payload.parse() {
                                        self.close_user(user);
                                    }
                                } else if let Some(user) = berth_jobs::events::user_of(channel) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &mut mpsc::Receiver<String>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            out.push(serde_json::from_str(&m).unwrap());
        }
        out
    }

    #[test]
    fn a_revocation_drops_only_what_was_followed_through_that_membership() {
        let hub = Hub::default();
        let (removed, kept, project, other) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let (a, mut a_rx) = hub.register(removed);
        let (b, mut b_rx) = hub.register(kept);
        let through = |project, deployment| {
            Some(Through {
                project,
                deployment,
            })
        };
        assert!(hub.subscribe(a, "project:p".into(), through(project, None)));
        assert!(hub.subscribe(a, "job:own".into(), None));
        assert!(hub.subscribe(a, "project:q".into(), through(other, None)));
        assert!(hub.subscribe(b, "project:p".into(), through(project, None)));

        hub.revoke(&Revocation::member(project, removed));
        let told = drain(&mut a_rx);
        assert_eq!(told.len(), 1);
        assert_eq!(told[0]["type"], "unsubscribed");
        assert_eq!(told[0]["data"]["topic"], "project:p");
        assert!(drain(&mut b_rx).is_empty());

        hub.deliver_to_topic("project:p", "{\"type\":\"job\"}");
        hub.deliver_to_topic("job:own", "{\"type\":\"job\"}");
        hub.deliver_to_topic("project:q", "{\"type\":\"job\"}");
        assert_eq!(
            drain(&mut a_rx).len(),
            2,
            "its own job and the other project"
        );
        assert_eq!(drain(&mut b_rx).len(), 1);

        // A deployment moved out: only what was followed for it goes.
        let deployment = Uuid::new_v4();
        assert!(hub.subscribe(b, "job:x".into(), through(project, Some(deployment))));
        hub.revoke(&Revocation::deployment(project, deployment));
        assert_eq!(drain(&mut b_rx)[0]["data"]["topic"], "job:x");
        assert_eq!(hub.followed_through(b).len(), 1, "the project topic stays");
    }
}
