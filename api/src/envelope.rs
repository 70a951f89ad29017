//! Success envelope, JSON/query extractors that answer in the error envelope, and
//! pagination (SPEC §2).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, FieldError};

/// `{"success": true, "data": …}` with a status (200 unless told).
pub struct Envelope<T> {
    status: StatusCode,
    data: T,
}

#[derive(Serialize)]
struct SuccessBody<T> {
    success: bool,
    data: T,
}

impl<T> Envelope<T> {
    pub fn ok(data: T) -> Self {
        Self {
            status: StatusCode::OK,
            data,
        }
    }

    pub fn created(data: T) -> Self {
        Self {
            status: StatusCode::CREATED,
            data,
        }
    }

    pub fn accepted(data: T) -> Self {
        Self {
            status: StatusCode::ACCEPTED,
            data,
        }
    }
}

impl<T: Serialize> IntoResponse for Envelope<T> {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(SuccessBody {
                success: true,
                data: self.data,
            }),
        )
            .into_response()
    }
}

/// A JSON body whose rejections (bad JSON, wrong content type, too large) are
/// answered in the error envelope with a field where one is known.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("the request body is too large".into())
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::bad_request("expected a JSON body with Content-Type: application/json")
        }
        _ => match rejection {
            JsonRejection::JsonDataError(e) => {
                // serde's message names the field path, e.g. "email: invalid type…".
                let text = e.body_text();
                let detail = text.split_once(": ").map(|(_, rest)| rest).unwrap_or(&text);
                let (field, message) = detail.split_once(": ").unwrap_or(("body", detail));
                ApiError::validation(vec![FieldError::new(field, message.to_owned())])
            }
            other => {
                ApiError::bad_request(format!("the body is not valid JSON: {}", other.body_text()))
            }
        },
    }
}

/// Query-string parameters answered in the error envelope when malformed.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e: QueryRejection| ApiError::bad_request(e.body_text()))
    }
}

/// Path parameters answered in the error envelope when malformed (an id that
/// is not a UUID, say).
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// `?page=1&limit=20`, limit at most 100.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page number, from 1.
    pub page: Option<i64>,
    /// Items per page, 1 to 100 (default 20).
    pub limit: Option<i64>,
}

pub const MAX_PAGE_LIMIT: i64 = 100;

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: i64,
    pub limit: i64,
}

impl PageQuery {
    pub fn validate(self) -> Result<PageRequest, ApiError> {
        let page = self.page.unwrap_or(1);
        let limit = self.limit.unwrap_or(20);
        let mut details = Vec::new();
        if page < 1 {
            details.push(FieldError::new("page", "must be at least 1"));
        }
        if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
            details.push(FieldError::new(
                "limit",
                format!("must be between 1 and {MAX_PAGE_LIMIT}"),
            ));
        }
        if !details.is_empty() {
            return Err(ApiError::validation(details));
        }
        Ok(PageRequest { page, limit })
    }
}

impl PageRequest {
    pub fn offset(self) -> i64 {
        (self.page - 1).saturating_mul(self.limit)
    }
}

/// `{items, page, limit, total}`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub page: i64,
    pub limit: i64,
    pub total: i64,
}

impl<T> Page<T> {
    pub fn new(items: Vec<T>, request: PageRequest, total: i64) -> Self {
        Self {
            items,
            page: request.page,
            limit: request.limit,
            total,
        }
    }
}

/// One page of a user's rows: `select` takes `$1` (the user), `$2` (offset)
/// and `$3` (limit); `count` takes `$1`.
pub async fn user_page<T>(
    pool: &sqlx::PgPool,
    select: &str,
    count: &str,
    user_id: uuid::Uuid,
    request: PageRequest,
) -> Result<Page<T>, ApiError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let items: Vec<T> = sqlx::query_as(select)
        .bind(user_id)
        .bind(request.offset())
        .bind(request.limit)
        .fetch_all(pool)
        .await?;
    let total: i64 = sqlx::query_scalar(count)
        .bind(user_id)
        .fetch_one(pool)
        .await?;
    Ok(Page::new(items, request, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_defaults_and_bounds() {
        let p = PageQuery {
            page: None,
            limit: None,
        }
        .validate()
        .unwrap();
        assert_eq!(p, PageRequest { page: 1, limit: 20 });
        assert_eq!(
            PageQuery {
                page: Some(3),
                limit: Some(100)
            }
            .validate()
            .unwrap()
            .offset(),
            200
        );
        for (page, limit) in [(0, 20), (1, 0), (1, 101), (-1, 5)] {
            assert!(
                PageQuery {
                    page: Some(page),
                    limit: Some(limit)
                }
                .validate()
                .is_err()
            );
        }
    }
}
