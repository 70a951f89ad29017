//! Job handlers run by `berth-worker`, one module per job kind.

pub mod alerts;
pub mod diagnostic;
pub mod email;
pub mod probe;
pub mod servers;
