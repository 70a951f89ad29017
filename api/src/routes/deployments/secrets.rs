//! A deployment's env vars, deploy key, webhook secret and pre-flight
//! report. Values of env vars and the webhook secret are shown only to a
//! caller who may deploy (`deployments:write`).

use std::collections::BTreeMap;

use axum::extract::State;
use berth_secrets::deployment_secret_binding;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::create::new_webhook_secret;
use super::releases::{open_env, seal_env};
use super::{authorized, authorized_for_update};
use crate::access::Action;
use crate::audit;
use crate::auth::sessions::Client;
use crate::auth::{Principal, Scope};
use crate::envelope::{Envelope, Json, Path};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvView {
    /// Names to values; values are `null` for a caller who may only read.
    env: BTreeMap<String, Option<String>>,
    /// Changes apply from the next release (redeploy to use them now).
    applies_from_next_release: bool,
}

async fn env_of(state: &AppState, principal: &Principal, id: Uuid) -> Result<EnvView, ApiError> {
    let sealed: String = sqlx::query_scalar("SELECT env_sealed FROM deployments WHERE id = $1")
        .bind(id)
        .fetch_one(&state.pool)
        .await?;
    let shown = principal.allows(Scope::DeploymentsWrite);
    let env = open_env(state, id, &sealed)?
        .into_iter()
        .map(|(k, v)| (k, shown.then_some(v)))
        .collect();
    Ok(EnvView {
        env,
        applies_from_next_release: true,
    })
}

/// The deployment's env vars.
#[utoipa::path(get, path = "/deployments/{id}/env", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 200, description = "Env vars", body = EnvView),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope)))]
pub async fn get_env(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<EnvView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    // Values are secrets: a VIEWER does not read them.
    authorized(&mut conn, &principal, id, Action::Operate).await?;
    Ok(Envelope::ok(env_of(&state, &principal, id).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvChange {
    /// Variables to set (added or replaced).
    #[serde(default)]
    set: BTreeMap<String, String>,
    /// Names to remove.
    #[serde(default)]
    unset: Vec<String>,
}

/// Set and unset env vars (sealed at rest; used from the next release).
#[utoipa::path(put, path = "/deployments/{id}/env", tag = "deployments", request_body = EnvChange,
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 200, description = "The env vars now", body = EnvView),
    (status = 400, description = "A bad name or value, each named", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope)))]
