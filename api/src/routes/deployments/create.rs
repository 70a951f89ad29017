//! Creating a deployment from a Git repository or an image
//! (`POST /deployments`), or from an uploaded archive
//! (`POST /deployments/upload`): checked, stored with its first release,
//! and that release's deploy job enqueued.

use std::io::Write;

use axum::extract::State;
use axum::extract::multipart::{Multipart, MultipartRejection};
use berth_deployments::settings::Settings;
use berth_deployments::spec::{self, DeploymentRequest, DeploymentSpec, Source};
use berth_secrets::deployment_secret_binding;
use serde::Serialize;
use uuid::Uuid;

use super::releases::{Making, make_release, seal_env, settings_json};
use super::webhook::repo_identity;
use super::{DeploymentView, authorized, view};
use crate::access::{self, Action, Resource};
use crate::audit;
use crate::auth::sessions::Client;
use crate::auth::{Principal, Scope};
use crate::envelope::{Envelope, Json};
use crate::error::{ApiError, FieldError};
use crate::multipart::{PartError, next_part, read_part, read_part_to_vec};
use crate::state::AppState;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentAccepted {
    deployment: DeploymentView,
    /// The first release's deploy job (`GET /jobs/{jobId}`).
    job_id: String,
}

fn problems(list: Vec<spec::Problem>) -> ApiError {
    ApiError::validation(
        list.into_iter()
            .map(|p| FieldError::new(p.field, p.message))
            .collect(),
    )
}

/// A webhook secret: 32 random bytes, hex.
pub(crate) fn new_webhook_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A checked archive's normalized bytes and the upload's checksum.
struct Archive {
    sha256: String,
    bytes: Vec<u8>,
}

