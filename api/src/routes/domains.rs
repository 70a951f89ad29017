//! SPEC §3.5: domains attached to deployments, and their certificates.
//! The api checks the name and the caller's access to the deployment
//! ([`crate::access::authorize`]: its owner, or a project DEVELOPER), stores the
//! domain and enqueues its job; the `ssl` queue's workers write nginx,
//! check DNS and talk to the CA. Every state the user can see — where the
//! name points, the certificate's state, its expiry, the CA's last error
//! — is on the domain.

use axum::extract::State;
use berth_domains::name::DomainName;
use berth_jobs::store::{self, Enqueued, NewJob};
use berth_jobs::{DomainAttach, DomainCertificate, DomainDetach, JobPayload, certificate_dedupe};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::access::{self, Action, Grant, Resource};
use crate::audit;
use crate::auth::sessions::Client;
use crate::auth::{Principal, Scope};
use crate::envelope::{Envelope, Json, Page, PageQuery, Path, Query};
use crate::error::{ApiError, FieldError};
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainRequest {
    pub deployment_id: Uuid,
    /// A DNS name (internationalized names are stored in their ASCII
    /// form); no IP address.
    #[schema(min_length = 1, max_length = 253)]
    pub domain_name: String,
    /// Allow a `*.example.com` name (served by nginx; no certificate:
    /// HTTP-01 cannot validate a wildcard).
    #[serde(default)]
    pub wildcard: bool,
}

/// Where the name pointed at the last check.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsView {
    /// `unchecked`, `ok` (at the server) or `mismatch`.
    status: String,
    /// The addresses found (on a mismatch).
    found: Vec<String>,
    checked_at: Option<DateTime<Utc>>,
}

