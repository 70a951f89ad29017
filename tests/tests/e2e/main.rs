//! Berth's end-to-end suite: one binary, real services (see `berth_e2e`).

mod api_conventions;
mod jobs_pipeline;
mod platform;
mod scheduler;
