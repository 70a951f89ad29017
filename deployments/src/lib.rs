//! What a deployment is (SPEC §3.4): one named app on one server, built from
//! a source and run behind nginx. [`spec`] checks a create request field by
//! field into the [`spec::DeploymentSpec`] that is stored and that the
//! deploy job runs; every value that reaches a server passed the same
//! checks as `berth-ssh`'s arguments. [`settings`] is what is stored of it,
//! [`names`] what Berth calls the things it creates.

pub mod env;
pub mod names;
pub mod settings;
pub mod spec;
pub mod state;
