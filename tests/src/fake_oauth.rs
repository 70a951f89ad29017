//! GitHub's and Google's OAuth servers cannot run here, so this is a real HTTP
//! server on loopback speaking their protocol: the authorize redirect, the code
//! exchange (checking client secret, redirect URI and the PKCE S256 verifier),
//! and the user endpoints Berth reads.

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
