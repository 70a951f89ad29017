//! Reading `multipart/form-data` parts with a bound on each, shared by
//! every route that takes a form upload.

use axum::extract::multipart::{Field, Multipart};
use axum::http::StatusCode;

use crate::error::ApiError;

/// Why a part could not be read.
#[derive(Debug)]
pub enum PartError {
    /// The part (or the body, past the route's limit) is larger than allowed.
    TooLarge,
    /// Broken framing or a connection cut mid-body.
    Malformed,
    /// The sink refused a chunk (a full disk, say).
    Sink(ApiError),
}

/// The next part of the form, or `None` after the last.
pub async fn next_part<'a>(multipart: &'a mut Multipart) -> Result<Option<Field<'a>>, PartError> {
    multipart
        .next_field()
        .await
        .map_err(|_| PartError::Malformed)
}

/// Streams one part's bytes into `sink`, stopping as soon as more than
/// `max_bytes` arrived so a hostile client cannot grow the process; returns
/// the part's size.
pub async fn read_part(
    field: &mut Field<'_>,
    max_bytes: usize,
    mut sink: impl FnMut(&[u8]) -> Result<(), ApiError>,
) -> Result<usize, PartError> {
    let mut size = 0usize;
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(size),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(PartError::TooLarge);
            }
            Err(_) => return Err(PartError::Malformed),
        };
        size += chunk.len();
        if size > max_bytes {
            return Err(PartError::TooLarge);
        }
        sink(&chunk).map_err(PartError::Sink)?;
    }
}

/// One part read into memory (for parts whose bound is small).
pub async fn read_part_to_vec(
    field: &mut Field<'_>,
    max_bytes: usize,
) -> Result<Vec<u8>, PartError> {
    let mut data = Vec::new();
    read_part(field, max_bytes, |chunk| {
        data.extend_from_slice(chunk);
        Ok(())
    })
    .await?;
    Ok(data)
}