async fn insert(
    state: &AppState,
    principal: &Principal,
    client: &Client,
    spec: DeploymentSpec,
    archive: Option<Archive>,
) -> Result<Envelope<DeploymentAccepted>, ApiError> {
    let mut tx = state.pool.begin().await?;
    // Only a server's owner deploys onto it; into a project, as a DEVELOPER
    // (or more) of it: the consent the project's members deploy under.
    let server = access::authorize(
        &mut tx,
        principal,
        Resource::Server(spec.server_id),
        Action::Read,
    )
    .await?;
    if let Some(project) = spec.project_id {
        access::authorize(
            &mut tx,
            principal,
            Resource::Project(project),
            Action::Operate,
        )
        .await?;
    }
    let host_key: Option<String> =
        sqlx::query_scalar("SELECT host_key FROM servers WHERE id = $1 FOR SHARE")
            .bind(server.id())
            .fetch_one(&mut *tx)
            .await?;
    if host_key.is_none() {
        return Err(ApiError::Conflict(
            "the server has not been validated yet: wait for its validation (or run POST /servers/{id}/validate)".into(),
        ));
    }
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM deployments WHERE server_id = $1 AND name = $2)",
    )
    .bind(spec.server_id)
    .bind(&spec.name)
    .fetch_one(&mut *tx)
    .await?;
    if taken {
        return Err(ApiError::Conflict(format!(
            "a deployment named {} already exists on this server",
            spec.name
        )));
    }
    let id = Uuid::new_v4();
    let id_text = id.to_string();
    // A github source is stored under its name as synced.
    let mut github_repo = None;
    let (source_type, repo_url, branch, image) = match &spec.source {
        Source::Git { repo_url, branch } => {
            ("git", Some(repo_url.clone()), Some(branch.clone()), None)
        }
        Source::Github { repo, branch } => {
            let synced = synced_repo(&mut tx, principal, repo).await?;
            github_repo = Some(synced.full_name);
            (
                "git",
                Some(synced.clone_url),
                Some(branch.clone().unwrap_or(synced.default_branch)),
                None,
            )
        }
        Source::Image { image } => ("image", None, None, Some(image.clone())),
        Source::Upload => ("upload", None, None, None),
    };
    let git_access = if github_repo.is_some() {
        "github"
    } else {
        "deploy_key"
    };
    let (deploy_key_sealed, deploy_key_public) = if source_type == "git" && github_repo.is_none() {
        let (private, public) =
            berth_ssh::keys::generate_deploy_key(&format!("berth-deploy-{}", spec.name));
        let sealed = state.keys.seal(
            berth_config::ExposeSecret::expose_secret(&private).as_bytes(),
            deployment_secret_binding(&id_text, "deploy_key"),
        );
        (Some(sealed), Some(public))
    } else {
        (None, None)
    };
    let webhook = state.keys.seal(
        new_webhook_secret().as_bytes(),
        deployment_secret_binding(&id_text, "webhook_secret"),
    );
    let settings = Settings::of(&spec);
    sqlx::query(
        "INSERT INTO deployments (id, owner_user_id, server_id, project_id, name, source_type, repo_url, \
         branch, image, settings, env_sealed, deploy_key_sealed, deploy_key_public, webhook_secret_sealed, \
         git_access, github_repo, repo_identity) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(id)
    .bind(principal.user_id())
    .bind(spec.server_id)
    .bind(spec.project_id)
    .bind(&spec.name)
    .bind(source_type)
    .bind(&repo_url)
    .bind(&branch)
    .bind(&image)
    .bind(settings_json(&settings))
    .bind(seal_env(state, id, &spec.env))
    .bind(&deploy_key_sealed)
    .bind(&deploy_key_public)
    .bind(&webhook)
    .bind(git_access)
    .bind(&github_repo)
    .bind(repo_url.as_deref().map(repo_identity))
    .execute(&mut *tx)
    .await?;
    let row = authorized(&mut tx, principal, id, Action::Read).await?;
    let (number, job) = make_release(
        &mut tx,
        state,
        principal.user_id(),
        &row,
        Making::Build {
            trigger: "create",
            commit: None,
        },
    )
    .await?;
    if let Some(archive) = &archive {
        sqlx::query(
            "INSERT INTO release_archives (deployment_id, number, sha256, bytes) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(number)
        .bind(&archive.sha256)
        .bind(&archive.bytes)
        .execute(&mut *tx)
        .await?;
    }
    audit::record(
        &mut tx,
        client.audit(
            Some(principal.user_id()),
            "deployment.create",
            "deployment",
            id,
            serde_json::json!({ "name": spec.name, "serverId": spec.server_id, "source": source_type,
                "repoUrl": repo_url, "githubRepo": github_repo, "image": image, "envNames": spec.env.keys().collect::<Vec<_>>(),
                "archiveSha256": archive.as_ref().map(|a| &a.sha256) }),
        ),
    )
    .await?;
    let row = authorized(&mut tx, principal, id, Action::Read).await?;
    let deployment = view(&mut tx, row).await?;
    tx.commit().await?;
    state.jobs.dispatch(&job).await;
    Ok(Envelope::accepted(DeploymentAccepted {
        deployment,
        job_id: job.id,
    }))
}

/// Create a deployment from a Git repository or an image; its first
/// release is built and started by a job (202).
#[utoipa::path(post, path = "/deployments", tag = "deployments", request_body = DeploymentRequest, responses(
    (status = 202, description = "Stored; the first release's deploy job is queued", body = DeploymentAccepted),
    (status = 400, description = "Invalid fields, each named", body = crate::error::ErrorEnvelope),
    (status = 403, description = "Needs deployments:write", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or project of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The name is taken on that server, or the server is not validated", body = crate::error::ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    Json(req): Json<DeploymentRequest>,
) -> Result<Envelope<DeploymentAccepted>, ApiError> {
    principal.require(Scope::DeploymentsWrite)?;
    let spec = spec::check(&req).map_err(problems)?;
    if spec.source == Source::Upload {
        return Err(ApiError::validation(vec![FieldError::new(
            "source.type",
            "an archive is sent to POST /deployments/upload",
        )]));
    }
    insert(&state, &principal, &client, spec, None).await
}

#[derive(utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct DeploymentUploadForm {
    /// A `.zip` or `.tar.gz` of the app's source.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    #[schema(value_type = String, format = Uuid)]
    server_id: String,
    name: String,
    /// The other fields of `POST /deployments` (not `source`), each a form
    /// field; `env`, `healthCheck` and `resources` as JSON text.
    port: Option<String>,
}

