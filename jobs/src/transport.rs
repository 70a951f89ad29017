//! How deliveries travel through Redis, shared by everything that pushes
//! them (the enqueuer's immediate push, the relay's sweep, the reconciler)
//! and the worker runtime that takes them: the queue's apalis settings, the
//! delivery's encoding, and the push script.

use std::collections::HashMap;

use redis::Script;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::Queue;

/// What travels through Redis: which job, and which delivery of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub job_id: String,
    pub delivery_id: String,
}

pub(crate) fn apalis_config(queue: Queue) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(queue.redis_namespace())
        .batch_size(1)
}

pub(crate) fn push_channel(queue: Queue) -> String {
    format!(
        "tasks:{}:available",
        apalis_config(queue).active_jobs_list()
    )
}

/// Stores deliveries the way apalis-redis 1.0's `batch_push.lua` stores a task due
/// now, with one difference: straight onto the active list. apalis' own push puts
/// every task in the scheduled set (it clamps `run_at` to the present), from which
/// `fetch_next.lua` promotes all due tasks with one `unpack`, and that fails past
/// about 8,000 tasks; it also never publishes the "available" event idle workers
/// wait for. `HSETNX` keeps a delivery id stored once, however often it is pushed.
const PUSH_SCRIPT: &str = r#"
local pushed = 0
for i = 1, #ARGV, 2 do
    local task_id = ARGV[i]
    if redis.call('HSETNX', KEYS[1], task_id, ARGV[i + 1]) == 1 then
        redis.call('HSET', KEYS[4] .. ':' .. task_id,
            'attempts', 0, 'max_attempts', 1, 'status', 'Pending', 'idempotency_key', '')
        redis.call('RPUSH', KEYS[2], task_id)
        pushed = pushed + 1
    end
end
if pushed > 0 then
    redis.call('DEL', KEYS[3])
    redis.call('LPUSH', KEYS[3], 1)
    redis.call('PUBLISH', 'tasks:' .. KEYS[2] .. ':available', pushed)
end
return pushed
"#;
/// Pushes deliveries of any queues, one script call per queue.
pub async fn push_jobs(
    redis: &mut ConnectionManager,
    deliveries: &[(Queue, Delivery)],
) -> Result<(), redis::RedisError> {
    let mut by_queue: HashMap<Queue, Vec<(String, Vec<u8>)>> = HashMap::new();
    for (queue, delivery) in deliveries {
        let args = serde_json::to_vec(delivery).expect("a delivery serializes");
        by_queue
            .entry(*queue)
            .or_default()
            .push((delivery.delivery_id.clone(), args));
    }
    for (queue, tasks) in &by_queue {
        push_deliveries(redis, &apalis_config(*queue), tasks).await?;
    }
    Ok(())
}

/// Stores deliveries (task id, encoded [`Delivery`]) on a queue's active list with
/// [`PUSH_SCRIPT`]; returns how many were new.
pub async fn push_deliveries(
    redis: &mut ConnectionManager,
    config: &apalis_redis::Config,
    tasks: &[(String, Vec<u8>)],
) -> Result<i64, redis::RedisError> {
    let script = Script::new(PUSH_SCRIPT);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(config.job_data_hash())
        .key(config.active_jobs_list())
        .key(config.signal_list())
        .key(config.job_meta_hash());
    for (task_id, args) in tasks {
        invocation.arg(task_id).arg(args);
    }
    invocation.invoke_async(redis).await
}
