//! SPEC §3.2: sign-in and account linking with GitHub and Google, by the OAuth
//! 2.0 authorization-code flow with `state` and PKCE (S256). The state is a
//! random value held in Redis for 10 minutes (with the PKCE verifier) and in a
//! cookie of the browser that started the flow; the callback needs both to
//! match, once. Provider endpoints come from configuration, so tests use a
//! local server speaking the providers' protocol.
//!
//! An identity is matched by the provider's user id; a new one is attached to
//! the account with the same email address only when the provider says that
//! address is verified.

use axum::extract::State;
use axum::response::Redirect;
use axum_extra::extract::CookieJar;
use axum_extra::extract::cookie::{Cookie, SameSite};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use berth_config::OAuthProvider;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::audit;
use crate::auth::Principal;
use crate::auth::sessions::{self, Client, SignInAnswer};
use crate::auth::tokens::{random_token, token_hash};
use crate::auth::users::{self, UserRow};
use crate::envelope::{Path, Query};
use crate::error::ApiError;
use crate::state::AppState;

mod provider;

use provider::*;

const STATE_COOKIE: &str = "oauth_state";
const STATE_COOKIE_PATH: &str = "/api/v1/auth/oauth";
const STATE_TTL_SECS: u64 = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Github,
    Google,
}

impl Provider {
    fn parse(name: &str) -> Result<Provider, ApiError> {
        match name {
            "github" => Ok(Provider::Github),
            "google" => Ok(Provider::Google),
            _ => Err(ApiError::NotFound(
                "unknown sign-in provider: use github or google".into(),
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Google => "google",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Provider::Github => "GitHub",
            Provider::Google => "Google",
        }
    }

    fn method(self) -> &'static str {
        match self {
            Provider::Github => "oauth_github",
            Provider::Google => "oauth_google",
        }
    }

    /// Signing in needs only who the user is; linking GitHub explicitly
    /// also asks for `repo`, so the account's private repositories can be
    /// listed and deployed (`/github/repos`).
    fn scopes(self, linking: bool) -> &'static str {
        match (self, linking) {
            (Provider::Github, false) => "read:user user:email",
            (Provider::Github, true) => "read:user user:email repo",
            (Provider::Google, _) => "openid email profile",
        }
    }

    fn config(self, state: &AppState) -> Result<&OAuthProvider, ApiError> {
        let config = match self {
            Provider::Github => state.config.auth.github.as_ref(),
            Provider::Google => state.config.auth.google.as_ref(),
        };
        config.ok_or_else(|| {
            ApiError::NotFound(format!("{} sign-in is not configured", self.title()))
        })
    }
}

fn redirect_uri(state: &AppState, provider: Provider) -> String {
    format!(
        "{}/api/v1/auth/oauth/{}/callback",
        state.config.public_url,
        provider.name()
    )
}

/// What is kept in Redis between the redirect and the callback.
#[derive(Serialize, Deserialize)]
struct PendingFlow {
    provider: Provider,
    pkce_verifier: String,
    /// Set when a signed-in user is linking this provider to their account.
    link_user_id: Option<Uuid>,
}

fn flow_key(state_value: &str) -> String {
    format!("berth:oauth:{}", token_hash(state_value))
}

fn state_cookie(state: &AppState, value: String, max_age_secs: i64) -> Cookie<'static> {
    Cookie::build((STATE_COOKIE, value))
        .path(STATE_COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.config.cookie_secure)
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build()
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StartQuery {
    /// `link` to attach the provider to the signed-in account; else sign in.
    mode: Option<String>,
}

/// Redirect to the provider's consent page.
#[utoipa::path(get, path = "/auth/oauth/{provider}", tag = "auth",
    params(("provider" = String, Path, description = "github or google", pattern = "^(github|google)$"), StartQuery), responses(
    (status = 303, description = "To the provider"),
    (status = 401, description = "mode=link without a signed-in session", body = crate::error::ErrorEnvelope),
    (status = 404, description = "Unknown or unconfigured provider", body = crate::error::ErrorEnvelope)))]
pub async fn start(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    Query(query): Query<StartQuery>,
    principal: Option<Principal>,
    jar: CookieJar,
) -> Result<(CookieJar, Redirect), ApiError> {
    let provider = Provider::parse(&provider)?;
    let config = provider.config(&state)?;
    let link_user_id = match query.mode.as_deref() {
        None | Some("login") => None,
        Some("link") => {
            let principal = principal.ok_or_else(ApiError::unauthenticated)?;
            principal.require_session()?;
            Some(principal.user_id())
        }
        Some(_) => return Err(ApiError::bad_request("mode must be login or link")),
    };
    let state_value = random_token();
    let pkce_verifier = random_token();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(pkce_verifier.as_bytes()));
    let flow = PendingFlow {
        provider,
        pkce_verifier,
        link_user_id,
    };
    let scopes = provider.scopes(flow.link_user_id.is_some());
    let _: () = redis::cmd("SET")
        .arg(flow_key(&state_value))
        .arg(serde_json::to_string(&flow).map_err(|e| ApiError::Internal(e.into()))?)
        .arg("EX")
        .arg(STATE_TTL_SECS)
        .query_async(&mut state.redis.clone())
        .await?;
    let mut url = url::Url::parse(&config.authorize_url)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("authorize URL: {e}")))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &config.client_id)
        .append_pair("redirect_uri", &redirect_uri(&state, provider))
        .append_pair("scope", scopes)
        .append_pair("state", &state_value)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let jar = jar.add(state_cookie(&state, state_value, STATE_TTL_SECS as i64));
    Ok((jar, Redirect::to(url.as_str())))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// An identity as the provider describes it.
