use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where jobs wait for a worker (SPEC §1), so workers scale per queue. A queue
/// carries one or more job kinds (`probe`: `server.validate`, `server.probe`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Queue {
    Deploy,
    Rollback,
    Ssl,
    Probe,
    Backup,
    Email,
    Alerts,
    /// Jobs that only exercise the pipeline itself (operators' smoke tests, benchmarks).
    Diagnostic,
    /// The scheduler's periodic work (pruning, reconciling), run by workers so
    /// the scheduler only enqueues.
    Maintenance,
}

impl Queue {
    pub const ALL: [Queue; 9] = [
        Queue::Deploy,
        Queue::Rollback,
        Queue::Ssl,
        Queue::Probe,
        Queue::Backup,
        Queue::Email,
        Queue::Alerts,
        Queue::Diagnostic,
        Queue::Maintenance,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Queue::Deploy => "deploy",
            Queue::Rollback => "rollback",
            Queue::Ssl => "ssl",
            Queue::Probe => "probe",
            Queue::Backup => "backup",
            Queue::Email => "email",
            Queue::Alerts => "alerts",
            Queue::Diagnostic => "diagnostic",
            Queue::Maintenance => "maintenance",
        }
    }

    /// The apalis-redis namespace of this queue; every Redis key of the queue
    /// starts with it, so Berth's keys never collide with other users of the Redis.
    pub fn redis_namespace(self) -> String {
        format!("berth:{}", self.name())
    }

    /// Parses a `--queues deploy,rollback` style list; empty means every queue.
    pub fn parse_list(list: &str) -> Result<Vec<Queue>, UnknownQueue> {
        let mut queues = Vec::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let queue: Queue = part.parse()?;
            if !queues.contains(&queue) {
                queues.push(queue);
            }
        }
        if queues.is_empty() {
            queues.extend(Queue::ALL);
        }
        Ok(queues)
    }
}

impl fmt::Display for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "unknown queue {0:?}; known queues: deploy, rollback, ssl, probe, backup, email, alerts, diagnostic"
)]
pub struct UnknownQueue(pub String);

impl FromStr for Queue {
    type Err = UnknownQueue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Queue::ALL
            .into_iter()
            .find(|q| q.name() == s)
            .ok_or_else(|| UnknownQueue(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        assert_eq!(
            Queue::parse_list("email, deploy,email").unwrap(),
            vec![Queue::Email, Queue::Deploy]
        );
        assert_eq!(Queue::parse_list("").unwrap().len(), Queue::ALL.len());
        assert!(Queue::parse_list("email,nope").is_err());
        for q in Queue::ALL {
            assert_eq!(q.name().parse::<Queue>().unwrap(), q);
        }
    }
}
