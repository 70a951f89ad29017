//! `POST /webhooks/github`: a repository's push webhook. The deployments of
//! the pushed repository are found by its URLs; the body's
//! `X-Hub-Signature-256` (HMAC-SHA256 over the raw body) must match one of
//! their secrets, compared in constant time. A push to a deployment's branch
//! releases that commit; `ping` is answered; a delivery id seen before is
//! ignored, so GitHub's redeliveries never deploy twice.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use berth_secrets::deployment_secret_binding;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use super::releases::{Making, ReleaseAccepted, make_release};
use crate::envelope::Envelope;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize)]
struct Repository {
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    git_url: Option<String>,
}

#[derive(Deserialize)]
struct HookBody {
    repository: Option<Repository>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    #[serde(default)]
    deleted: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookOutcome {
    /// `pong`, `deployed`, `ignored`.
    outcome: &'static str,
    /// Why it was ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The releases a push made, one per deployment of that branch.
    releases: Vec<WebhookRelease>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookRelease {
    deployment_id: Uuid,
    #[serde(flatten)]
    release: ReleaseAccepted,
}

/// A repository URL reduced to host and path, so its https, ssh and scp
/// forms compare equal (`github.com/owner/repo`).
pub(crate) fn repo_identity(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    let url = url.strip_suffix(".git").unwrap_or(url);
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest.to_owned(),
        // scp-like `git@host:owner/repo`
        None => url.replacen(':', "/", 1),
    };
    let rest = rest.rsplit_once('@').map_or(rest.as_str(), |(_, r)| r);
    // A port (ssh://git@host:22/…) is not part of the identity.
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = host.split(':').next().unwrap_or(host);
    format!(
        "{}/{}",
        host.to_ascii_lowercase(),
        path.to_ascii_lowercase()
    )
}

fn signature_ok(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&sig).is_ok()
}

fn unauthorized() -> ApiError {
    ApiError::Unauthorized("the webhook signature does not match any deployment's secret".into())
}

#[derive(sqlx::FromRow)]
struct Candidate {
    id: Uuid,
    owner_user_id: Uuid,
    branch: Option<String>,
    webhook_secret_sealed: Option<String>,
}

/// GitHub push webhook (no session: the signature is the credential).
#[utoipa::path(post, path = "/webhooks/github", tag = "deployments",
    request_body(content = Object, description = "GitHub's event payload, as GitHub sends it"), responses(
    (status = 200, description = "`ping` answered, or a replay ignored", body = WebhookOutcome),
    (status = 202, description = "A push released, or an event ignored", body = WebhookOutcome),
    (status = 400, description = "Not a GitHub event body", body = crate::error::ErrorEnvelope),
    (status = 401, description = "Missing or wrong X-Hub-Signature-256", body = crate::error::ErrorEnvelope)))]