struct Identity {
    provider_user_id: String,
    /// GitHub's user name.
    login: Option<String>,
    email: Option<String>,
    email_verified: bool,
    name: String,
    avatar_url: Option<String>,
}

/// Why a flow failed, said to the user on the login page.
struct Failure(String);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Internal(cause) => {
                // The request's span carries its id; the user sees no detail.
                tracing::error!(error = format!("{cause:#}"), "OAuth callback failed");
                Failure("sign-in failed because of an internal error".to_owned())
            }
            other => Failure(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from(e).into()
    }
}

/// The provider sends the browser back here. Answers with a redirect to the
/// app: `/` signed in, `/settings?linked=…` after linking, `/login/2fa?challengeId=…`
/// when 2FA is on, or `/login?error=…`.
#[utoipa::path(get, path = "/auth/oauth/{provider}/callback", tag = "auth",
    params(("provider" = String, Path, description = "github or google", pattern = "^(github|google)$"), CallbackQuery), responses(
    (status = 303, description = "Back to the app, signed in or with an error")))]
pub async fn callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    Query(query): Query<CallbackQuery>,
    client: Client,
    jar: CookieJar,
) -> Result<(CookieJar, Redirect), ApiError> {
    let provider = Provider::parse(&provider)?;
    let cookie_state = jar.get(STATE_COOKIE).map(|c| c.value().to_owned());
    let jar = jar.add(state_cookie(&state, String::new(), 0));
    Ok(
        match finish(&state, provider, query, cookie_state, &client, jar.clone()).await {
            Ok(done) => done,
            Err(Failure(message)) => {
                let mut conn = state.pool.acquire().await;
                if let Ok(conn) = conn.as_mut() {
                    let entry = client.audit(
                        None,
                        "auth.login_failed",
                        "oauth",
                        provider.name(),
                        serde_json::json!({ "reason": message }),
                    );
                    if let Err(e) = audit::record(conn, entry).await {
                        tracing::error!(error = %e, "cannot record an OAuth failure");
                    }
                }
                let mut url = url::Url::parse(&format!("{}/login", state.config.public_url))
                    .expect("BERTH_PUBLIC_URL is a URL");
                url.query_pairs_mut().append_pair("error", &message);
                (jar, Redirect::to(url.as_str()))
            }
        },
    )
}

