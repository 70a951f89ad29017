//! Periodic work for Berth. Two guarantees, so running two schedulers (for
//! availability) never does work twice:
//! - a leader lock in Redis: only the holder evaluates schedules;
//! - a claim row per schedule tick in Postgres (`schedule_ticks`): even across a
//!   leader handover, where an old leader may not yet know it lost the lock, the
//!   insert that wins the primary key is the only one that fires.

pub mod leader;
pub mod probes;
pub mod schedules;

pub use schedules::{Schedule, SchedulerConfig};