/// The CA's (or Berth's) last word on a failed attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateError {
    /// The ACME problem type (`urn:ietf:params:acme:error:…`), when the
    /// CA gave one.
    #[serde(rename = "type")]
    problem_type: Option<String>,
    detail: String,
    at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateView {
    /// `none`, `pending`, `issued`, `failed` or `expiring`.
    status: String,
    /// An installed certificate serves HTTPS (also while a renewal fails).
    installed: bool,
    serial: Option<String>,
    issued_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    last_error: Option<CertificateError>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainView {
    id: Uuid,
    deployment_id: Uuid,
    domain_name: String,
    /// `pending` (its block is not written yet), `active`, `failed` or
    /// `deleting`.
    status: String,
    status_reason: Option<String>,
    /// `https://…/` once a certificate is installed, else `http://…/`.
    url: String,
    dns: DnsView,
    certificate: CertificateView,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
pub(crate) struct DomainRow {
    id: Uuid,
    deployment_id: Uuid,
    name: String,
    status: String,
    status_reason: Option<String>,
    dns: String,
    dns_found: Vec<String>,
    dns_checked_at: Option<DateTime<Utc>>,
    certificate: String,
    cert_installed: bool,
    cert_serial: Option<String>,
    cert_not_before: Option<DateTime<Utc>>,
    cert_expires_at: Option<DateTime<Utc>>,
    cert_error: Option<String>,
    cert_error_type: Option<String>,
    cert_failed_at: Option<DateTime<Utc>>,
    https_port: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "m.id, m.deployment_id, m.name, m.status, m.status_reason, m.dns, m.dns_found, \
    m.dns_checked_at, m.certificate, m.cert_installed, m.cert_serial, m.cert_not_before, \
    m.cert_expires_at, m.cert_error, m.cert_error_type, m.cert_failed_at, s.https_port, \
    m.created_at, m.updated_at";
const FROM: &str =
    "domains m JOIN deployments d ON d.id = m.deployment_id JOIN servers s ON s.id = d.server_id";

impl From<DomainRow> for DomainView {
    fn from(row: DomainRow) -> Self {
        let url = if row.cert_installed {
            match row.https_port {
                443 => format!("https://{}/", row.name),
                port => format!("https://{}:{port}/", row.name),
            }
        } else {
            format!("http://{}/", row.name)
        };
        DomainView {
            id: row.id,
            deployment_id: row.deployment_id,
            url,
            domain_name: row.name,
            status: row.status,
            status_reason: row.status_reason,
            dns: DnsView {
                status: row.dns,
                found: row.dns_found,
                checked_at: row.dns_checked_at,
            },
            certificate: CertificateView {
                status: row.certificate,
                installed: row.cert_installed,
                serial: row.cert_serial,
                issued_at: row.cert_not_before,
                expires_at: row.cert_expires_at,
                last_error: row.cert_error.map(|detail| CertificateError {
                    problem_type: row.cert_error_type,
                    detail,
                    at: row.cert_failed_at,
                }),
            },
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The domain `id` if the caller may do `action` to it (locked when
/// `lock`): a domain goes with its deployment (see [`access`]).
async fn authorized(
    conn: &mut PgConnection,
    principal: &Principal,
    id: Uuid,
    action: Action,
    lock: bool,
) -> Result<(DomainRow, Grant), ApiError> {
    let grant = access::authorize(conn, principal, Resource::Domain(id), action).await?;
    let lock = if lock { "FOR UPDATE OF m" } else { "" };
    let row = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE m.id = $1 {lock}"
    ))
    .bind(grant.id())
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| ApiError::NotFound("no such domain".into()))?;
    Ok((row, grant))
}

/// The domains of one deployment, for its view.
pub(crate) async fn of_deployment(
    conn: &mut PgConnection,
    deployment_id: Uuid,
) -> Result<Vec<DomainView>, ApiError> {
    let rows: Vec<DomainRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE m.deployment_id = $1 ORDER BY m.name"
    ))
    .bind(deployment_id)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(DomainView::from).collect())
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainAccepted {
    domain: DomainView,
    /// The job writing nginx or ordering the certificate (`GET /jobs/{jobId}`).
    job_id: String,
}

async fn enqueue<P: JobPayload>(
    tx: &mut PgConnection,
    state: &AppState,
    principal: &Principal,
    deployment_id: Uuid,
    payload: P,
    dedupe: Option<String>,
) -> Result<Enqueued, ApiError> {
    let mut job = NewJob::new(payload)
        .owner(principal.user_id())
        .deployment(deployment_id);
    if let Some(key) = dedupe {
        job = job.dedupe_key(key);
    }
    Ok(store::enqueue(tx, state.jobs.policies(), job).await?)
}

/// Attach a domain to a deployment: a job writes its nginx server block
/// (202). A name belongs to one deployment on the whole platform.
#[utoipa::path(post, path = "/domains", tag = "domains", request_body = DomainRequest, responses(
    (status = 202, description = "Stored; its nginx block is being written", body = DomainAccepted),
    (status = 400, description = "Not a domain name Berth attaches", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such deployment of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The name is attached already, or the deployment is being deleted", body = crate::error::ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<DomainRequest>,
) -> Result<Envelope<DomainAccepted>, ApiError> {
    principal.require(Scope::DomainsWrite)?;
    let mut tx = state.pool.begin().await?;
    let grant = access::authorize(
        &mut tx,
        &principal,
        Resource::DeploymentDomains(req.deployment_id),
        Action::Operate,
    )
    .await?;
    let name = DomainName::parse(&req.domain_name, req.wildcard)
        .map_err(|e| ApiError::validation(vec![FieldError::new("domainName", e.to_string())]))?;
    let deployment = super::deployments::load(&mut tx, &grant, true).await?;
    if deployment.status == berth_deployments::state::DeploymentStatus::Deleting {
        return Err(ApiError::Conflict("the deployment is being deleted".into()));
    }
    let id = Uuid::new_v4();
    let inserted = sqlx::query(
        "INSERT INTO domains (id, deployment_id, owner_user_id, name) \
         SELECT $1, $2, owner_user_id, $3 FROM deployments WHERE id = $2 \
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(id)
    .bind(deployment.id)
    .bind(name.as_str())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(ApiError::Conflict(format!(
            "{name} is attached to a deployment already (a name belongs to one deployment)"
        )));
    }
    let job = enqueue(
        &mut tx,
        &state,
        &principal,
        deployment.id,
        DomainAttach {
            domain_id: id,
            deployment_id: deployment.id,
        },
        None,
    )
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "domain.attach",
            "domain",
            id,
            serde_json::json!({ "deploymentId": deployment.id, "domainName": name.as_str(), "jobId": job.id }),
        ),
    )
    .await?;
    let (domain, _) = authorized(&mut tx, &principal, id, Action::Read, false).await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Envelope::accepted(DomainAccepted {
        domain: domain.into(),
        job_id: job.id,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainFilter {
    /// Only this deployment's.
    pub deployment_id: Option<Uuid>,
    #[param(minimum = 1)]
    pub page: Option<i64>,
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// The caller's domains, by name.
#[utoipa::path(get, path = "/domains", tag = "domains", params(DomainFilter), responses(
    (status = 200, description = "Domains", body = Page<DomainView>)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(filter): Query<DomainFilter>,
) -> Result<Envelope<Page<DomainView>>, ApiError> {
    principal.require(Scope::DomainsRead)?;
    let request = PageQuery {
        page: filter.page,
        limit: filter.limit,
    }
    .validate()?;
    let mut conn = state.pool.acquire().await?;
    let rows: Vec<DomainRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE {} \
         AND ($2::uuid IS NULL OR m.deployment_id = $2) ORDER BY m.name OFFSET $3 LIMIT $4",
        access::visible_deployments(1)
    ))
    .bind(principal.user_id())
    .bind(filter.deployment_id)
    .bind(request.offset())
    .bind(request.limit)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM domains m JOIN deployments d ON d.id = m.deployment_id \
         WHERE {} AND ($2::uuid IS NULL OR m.deployment_id = $2)",
        access::visible_deployments(1)
    ))
    .bind(principal.user_id())
    .bind(filter.deployment_id)
    .fetch_one(&mut *conn)
    .await?;
    let items = rows.into_iter().map(DomainView::from).collect();
    Ok(Envelope::ok(Page::new(items, request, total)))
}

