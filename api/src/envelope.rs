//! Success envelope, JSON/query extractors that answer in the error envelope, and
//! pagination (SPEC §2).

use axum::body::Bytes;
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

/// A JSON object body whose rejections (bad JSON, wrong content type, too
/// large, not an object, NUL in a string) are answered in the error envelope
/// with a field where one is known.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json_content_type(req.headers()) {
            return Err(ApiError::bad_request(
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("the request body is too large".into())
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })?;
        json_object(&body).map(Json)
    }
}

fn is_json_content_type(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Parses a body that must be one JSON object. serde would map an array onto
/// a struct by position, and Postgres refuses NUL in text, so both are
/// refused here with a clear message instead of surprising later.
pub fn json_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::validation(vec![FieldError::new(
            "body",
            "must be a JSON object",
        )]));
    }
    if has_escaped_nul(body) {
        return Err(ApiError::validation(vec![FieldError::new(
            "body",
            "strings must not contain NUL characters (\\u0000)",
        )]));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let inner = e.inner();
        if inner.is_syntax() || inner.is_eof() {
            return not_json(inner);
        }
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::validation(vec![FieldError::new(
            field,
            serde_message(&inner.to_string()),
        )])
    })?;
    deserializer.end().map_err(|e| not_json(&e))?;
    Ok(value)
}

fn not_json(e: &serde_json::Error) -> ApiError {
    ApiError::bad_request(format!(
        "the body is not valid JSON (line {}, column {})",
        e.line(),
        e.column()
    ))
}

/// JSON can carry NUL only as the escape `\u0000`; an escaped backslash
/// followed by `u0000` is plain text and is let through.
fn has_escaped_nul(body: &[u8]) -> bool {
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' {
            if body.get(i + 1) == Some(&b'u') && body.get(i + 2..i + 6) == Some(b"0000") {
                return true;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// serde's message without its position suffix, and without Rust type names.
fn serde_message(raw: &str) -> String {
    let message = raw.split(" at line ").next().unwrap_or(raw);
    message
        .replace("struct ", "object ")
        .replace("a string", "text")
        .replace("i64", "a whole number")
        .replace("u64", "a non-negative whole number")
        .replace("i32", "a whole number")
        .replace("u32", "a non-negative whole number")
        .replace("u16", "a whole number from 0 to 65535")
        .replace("f64", "a number")
        .replace("f32", "a number")
}

/// Query-string parameters answered in the error envelope when malformed,
/// naming the parameter and the format it takes.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(Query)
            .map_err(|e| {
                let field = e.path().to_string();
                let field = if field == "." {
                    "query".to_owned()
                } else {
                    field
                };
                ApiError::validation(vec![FieldError::new(
                    field,
                    query_message(&e.inner().to_string()),
                )])
            })
    }
}

/// The expected format, in words, for what a query value failed to parse as.
fn query_message(raw: &str) -> String {
    let lower = raw.to_ascii_lowercase();
    if lower.contains("invalid digit") || lower.contains("number too") {
        "must be a whole number".into()
    } else if lower.contains("float") {
        "must be a number".into()
    } else if lower.contains("`true` or `false`") {
        "must be true or false".into()
    } else if lower.contains("uuid") {
        "must be a UUID".into()
    } else if lower.contains("input contains invalid characters")
        || lower.contains("premature end of input")
        || lower.contains("input is out of range")
        || lower.contains("trailing input")
        || lower.contains("input is not enough")
    {
        "must be an RFC 3339 date-time such as 2026-01-31T12:00:00Z".into()
    } else if lower.starts_with("unknown variant") || lower.starts_with("unknown field") {
        serde_message(raw).replace('`', "'")
    } else if lower.starts_with("missing field") {
        "is required".into()
    } else {
        "is malformed".into()
    }
}

/// Path parameters answered in the error envelope when malformed (an id that
/// is not a UUID, say), naming the parameter.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                // The kind's text names the expected type or the parser's
                // complaint; it is matched, never returned.
                let expected = e.kind().to_string();
                let key = match e.kind() {
                    ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                    _ => None,
                };
                let key = match key {
                    Some(key) => key,
                    None => axum::extract::RawPathParams::from_request_parts(parts, state)
                        .await
                        .ok()
                        .and_then(|raw| raw.iter().next().map(|(k, _)| k.to_owned()))
                        .unwrap_or_else(|| "path".to_owned()),
                };
                let message = if expected.to_ascii_lowercase().contains("uuid") {
                    "must be a UUID"
                } else if ["i16", "i32", "i64", "u16", "u32", "u64"]
                    .iter()
                    .any(|t| expected.contains(&format!("`{t}`")))
                {
                    "must be a whole number"
                } else {
                    "is malformed"
                };
                Err(ApiError::validation(vec![FieldError::new(key, message)]))
            }
            Err(_) => Err(ApiError::bad_request("the path is malformed")),
        }
    }
}

/// `?page=1&limit=20`, limit at most 100.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page number, from 1.
    #[param(minimum = 1)]
    pub page: Option<i64>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
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

/// `{deleted: true}`: the answer of a DELETE that has nothing else to say.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Deleted {
    deleted: bool,
}

impl Deleted {
    pub const DONE: Deleted = Deleted { deleted: true };
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

/// The values of a filter's `$1`, `$2`, …, bound once for both the page
/// and its count ([`filtered_page`]).
#[derive(Default)]
pub struct Binds {
    args: sqlx::postgres::PgArguments,
    error: Option<sqlx::error::BoxDynError>,
}

impl Binds {
    pub fn bind<'q, T>(mut self, value: T) -> Self
    where
        T: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + 'q,
    {
        use sqlx::Arguments;
        if self.error.is_none()
            && let Err(e) = self.args.add(value)
        {
            self.error = Some(e);
        }
        self
    }
}

/// One page of `SELECT {columns} {from} {filter}` in `order`, and how many
/// rows the filter matches in all: the filter is written, and its values
/// bound, once for both.
pub async fn filtered_page<T>(
    conn: &mut sqlx::PgConnection,
    columns: &str,
    from: &str,
    filter: &str,
    order: &str,
    binds: Binds,
    request: PageRequest,
) -> Result<Page<T>, ApiError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    use sqlx::Arguments;
    if let Some(e) = binds.error {
        return Err(sqlx::Error::Encode(e).into());
    }
    let n = binds.args.len();
    let paged = Binds {
        args: binds.args.clone(),
        error: None,
    }
    .bind(request.offset())
    .bind(request.limit);
    if let Some(e) = paged.error {
        return Err(sqlx::Error::Encode(e).into());
    }
    let items: Vec<T> = sqlx::query_as_with(
        &format!(
            "SELECT {columns} {from} {filter} ORDER BY {order} OFFSET ${} LIMIT ${}",
            n + 1,
            n + 2
        ),
        paged.args,
    )
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 =
        sqlx::query_scalar_with(&format!("SELECT count(*) {from} {filter}"), binds.args)
            .fetch_one(&mut *conn)
            .await?;
    Ok(Page::new(items, request, total))
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