/// Form fields whose value is JSON (objects, numbers).
const JSON_FIELDS: &[&str] = &[
    "env",
    "healthCheck",
    "resources",
    "port",
    "drainSeconds",
    "keepReleases",
];
const TEXT_FIELDS: &[&str] = &[
    "serverId",
    "projectId",
    "name",
    "dockerfilePath",
    "buildCommand",
    "startCommand",
];
/// A form field's text is short; the archive is the only large part.
const MAX_FIELD_BYTES: usize = 300 * 1024;

fn field_error(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::validation(vec![FieldError::new(field, message)])
}

/// Create a deployment from an archive (multipart: `file` plus the fields of
/// `POST /deployments` but `source`). Every entry is checked before
/// anything is stored: one that is absolute, climbs out with `..`, or is a
/// symbolic or hard link pointing outside refuses the whole archive.
#[utoipa::path(post, path = "/deployments/upload", tag = "deployments",
    request_body(content = DeploymentUploadForm, content_type = "multipart/form-data"), responses(
    (status = 202, description = "Stored; the first release's deploy job is queued", body = DeploymentAccepted),
    (status = 400, description = "Invalid fields, or a refused archive", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No such server of yours, or project of yours", body = crate::error::ErrorEnvelope),
    (status = 409, description = "The name is taken on that server", body = crate::error::ErrorEnvelope),
    (status = 413, description = "Past BERTH_DEPLOY_ARCHIVE_MAX_BYTES", body = crate::error::ErrorEnvelope)))]