/// One domain: where it points, its certificate, the CA's last error.
#[utoipa::path(get, path = "/domains/{id}", tag = "domains",
    params(("id" = Uuid, Path, description = "Domain id")), responses(
    (status = 200, description = "The domain", body = DomainView),
    (status = 404, description = "No such domain of yours", body = crate::error::ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Envelope<DomainView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let (domain, _) = authorized(&mut conn, &principal, id, Action::Read, false).await?;
    Ok(Envelope::ok(domain.into()))
}

/// Detach the domain: a job takes its block out of nginx, removes its
/// certificate files, then the record (202).
#[utoipa::path(delete, path = "/domains/{id}", tag = "domains",
    params(("id" = Uuid, Path, description = "Domain id")), responses(
    (status = 202, description = "Removal queued", body = DomainAccepted),
    (status = 404, description = "No such domain of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "Already being removed", body = crate::error::ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<DomainAccepted>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let (domain, _) = authorized(&mut tx, &principal, id, Action::Operate, true).await?;
    if domain.status == "deleting" {
        return Err(ApiError::Conflict(
            "the domain is being removed already".into(),
        ));
    }
    sqlx::query("UPDATE domains SET status = 'deleting', updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let job = enqueue(
        &mut tx,
        &state,
        &principal,
        domain.deployment_id,
        DomainDetach {
            domain_id: id,
            deployment_id: domain.deployment_id,
        },
        None,
    )
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "domain.detach",
            "domain",
            id,
            serde_json::json!({ "domainName": domain.name, "jobId": job.id }),
        ),
    )
    .await?;
    let (domain, _) = authorized(&mut tx, &principal, id, Action::Read, false).await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Envelope::accepted(DomainAccepted {
        domain: domain.into(),
        job_id: job.id,
    }))
}

/// Issue (or renew now) the domain's certificate over ACME HTTP-01 from
/// `ACME_DIRECTORY_URL`: the job checks DNS first (a name pointing
/// elsewhere is refused with what it points at), then installs the
/// certificate and redirects HTTP to HTTPS (202).
#[utoipa::path(post, path = "/domains/{id}/ssl", tag = "domains",
    params(("id" = Uuid, Path, description = "Domain id")), responses(
    (status = 202, description = "The certificate job is queued (or was already)", body = DomainAccepted),
    (status = 404, description = "No such domain of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "A wildcard, a domain being removed, or a deployment that serves nothing", body = crate::error::ErrorEnvelope)))]
pub async fn ssl(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Path(id): Path<Uuid>,
) -> Result<Envelope<DomainAccepted>, ApiError> {
    let mut tx = state.pool.begin().await?;
    let (domain, grant) = authorized(&mut tx, &principal, id, Action::Operate, true).await?;
    if domain.status == "deleting" {
        return Err(ApiError::Conflict("the domain is being removed".into()));
    }
    if domain.name.starts_with("*.") {
        return Err(ApiError::Conflict(
            "a wildcard certificate needs a DNS-01 challenge, which Berth does not run: \
             attach the names one by one"
                .into(),
        ));
    }
    let deployment = super::deployments::load(&mut tx, &grant, true).await?;
    if deployment.live_release.is_none()
        || matches!(
            deployment.status,
            berth_deployments::state::DeploymentStatus::Stopped
                | berth_deployments::state::DeploymentStatus::Deleting
        )
    {
        return Err(ApiError::Conflict(
            "the deployment serves nothing now (no live release, or stopped): the CA could not \
             reach the domain; deploy or restart it first"
                .into(),
        ));
    }
    let job = enqueue(
        &mut tx,
        &state,
        &principal,
        domain.deployment_id,
        DomainCertificate {
            domain_id: id,
            deployment_id: domain.deployment_id,
            renewal: false,
        },
        Some(certificate_dedupe(id)),
    )
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "domain.ssl",
            "domain",
            id,
            serde_json::json!({ "domainName": domain.name, "jobId": job.id }),
        ),
    )
    .await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Envelope::accepted(DomainAccepted {
        domain: domain.into(),
        job_id: job.id,
    }))
}
