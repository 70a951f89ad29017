//! The OpenAPI document as clients receive it, and the interactive docs page
//! that renders it (Redoc, served from the binary: no CDN, works offline).
//!
//! The route declarations describe each handler's own data; what every route
//! shares is added here in one place: the `{success, data}` envelope around
//! 2xx bodies, the error answers, security requirements, unique operation ids.

use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Routes anyone may call; every other route needs a session or a token.
/// `GET /metrics` has its own bearer token (`METRICS_TOKEN`).
const PUBLIC_ROUTES: &[&str] = &[
    "GET /api/v1/health/live",
    "GET /api/v1/health/ready",
    "GET /api/v1/health",
    "GET /api/v1/status",
    "GET /api/v1/stats/public",
    "GET /api/v1/openapi.json",
    "POST /api/v1/contact",
    "GET /api/v1/auth/providers",
    "GET /api/v1/auth/csrf",
    "POST /api/v1/auth/register",
    "POST /api/v1/auth/verify-email",
    "POST /api/v1/auth/resend-otp",
    "POST /api/v1/auth/login",
    "POST /api/v1/auth/login/2fa",
    "POST /api/v1/auth/email-code/send",
    "POST /api/v1/auth/email-code/verify",
    "POST /api/v1/auth/refresh",
    "POST /api/v1/auth/logout",
    "POST /api/v1/auth/forgot-password",
    "POST /api/v1/auth/reset-password",
    "GET /api/v1/auth/oauth/{provider}",
    "GET /api/v1/auth/oauth/{provider}/callback",
    "GET /api/v1/uploads/{id}",
    "POST /api/v1/webhooks/github",
    "GET /metrics",
];

/// Routes with a Redis rate limit, which can answer 429.
const LIMITED_ROUTES: &[&str] = &[
    "POST /api/v1/contact",
    "GET /api/v1/auth/csrf",
    "POST /api/v1/auth/register",
    "POST /api/v1/auth/verify-email",
    "POST /api/v1/auth/resend-otp",
    "POST /api/v1/auth/login",
    "POST /api/v1/auth/login/2fa",
    "POST /api/v1/auth/email-code/send",
    "POST /api/v1/auth/email-code/verify",
    "POST /api/v1/auth/forgot-password",
    "POST /api/v1/auth/reset-password",
    "POST /api/v1/servers",
    "POST /api/v1/servers/{id}/validate",
];

pub fn is_public(route: &str) -> bool {
    PUBLIC_ROUTES.contains(&route)
}

/// `getServersByIdMetrics` for `GET /api/v1/servers/{id}/metrics`: unique by
/// construction, since method and path are.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for segment in path.trim_start_matches("/api/v1").split('/') {
        let (prefix, word) = match segment.strip_prefix('{') {
            Some(param) => ("By", param.trim_end_matches('}')),
            None => ("", segment),
        };
        id.push_str(prefix);
        for part in word.split(['-', '.', '_']).filter(|p| !p.is_empty()) {
            let mut chars = part.chars();
            if let Some(first) = chars.next() {
                id.extend(first.to_uppercase());
                id.push_str(chars.as_str());
            }
        }
    }
    id
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}
    })
}

/// Wraps a 2xx JSON schema in the success envelope.
fn enveloped(schema: Value) -> Value {
    json!({
        "type": "object",
        "required": ["success", "data"],
        "properties": {"success": {"type": "boolean", "const": true}, "data": schema}
    })
}

