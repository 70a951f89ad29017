//! The cap on terminals one user has open, across every api process: a
//! Redis sorted set per user of open terminals, each scored by when it
//! lapses. An open terminal renews its seat; one whose process died lapses
//! within [`SEAT_TTL`] instead of holding the seat for ever.

use std::time::Duration;

use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::unix_millis;

/// How often an open terminal renews its seat.
pub const HEARTBEAT: Duration = Duration::from_secs(20);

/// How long a seat lasts unrenewed.
const SEAT_TTL: Duration = Duration::from_secs(60);

fn key(user: Uuid) -> String {
    format!("berth:terminals:{user}")
}

/// Drops lapsed seats, then takes one if fewer than the limit are held.
const TAKE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

pub fn full(limit: u32) -> ApiError {
    ApiError::Conflict(format!(
        "you have {limit} terminals open, as many as allowed: close one first"
    ))
}

/// A seat held by one open terminal.
pub struct Seat {
    user: Uuid,
    id: Uuid,
}

fn lapses_at() -> u64 {
    unix_millis() + SEAT_TTL.as_millis() as u64
}

/// The terminals `user` has open now.
pub async fn open(redis: &ConnectionManager, user: Uuid) -> Result<u32, redis::RedisError> {
    redis::cmd("ZCOUNT")
        .arg(key(user))
        .arg(unix_millis())
        .arg("+inf")
        .query_async(&mut redis.clone())
        .await
}

/// A seat for a new terminal of `user`, unless `limit` are taken.
pub async fn take(
    redis: &ConnectionManager,
    user: Uuid,
    limit: u32,
) -> Result<Option<Seat>, redis::RedisError> {
    let id = Uuid::new_v4();
    let taken: i32 = redis::Script::new(TAKE)
        .key(key(user))
        .arg(unix_millis())
        .arg(limit)
        .arg(lapses_at())
        .arg(id.to_string())
        .arg(SEAT_TTL.as_millis() as u64)
        .invoke_async(&mut redis.clone())
        .await?;
    Ok((taken == 1).then_some(Seat { user, id }))
}

impl Seat {
    pub async fn refresh(&self, redis: &ConnectionManager) {
        let renewed: Result<(), _> = redis::pipe()
            .cmd("ZADD")
            .arg(key(self.user))
            .arg("XX")
            .arg(lapses_at())
            .arg(self.id.to_string())
            .ignore()
            .cmd("PEXPIRE")
            .arg(key(self.user))
            .arg(SEAT_TTL.as_millis() as u64)
            .ignore()
            .query_async(&mut redis.clone())
            .await;
        if let Err(e) = renewed {
            tracing::warn!(error = %e, "a terminal's seat was not renewed");
        }
    }

    pub async fn release(self, redis: &ConnectionManager) {
        let released: Result<(), _> = redis::cmd("ZREM")
            .arg(key(self.user))
            .arg(self.id.to_string())
            .query_async(&mut redis.clone())
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "a terminal's seat was not released; it lapses by itself");
        }
    }
}
