//! `berth-api`: validates, authorizes, writes Postgres, enqueues, answers at once.

pub mod access;
pub mod api_docs;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod client_ip;
pub mod envelope;
pub mod error;
pub mod http_server;
pub mod metrics;
pub mod middleware;
pub mod multipart;
pub mod operator;
pub mod rate_limit;
pub mod realtime;
pub mod reseal;
pub mod routes;
pub mod state;
pub mod validate;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::{Extension, Router};
use berth_jobs::relay::Relay;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use state::AppState;

use crate::error::ApiError;

pub use berth_database::MIGRATOR;

#[derive(OpenApi)]
#[openapi(
    info(title = "Berth API", description = "Self-hosted deployment control plane. \
        Every answer is `{success, data}` or `{success: false, error: {code, message, details}}`."),
    tags(
        (name = "platform", description = "Health, status, metrics and public endpoints"),
        (name = "auth", description = "Registration, sign-in, sessions and tokens (SPEC §3.2)"),
        (name = "account", description = "The signed-in user's profile, sessions, 2FA and API tokens"),
        (name = "jobs", description = "Job status (SPEC §3.1)"),
        (name = "servers", description = "Users' servers over SSH (SPEC §3.3)"),
        (name = "deployments", description = "Apps built and run on users' servers, and their releases (SPEC §3.4)"),
        (name = "domains", description = "Domains attached to deployments, and their certificates (SPEC §3.5)"),
        (name = "projects", description = "Projects, members, roles and invitations (SPEC §3.8)"),
        (name = "github", description = "The linked GitHub account's repositories, to deploy from (SPEC §3.4)"),
        (name = "alerts", description = "Alert rules, notifications and the realtime channel (SPEC §3.6)"),
        (name = "terminal", description = "A shell on your server in the browser (SPEC §3.7)"),
        (name = "files", description = "Your server's files over SFTP (SPEC §3.7)"),
        (name = "admin", description = "Administration: users, stats, audit log, contact messages, verified backups and restores (SPEC §3.9)")
    )
)]
struct ApiDoc;

/// `routes` with a per-client-address limit.
fn limited(
    state: &AppState,
    scope: &'static str,
    limit: berth_config::RateLimit,
    routes: OpenApiRouter<AppState>,
) -> OpenApiRouter<AppState> {
    routes.route_layer(axum::middleware::from_fn_with_state(
        (state.clone(), scope, limit),
        rate_limit::per_ip,
    ))
}

fn server_routes() -> OpenApiRouter<AppState> {
    use routes::servers;
    OpenApiRouter::new()
        .routes(routes!(servers::list, servers::create))
        .routes(routes!(servers::get, servers::update, servers::delete))
        .routes(routes!(servers::validate_again))
        .routes(routes!(servers::repin))
        .routes(routes!(routes::server_metrics::health))
        .routes(routes!(routes::server_metrics::metrics))
}

fn deployment_routes(state: &AppState) -> OpenApiRouter<AppState> {
    use routes::deployments as d;
    OpenApiRouter::new()
        .routes(routes!(d::list, d::create))
        .routes(routes!(d::get, d::delete))
        .routes(routes!(d::list_releases))
        .routes(routes!(d::release_logs))
        .routes(routes!(d::logs_stream))
        .routes(routes!(d::runtime_logs))
        .routes(routes!(d::redeploy))
        .routes(routes!(d::rollback))
        .routes(routes!(d::stop))
        .routes(routes!(d::restart))
        .routes(routes!(d::cancel))
        .routes(routes!(d::get_env, d::put_env))
        .routes(routes!(d::deploy_key))
        .routes(routes!(d::webhook))
        .routes(routes!(d::rotate_webhook))
        .routes(routes!(d::preflight))
        .routes(routes!(d::github))
        .routes(routes!(d::move_project))
        .routes(routes!(routes::domains::list, routes::domains::create))
        .routes(routes!(routes::domains::get, routes::domains::delete))
        .routes(routes!(routes::domains::ssl))
        .routes(routes!(routes::github::list_repos))
        .routes(routes!(routes::github::sync_repos))
        .routes(routes!(routes::github::disconnect))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(d::upload))
                .layer(DefaultBodyLimit::max(
                    state.config.deploy_archive_max_bytes + uploads_overhead(),
                )),
        )
}