pub async fn github(
    State(state): State<AppState>,
    client: crate::auth::sessions::Client,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Envelope<WebhookOutcome>, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let signature = header("x-hub-signature-256").ok_or_else(unauthorized)?;
    let event = header("x-github-event").unwrap_or_default();
    let delivery = header("x-github-delivery");
    let hook: HookBody = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad_request("the body is not a GitHub event"))?;
    let repository = hook
        .repository
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("the event names no repository"))?;
    let identities: Vec<String> = [
        &repository.clone_url,
        &repository.ssh_url,
        &repository.html_url,
        &repository.git_url,
    ]
    .into_iter()
    .flatten()
    .map(|u| repo_identity(u))
    .collect();
    let candidates: Vec<Candidate> = sqlx::query_as(
        "SELECT id, owner_user_id, branch, webhook_secret_sealed FROM deployments \
         WHERE repo_identity = ANY($1) AND source_type = 'git' AND status <> 'deleting'",
    )
    .bind(&identities)
    .fetch_all(&state.pool)
    .await?;
    let signed: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| {
            let Some(sealed) = &c.webhook_secret_sealed else {
                return false;
            };
            let id = c.id.to_string();
            state
                .keys
                .open(sealed, deployment_secret_binding(&id, "webhook_secret"))
                .is_ok_and(|secret| signature_ok(&secret, &body, &signature))
        })
        .collect();
    if signed.is_empty() {
        return Err(unauthorized());
    }
    let outcome = |outcome, reason: Option<String>, releases| WebhookOutcome {
        outcome,
        reason,
        releases,
    };
    if event == "ping" {
        return Ok(Envelope::ok(outcome("pong", None, Vec::new())));
    }
    if let Some(delivery) = &delivery {
        let fresh = sqlx::query(
            "INSERT INTO webhook_deliveries (delivery_id) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind(delivery.chars().take(200).collect::<String>())
        .execute(&state.pool)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            return Ok(Envelope::ok(outcome(
                "ignored",
                Some("this delivery was received before".into()),
                Vec::new(),
            )));
        }
    }
    if event != "push" {
        return Ok(Envelope::accepted(outcome(
            "ignored",
            Some(format!("{event:?} events are not acted on")),
            Vec::new(),
        )));
    }
    let Some(branch) = hook
        .git_ref
        .as_deref()
        .and_then(|r| r.strip_prefix("refs/heads/"))
    else {
        return Ok(Envelope::accepted(outcome(
            "ignored",
            Some("not a branch push".into()),
            Vec::new(),
        )));
    };
    let commit = hook
        .after
        .filter(|c| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()) && !hook.deleted)
        .filter(|c| c.bytes().any(|b| b != b'0'));
    let Some(commit) = commit else {
        return Ok(Envelope::accepted(outcome(
            "ignored",
            Some("the branch was deleted".into()),
            Vec::new(),
        )));
    };
    let mut releases = Vec::new();
    let mut jobs = Vec::new();
    let mut tx = state.pool.begin().await?;
    for candidate in signed
        .iter()
        .filter(|c| c.branch.as_deref() == Some(branch))
    {
        let principal_owner = candidate.owner_user_id;
        let grant = crate::access::signed_push(candidate.id);
        let row = super::load(&mut tx, &grant, true).await?;
        let (number, job) = make_release(
            &mut tx,
            &state,
            principal_owner,
            &row,
            Making::Build {
                trigger: "webhook",
                commit: Some(&commit),
            },
        )
        .await?;
        crate::audit::record(
            &mut tx,
            client.audit(
                None,
                "deployment.webhook",
                "deployment",
                candidate.id,
                serde_json::json!({ "release": number, "commit": commit, "delivery": delivery }),
            ),
        )
        .await?;
        releases.push(WebhookRelease {
            deployment_id: candidate.id,
            release: ReleaseAccepted::new(number, &job),
        });
        jobs.push(job);
    }
    tx.commit().await?;
    for job in &jobs {
        state.jobs.dispatch(job).await;
    }
    if releases.is_empty() {
        return Ok(Envelope::accepted(outcome(
            "ignored",
            Some(format!("no deployment follows branch {branch}")),
            Vec::new(),
        )));
    }
    Ok(Envelope::accepted(outcome("deployed", None, releases)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_is_the_same_in_every_url_form() {
        let forms = [
            "https://github.com/Acme/App.git",
            "https://github.com/acme/app",
            "git@github.com:acme/app.git",
            "ssh://git@github.com:22/acme/app.git",
            "git://github.com/acme/app.git",
        ];
        for form in forms {
            assert_eq!(repo_identity(form), "github.com/acme/app", "{form}");
        }
        assert_ne!(
            repo_identity("https://github.com/acme/app2"),
            "github.com/acme/app"
        );
    }

    #[test]
    fn signatures_are_checked() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"{}");
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(signature_ok(b"secret", b"{}", &good));
        assert!(!signature_ok(b"other", b"{}", &good));
        assert!(!signature_ok(b"secret", b"{ }", &good));
        assert!(!signature_ok(b"secret", b"{}", "sha1=00"));
        assert!(!signature_ok(b"secret", b"{}", "sha256=zz"));
    }
}
