//! The one error type of the HTTP API, mapped to SPEC §2's status codes and
//! envelope. Internal causes are logged once, inside the request's span (which
//! carries the request id), and never returned.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Validation {
        message: String,
        details: Vec<FieldError>,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Past a limit: answered with `Retry-After` and the `X-RateLimit-*` headers.
    #[error("{message}")]
    RateLimited {
        message: String,
        limit: u32,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn validation(details: Vec<FieldError>) -> Self {
        let message = match details.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => "the request has invalid fields".to_owned(),
        };
        Self::Validation { message, details }
    }

    /// No valid credential: missing, malformed, expired or revoked.
    pub fn unauthenticated() -> Self {
        Self::Unauthorized("authentication required: sign in, or send a valid bearer token".into())
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::Validation {
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The stable code for a status, so errors made outside handlers (axum's own
/// rejections, layers) get the same envelope.
pub fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST
        | StatusCode::UNPROCESSABLE_ENTITY
        | StatusCode::UNSUPPORTED_MEDIA_TYPE => "VALIDATION_ERROR",
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        StatusCode::FORBIDDEN => "FORBIDDEN",
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => "NOT_FOUND",
        StatusCode::CONFLICT => "CONFLICT",
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        StatusCode::TOO_MANY_REQUESTS => "RATE_LIMIT_EXCEEDED",
        StatusCode::SERVICE_UNAVAILABLE => "SERVICE_UNAVAILABLE",
        s if s.is_client_error() => "VALIDATION_ERROR",
        _ => "INTERNAL_ERROR",
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

/// `{"success": false, "error": {...}}`
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    pub success: bool,
    pub error: ErrorBody,
}

pub fn error_response(status: StatusCode, message: String, details: Vec<FieldError>) -> Response {
    let body = ErrorEnvelope {
        success: false,
        error: ErrorBody {
            code: code_for(status),
            message,
            details,
        },
    };
    (status, axum::Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match self {
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed");
                error_response(status, "an internal error occurred".into(), Vec::new())
            }
            ApiError::Validation { message, details } => error_response(status, message, details),
            ApiError::RateLimited {
                message,
                limit,
                retry_after_secs,
            } => {
                let mut response = error_response(status, message, Vec::new());
                let headers = response.headers_mut();
                headers.insert("x-ratelimit-limit", limit.into());
                headers.insert("x-ratelimit-remaining", 0u32.into());
                headers.insert("x-ratelimit-reset", retry_after_secs.into());
                headers.insert("retry-after", retry_after_secs.into());
                response
            }
            other => error_response(status, other.to_string(), Vec::new()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return ApiError::Conflict("a resource with these values already exists".into());
        }
        if database_unreachable(&e) {
            tracing::warn!(error = %e, "database unavailable");
            return ApiError::ServiceUnavailable(
                "the database is unavailable; try again shortly".into(),
            );
        }
        ApiError::Internal(e.into())
    }
}

/// Postgres is down, restarting or out of connections: the request may
/// succeed when retried, so it is a 503 and not a 500.
fn database_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08 is connection exceptions; 57P01–57P03 are shutdown and
        // start-up; 53300 is too many connections.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        ApiError::Internal(e.into())
    }
}
