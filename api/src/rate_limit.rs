//! Fixed-window rate limits counted in Redis, shared by every api replica
//! (SPEC §2): `X-RateLimit-Limit`, `-Remaining` and `-Reset` (seconds until the
//! window ends) on every response of a limited route, and 429 with `Retry-After`
//! past the limit.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use berth_config::RateLimit;
use redis::Script;
use redis::aio::ConnectionManager;

use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub limit: u32,
    pub remaining: u32,
    pub reset_secs: u64,
    pub allowed: bool,
}

impl RateDecision {
    pub fn refusal(&self, message: &str) -> ApiError {
        ApiError::RateLimited {
            message: message.to_owned(),
            limit: self.limit,
            retry_after_secs: self.reset_secs,
        }
    }

    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset_secs));
        if !self.allowed {
            headers.insert("retry-after", HeaderValue::from(self.reset_secs));
        }
    }
}

/// The rate limiter: counters in Redis, shared by every api process. A value
/// in the api's state, so a route asks it instead of reaching for Redis.
#[derive(Clone)]
pub struct RateLimiter {
    redis: ConnectionManager,
}

impl RateLimiter {
    pub fn new(redis: ConnectionManager) -> Self {
        Self { redis }
    }

    /// Counts one hit of `subject` against `scope`'s limit. The window starts with
    /// the first hit; INCR and its expiry are one script so no counter lives forever.
    pub async fn hit(
        &self,
        scope: &str,
        subject: &str,
        limit: RateLimit,
    ) -> Result<RateDecision, redis::RedisError> {
        let script = Script::new(
            r#"
            local n = redis.call('INCR', KEYS[1])
            if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
            return {n, redis.call('PTTL', KEYS[1])}
            "#,
        );
        let (count, ttl_ms): (u64, i64) = script
            .key(key(scope, subject))
            .arg(limit.window.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let max = u64::from(limit.max);
        Ok(RateDecision {
            limit: limit.max,
            remaining: max.saturating_sub(count) as u32,
            reset_secs: (ttl_ms.max(0) as u64).div_ceil(1000).max(1),
            allowed: count <= max,
        })
    }

    /// Counts a hit and refuses past the limit with `message`; answers the
    /// decision, for the `X-RateLimit-*` headers ([`Limited`]). While Redis is
    /// unreachable the hit is let through and logged (see [`per_ip`]).
    pub async fn enforce(
        &self,
        scope: &str,
        subject: &str,
        limit: RateLimit,
        message: &str,
    ) -> Result<Option<RateDecision>, ApiError> {
        match self.hit(scope, subject, limit).await {
            Ok(decision) if !decision.allowed => Err(decision.refusal(message)),
            Ok(decision) => Ok(Some(decision)),
            Err(e) => {
                tracing::warn!(error = %e, scope, "rate limit not checked: Redis unavailable");
                Ok(None)
            }
        }
    }

    /// Refuses when `subject` is already at its limit, without counting a hit: for
    /// limits on failures, which are counted with [`Self::hit`] only when one happens.
    pub async fn ensure_below(
        &self,
        scope: &str,
        subject: &str,
        limit: RateLimit,
        message: &str,
    ) -> Result<(), ApiError> {
        let mut conn = self.redis.clone();
        let read: Result<(Option<u64>, i64), redis::RedisError> = redis::pipe()
            .get(key(scope, subject))
            .pttl(key(scope, subject))
            .query_async(&mut conn)
            .await;
        match read {
            Ok((Some(count), ttl_ms)) if count >= u64::from(limit.max) => {
                Err(ApiError::RateLimited {
                    message: message.to_owned(),
                    limit: limit.max,
                    retry_after_secs: (ttl_ms.max(0) as u64).div_ceil(1000).max(1),
                })
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, scope, "rate limit not checked: Redis unavailable");
                Ok(())
            }
        }
    }

    /// Whether `subject` has reached `limit` (false while Redis is unreachable).
    pub async fn at_limit(&self, scope: &str, subject: &str, limit: RateLimit) -> bool {
        let count: Result<Option<u64>, redis::RedisError> = redis::cmd("GET")
            .arg(key(scope, subject))
            .query_async(&mut self.redis.clone())
            .await;
        count
            .ok()
            .flatten()
            .is_some_and(|n| n >= u64::from(limit.max))
    }

    /// Forgets `subject`'s count (a successful sign-in clears its failures).
    pub async fn reset(&self, scope: &str, subject: &str) {
        let mut conn = self.redis.clone();
        let cleared: Result<(), redis::RedisError> = redis::cmd("DEL")
            .arg(key(scope, subject))
            .query_async(&mut conn)
            .await;
        if let Err(e) = cleared {
            tracing::warn!(error = %e, scope, "rate limit not reset: Redis unavailable");
        }
    }
}

/// The Redis key of a limit's counter.
fn key(scope: &str, subject: &str) -> String {
    format!("berth:ratelimit:{scope}:{subject}")
}

/// A response of a route limited inside its handler (per account), with the
/// limit's headers.
pub struct Limited<T>(pub Option<RateDecision>, pub T);

impl<T: IntoResponse> IntoResponse for Limited<T> {
    fn into_response(self) -> Response {
        let mut response = self.1.into_response();
        if let Some(decision) = self.0 {
            decision.write_headers(response.headers_mut());
        }
        response
    }
}

/// The subject a client address is counted as: an IPv6 client usually holds a
/// whole /64, so it is counted per /64, not per address it can rotate through.
pub fn address_subject(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(prefix))
            }
        },
        v4 => v4.to_string(),
    }
}

/// Per-client-address limit for one route group: `from_fn_with_state((state, scope, limit), per_ip)`.
/// While Redis is unreachable requests are let through (and logged): a public
/// form staying up matters more than its limit for that time.
pub async fn per_ip(
    State((state, scope, limit)): State<(AppState, &'static str, RateLimit)>,
    req: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    let ClientIp(ip) = match ClientIp::from_request_parts(&mut parts, &state).await {
        Ok(ip) => ip,
        Err(e) => return e.into_response(),
    };
    let decision = match state
        .rate_limiter
        .hit(scope, &address_subject(ip), limit)
        .await
    {
        Ok(decision) => decision,
        Err(e) => {
            tracing::warn!(error = %e, scope, "rate limit not checked: Redis unavailable");
            return next.run(Request::from_parts(parts, body)).await;
        }
    };
    let mut response = if decision.allowed {
        next.run(Request::from_parts(parts, body)).await
    } else {
        decision.refusal("too many requests").into_response()
    };
    // A refusal by a narrower limit inside the route (per account, per
    // address) keeps its own headers: they say when to retry.
    if !response.headers().contains_key("retry-after") {
        decision.write_headers(response.headers_mut());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_per_64() {
        let a = address_subject("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_subject("2001:db8:1:2:bbbb:cccc:dddd:eeee".parse().unwrap());
        let other = address_subject("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_eq!(a, "2001:db8:1:2::/64");
        assert_ne!(a, other);
        assert_eq!(
            address_subject("::ffff:192.0.2.7".parse().unwrap()),
            "192.0.2.7"
        );
        assert_eq!(address_subject("192.0.2.7".parse().unwrap()), "192.0.2.7");
    }
}
