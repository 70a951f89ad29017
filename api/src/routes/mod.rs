pub mod auth;
pub mod contact;
pub mod platform;
