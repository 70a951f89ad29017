//! Job handlers run by `berth-worker`: one file per job kind (`email.send`
//! in `email`, `diagnostic.sleep` in `diagnostic`, `server.validate`,
//! `server.probe`), registered in [`registry`].

pub mod alerts;
pub mod backups;
pub mod deploy;
pub mod diagnostic;
pub mod diagnostic_remote_sleep;
pub mod domains;
pub mod email;
pub mod maintenance;
pub mod probe;
pub mod registry;
pub mod server_probe;
pub mod server_validate;
pub mod servers;
