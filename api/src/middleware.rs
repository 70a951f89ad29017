//! The request wrapper every route shares: request id, one log line per request,
//! HTTP metrics by route template, and the error envelope for errors made outside
//! handlers (axum's method-not-allowed, body limits).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::error_response;
use crate::state::AppState;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// On every answer unless a route set its own (the API docs page sets a CSP
/// that lets its script run).
const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("cross-origin-opener-policy", "same-origin"),
];

/// Filled by [`record_route`] once routing has matched, read by [`request_context`].
#[derive(Clone, Default)]
struct RouteSlot(Arc<Mutex<Option<String>>>);

/// A caller's own request id is kept when it is short and plain, so ids can be
/// followed across systems; anything else is replaced (it ends up in our logs).
fn accepted_request_id(value: &HeaderValue) -> Option<String> {
    let id = value.to_str().ok()?;
    let plain = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    plain.then(|| id.to_owned())
}

pub async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(accepted_request_id)
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let header_value = HeaderValue::from_str(&request_id).expect("request ids are visible ASCII");
    req.headers_mut()
        .insert(REQUEST_ID_HEADER, header_value.clone());
    let slot = RouteSlot::default();
    req.extensions_mut().insert(slot.clone());
    let method = req.method().clone();

    let span = tracing::info_span!("request", request_id = %request_id, method = %method, route = tracing::field::Empty);
    let mut response = next.run(req).instrument(span.clone()).await;

    let route = slot
        .0
        .lock()
        .ok()
        .and_then(|r| r.clone())
        .unwrap_or_else(|| "unmatched".to_owned());
    span.record("route", route.as_str());

    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let status = response.status();
    if status.as_u16() >= 400 && !is_json {
        let message = status.canonical_reason().unwrap_or("error").to_lowercase();
        response = error_response(status, message, Vec::new());
    }
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID_HEADER, header_value);
    for (name, value) in SECURITY_HEADERS {
        if !headers.contains_key(*name) {
            headers.insert(*name, HeaderValue::from_static(value));
        }
    }
    if state.config.public_url.starts_with("https://") {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }

    let elapsed = started.elapsed();
    state.metrics.observe_request(
        &route,
        method.as_str(),
        status.as_u16(),
        elapsed.as_secs_f64(),
    );
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    response
}

/// Runs after routing, where the matched route template is known.
pub async fn record_route(req: Request<Body>, next: Next) -> Response {
    if let (Some(path), Some(slot)) = (
        req.extensions().get::<MatchedPath>(),
        req.extensions().get::<RouteSlot>(),
    ) && let Ok(mut route) = slot.0.lock()
    {
        *route = Some(path.as_str().to_owned());
    }
    next.run(req).await
}

/// Browsers say where a request comes from (`Sec-Fetch-Site`). An unsafe
/// request from another site is refused before any handler runs, unless it
/// carries its own `Authorization` (programs, which cookies do not speak for).
pub async fn refuse_cross_site(req: Request<Body>, next: Next) -> Response {
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if cross_site
        && crate::auth::is_unsafe(req.method())
        && !req.headers().contains_key(header::AUTHORIZATION)
    {
        return error_response(
            axum::http::StatusCode::FORBIDDEN,
            "cross-site requests are refused".into(),
            Vec::new(),
        );
    }
    next.run(req).await
}

/// Postgres text cannot hold NUL, and no path or query of ours needs one: a
/// `%00` anywhere in the target is refused before it can reach a query.
pub async fn refuse_nul(req: Request<Body>, next: Next) -> Response {
    let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
    if target
        .as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"%00"))
    {
        return error_response(
            axum::http::StatusCode::BAD_REQUEST,
            "the path and query must not contain NUL characters".into(),
            Vec::new(),
        );
    }
    next.run(req).await
}

/// Routes that take multipart bodies (uploads); every other body is JSON.
const MULTIPART_ROUTES: &[&str] = &["/api/v1/uploads"];

/// A body in another format than the route's is refused before the handler
/// runs: a cross-site `<form>` (text/plain, urlencoded, multipart) must not
/// reach a route that acts before it reads its body, such as `/auth/refresh`.
pub async fn require_json_body(req: Request<Body>, next: Next) -> Response {
    if crate::auth::is_unsafe(req.method())
        && let Some(content_type) = req.headers().get(header::CONTENT_TYPE)
    {
        let media = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let multipart_route = req
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|p| MULTIPART_ROUTES.contains(&p.as_str()));
        let accepted = if multipart_route {
            media == "multipart/form-data"
        } else {
            media == "application/json"
        };
        if !accepted {
            let expected = if multipart_route {
                "multipart/form-data"
            } else {
                "application/json"
            };
            return error_response(
                axum::http::StatusCode::BAD_REQUEST,
                format!("expected a body with Content-Type: {expected}"),
                vec![crate::error::FieldError::new(
                    "Content-Type",
                    format!("must be {expected}"),
                )],
            );
        }
    }
    next.run(req).await
}

/// A handler that panics answers 500 in the envelope (with the request id,
/// added by [`request_context`]) instead of dropping the connection.
pub fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    error_response(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "an internal error occurred".into(),
        Vec::new(),
    )
}
