//! The providers' side of the flow: exchanging the code for a token and reading the identity (GitHub's user and verified emails, Google's userinfo), with bounded answers and errors that name the provider.

use berth_config::{ExposeSecret, OAuthProvider};
use serde::Deserialize;

use crate::state::AppState;

use super::*;

#[derive(Deserialize)]
pub(super) struct TokenAnswer {
    access_token: Option<String>,
    /// What the token may do, as the provider granted it (comma-separated
    /// at GitHub).
    scope: Option<String>,
    error: Option<String>,
}

/// The provider's access token and what it may do.
pub(super) struct Granted {
    pub token: String,
    pub scope: Option<String>,
}

pub(super) fn provider_error(provider: Provider, what: &str, e: impl std::fmt::Display) -> Failure {
    tracing::warn!(provider = provider.name(), error = %e, "{what}");
    Failure(format!(
        "{} could not be reached to finish the sign-in: try again",
        provider.title()
    ))
}

pub(super) async fn exchange_code(
    state: &AppState,
    provider: Provider,
    config: &OAuthProvider,
    code: &str,
    verifier: &str,
) -> Result<Granted, Failure> {
    let response = state
        .http
        .post(&config.token_url)
        .header("accept", "application/json")
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &redirect_uri(state, provider)),
            ("client_id", &config.client_id),
            ("client_secret", config.client_secret.expose_secret()),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .map_err(|e| provider_error(provider, "token request failed", e))?;
    let status = response.status();
    let answer: TokenAnswer = response
        .json()
        .await
        .map_err(|e| provider_error(provider, "token answer is not JSON", e))?;
    match answer {
        TokenAnswer {
            access_token: Some(token),
            scope,
            ..
        } if status.is_success() => Ok(Granted { token, scope }),
        TokenAnswer { error, .. } => Err(Failure(format!(
            "{} did not accept the sign-in ({}): start again",
            provider.title(),
            error
                .unwrap_or_else(|| status.to_string())
                .chars()
                .take(60)
                .collect::<String>()
        ))),
    }
}

#[derive(Deserialize)]
pub(super) struct GithubUser {
    id: u64,
    login: String,
    name: Option<String>,
    avatar_url: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct GithubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

#[derive(Deserialize)]
pub(super) struct GoogleUser {
    sub: String,
    email: Option<String>,
    #[serde(default)]
    email_verified: bool,
    name: Option<String>,
    picture: Option<String>,
}

pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    provider: Provider,
    url: &str,
    access_token: &str,
) -> Result<T, Failure> {
    let response = state
        .http
        .get(url)
        .bearer_auth(access_token)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| provider_error(provider, "profile request failed", e))?;
    if !response.status().is_success() {
        return Err(provider_error(
            provider,
            "profile request refused",
            response.status(),
        ));
    }
    response
        .json()
        .await
        .map_err(|e| provider_error(provider, "profile answer malformed", e))
}

pub(super) async fn fetch_identity(
    state: &AppState,
    provider: Provider,
    config: &OAuthProvider,
    access_token: &str,
) -> Result<Identity, Failure> {
    match provider {
        Provider::Github => {
            let user: GithubUser =
                get_json(state, provider, &config.user_url, access_token).await?;
            let emails: Vec<GithubEmail> = match &config.emails_url {
                Some(url) => get_json(state, provider, url, access_token).await?,
                None => Vec::new(),
            };
            let verified = emails
                .iter()
                .filter(|e| e.verified)
                .max_by_key(|e| e.primary)
                .map(|e| e.email.clone());
            Ok(Identity {
                provider_user_id: user.id.to_string(),
                login: Some(user.login.clone()),
                email_verified: verified.is_some(),
                email: verified.or_else(|| emails.first().map(|e| e.email.clone())),
                name: user.name.unwrap_or(user.login),
                avatar_url: user.avatar_url,
            })
        }
        Provider::Google => {
            let user: GoogleUser =
                get_json(state, provider, &config.user_url, access_token).await?;
            Ok(Identity {
                provider_user_id: user.sub,
                login: None,
                email_verified: user.email_verified,
                name: user.name.clone().unwrap_or_default(),
                email: user.email,
                avatar_url: user.picture,
            })
        }
    }
}