fn project_routes() -> OpenApiRouter<AppState> {
    use routes::projects as p;
    OpenApiRouter::new()
        .routes(routes!(p::list, p::create))
        .routes(routes!(p::get, p::update, p::delete))
        .routes(routes!(p::transfer))
        .routes(routes!(p::list_members))
        .routes(routes!(p::change_role, p::remove_member))
        .routes(routes!(p::invite))
        .routes(routes!(p::revoke_invite))
        .routes(routes!(p::invitations))
        .routes(routes!(p::accept))
        .routes(routes!(p::decline))
}

fn admin_routes() -> OpenApiRouter<AppState> {
    use routes::admin as a;
    OpenApiRouter::new()
        .routes(routes!(a::list_users))
        .routes(routes!(a::get_user, a::delete_user))
        .routes(routes!(a::change_role))
        .routes(routes!(a::change_status))
        .routes(routes!(a::stats))
        .routes(routes!(a::list_deployments))
        .routes(routes!(a::delete_deployment))
        .routes(routes!(a::audit_logs))
        .routes(routes!(a::list_contact))
        .routes(routes!(a::update_contact))
        .routes(routes!(a::list_backups, a::create_backup))
        .routes(routes!(a::get_backup, a::delete_backup))
        .routes(routes!(a::download_backup))
        .routes(routes!(a::restore_backup))
        .routes(routes!(a::broadcast))
}

fn uploads_overhead() -> usize {
    routes::uploads::MULTIPART_OVERHEAD_BYTES * 64
}

fn account_routes() -> OpenApiRouter<AppState> {
    use routes::account;
    OpenApiRouter::new()
        .routes(routes!(account::get_profile, account::update_profile))
        .routes(routes!(account::change_password))
        .routes(routes!(routes::sessions::list_sessions))
        .routes(routes!(routes::sessions::revoke_session))
        .routes(routes!(routes::sessions::revoke_other_sessions))
        .routes(routes!(routes::two_factor::totp_setup))
        .routes(routes!(routes::two_factor::totp_enable))
        .routes(routes!(routes::two_factor::totp_disable))
        .routes(routes!(
            routes::tokens::list_tokens,
            routes::tokens::create_token
        ))
        .routes(routes!(routes::tokens::revoke_token))
        .routes(routes!(account::account_delete_code))
        .routes(routes!(account::delete_account))
        .routes(routes!(
            routes::preferences::get_preferences,
            routes::preferences::put_preferences
        ))
}

/// Uploads take multipart bodies up to the image size limit, larger than the
/// JSON limit every other route has.
fn upload_routes(state: &AppState) -> OpenApiRouter<AppState> {
    use routes::uploads;
    OpenApiRouter::new()
        .routes(routes!(uploads::create))
        .routes(routes!(uploads::get, uploads::delete))
        .layer(DefaultBodyLimit::max(
            state.config.uploads.max_bytes + uploads::MULTIPART_OVERHEAD_BYTES,
        ))
}

/// The file manager saves files up to `BERTH_FILES_READ_MAX_BYTES` in a
/// JSON body, larger than the JSON limit every other route has.
fn file_routes(state: &AppState) -> OpenApiRouter<AppState> {
    use routes::files;
    let escaped = usize::try_from(state.config.files.read_max_bytes)
        .unwrap_or(usize::MAX)
        .saturating_mul(6);
    OpenApiRouter::new()
        .routes(routes!(files::info))
        .routes(routes!(files::list))
        .routes(routes!(files::read))
        .routes(routes!(files::properties))
        .routes(routes!(files::write::create))
        .routes(routes!(files::write::save))
        .routes(routes!(files::write::rename))
        .routes(routes!(files::write::delete))
        .routes(routes!(files::write::copy))
        .routes(routes!(files::search::search))
        .routes(routes!(files::transfer::download))
        .routes(routes!(files::archive::compress::compress))
        .routes(routes!(files::archive::decompress::decompress))
        .layer(DefaultBodyLimit::max(
            escaped.max(state.config.max_json_body_bytes) + 64 * 1024,
        ))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(files::transfer::upload))
                .layer(DefaultBodyLimit::max(
                    usize::try_from(state.config.files.upload_max_bytes)
                        .unwrap_or(usize::MAX)
                        .saturating_add(uploads_overhead()),
                )),
        )
}