async fn finish(
    state: &AppState,
    provider: Provider,
    query: CallbackQuery,
    cookie_state: Option<String>,
    client: &Client,
    jar: CookieJar,
) -> Result<(CookieJar, Redirect), Failure> {
    if let Some(error) = query.error {
        let error: String = error
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect();
        return Err(Failure(format!(
            "{} refused the sign-in: {error}",
            provider.title()
        )));
    }
    let (Some(code), Some(state_value), Some(cookie_state)) =
        (query.code, query.state, cookie_state)
    else {
        return Err(Failure(
            "the sign-in link is incomplete or expired: start again".into(),
        ));
    };
    if !bool::from(state_value.as_bytes().ct_eq(cookie_state.as_bytes())) {
        return Err(Failure(
            "the sign-in state does not match: start again".into(),
        ));
    }
    let stored: Option<String> = redis::cmd("GETDEL")
        .arg(flow_key(&state_value))
        .query_async(&mut state.redis.clone())
        .await
        .map_err(ApiError::from)?;
    let flow: PendingFlow = stored
        .and_then(|s| serde_json::from_str(&s).ok())
        .filter(|f: &PendingFlow| f.provider == provider)
        .ok_or_else(|| {
            Failure("the sign-in state is unknown, used or expired: start again".into())
        })?;
    let config = provider.config(state)?;
    let granted = exchange_code(state, provider, config, &code, &flow.pkce_verifier).await?;
    let identity = fetch_identity(state, provider, config, &granted.token).await?;

    let mut tx = state.pool.begin().await?;
    let linked: Option<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM oauth_identities WHERE provider = $1 AND provider_user_id = $2",
    )
    .bind(provider.name())
    .bind(&identity.provider_user_id)
    .fetch_optional(&mut *tx)
    .await?;

    if let Some(link_user_id) = flow.link_user_id {
        match linked {
            Some(owner) if owner == link_user_id => {}
            Some(_) => {
                return Err(Failure(format!(
                    "this {} account is linked to another Berth account",
                    provider.title()
                )));
            }
            None => link(&mut tx, provider, &identity, link_user_id, client).await?,
        }
        keep_token(&mut tx, state, provider, &identity, link_user_id, &granted).await?;
        tx.commit().await?;
        let to = format!(
            "{}/settings?linked={}",
            state.config.public_url,
            provider.name()
        );
        return Ok((jar, Redirect::to(&to)));
    }

    let user = match linked {
        Some(user_id) => users::by_id(&mut *tx, user_id).await?,
        None => None,
    };
    let user = match user {
        Some(user) => user,
        None => {
            let email = identity
                .email
                .clone()
                .filter(|_| identity.email_verified)
                .ok_or_else(|| {
                    Failure(format!(
                        "your {} email address is not verified there: verify it, then try again",
                        provider.title()
                    ))
                })?;
            match users::by_email(&mut *tx, &email).await? {
                Some(existing) => {
                    link(&mut tx, provider, &identity, existing.id, client).await?;
                    users::mark_email_proven(&mut tx, existing).await?
                }
                None => create_user(&mut tx, provider, &identity, &email, client).await?,
            }
        }
    };
    if !user.is_active() {
        return Err(Failure("this account is suspended".into()));
    }
    keep_token(&mut tx, state, provider, &identity, user.id, &granted).await?;
    let (jar, answer) =
        sessions::complete_sign_in(&mut tx, state, jar, &user, provider.method(), false, client)
            .await?;
    tx.commit().await?;
    let to = match answer {
        SignInAnswer::SignedIn(_) => format!("{}/", state.config.public_url),
        SignInAnswer::TwoFactorRequired { challenge_id, .. } => {
            format!(
                "{}/login/2fa?challengeId={challenge_id}",
                state.config.public_url
            )
        }
    };
    Ok((jar, Redirect::to(&to)))
}

/// GitHub's token is kept, sealed, for the account's repositories (each
/// sign-in or link replaces it with the newest grant); Google's is not
/// needed after sign-in and is never stored.
async fn keep_token(
    tx: &mut sqlx::PgConnection,
    state: &AppState,
    provider: Provider,
    identity: &Identity,
    user_id: Uuid,
    granted: &Granted,
) -> Result<(), Failure> {
    if provider != Provider::Github {
        return Ok(());
    }
    let sealed = state.keys.seal(
        granted.token.as_bytes(),
        berth_secrets::oauth_token_binding(&berth_secrets::oauth_identity_row(
            user_id,
            provider.name(),
        )),
    );
    sqlx::query(
        "UPDATE oauth_identities SET token_sealed = $3, token_scopes = $4, login = $5, \
         token_updated_at = now() WHERE provider = $1 AND provider_user_id = $2 AND user_id = $6",
    )
    .bind(provider.name())
    .bind(&identity.provider_user_id)
    .bind(sealed)
    .bind(&granted.scope)
    .bind(&identity.login)
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn link(
    tx: &mut sqlx::PgConnection,
    provider: Provider,
    identity: &Identity,
    user_id: Uuid,
    client: &Client,
) -> Result<(), Failure> {
    let inserted = sqlx::query(
        "INSERT INTO oauth_identities (provider, provider_user_id, user_id, email) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(provider.name())
    .bind(&identity.provider_user_id)
    .bind(user_id)
    .bind(&identity.email)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(Failure(format!(
            "this Berth account is already linked to another {} account",
            provider.title()
        )));
    }
    audit::record(
        tx,
        client.audit(
            Some(user_id),
            "auth.oauth_link",
            "user",
            user_id,
            serde_json::json!({ "provider": provider.name(), "providerUserId": identity.provider_user_id }),
        ),
    )
    .await?;
    Ok(())
}

async fn create_user(
    tx: &mut sqlx::PgConnection,
    provider: Provider,
    identity: &Identity,
    email: &str,
    client: &Client,
) -> Result<UserRow, Failure> {
    let id = Uuid::new_v4();
    let name: String = identity.name.chars().take(100).collect();
    let user: UserRow = sqlx::query_as(&format!(
        "INSERT INTO users (id, email, name, avatar_url, email_verified) VALUES ($1, $2, $3, $4, true) \
         RETURNING {}",
        users::USER_COLUMNS
    ))
    .bind(id)
    .bind(email)
    .bind(if name.trim().is_empty() { email } else { &name })
    .bind(&identity.avatar_url)
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut *tx,
        client.audit(
            Some(id),
            "auth.register",
            "user",
            id,
            serde_json::json!({ "email": email, "method": provider.method() }),
        ),
    )
    .await?;
    link(tx, provider, identity, id, client).await?;
    Ok(user)
}
