//! Compress and decompress on a server. The archive is built and checked
//! here, not by the server's tools (compress in [`compress`], decompress in
//! [`decompress`]).

use crate::error::{ApiError, FieldError};

pub mod compress;
pub mod decompress;

/// Entries one archive holds at most, either way.
pub(super) const MAX_ENTRIES: usize = 50_000;

pub(super) fn field(name: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::validation(vec![FieldError::new(name, message)])
}

pub(super) fn internal(e: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Internal(e.into())
}