fn auth_routes(state: &AppState) -> OpenApiRouter<AppState> {
    use routes::auth;
    let limits = state.config.auth.limits;
    OpenApiRouter::new()
        .routes(routes!(auth::providers))
        .routes(routes!(routes::oauth::start))
        .routes(routes!(routes::oauth::callback))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::me))
        .merge(limited(
            state,
            "csrf",
            limits.csrf,
            OpenApiRouter::new().routes(routes!(auth::csrf)),
        ))
        .merge(limited(
            state,
            "register",
            limits.register,
            OpenApiRouter::new().routes(routes!(routes::registration::register)),
        ))
        .merge(limited(
            state,
            "login",
            limits.login,
            OpenApiRouter::new()
                .routes(routes!(auth::login))
                .routes(routes!(auth::login_second_factor))
                .routes(routes!(auth::email_code_verify)),
        ))
        .merge(limited(
            state,
            "auth_codes",
            limits.code_attempts,
            OpenApiRouter::new()
                .routes(routes!(routes::registration::verify_email))
                .routes(routes!(routes::registration::resend_otp))
                .routes(routes!(auth::email_code_send))
                .routes(routes!(routes::password_reset::forgot_password))
                .routes(routes!(routes::password_reset::reset_password)),
        ))
}

/// The router and the OpenAPI document, built from the same route declarations so
/// the document covers every route.
pub fn router(state: AppState) -> Router {
    let v1 = OpenApiRouter::new()
        .routes(routes!(routes::platform::live))
        .routes(routes!(routes::platform::ready))
        .routes(routes!(routes::platform::health))
        .routes(routes!(routes::platform::status))
        .routes(routes!(routes::platform::public_stats))
        .routes(routes!(routes::platform::openapi))
        .merge(limited(
            &state,
            "contact",
            state.config.contact_rate_limit,
            OpenApiRouter::new().routes(routes!(routes::contact::create)),
        ))
        .merge(auth_routes(&state))
        .merge(account_routes())
        .merge(upload_routes(&state))
        .merge(server_routes())
        .merge(deployment_routes(&state))
        .merge(project_routes())
        .merge(admin_routes())
        .routes(routes!(
            routes::notifications::get_rules,
            routes::notifications::put_rules
        ))
        .routes(routes!(routes::notifications::list))
        .routes(routes!(routes::notifications::mark_read))
        .routes(routes!(routes::notifications::read_all))
        .routes(routes!(routes::notifications::delete))
        .routes(routes!(realtime::ws))
        .routes(routes!(routes::terminal::create_token))
        .routes(routes!(routes::terminal::open))
        .merge(file_routes(&state))
        .routes(routes!(routes::jobs::get_job))
        .routes(routes!(routes::jobs::cancel_job))
        .routes(routes!(routes::jobs::job_logs))
        .routes(routes!(routes::jobs::list_jobs));
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", v1)
        .routes(routes!(routes::platform::metrics))
        .split_for_parts();
    let doc = Arc::new(api_docs::finish(&doc, &state.config.public_url));
    let router = router
        .route("/api/docs", axum::routing::get(api_docs::page))
        .route(
            "/api/docs/redoc.standalone.js",
            axum::routing::get(api_docs::script),
        );
    // The document reaches its handler as an extension, added once outside.
    with_http_layers(router, state).layer(Extension(doc))
}

/// What every route is wrapped in: the fallback 404, the content-type check,
/// body limit, request timeout, panic catching, and outermost the request
/// context (id, log line, metrics, headers, cross-site and NUL refusals).
/// Public so tests can wrap a route of their own (one that panics) the same way.
///
/// Only the content-type check is a route layer (it needs the matched route);
/// the rest wrap the router once, as one service, instead of being applied to
/// every route, where each layer costs a boxed clone per request.
pub fn with_http_layers(router: Router<AppState>, state: AppState) -> Router {
    let max_body = state.config.max_json_body_bytes;
    let routes = router
        .fallback(|| async { ApiError::NotFound("no route matches this path".into()) })
        .route_layer(axum::middleware::from_fn(middleware::after_routing))
        .with_state(state.clone());
    let wrapped = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::request_context,
        ))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state,
            middleware::deadline,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .service(routes);
    Router::new().fallback_service(wrapped)
}

/// Serves until `shutdown` is cancelled, then drains in-flight requests. Also runs
/// a relay sweep, so a job whose immediate push failed reaches Redis without a
/// worker's help.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The dummy hash makes unknown-account sign-ins as slow as real ones; made
    // now so the first such sign-in is not faster than the rest.
    tokio::task::spawn_blocking(auth::password::warm_up);
    let hub = tokio::spawn(state.hub.clone().run(
        state.config.common.redis_url.expose().to_owned(),
        shutdown.clone(),
    ));
    let relay =
        tokio::spawn(Relay::new(state.pool.clone(), state.redis.clone()).run(shutdown.clone()));
    let limits = state.config.http;
    http_server::serve(listener, router(state), limits, shutdown.clone()).await;
    shutdown.cancel();
    let _ = relay.await;
    let _ = hub.await;
    Ok(())
}
