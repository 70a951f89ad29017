//! Berth's end-to-end suite: one binary, real services (see `berth_e2e`).

mod account_security;
mod accounts;
mod api_conventions;
mod contract;
mod deployment_failures;
mod deployments;
mod http_hardening;
mod job_cancel;
mod job_keys;
mod job_logs;
mod job_slots;
mod jobs_pipeline;
mod lockout;
mod monitoring;
mod nginx_switch;
mod oauth;
mod operator;
mod platform;
mod preferences_uploads;
mod release_checks;
mod remote;
mod scheduler;
mod server_settings;
mod servers;
mod source_facts;
mod ssh;
