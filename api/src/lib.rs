//! `berth-api`: validates, authorizes, writes Postgres, enqueues, answers at once.

pub mod audit;
pub mod bootstrap;
pub mod client_ip;
pub mod envelope;
pub mod error;
pub mod metrics;
pub mod middleware;
pub mod rate_limit;
pub mod routes;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::{Extension, Router};
use berth_jobs::relay::Relay;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use state::AppState;

use crate::error::ApiError;

pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

#[derive(OpenApi)]
#[openapi(
    info(title = "Berth API", description = "Self-hosted deployment control plane. \
        Every answer is `{success, data}` or `{success: false, error: {code, message, details}}`."),
    tags((name = "platform", description = "Health, status, metrics and public endpoints"))
)]
struct ApiDoc;

/// The router and the OpenAPI document, built from the same route declarations so
/// the document covers every route.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_json_body_bytes;
    let v1 = OpenApiRouter::new()
        .routes(routes!(routes::platform::live))
        .routes(routes!(routes::platform::ready))
        .routes(routes!(routes::platform::health))
        .routes(routes!(routes::platform::status))
        .routes(routes!(routes::platform::public_stats))
        .routes(routes!(routes::platform::openapi))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(routes::contact::create))
                .route_layer(axum::middleware::from_fn_with_state(
                    (state.clone(), "contact", state.config.contact_rate_limit),
                    rate_limit::per_ip,
                )),
        );
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1)
        .routes(routes!(routes::platform::metrics))
        .split_for_parts();
    router
        .fallback(|| async { ApiError::NotFound("no route matches this path".into()) })
        .route_layer(axum::middleware::from_fn(middleware::record_route))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(Extension(Arc::new(doc)))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_context,
        ))
        .with_state(state)
}

/// Serves until `shutdown` is cancelled, then drains in-flight requests. Also runs
/// a relay sweep, so a job whose immediate push failed reaches Redis without a
/// worker's help.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let relay =
        tokio::spawn(Relay::new(state.pool.clone(), state.redis.clone()).run(shutdown.clone()));
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await?;
    shutdown.cancel();
    let _ = relay.await;
    Ok(())
}