pub async fn upload(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Envelope<DeploymentAccepted>, ApiError> {
    principal.require(Scope::DeploymentsWrite)?;
    let mut multipart =
        multipart.map_err(|_| ApiError::bad_request("expected a multipart/form-data body"))?;
    let max = state.config.deploy_archive_max_bytes;
    let too_large = || {
        ApiError::PayloadTooLarge(format!(
            "the archive is larger than {max} bytes (BERTH_DEPLOY_ARCHIVE_MAX_BYTES)"
        ))
    };
    let failed = |e: PartError| match e {
        PartError::TooLarge => too_large(),
        PartError::Malformed => {
            ApiError::bad_request("the multipart body is malformed or incomplete")
        }
        PartError::Sink(e) => e,
    };
    let mut fields = serde_json::Map::new();
    let mut upload: Option<(tempfile::NamedTempFile, usize)> = None;
    while let Some(mut field) = next_part(&mut multipart).await.map_err(failed)? {
        let name = field.name().unwrap_or("").to_owned();
        if name == "file" {
            let mut file =
                tempfile::NamedTempFile::new().map_err(|e| ApiError::Internal(e.into()))?;
            let size = read_part(&mut field, max, |chunk| {
                file.write_all(chunk)
                    .map_err(|e| ApiError::Internal(e.into()))
            })
            .await
            .map_err(failed)?;
            upload = Some((file, size));
            continue;
        }
        let known = JSON_FIELDS.contains(&name.as_str()) || TEXT_FIELDS.contains(&name.as_str());
        if !known {
            return Err(field_error(&name, "is not a field of a deployment"));
        }
        let text = read_part_to_vec(&mut field, MAX_FIELD_BYTES)
            .await
            .map_err(|e| match e {
                PartError::TooLarge => field_error(&name, "is too long"),
                other => failed(other),
            })?;
        let text = String::from_utf8(text).map_err(|_| field_error(&name, "must be UTF-8 text"))?;
        let value = if JSON_FIELDS.contains(&name.as_str()) {
            serde_json::from_str(&text).map_err(|_| field_error(&name, "must be JSON"))?
        } else {
            serde_json::Value::String(text)
        };
        fields.insert(name, value);
    }
    let Some((file, size)) = upload else {
        return Err(field_error(
            "file",
            "is required: send the archive as the form field `file`",
        ));
    };
    fields.insert("source".into(), serde_json::json!({ "type": "upload" }));
    let req: DeploymentRequest = serde_json::from_value(serde_json::Value::Object(fields))
        .map_err(|e| ApiError::bad_request(format!("the form's fields: {e}")))?;
    let spec = spec::check(&req).map_err(problems)?;
    if size == 0 {
        return Err(field_error("file", "is empty"));
    }
    let limits = berth_archive::Limits {
        max_unpacked_bytes: state.config.deploy_archive_max_unpacked_bytes,
        ..berth_archive::Limits::default()
    };
    let archive = tokio::task::spawn_blocking(move || normalize(file, limits, max))
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
    insert(&state, &principal, &client, spec, Some(archive)).await
}

/// Checks the upload and reads its normalized form (bounded: a normalized
/// archive larger than twice the upload limit is refused).
fn normalize(
    upload: tempfile::NamedTempFile,
    limits: berth_archive::Limits,
    max: usize,
) -> Result<Archive, ApiError> {
    use std::io::Read;
    let mut head = [0u8; 4];
    // A fresh handle: the written one stands at its end.
    let read = std::fs::File::open(upload.path())
        .and_then(|mut file| file.read(&mut head))
        .map_err(|e| ApiError::Internal(e.into()))?;
    let format = berth_archive::Format::sniff(&head[..read])
        .ok_or_else(|| field_error("file", "must be a .zip or .tar.gz archive"))?;
    let out = tempfile::NamedTempFile::new().map_err(|e| ApiError::Internal(e.into()))?;
    let normalized = berth_archive::normalize(upload.path(), format, out.path(), limits).map_err(
        |e| match e {
            berth_archive::ArchiveError::Refused(refused) => {
                field_error("file", format!("the archive was refused: {refused}"))
            }
            berth_archive::ArchiveError::Io(e) => {
                field_error("file", format!("the archive could not be read: {e}"))
            }
        },
    )?;
    let size = out
        .as_file()
        .metadata()
        .map_err(|e| ApiError::Internal(e.into()))?
        .len();
    if size > (max as u64).saturating_mul(2) {
        return Err(ApiError::PayloadTooLarge(
            "the archive's contents are too large".into(),
        ));
    }
    let bytes = std::fs::read(out.path()).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Archive {
        sha256: normalized.upload_sha256,
        bytes,
    })
}

/// A repository of the caller's synced GitHub list (`owner/name`, in any
/// case): its clone URL and default branch. The account must still be
/// linked with a token, which the release's fetch will clone with.
#[derive(sqlx::FromRow)]
struct SyncedRepo {
    full_name: String,
    clone_url: String,
    default_branch: String,
    has_token: bool,
}

async fn synced_repo(
    tx: &mut sqlx::PgConnection,
    principal: &Principal,
    repo: &str,
) -> Result<SyncedRepo, ApiError> {
    let found: Option<SyncedRepo> = sqlx::query_as(
        "SELECT r.full_name, r.clone_url, r.default_branch, o.token_sealed IS NOT NULL AS has_token \
         FROM github_repos r \
         JOIN oauth_identities o ON o.user_id = r.user_id AND o.provider = 'github' \
         WHERE r.user_id = $1 AND lower(r.full_name) = lower($2)",
    )
    .bind(principal.user_id())
    .bind(repo)
    .fetch_optional(&mut *tx)
    .await?;
    match found {
        None => Err(ApiError::NotFound(format!(
            "{repo} is not among your synced GitHub repositories: link GitHub and run \
             POST /github/repos/sync"
        ))),
        Some(SyncedRepo {
            has_token: false, ..
        }) => Err(crate::routes::github::no_token()),
        Some(synced) => Ok(synced),
    }
}
