//! SPEC §3.4 point 11: the linked GitHub account's repositories. The
//! account's token (kept sealed by the OAuth flow) lists them here and
//! clones them in a release's fetch step (`source: {type: "github"}`); it
//! is opened only for those two, and never answered or logged.
//!
//! Syncing calls GitHub from the request, as the OAuth callback does: the
//! answer is the list, and it is bounded (pages of 100, at most
//! [`MAX_PAGES`], each body at most [`MAX_PAGE_BYTES`], the client's 15 s
//! timeout per page).

use std::collections::HashSet;

use axum::extract::State;
use berth_config::OAuthProvider;
use berth_secrets::{oauth_identity_row, oauth_token_binding};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit;
use crate::auth::sessions::Client;
use crate::auth::{Principal, Scope};
use crate::envelope::{Envelope, Page, PageQuery, Query};
use crate::error::ApiError;
use crate::state::AppState;

/// Repositories per page asked of GitHub (its maximum).
const PER_PAGE: usize = 100;
/// 1,000 repositories at most are synced.
const MAX_PAGES: usize = 10;
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// One repository of the linked account, as last synced.
#[derive(Debug, Serialize, utoipa::ToSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct GithubRepoView {
    /// GitHub's id of the repository.
    #[sqlx(rename = "github_id")]
    id: i64,
    /// `owner/name`: what `source: {type: "github", repo}` takes.
    full_name: String,
    private: bool,
    default_branch: String,
    clone_url: String,
    html_url: String,
    description: Option<String>,
    pushed_at: Option<DateTime<Utc>>,
    synced_at: DateTime<Utc>,
}

const REPO_COLUMNS: &str = "github_id, full_name, private, default_branch, clone_url, html_url, \
    description, pushed_at, synced_at";

/// What a sync found.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GithubSynced {
    /// Repositories the account can read now.
    synced: usize,
    /// Repositories listed before that it can no longer read.
    removed: u64,
    /// The linked account's GitHub login.
    login: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GithubDisconnected {
    disconnected: bool,
    /// Deployments that cloned with the account's token: their next
    /// release fails at fetch until their source changes or GitHub is
    /// linked again.
    deployments_affected: i64,
}

/// The linked identity: GitHub's user id, login and the sealed token.
#[derive(sqlx::FromRow)]
struct Linked {
    provider_user_id: String,
    login: Option<String>,
    token_sealed: Option<String>,
}

/// How a user gives Berth a (new) GitHub token: the one hint every
/// "no usable token" answer ends with.
const LINK_HINT: &str = "GET /auth/oauth/github?mode=link";

fn not_linked() -> ApiError {
    ApiError::NotFound(format!(
        "no GitHub account is linked: link one with {LINK_HINT}"
    ))
}

async fn linked(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
    lock: bool,
) -> Result<Linked, ApiError> {
    sqlx::query_as(&format!(
        "SELECT provider_user_id, login, token_sealed FROM oauth_identities \
         WHERE user_id = $1 AND provider = 'github'{}",
        if lock { " FOR UPDATE" } else { "" }
    ))
    .bind(user_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(not_linked)
}

/// The linked account's repositories, as last synced, by name.
#[utoipa::path(get, path = "/github/repos", tag = "github", params(PageQuery), responses(
    (status = 200, description = "Synced repositories", body = Page<GithubRepoView>),
    (status = 404, description = "No GitHub account is linked", body = crate::error::ErrorEnvelope)))]
pub async fn list_repos(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageQuery>,
) -> Result<Envelope<Page<GithubRepoView>>, ApiError> {
    principal.require(Scope::DeploymentsRead)?;
    let request = page.validate()?;
    let mut conn = state.pool.acquire().await?;
    linked(&mut conn, principal.user_id(), false).await?;
    let items: Vec<GithubRepoView> = sqlx::query_as(&format!(
        "SELECT {REPO_COLUMNS} FROM github_repos WHERE user_id = $1 \
         ORDER BY lower(full_name) OFFSET $2 LIMIT $3"
    ))
    .bind(principal.user_id())
    .bind(request.offset())
    .bind(request.limit)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM github_repos WHERE user_id = $1")
        .bind(principal.user_id())
        .fetch_one(&mut *conn)
        .await?;
    Ok(Envelope::ok(Page::new(items, request, total)))
}

/// A repository as GitHub's `GET /user/repos` lists it.
#[derive(Deserialize)]
struct GithubRepo {
    id: i64,
    full_name: String,
    private: bool,
    default_branch: Option<String>,
    clone_url: String,
    html_url: String,
    description: Option<String>,
    pushed_at: Option<DateTime<Utc>>,
}

