pub mod contact;
pub mod platform;
