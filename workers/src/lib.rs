//! Job handlers run by `berth-worker`, one module per job kind.

pub mod diagnostic;
pub mod email;
pub mod servers;
