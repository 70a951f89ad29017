//! GitHub's and Google's OAuth servers cannot run here, so this is a real HTTP
//! server on loopback speaking their protocol: the authorize redirect, the code
//! exchange (checking client secret, redirect URI and the PKCE S256 verifier),
//! the user endpoints Berth reads, and for GitHub the account's
//! repositories (`GET /user/repos`) served over git's smart HTTP protocol
//! (`git http-backend`), private ones only to a Basic login with a token
//! the fake issued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

pub const CLIENT_ID: &str = "berth-test-client";
pub const CLIENT_SECRET: &str = "berth-test-secret";

/// The account the fake provider signs in.
#[derive(Debug, Clone)]
pub struct FakeAccount {
    pub id: String,
    pub login: String,
    pub name: String,
    pub email: String,
    pub email_verified: bool,
}

#[derive(Default)]
struct Shared {
    account: Option<FakeAccount>,
    /// code → (PKCE challenge, redirect URI)
    codes: HashMap<String, (String, String)>,
    tokens: HashMap<String, FakeAccount>,
    /// Token requests seen, for tests that check what Berth sent.
    exchanges: usize,
    repos: Vec<FakeRepo>,
    /// Git requests that came with a valid token.
    token_git_requests: usize,
}

/// A repository of the signed-in account, served from a bare repository.
#[derive(Debug, Clone)]
pub struct FakeRepo {
    pub id: i64,
    pub full_name: String,
    pub private: bool,
    pub default_branch: String,
    pub bare: std::path::PathBuf,
}

#[derive(Clone)]
pub struct FakeOAuth {
    pub base: String,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    client_id: String,
    redirect_uri: String,
    state: String,
    code_challenge: String,
    code_challenge_method: String,
    response_type: String,
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    code: String,
    redirect_uri: String,
    client_id: String,
    client_secret: String,
    code_verifier: String,
}

fn refuse(error: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": error }))).into_response()
}

async fn authorize(State(fake): State<FakeOAuth>, Query(q): Query<AuthorizeQuery>) -> Response {
    if q.client_id != CLIENT_ID || q.response_type != "code" || q.code_challenge_method != "S256" {
        return refuse("invalid_request");
    }
    let code = format!("code-{:016x}", rand::random::<u64>());
    fake.shared
        .lock()
        .unwrap()
        .codes
        .insert(code.clone(), (q.code_challenge, q.redirect_uri.clone()));
    let mut url = url_with(&q.redirect_uri);
    url.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &q.state);
    Redirect::to(url.as_str()).into_response()
}

fn url_with(base: &str) -> reqwest::Url {
    base.parse().expect("redirect URI is a URL")
}

async fn token(State(fake): State<FakeOAuth>, Form(f): Form<TokenForm>) -> Response {
    let mut shared = fake.shared.lock().unwrap();
    shared.exchanges += 1;
    if f.grant_type != "authorization_code"
        || f.client_id != CLIENT_ID
        || f.client_secret != CLIENT_SECRET
    {
        return refuse("invalid_client");
    }
    let Some((challenge, redirect_uri)) = shared.codes.remove(&f.code) else {
        return refuse("invalid_grant");
    };
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(f.code_verifier.as_bytes()));
    if computed != challenge || redirect_uri != f.redirect_uri {
        return refuse("invalid_grant");
    }
    let Some(account) = shared.account.clone() else {
        return refuse("access_denied");
    };
    let access = format!("tok-{:016x}", rand::random::<u64>());
    shared.tokens.insert(access.clone(), account);
    Json(json!({ "access_token": access, "token_type": "bearer", "scope": "user:email" }))
        .into_response()
}

fn account_of(fake: &FakeOAuth, headers: &HeaderMap) -> Option<FakeAccount> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    fake.shared.lock().unwrap().tokens.get(token).cloned()
}