fn unreachable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "GitHub's repository list failed");
    ApiError::ServiceUnavailable("GitHub could not be reached: try again".into())
}

/// One page of `GET /user/repos`, its body bounded.
async fn repos_page(
    state: &AppState,
    url: &str,
    token: &str,
    page: usize,
) -> Result<Vec<GithubRepo>, ApiError> {
    let mut response = state
        .http
        .get(url)
        .bearer_auth(token)
        .header("accept", "application/vnd.github+json")
        .query(&[
            ("per_page", PER_PAGE.to_string()),
            ("page", page.to_string()),
            (
                "affiliation",
                "owner,collaborator,organization_member".into(),
            ),
            ("sort", "full_name".into()),
        ])
        .send()
        .await
        .map_err(unreachable)?;
    match response.status().as_u16() {
        200 => {}
        401 => {
            return Err(ApiError::Conflict(format!(
                "GitHub no longer accepts the linked account's token: link it again with \
                 {LINK_HINT}"
            )));
        }
        status => return Err(unreachable(format!("status {status}"))),
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_PAGE_BYTES {
            return Err(unreachable("a page of repositories past its bound"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(unreachable)
}

/// Every repository the token can read, up to [`MAX_PAGES`] pages; only
/// well-formed ones (GitHub's `owner/name` and an http(s) clone URL).
async fn fetch_repos(
    state: &AppState,
    config: &OAuthProvider,
    token: &str,
) -> Result<Vec<GithubRepo>, ApiError> {
    let url = config
        .repos_url
        .as_deref()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("GitHub has no repository URL")))?;
    let mut repos = Vec::new();
    // A list that shifts while it is paged can show one repository twice;
    // the upsert takes each id and each name once.
    let (mut seen_ids, mut seen_names) = (HashSet::new(), HashSet::new());
    for page in 1..=MAX_PAGES {
        let found = repos_page(state, url, token, page).await?;
        let last = found.len() < PER_PAGE;
        repos.extend(found.into_iter().filter(|r| {
            berth_deployments::spec::github_repo_name_ok(&r.full_name)
                && berth_ssh::Arg::url(&r.clone_url).is_ok()
                && r.clone_url.starts_with("http")
                && seen_ids.insert(r.id)
                && seen_names.insert(r.full_name.to_lowercase())
        }));
        if last {
            break;
        }
    }
    Ok(repos)
}

/// Lists the linked account's repositories at GitHub again: new ones are
/// added, changed ones updated, ones it can no longer read removed.
#[utoipa::path(post, path = "/github/repos/sync", tag = "github", responses(
    (status = 200, description = "Synced", body = GithubSynced),
    (status = 404, description = "No GitHub account is linked, or GitHub sign-in is not configured", body = crate::error::ErrorEnvelope),
    (status = 409, description = "GitHub refused the linked account's token: link it again", body = crate::error::ErrorEnvelope),
    (status = 503, description = "GitHub could not be reached", body = crate::error::ErrorEnvelope)))]
