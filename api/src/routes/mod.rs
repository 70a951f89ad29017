pub mod account;
pub mod auth;
pub mod contact;
pub mod jobs;
pub mod notifications;
pub mod oauth;
pub mod platform;
pub mod servers;