/// No string Berth accepts may hold a NUL (`middleware::request_context`, the JSON
/// extractor): every free-form string schema says so. Strings with a pattern or
/// a format already exclude it.
fn refuse_nul_in_strings(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let is_string = match map.get("type") {
                Some(Value::String(t)) => t == "string",
                Some(Value::Array(types)) => types.iter().any(|t| t == "string"),
                _ => false,
            };
            if is_string && !map.contains_key("pattern") && !map.contains_key("format") {
                map.insert("pattern".into(), json!(r"^[^\u0000]*$"));
            }
            for child in map.values_mut() {
                refuse_nul_in_strings(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(refuse_nul_in_strings),
        _ => {}
    }
}

/// The document clients receive: `doc` with what every route shares.
pub fn finish(doc: &utoipa::openapi::OpenApi, public_url: &str) -> Value {
    let mut doc = serde_json::to_value(doc).expect("the OpenAPI document serializes");
    doc["servers"] = json!([{"url": public_url, "description": "this Berth"}]);
    let components = doc["components"]
        .as_object_mut()
        .expect("the document has components");
    components.insert(
        "securitySchemes".into(),
        json!({
            "bearer": {"type": "http", "scheme": "bearer",
                "description": "An access JWT from /auth/login, or an API token (berth_pat_…)"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": "access_token",
                "description": "Browser session; unsafe methods also need X-CSRF-Token"}
        }),
    );
    refuse_nul_in_strings(&mut doc);
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, operation) in item.iter_mut() {
            let route = format!("{} {path}", method.to_ascii_uppercase());
            finish_operation(&route, method, path, operation);
        }
    }
    doc
}

fn finish_operation(route: &str, method: &str, path: &str, operation: &mut Value) {
    operation["operationId"] = json!(operation_id(method, path));
    let has_input = operation.get("requestBody").is_some()
        || operation
            .get("parameters")
            .and_then(Value::as_array)
            .is_some_and(|p| !p.is_empty());
    let has_path_id = path.contains('{');
    let public = is_public(route);
    if public {
        if route != "GET /metrics" {
            operation["security"] = json!([]);
        } else {
            // The token is needed only when METRICS_TOKEN is set.
            operation["security"] = json!([{"bearer": []}, {}]);
        }
    } else {
        operation["security"] = json!([{"bearer": []}, {"cookie": []}]);
    }
    let responses = operation
        .as_object_mut()
        .expect("an operation is an object")
        .entry("responses")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .expect("responses is an object");
    if route != "GET /api/v1/openapi.json" {
        for (status, response) in responses.iter_mut() {
            if !status.starts_with('2') {
                continue;
            }
            if let Some(schema) = response.pointer_mut("/content/application~1json/schema") {
                *schema = enveloped(schema.take());
            }
        }
    }
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description));
    };
    if has_input || method != "get" {
        add("400", "Invalid input: the details name each field");
    }
    if !public || route == "GET /metrics" {
        add("401", "No valid session or token");
    }
    if !public {
        add("403", "The token lacks a scope, or a CSRF token is missing");
    }
    if has_path_id {
        add("404", "No such resource of yours");
    }
    if method != "get" {
        add("413", "The body is larger than BERTH_MAX_JSON_BODY_BYTES");
    }
    if LIMITED_ROUTES.contains(&route) {
        add("429", "Rate limit exceeded; see Retry-After");
    }
    add(
        "500",
        "Internal error; the X-Request-Id header identifies it in the logs",
    );
    add(
        "503",
        "Postgres or Redis is unavailable, or the request timed out",
    );
}

static REDOC: &str = include_str!("../assets/redoc.standalone.js");

/// `GET /api/docs`: the interactive API reference.
pub async fn page() -> Response {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data:; font-src 'self' data:; connect-src 'self'; \
             worker-src blob:; frame-ancestors 'none'",
        )],
        Html(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Berth API</title>
</head>
<body>
<redoc spec-url="/api/v1/openapi.json" hide-download-button="false"></redoc>
<script src="/api/docs/redoc.standalone.js"></script>
</body>
</html>
"#,
        ),
    )
        .into_response()
}

/// `GET /api/docs/redoc.standalone.js` (Redoc 2.5, MIT; see assets/redoc.LICENSE).
pub async fn script() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        REDOC,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_read_as_method_and_path() {
        assert_eq!(
            operation_id("get", "/api/v1/servers/{id}/metrics"),
            "getServersByIdMetrics"
        );
        assert_eq!(
            operation_id("post", "/api/v1/auth/login/2fa"),
            "postAuthLogin2fa"
        );
        assert_eq!(
            operation_id("get", "/api/v1/openapi.json"),
            "getOpenapiJson"
        );
        assert_eq!(operation_id("get", "/metrics"), "getMetrics");
    }
}
