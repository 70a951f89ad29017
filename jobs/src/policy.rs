use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_config::{ConfigError, Env};
use rand::Rng;

use crate::Queue;

/// How one queue's jobs are run: the attempt cap, the retry backoff, the per-attempt
/// timeout and how many jobs one worker process runs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPolicy {
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
    pub concurrency: usize,
    /// Jobs of this queue one user may have running at once, across all
    /// workers: past it their next job waits, so one tenant's slow jobs (servers
    /// that never answer) cannot hold every slot. Jobs without an owner are not
    /// counted.
    pub per_user_running: usize,
}

impl JobPolicy {
    /// Defaults per queue. Deploys and rollbacks get one attempt unless their
    /// kind asks for more: the deployment kinds do, because each of their
    /// steps finds what the last attempt left and goes on from it, and they
    /// fail permanently (no retry) for anything but a lost server.
    pub fn default_for(queue: Queue) -> Self {
        let (max_attempts, timeout_secs, concurrency) = match queue {
            Queue::Deploy => (1, 1800, 4),
            Queue::Rollback => (1, 600, 2),
            // A CA's refusal is retried from 1 minute, doubling to 6 hours
            // (below), for about a day before the job gives up.
            Queue::Ssl => (10, 300, 2),
            Queue::Probe => (1, 30, 16),
            Queue::Backup => (2, 3600, 1),
            Queue::Email => (5, 60, 4),
            Queue::Alerts => (3, 60, 4),
            Queue::Diagnostic => (3, 600, 8),
            Queue::Maintenance => (1, 300, 2),
        };
        let (backoff_base, backoff_max) = match queue {
            Queue::Ssl => (Duration::from_secs(60), Duration::from_secs(6 * 3600)),
            _ => (Duration::from_secs(5), Duration::from_secs(600)),
        };
        Self {
            max_attempts,
            backoff_base,
            backoff_max,
            timeout: Duration::from_secs(timeout_secs),
            concurrency,
            per_user_running: Self::default_share(queue, concurrency),
        }
    }

    /// How many of a queue's `concurrency` one user may hold by default: half.
    /// Probes come from the scheduler, one per server per tick and deduped,
    /// not from what a user does: a share per user would only slow the probes
    /// of a large fleet, not protect anyone.
    fn default_share(queue: Queue, concurrency: usize) -> usize {
        match queue {
            Queue::Probe => concurrency,
            _ => concurrency.div_ceil(2),
        }
    }

    /// Exponential backoff with "equal jitter": half the delay is fixed, half random,
    /// so retries of many jobs that failed together spread out.
    /// `failed_attempts` counts the attempts made so far (1 after the first failure).
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(20);
        let full = self
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(self.backoff_max);
        let half = full / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// Every queue's policy, read from the environment with per-queue overrides
/// (`BERTH_EMAIL_MAX_ATTEMPTS`, `BERTH_EMAIL_BACKOFF_MS`, `BERTH_EMAIL_BACKOFF_MAX_MS`,
/// `BERTH_EMAIL_TIMEOUT_SECS`, `BERTH_EMAIL_CONCURRENCY`,
/// `BERTH_EMAIL_PER_USER_RUNNING` (default: half the concurrency, rounded up;
/// all of it for `probe`),
/// and the same for each queue).
/// Shared, not copied: the api's state (which holds one) is cloned for every
/// request.
#[derive(Debug, Clone)]
pub struct Policies(Arc<HashMap<Queue, JobPolicy>>);

impl Policies {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut map = HashMap::new();
        for queue in Queue::ALL {
            let d = JobPolicy::default_for(queue);
            let prefix = format!("BERTH_{}", queue.name().to_ascii_uppercase());
            let concurrency = env.parsed(&format!("{prefix}_CONCURRENCY"), d.concurrency)?;
            let policy = JobPolicy {
                max_attempts: env.parsed(&format!("{prefix}_MAX_ATTEMPTS"), d.max_attempts)?,
                backoff_base: env.millis(&format!("{prefix}_BACKOFF_MS"), d.backoff_base)?,
                backoff_max: env.millis(&format!("{prefix}_BACKOFF_MAX_MS"), d.backoff_max)?,
                timeout: Duration::from_secs(
                    env.parsed(&format!("{prefix}_TIMEOUT_SECS"), d.timeout.as_secs())?,
                ),
                concurrency,
                per_user_running: env.parsed(
                    &format!("{prefix}_PER_USER_RUNNING"),
                    JobPolicy::default_share(queue, concurrency),
                )?,
            };
            for (field, value) in [
                ("MAX_ATTEMPTS", policy.max_attempts as u64),
                ("TIMEOUT_SECS", policy.timeout.as_secs()),
                ("CONCURRENCY", policy.concurrency as u64),
                ("PER_USER_RUNNING", policy.per_user_running as u64),
            ] {
                if value == 0 {
                    return Err(ConfigError::Malformed {
                        name: format!("{prefix}_{field}"),
                        reason: "must be at least 1".into(),
                    });
                }
            }
            map.insert(queue, policy);
        }
        Ok(Self(Arc::new(map)))
    }

    pub fn defaults() -> Self {
        Self(Arc::new(
            Queue::ALL
                .into_iter()
                .map(|q| (q, JobPolicy::default_for(q)))
                .collect(),
        ))
    }

    pub fn get(&self, queue: Queue) -> JobPolicy {
        self.0[&queue]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cas_refusals_are_retried_from_a_minute_to_six_hours() {
        let ssl = JobPolicy::default_for(Queue::Ssl);
        assert_eq!(ssl.backoff_base, Duration::from_secs(60));
        assert_eq!(ssl.backoff_max, Duration::from_secs(6 * 3600));
        // Equal jitter: at least half of the doubled delay, capped.
        assert!(ssl.backoff(1) >= Duration::from_secs(30));
        assert!(ssl.backoff(30) <= Duration::from_secs(6 * 3600));
        assert!(ssl.backoff(30) >= Duration::from_secs(3 * 3600));
    }

    #[test]
    fn backoff_grows_exponentially_within_bounds() {
        let p = JobPolicy {
            backoff_base: Duration::from_millis(1000),
            backoff_max: Duration::from_millis(10_000),
            ..JobPolicy::default_for(Queue::Email)
        };
        for (attempt, full_ms) in [
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (4, 8000),
            (5, 10_000),
            (30, 10_000),
        ] {
            for _ in 0..50 {
                let d = p.backoff(attempt).as_millis() as u64;
                assert!(d >= full_ms / 2 && d <= full_ms, "attempt {attempt}: {d}ms");
            }
        }
    }

    #[test]
    fn env_overrides_and_rejects_zero() {
        let env = Env::from_map([("BERTH_EMAIL_MAX_ATTEMPTS".to_string(), "2".to_string())].into());
        assert_eq!(
            Policies::from_env(&env)
                .unwrap()
                .get(Queue::Email)
                .max_attempts,
            2
        );
        let env = Env::from_map([("BERTH_PROBE_CONCURRENCY".to_string(), "0".to_string())].into());
        let err = Policies::from_env(&env).unwrap_err().to_string();
        assert!(err.contains("BERTH_PROBE_CONCURRENCY"), "{err}");
    }
}
