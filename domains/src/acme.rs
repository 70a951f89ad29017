//! An ACME (RFC 8555) client inside the worker, over `instant-acme`: Berth
//! keeps its account key (sealed, by the caller), the server needs nothing
//! but nginx serving the HTTP-01 token, and a CA's refusal comes back with
//! its own problem type and detail. ARCHITECTURE.md says why this and not
//! certbot on the server.

use std::path::PathBuf;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

/// Where certificates come from (`ACME_DIRECTORY_URL`, Let's Encrypt by
/// default) and how its TLS is checked.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    pub directory_url: String,
    /// A PEM root to trust for the directory's own TLS (a test CA such as
    /// pebble); `None`: the platform's roots.
    pub directory_root: Option<PathBuf>,
    /// `mailto:` contact for the account, if any.
    pub contact: Option<String>,
    /// How long the CA may take to validate and to issue.
    pub validation_timeout: Duration,
}

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// A failure, as the user sees it: the CA's problem when it gave one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct AcmeError {
    /// The ACME problem type (`urn:ietf:params:acme:error:unauthorized`),
    /// when the CA said why.
    pub problem_type: Option<String>,
    pub detail: String,
}

impl AcmeError {
    fn other(detail: impl Into<String>) -> Self {
        Self {
            problem_type: None,
            detail: detail.into(),
        }
    }

    fn of(context: &str, e: instant_acme::Error) -> Self {
        match e {
            instant_acme::Error::Api(problem) => Self {
                problem_type: problem.r#type.clone(),
                detail: format!(
                    "{context}: the CA says: {}",
                    problem.detail.as_deref().unwrap_or("(no detail)")
                ),
            },
            instant_acme::Error::Timeout(_) => {
                Self::other(format!("{context}: the CA did not finish in time"))
            }
            other => Self::other(format!("{context}: {other}")),
        }
    }
}

/// A certificate and its key, PEM.
pub struct Certificate {
    pub chain_pem: String,
    /// Never logged, never stored by Berth: it goes to the server, 0600.
    pub key_pem: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate").finish_non_exhaustive()
    }
}

/// Berth's account at one CA.
pub struct Acme {
    account: Account,
    timeout: Duration,
}

impl Acme {
    /// The account from its stored credentials (JSON), or a new one
    /// registered now, whose credentials the caller must store (sealed):
    /// `(acme, Some(credentials))`.
    pub async fn account(
        config: &AcmeConfig,
        stored: Option<&str>,
    ) -> Result<(Self, Option<String>), AcmeError> {
        let builder = || match &config.directory_root {
            Some(root) => Account::builder_with_root(root)
                .map_err(|e| AcmeError::of("the CA's root certificate", e)),
            None => Account::builder().map_err(|e| AcmeError::of("the HTTP client", e)),
        };
        let timeout = config.validation_timeout;
        if let Some(stored) = stored {
            let credentials: AccountCredentials = serde_json::from_str(stored)
                .map_err(|e| AcmeError::other(format!("the stored ACME account: {e}")))?;
            let account = builder()?
                .from_credentials(credentials)
                .await
                .map_err(|e| AcmeError::of("reaching the CA", e))?;
            return Ok((Self { account, timeout }, None));
        }
        let contact: Vec<&str> = config.contact.as_deref().into_iter().collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                config.directory_url.clone(),
                None,
            )
            .await
            .map_err(|e| AcmeError::of("registering with the CA", e))?;
        let credentials = serde_json::to_string(&credentials)
            .map_err(|e| AcmeError::other(format!("the new ACME account: {e}")))?;
        Ok((Self { account, timeout }, Some(credentials)))
    }

    /// Orders a certificate for `name` over HTTP-01: `publish(token,
    /// key_authorization)` must make the token's response reachable at
    /// `http://<name>/.well-known/acme-challenge/<token>` before it
    /// returns.
    pub async fn issue<P, F>(&self, name: &str, publish: P) -> Result<Certificate, AcmeError>
    where
        P: Fn(String, String) -> F,
        F: Future<Output = Result<(), String>>,
    {
        let identifiers = [Identifier::Dns(name.to_owned())];
        let mut order = self
            .account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| AcmeError::of("ordering the certificate", e))?;
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization =
                authorization.map_err(|e| AcmeError::of("reading the authorization", e))?;
            if authorization.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| AcmeError::other("the CA offers no HTTP-01 challenge"))?;
            if !token_ok(&challenge.token) {
                return Err(AcmeError::other("the CA's challenge token is malformed"));
            }
            publish(
                challenge.token.clone(),
                challenge.key_authorization().as_str().to_owned(),
            )
            .await
            .map_err(|e| AcmeError::other(format!("publishing the challenge: {e}")))?;
            challenge
                .set_ready()
                .await
                .map_err(|e| AcmeError::of("starting the validation", e))?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.timeout);
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| AcmeError::of("validating the domain", e))?;
        if status != OrderStatus::Ready {
            return Err(self.why_invalid(&mut order).await);
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| AcmeError::of("finalizing the order", e))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| AcmeError::of("downloading the certificate", e))?;
        Ok(Certificate { chain_pem, key_pem })
    }

    /// The challenge's own error: what the CA found at the domain.
    async fn why_invalid(&self, order: &mut instant_acme::Order) -> AcmeError {
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authorization)) = authorizations.next().await {
            let Ok(state) = authorization.refresh().await else {
                continue;
            };
            if let Some(problem) = state.challenges.iter().find_map(|c| c.error.clone()) {
                return AcmeError::of("validating the domain", instant_acme::Error::Api(problem));
            }
        }
        AcmeError::other("validating the domain: the CA marked the order invalid")
    }
}

/// A token is base64url (RFC 8555 §8.3): it becomes a file name on the
/// server, so nothing else is let through.
pub fn token_ok(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_base64url_only() {
        assert!(token_ok("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!token_ok(""));
        assert!(!token_ok("../../etc/passwd"));
        assert!(!token_ok("a/b"));
        assert!(!token_ok(&"a".repeat(300)));
    }
}