async fn github_user(State(fake): State<FakeOAuth>, headers: HeaderMap) -> Response {
    match account_of(&fake, &headers) {
        Some(a) => Json(json!({
            "id": a.id.parse::<u64>().expect("GitHub ids are numbers"),
            "login": a.login, "name": a.name, "email": null,
            "avatar_url": format!("https://avatars.example.test/{}", a.id),
        }))
        .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

async fn github_emails(State(fake): State<FakeOAuth>, headers: HeaderMap) -> Response {
    match account_of(&fake, &headers) {
        Some(a) => Json(json!([
            { "email": format!("{}@users.noreply.example.test", a.login), "primary": false, "verified": true, "visibility": null },
            { "email": a.email, "primary": true, "verified": a.email_verified, "visibility": "public" },
        ]))
        .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

#[derive(Deserialize)]
struct ReposQuery {
    per_page: Option<usize>,
    page: Option<usize>,
}

async fn github_repos(
    State(fake): State<FakeOAuth>,
    headers: HeaderMap,
    Query(q): Query<ReposQuery>,
) -> Response {
    if account_of(&fake, &headers).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let per_page = q.per_page.unwrap_or(30).clamp(1, 100);
    let page = q.page.unwrap_or(1).max(1);
    let repos = fake.shared.lock().unwrap().repos.clone();
    let listed: Vec<_> = repos
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| {
            json!({
                "id": r.id, "full_name": r.full_name, "private": r.private,
                "default_branch": r.default_branch,
                "clone_url": format!("{}/git/{}.git", fake.base, r.full_name),
                "html_url": format!("https://github.example.test/{}", r.full_name),
                "description": "a test repository", "pushed_at": "2026-11-30T10:00:00Z",
            })
        })
        .collect();
    Json(listed).into_response()
}

/// The token of a Basic login (`x-access-token:<token>`), when it is one
/// the fake issued.
fn basic_token_ok(fake: &FakeOAuth, headers: &HeaderMap) -> bool {
    let Some(encoded) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    let text = String::from_utf8_lossy(&decoded).into_owned();
    text.split_once(':')
        .is_some_and(|(_, token)| fake.shared.lock().unwrap().tokens.contains_key(token))
}

/// git's smart HTTP protocol, by `git http-backend` as CGI.
async fn git_http(
    State(fake): State<FakeOAuth>,
    axum::extract::Path(path): axum::extract::Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    body: axum::body::Bytes,
) -> Response {
    let Some((name, rest)) = path.split_once(".git") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let repo = fake
        .shared
        .lock()
        .unwrap()
        .repos
        .iter()
        .find(|r| r.full_name == name)
        .cloned();
    let Some(repo) = repo else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let authorized = basic_token_ok(&fake, &headers);
    if repo.private && !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Basic realm=\"GitHub\"")],
        )
            .into_response();
    }
    if authorized {
        fake.shared.lock().unwrap().token_git_requests += 1;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", repo.bare.parent().unwrap())
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env(
            "PATH_INFO",
            format!(
                "/{}{rest}",
                repo.bare.file_name().unwrap().to_string_lossy()
            ),
        )
        .env("REQUEST_METHOD", method.as_str())
        .env("QUERY_STRING", query.unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_USER", "x-access-token")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("git http-backend");
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = stdin.write_all(&body).await;
    });
    let output = child
        .wait_with_output()
        .await
        .expect("git http-backend ran");
    let _ = writer.await;
    let out = output.stdout;
    let Some(split) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut response = Response::builder();
    let mut status = StatusCode::OK;
    for line in String::from_utf8_lossy(&out[..split]).split("\r\n") {
        if let Some((name, value)) = line.split_once(": ") {
            if name.eq_ignore_ascii_case("status") {
                status = value[..3].parse().unwrap_or(StatusCode::BAD_GATEWAY);
            } else {
                response = response.header(name, value);
            }
        }
    }
    response
        .status(status)
        .body(axum::body::Body::from(out[split + 4..].to_vec()))
        .unwrap()
}

async fn google_userinfo(State(fake): State<FakeOAuth>, headers: HeaderMap) -> Response {
    match account_of(&fake, &headers) {
        Some(a) => Json(json!({
            "sub": a.id, "email": a.email, "email_verified": a.email_verified,
            "name": a.name, "picture": format!("https://lh3.example.test/{}", a.id),
        }))
        .into_response(),
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

impl FakeOAuth {
    pub async fn start() -> FakeOAuth {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let fake = FakeOAuth {
            base: format!("http://{}", listener.local_addr().expect("addr")),
            shared: Arc::default(),
        };
        let app = Router::new()
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(token))
            .route("/user", get(github_user))
            .route("/user/emails", get(github_emails))
            .route("/user/repos", get(github_repos))
            .route("/git/{*path}", get(git_http).post(git_http))
            .route("/o/oauth2/v2/auth", get(authorize))
            .route("/token", post(token))
            .route("/v1/userinfo", get(google_userinfo))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    pub fn sign_in_as(&self, account: FakeAccount) {
        self.shared.lock().unwrap().account = Some(account);
    }

    pub fn exchanges(&self) -> usize {
        self.shared.lock().unwrap().exchanges
    }

    /// A repository the signed-in account can read from now on.
    pub fn add_repo(&self, repo: FakeRepo) {
        self.shared.lock().unwrap().repos.push(repo);
    }

    /// The repositories the account can read are now these (in this
    /// order, duplicates kept: GitHub's pages can shift while listed).
    pub fn set_repos(&self, repos: Vec<FakeRepo>) {
        self.shared.lock().unwrap().repos = repos;
    }

    /// The access tokens the fake issued (to check none leaks).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().unwrap().tokens.keys().cloned().collect()
    }

    /// Git requests that came with a valid token.
    pub fn token_git_requests(&self) -> usize {
        self.shared.lock().unwrap().token_git_requests
    }

    /// Every token issued so far stops working (revoked at GitHub).
    pub fn revoke_tokens(&self) {
        self.shared.lock().unwrap().tokens.clear();
    }

    /// Settings that point Berth's GitHub and Google clients here.
    pub fn env(&self) -> Vec<(String, String)> {
        let b = &self.base;
        [
            ("GITHUB_CLIENT_ID", CLIENT_ID.to_owned()),
            ("GITHUB_CLIENT_SECRET", CLIENT_SECRET.to_owned()),
            ("BERTH_GITHUB_OAUTH_URL", b.clone()),
            ("BERTH_GITHUB_API_URL", b.clone()),
            ("GOOGLE_CLIENT_ID", CLIENT_ID.to_owned()),
            ("GOOGLE_CLIENT_SECRET", CLIENT_SECRET.to_owned()),
            ("BERTH_GOOGLE_AUTH_URL", format!("{b}/o/oauth2/v2/auth")),
            ("BERTH_GOOGLE_TOKEN_URL", format!("{b}/token")),
            ("BERTH_GOOGLE_USERINFO_URL", format!("{b}/v1/userinfo")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}
