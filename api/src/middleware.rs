//! The request wrapper every route shares: request id, one log line per request,
//! HTTP metrics by route template, and the error envelope for errors made outside
//! handlers (axum's method-not-allowed, body limits).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::error_response;
use crate::state::AppState;

// Header names as values, not text: a `&str` name is parsed on every use.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// On every answer unless a route set its own (the API docs page sets a CSP
/// that lets its script run).
const SECURITY_HEADERS: [(HeaderName, HeaderValue); 5] = [
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    ),
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    ),
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    ),
];

/// Filled by [`after_routing`] once routing has matched, read by
/// [`request_context`]; set once, so no lock.
#[derive(Clone, Default)]
struct RouteSlot(Arc<OnceLock<MatchedPath>>);

/// A caller's own request id is kept when it is short and plain, so ids can be
/// followed across systems; anything else is replaced (it ends up in our logs).
fn accepted_request_id(value: &HeaderValue) -> bool {
    let id = value.as_bytes();
    !id.is_empty()
        && id.len() <= 64
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

pub async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let header_value = match req.headers().get(REQUEST_ID_HEADER) {
        Some(given) if accepted_request_id(given) => given.clone(),
        _ => {
            let mut id = Uuid::encode_buffer();
            HeaderValue::from_str(Uuid::new_v4().hyphenated().encode_lower(&mut id))
                .expect("a UUID is visible ASCII")
        }
    };
    let request_id = header_value.to_str().expect("checked visible ASCII");
    req.headers_mut()
        .insert(REQUEST_ID_HEADER, header_value.clone());
    let slot = RouteSlot::default();
    req.extensions_mut().insert(slot.clone());
    let method = req.method().clone();

    let span = tracing::info_span!("request", request_id = %request_id, method = %method, route = tracing::field::Empty);
    // Refusals that need no route are made here, still inside the request's
    // context (id, log line, metrics, headers), without another layer.
    let mut refused = cross_site(&req).or_else(|| nul_in_target(&req));
    if refused.is_none() && crate::auth::is_unsafe(&method) {
        refused = under_maintenance(&state).await;
    }
    let mut response = match refused {
        Some(refused) => refused,
        None => next.run(req).instrument(span.clone()).await,
    };

    let route = slot.0.get().map_or("unmatched", MatchedPath::as_str);
    span.record("route", route);

    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let status = response.status();
    if status.as_u16() >= 400 && !is_json {
        // The envelope replaces the body; the other headers (a 405's `Allow`)
        // stay.
        let message = status.canonical_reason().unwrap_or("error").to_lowercase();
        let kept = std::mem::take(response.headers_mut());
        response = error_response(status, message, Vec::new());
        for (name, value) in &kept {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                response.headers_mut().append(name, value.clone());
            }
        }
    }
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID_HEADER, header_value);
    for (name, value) in SECURITY_HEADERS {
        if let header::Entry::Vacant(slot) = headers.entry(name) {
            slot.insert(value);
        }
    }
    if state.config.public_url.starts_with("https://") {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }

    let elapsed = started.elapsed();
    state
        .metrics
        .observe_request(route, method.as_str(), status, elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request finished"
        );
    });
    response
}

/// Runs after routing, where the matched route template is known: records
/// it for [`request_context`], then refuses a body of the wrong type.
pub async fn after_routing(req: Request<Body>, next: Next) -> Response {
    if let (Some(path), Some(slot)) = (
        req.extensions().get::<MatchedPath>(),
        req.extensions().get::<RouteSlot>(),
    ) {
        let _ = slot.0.set(path.clone());
    }
    if let Some(refused) = wrong_body_type(&req) {
        return refused;
    }
    next.run(req).await
}

/// While a restore runs (SPEC §3.9), writes are refused and reads go on. If
/// Redis cannot say, the write goes ahead: Redis down is not maintenance.
async fn under_maintenance(state: &AppState) -> Option<Response> {
    // A stalled Redis must not hold every write: past this, the write goes on.
    let asked = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        berth_jobs::maintenance_mode::current(&state.redis),
    )
    .await
    .unwrap_or_else(|_| {
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no answer within 500 ms",
        )))
    });
    match asked {
        Ok(Some(maintenance)) => {
            let mut response = error_response(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                maintenance.reason,
                Vec::new(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            Some(response)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "maintenance mode unknown: Redis unavailable");
            None
        }
    }
}

/// Browsers say where a request comes from (`Sec-Fetch-Site`). An unsafe
/// request from another site is refused before any handler runs, unless it
/// carries its own `Authorization` (programs, which cookies do not speak for).
fn cross_site(req: &Request<Body>) -> Option<Response> {
    let cross_site = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    if cross_site
        && crate::auth::is_unsafe(req.method())
        && !req.headers().contains_key(header::AUTHORIZATION)
    {
        return Some(error_response(
            axum::http::StatusCode::FORBIDDEN,
            "cross-site requests are refused".into(),
            Vec::new(),
        ));
    }
    None
}

/// Postgres text cannot hold NUL, and no path or query of ours needs one: a
/// `%00` anywhere in the target is refused before it can reach a query.
fn nul_in_target(req: &Request<Body>) -> Option<Response> {
    let target = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
    if target
        .as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"%00"))
    {
        return Some(error_response(
            axum::http::StatusCode::BAD_REQUEST,
            "the path and query must not contain NUL characters".into(),
            Vec::new(),
        ));
    }
    None
}

/// Routes that move whole files to or from a server, and so take
/// `BERTH_FILES_TRANSFER_TIMEOUT_SECS` rather than the request timeout.
fn moves_files(path: &str) -> bool {
    const LONG: [&str; 6] = [
        "/upload",
        "/copy",
        "/compress",
        "/decompress",
        "/search",
        "/delete",
    ];
    path == "/api/v1/deployments/upload"
        || (path.starts_with("/api/v1/files/") && LONG.iter().any(|route| path.ends_with(route)))
}

/// A request not answered within its deadline is 503. A response's body
/// (a download's stream) is not under it.
pub async fn deadline(State(state): State<AppState>, req: Request<Body>, next: Next) -> Response {
    let (limit, name) = if moves_files(req.uri().path()) {
        (
            state.config.files.transfer_timeout,
            "BERTH_FILES_TRANSFER_TIMEOUT_SECS",
        )
    } else {
        (
            state.config.http.request_timeout,
            "BERTH_HTTP_REQUEST_TIMEOUT_SECS",
        )
    };
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => error_response(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the request took longer than {} s ({name})",
                limit.as_secs()
            ),
            Vec::new(),
        ),
    }
}

/// Routes that take multipart bodies (uploads); every other body is JSON.
const MULTIPART_ROUTES: &[&str] = &[
    "/api/v1/uploads",
    "/api/v1/deployments/upload",
    "/api/v1/files/{id}/upload",
];

/// A body in another format than the route's is refused before the handler
/// runs: a cross-site `<form>` (text/plain, urlencoded, multipart) must not
/// reach a route that acts before it reads its body, such as `/auth/refresh`.
fn wrong_body_type(req: &Request<Body>) -> Option<Response> {
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
            return Some(error_response(
                axum::http::StatusCode::BAD_REQUEST,
                format!("expected a body with Content-Type: {expected}"),
                vec![crate::error::FieldError::new(
                    "Content-Type",
                    format!("must be {expected}"),
                )],
            ));
        }
    }
    None
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