pub async fn sync_repos(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
) -> Result<Envelope<GithubSynced>, ApiError> {
    principal.require(Scope::DeploymentsWrite)?;
    let user_id = principal.user_id();
    let config = state
        .config
        .auth
        .github
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("GitHub sign-in is not configured".into()))?;
    let account = {
        let mut conn = state.pool.acquire().await?;
        linked(&mut conn, user_id, false).await?
    };
    let token = open_token(&state, user_id, &account)?;
    // GitHub is asked outside any transaction: nothing is held meanwhile.
    let repos = fetch_repos(&state, config, &token).await?;
    let mut tx = state.pool.begin().await?;
    // Disconnected meanwhile: nothing is written.
    let again = linked(&mut tx, user_id, true).await?;
    if again.provider_user_id != account.provider_user_id {
        return Err(ApiError::Conflict(
            "another GitHub account was linked meanwhile: sync again".into(),
        ));
    }
    let ids: Vec<i64> = repos.iter().map(|r| r.id).collect();
    let removed =
        sqlx::query("DELETE FROM github_repos WHERE user_id = $1 AND NOT (github_id = ANY($2))")
            .bind(user_id)
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let names: Vec<&str> = repos.iter().map(|r| r.full_name.as_str()).collect();
    // A renamed repository keeps its id; a name taken over by another id
    // (deleted and re-created) is the new one's.
    sqlx::query(
        "DELETE FROM github_repos g USING UNNEST($2::bigint[], $3::text[]) AS r(github_id, full_name) \
         WHERE g.user_id = $1 AND lower(g.full_name) = lower(r.full_name) AND g.github_id <> r.github_id",
    )
    .bind(user_id)
    .bind(&ids)
    .bind(&names)
    .execute(&mut *tx)
    .await?;
    let private: Vec<bool> = repos.iter().map(|r| r.private).collect();
    let branches: Vec<&str> = repos
        .iter()
        .map(|r| r.default_branch.as_deref().unwrap_or("main"))
        .collect();
    let clone_urls: Vec<&str> = repos.iter().map(|r| r.clone_url.as_str()).collect();
    let html_urls: Vec<&str> = repos.iter().map(|r| r.html_url.as_str()).collect();
    let descriptions: Vec<Option<String>> = repos
        .iter()
        .map(|r| {
            r.description
                .as_deref()
                .map(|d| d.chars().take(500).collect())
        })
        .collect();
    let pushed: Vec<Option<DateTime<Utc>>> = repos.iter().map(|r| r.pushed_at).collect();
    sqlx::query(
        "INSERT INTO github_repos (user_id, github_id, full_name, private, default_branch, \
         clone_url, html_url, description, pushed_at, synced_at) \
         SELECT $1, r.*, now() FROM UNNEST($2::bigint[], $3::text[], $4::bool[], $5::text[], \
         $6::text[], $7::text[], $8::text[], $9::timestamptz[]) AS r \
         ON CONFLICT (user_id, github_id) DO UPDATE SET full_name = EXCLUDED.full_name, \
         private = EXCLUDED.private, default_branch = EXCLUDED.default_branch, \
         clone_url = EXCLUDED.clone_url, html_url = EXCLUDED.html_url, \
         description = EXCLUDED.description, pushed_at = EXCLUDED.pushed_at, synced_at = now()",
    )
    .bind(user_id)
    .bind(&ids)
    .bind(&names)
    .bind(&private)
    .bind(&branches)
    .bind(&clone_urls)
    .bind(&html_urls)
    .bind(&descriptions)
    .bind(&pushed)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user_id),
            "github.sync",
            "user",
            user_id,
            serde_json::json!({ "repos": repos.len(), "removed": removed }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(GithubSynced {
        synced: repos.len(),
        removed,
        login: account.login,
    }))
}

/// GitHub is linked, but Berth holds no token for it.
pub(crate) fn no_token() -> ApiError {
    ApiError::Conflict(format!(
        "Berth holds no token for the linked GitHub account: link it again with {LINK_HINT}"
    ))
}

fn open_token(state: &AppState, user_id: Uuid, account: &Linked) -> Result<String, ApiError> {
    let sealed = account.token_sealed.as_deref().ok_or_else(no_token)?;
    let plain = state
        .keys
        .open(
            sealed,
            oauth_token_binding(&oauth_identity_row(user_id, "github")),
        )
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the GitHub token does not open: {e}")))?;
    String::from_utf8(plain)
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("the GitHub token is not text")))
}

/// Unlinks GitHub: the identity, its token and the synced list are
/// deleted. Refused while it is the account's only way to sign in.
#[utoipa::path(delete, path = "/github", tag = "github", responses(
    (status = 200, description = "Disconnected", body = GithubDisconnected),
    (status = 403, description = "Only a signed-in session may disconnect (not an API token)", body = crate::error::ErrorEnvelope),
    (status = 404, description = "No GitHub account is linked", body = crate::error::ErrorEnvelope),
    (status = 409, description = "GitHub is the account's only way to sign in: set a password first", body = crate::error::ErrorEnvelope)))]
pub async fn disconnect(
    State(state): State<AppState>,
    principal: Principal,
    client: Client,
) -> Result<Envelope<GithubDisconnected>, ApiError> {
    principal.require_session()?;
    let user_id = principal.user_id();
    let mut tx = state.pool.begin().await?;
    let account = linked(&mut tx, user_id, true).await?;
    let other_ways: bool = sqlx::query_scalar(
        "SELECT u.password_hash IS NOT NULL OR EXISTS (SELECT 1 FROM oauth_identities o \
         WHERE o.user_id = u.id AND o.provider <> 'github') FROM users u WHERE u.id = $1",
    )
    .bind(user_id)
    .fetch_one(&mut *tx)
    .await?;
    if !other_ways {
        return Err(ApiError::Conflict(
            "GitHub is this account's only way to sign in: set a password first".into(),
        ));
    }
    sqlx::query("DELETE FROM oauth_identities WHERE user_id = $1 AND provider = 'github'")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM github_repos WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let affected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM deployments WHERE owner_user_id = $1 AND git_access = 'github'",
    )
    .bind(user_id)
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        client.audit(
            Some(user_id),
            "github.disconnect",
            "user",
            user_id,
            serde_json::json!({ "providerUserId": account.provider_user_id,
                "deploymentsAffected": affected }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(Envelope::ok(GithubDisconnected {
        disconnected: true,
        deployments_affected: affected,
    }))
}
