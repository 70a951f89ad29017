//! Domains and certificates (SPEC §3.5). [`name`] checks what a user
//! types as a domain; [`dns`] resolves it through the configured resolver
//! and compares with the server's addresses, so a name that points
//! elsewhere is refused before any CA attempt is spent; [`acme`] runs an
//! HTTP-01 order against the configured directory with Berth's own
//! account; [`cert`] reads an issued chain's validity back.

pub mod acme;
pub mod cert;
pub mod dns;
pub mod name;
