use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

const LEADER_KEY: &str = "berth:scheduler:leader";

/// A lease in Redis held by one scheduler at a time, renewed well before expiry.
pub struct LeaderLock {
    redis: ConnectionManager,
    identity: String,
    ttl: Duration,
}

impl LeaderLock {
    pub fn new(redis: ConnectionManager, identity: String, ttl: Duration) -> Self {
        Self {
            redis,
            identity,
            ttl,
        }
    }

    /// Takes the lease if free, or renews it if ours. True while we lead.
    pub async fn acquire_or_renew(&mut self) -> Result<bool, redis::RedisError> {
        // Compare-and-renew must be atomic, or we could extend a lease that
        // expired and was taken by another scheduler in between.
        let script = Script::new(
            r#"
            local holder = redis.call('GET', KEYS[1])
            if holder == ARGV[1] then
                redis.call('PEXPIRE', KEYS[1], ARGV[2])
                return 1
            elseif not holder then
                redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
                return 1
            end
            return 0
            "#,
        );
        let held: i32 = script
            .key(LEADER_KEY)
            .arg(&self.identity)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut self.redis)
            .await?;
        Ok(held == 1)
    }

    /// Gives the lease up at shutdown so another scheduler takes over at once.
    pub async fn release(&mut self) -> Result<(), redis::RedisError> {
        let script = Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        );
        script
            .key(LEADER_KEY)
            .arg(&self.identity)
            .invoke_async::<i32>(&mut self.redis)
            .await?;
        Ok(())
    }
}