pub async fn put_env(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
    Json(change): Json<EnvChange>,
) -> Result<Envelope<EnvView>, ApiError> {
    let mut tx = state.pool.begin().await?;
    authorized_for_update(&mut tx, &principal, id, Action::Operate).await?;
    let mut errors = Vec::new();
    if change.set.is_empty() && change.unset.is_empty() {
        errors.push(FieldError::new("body", "give `set` or `unset`"));
    }
    for name in &change.unset {
        if berth_ssh::Arg::env_name(name).is_err() {
            errors.push(FieldError::new(
                format!("unset.{name}"),
                "is not a variable name",
            ));
        }
    }
    let sealed: String = sqlx::query_scalar("SELECT env_sealed FROM deployments WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    let mut env = open_env(&state, id, &sealed)?;
    for name in &change.unset {
        env.remove(name);
    }
    env.extend(change.set.clone());
    // The same checks as a create's env, on the whole result.
    for problem in berth_deployments::spec::check_env(&env) {
        errors.push(FieldError::new(problem.field, problem.message));
    }
    crate::validate::finish(errors)?;
    sqlx::query("UPDATE deployments SET env_sealed = $2, updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(seal_env(&state, id, &env))
        .execute(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "deployment.env",
            "deployment",
            id,
            serde_json::json!({ "set": change.set.keys().collect::<Vec<_>>(), "unset": change.unset }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(env_of(&state, &principal, id).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployKey {
    /// Add it to the repository as a read-only deploy key.
    public_key: String,
}

/// The public half of the deployment's SSH deploy key (git sources).
#[utoipa::path(get, path = "/deployments/{id}/deploy-key", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 200, description = "The public key", body = DeployKey),
    (status = 404, description = "No such deployment of yours, or not a git source", body = crate::error::ErrorEnvelope)))]
pub async fn deploy_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<DeployKey>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    authorized(&mut conn, &principal, id, Action::Read).await?;
    let key: Option<String> =
        sqlx::query_scalar("SELECT deploy_key_public FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
    let public_key =
        key.ok_or_else(|| {
            ApiError::NotFound(
                "only a git deployment has a deploy key (a github one clones with the linked account's token)"
                    .into(),
            )
        })?;
    Ok(Envelope::ok(DeployKey { public_key }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// Set it as the repository's push webhook (content type application/json).
    url: String,
    /// The webhook's secret (HMAC-SHA256 key).
    secret: String,
}

async fn webhook_of(state: &AppState, id: Uuid) -> Result<Webhook, ApiError> {
    let sealed: Option<String> =
        sqlx::query_scalar("SELECT webhook_secret_sealed FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_one(&state.pool)
            .await?;
    let sealed = sealed.ok_or_else(|| ApiError::NotFound("no webhook".into()))?;
    let secret = state
        .keys
        .open_string(
            &sealed,
            deployment_secret_binding(&id.to_string(), "webhook_secret"),
        )
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("webhook secret: {e}")))?;
    Ok(Webhook {
        url: format!("{}/api/v1/webhooks/github", state.config.public_url),
        secret,
    })
}

/// The push webhook's URL and secret.
#[utoipa::path(get, path = "/deployments/{id}/webhook", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 200, description = "URL and secret", body = Webhook),
    (status = 403, description = "Needs deployments:write", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope)))]
pub async fn webhook(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<Webhook>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    authorized(&mut conn, &principal, id, Action::Operate).await?;
    Ok(Envelope::ok(webhook_of(&state, id).await?))
}

/// A new webhook secret; the old one stops working at once.
#[utoipa::path(post, path = "/deployments/{id}/webhook/rotate", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 200, description = "The new URL and secret", body = Webhook),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope)))]
pub async fn rotate_webhook(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<Webhook>, ApiError> {
    let mut tx = state.pool.begin().await?;
    authorized_for_update(&mut tx, &principal, id, Action::Operate).await?;
    let sealed = state.keys.seal(
        new_webhook_secret().as_bytes(),
        deployment_secret_binding(&id.to_string(), "webhook_secret"),
    );
    sqlx::query(
        "UPDATE deployments SET webhook_secret_sealed = $2, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(sealed)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "deployment.webhook_rotate",
            "deployment",
            id,
            serde_json::json!({}),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(webhook_of(&state, id).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreflightView {
    /// The release it was made for.
    release: i32,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    report: serde_json::Value,
}

/// The pre-flight report of the newest release that has one: `{score,
/// status, stack, issues, estimatedCPU, estimatedRAM, estimatedDisk}` from
/// its source (Dockerfile or detected stack, exposed port against the
/// configured one, size), the disk estimate from the built image once built.
#[utoipa::path(get, path = "/deployments/{id}/preflight", tag = "deployments",
    params(("id" = Uuid, Path, description = "Deployment id")), responses(
    (status = 200, description = "The report", body = PreflightView),
    (status = 404, description = "No such deployment of yours, or no report yet (it is made in a release's fetch)", body = crate::error::ErrorEnvelope)))]
pub async fn preflight(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<PreflightView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    authorized(&mut conn, &principal, id, Action::Read).await?;
    let found: Option<(i32, serde_json::Value)> = sqlx::query_as(
        "SELECT number, preflight FROM releases WHERE deployment_id = $1 AND preflight IS NOT NULL \
         ORDER BY number DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let (release, report) = found.ok_or_else(|| {
        ApiError::NotFound(
            "no pre-flight report yet: each release makes one once its source is fetched".into(),
        )
    })?;
    Ok(Envelope::ok(PreflightView { release, report }))
}
