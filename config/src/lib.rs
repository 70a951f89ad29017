//! Typed configuration read once from environment variables (SPEC §4).
//!
//! Every process builds its config through [`Env`], so a missing or malformed
//! value always stops start-up with an error naming the variable, and secrets are
//! held in [`SecretString`]/[`MasterKey`] whose `Debug` never prints them.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
pub use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is required but not set")]
    Missing { name: String },
    #[error("{name} is malformed: {reason}")]
    Malformed { name: String, reason: String },
}

type Lookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where values come from: the process environment in binaries, a map in tests.
pub struct Env {
    lookup: Lookup,
}

impl Env {
    pub fn process() -> Self {
        Self {
            lookup: Box::new(|name| std::env::var(name).ok()),
        }
    }

    pub fn from_map(map: HashMap<String, String>) -> Self {
        Self {
            lookup: Box::new(move |name| map.get(name).cloned()),
        }
    }

    /// Empty values count as unset: `FOO=` in an env file means "not configured".
    pub fn optional(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    pub fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.optional(name).ok_or_else(|| ConfigError::Missing {
            name: name.to_owned(),
        })
    }

    pub fn parsed<T: FromStr>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Malformed {
                    name: name.to_owned(),
                    reason: e.to_string(),
                }),
        }
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.optional(name).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
            Some(_) => Err(malformed(name, "expected true or false")),
        }
    }

    pub fn millis(&self, name: &str, default: Duration) -> Result<Duration, ConfigError> {
        let ms: u64 = self.parsed(name, default.as_millis() as u64)?;
        Ok(Duration::from_millis(ms))
    }

    pub fn secret(&self, name: &str) -> Result<SecretString, ConfigError> {
        self.required(name).map(SecretString::from)
    }
}

pub(crate) fn malformed(name: &str, reason: &str) -> ConfigError {
    ConfigError::Malformed {
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A URL for a backing service; the string may hold a password, so it never prints.
#[derive(Clone)]
pub struct ServiceUrl(SecretString);

impl ServiceUrl {
    fn read(env: &Env, name: &str, schemes: &[&str]) -> Result<Self, ConfigError> {
        let raw = env.required(name)?;
        let scheme = raw.split("://").next().unwrap_or_default();
        if !raw.contains("://") || !schemes.contains(&scheme) {
            return Err(malformed(
                name,
                &format!("expected a URL starting with one of {schemes:?}"),
            ));
        }
        Ok(Self(SecretString::from(raw)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceUrl([redacted])")
    }
}

/// The 32-byte AES-256 key from `BERTH_MASTER_KEY` (base64).
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    fn read(env: &Env, name: &str) -> Result<Self, ConfigError> {
        Self::parse(name, &env.required(name)?)
    }

    fn parse(name: &str, raw: &str) -> Result<Self, ConfigError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .map_err(|_| malformed(name, "not valid base64"))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| malformed(name, "must decode to exactly 32 bytes"))?;
        Ok(Self(key))
    }

    /// `BERTH_MASTER_KEY_PREVIOUS`: comma-separated keys that still open old
    /// secrets after a rotation.
    fn read_previous(env: &Env) -> Result<Vec<Self>, ConfigError> {
        const NAME: &str = "BERTH_MASTER_KEY_PREVIOUS";
        env.optional(NAME)
            .map(|raw| {
                raw.split(',')
                    .filter(|k| !k.trim().is_empty())
                    .map(|k| Self::parse(NAME, k))
                    .collect()
            })
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

/// At most `max` requests per `window`, written `MAX/SECONDS` (e.g. `5/600`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub max: u32,
    pub window: Duration,
}

impl RateLimit {
    pub const fn per_secs(max: u32, secs: u64) -> Self {
        Self {
            max,
            window: Duration::from_secs(secs),
        }
    }

    fn read(env: &Env, name: &str, default: RateLimit) -> Result<Self, ConfigError> {
        let Some(raw) = env.optional(name) else {
            return Ok(default);
        };
        let parsed = raw.trim().split_once('/').and_then(|(max, secs)| {
            Some(RateLimit {
                max: max.trim().parse().ok().filter(|m| *m > 0)?,
                window: Duration::from_secs(secs.trim().parse().ok().filter(|s| *s > 0)?),
            })
        });
        parsed.ok_or_else(|| malformed(name, "expected MAX/SECONDS, both at least 1, e.g. 5/600"))
    }
}

mod api;
mod common;
mod mail;
mod ssh;

pub use api::*;
pub use common::*;
pub use mail::*;
pub use ssh::*;

/// `BERTH_BACKUP_DIR`: where backups of Berth's database are written (by the
/// worker) and read (downloads and deletions by the api); default
/// `data/backups`. Both must see the same directory.
pub fn backup_dir(env: &Env) -> Result<std::path::PathBuf, ConfigError> {
    let dir = env
        .optional("BERTH_BACKUP_DIR")
        .unwrap_or_else(|| "data/backups".to_owned());
    if dir.trim().is_empty() {
        return Err(ConfigError::Malformed {
            name: "BERTH_BACKUP_DIR".into(),
            reason: "a directory path".into(),
        });
    }
    Ok(std::path::PathBuf::from(dir))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    const KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn api_env(extra: &[(&str, &str)]) -> Env {
        let mut pairs = vec![
            ("DATABASE_URL", "postgres://u:hunter2@localhost/berth"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("BERTH_MASTER_KEY", KEY),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ];
        pairs.extend_from_slice(extra);
        env(&pairs)
    }

    #[test]
    fn missing_required_names_the_variable() {
        let err = ApiConfig::from_env(&env(&[])).unwrap_err();
        assert_eq!(err.to_string(), "JWT_SECRET is required but not set");
        let err = CommonConfig::from_env(&env(&[("REDIS_URL", "redis://x")])).unwrap_err();
        assert_eq!(err.to_string(), "DATABASE_URL is required but not set");
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let err = ApiConfig::from_env(&api_env(&[("BERTH_MASTER_KEY", "c2hvcnQ=")])).unwrap_err();
        assert!(
            err.to_string().starts_with("BERTH_MASTER_KEY is malformed"),
            "{err}"
        );
        let err = ApiConfig::from_env(&api_env(&[("BERTH_API_ADDR", "nope")])).unwrap_err();
        assert!(
            err.to_string().starts_with("BERTH_API_ADDR is malformed"),
            "{err}"
        );
        let err = ApiConfig::from_env(&api_env(&[("COOKIE_SECURE", "maybe")])).unwrap_err();
        assert!(
            err.to_string().starts_with("COOKIE_SECURE is malformed"),
            "{err}"
        );
        let err = ApiConfig::from_env(&api_env(&[("DATABASE_URL", "mysql://x")])).unwrap_err();
        assert!(
            err.to_string().starts_with("DATABASE_URL is malformed"),
            "{err}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let config = ApiConfig::from_env(&api_env(&[("METRICS_TOKEN", "metrics-secret")])).unwrap();
        let printed = format!("{config:?}");
        for secret in ["hunter2", "0123456789abcdef", "metrics-secret", KEY] {
            assert!(!printed.contains(secret), "{secret} leaked in {printed}");
        }
        assert!(config.cookie_secure);
        assert_eq!(config.addr.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn rate_limits_parse_or_name_the_variable() {
        let config =
            ApiConfig::from_env(&api_env(&[("BERTH_RATE_LIMIT_CONTACT", "3/60")])).unwrap();
        assert_eq!(
            config.contact_rate_limit,
            RateLimit {
                max: 3,
                window: Duration::from_secs(60)
            }
        );
        let config = ApiConfig::from_env(&api_env(&[])).unwrap();
        assert_eq!(config.contact_rate_limit.max, 5);
        for bad in ["3", "0/60", "3/0", "a/b", "3/60/1"] {
            let err =
                ApiConfig::from_env(&api_env(&[("BERTH_RATE_LIMIT_CONTACT", bad)])).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("BERTH_RATE_LIMIT_CONTACT is malformed"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn auth_settings_and_oauth_pairs() {
        let config = ApiConfig::from_env(&api_env(&[])).unwrap();
        assert!(config.auth.password_login && config.auth.email_code_login);
        assert_eq!(config.auth.access_token_ttl, Duration::from_secs(900));
        assert_eq!(
            config.auth.limits.login_failures,
            RateLimit::per_secs(5, 900)
        );
        assert!(config.auth.github.is_none() && config.auth.google.is_none());
        let err = ApiConfig::from_env(&api_env(&[("GITHUB_CLIENT_ID", "abc")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "GITHUB_CLIENT_SECRET is required but not set"
        );
        let config = ApiConfig::from_env(&api_env(&[
            ("GITHUB_CLIENT_ID", "abc"),
            ("GITHUB_CLIENT_SECRET", "shh"),
            ("BERTH_GITHUB_OAUTH_URL", "http://127.0.0.1:9/"),
        ]))
        .unwrap();
        let github = config.auth.github.unwrap();
        assert_eq!(
            github.token_url,
            "http://127.0.0.1:9/login/oauth/access_token"
        );
        assert_eq!(github.user_url, "https://api.github.com/user");
        let err = ApiConfig::from_env(&api_env(&[("BERTH_MASTER_KEY_PREVIOUS", "c2hvcnQ=")]))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("BERTH_MASTER_KEY_PREVIOUS is malformed")
        );
    }

    #[test]
    fn ssh_deny_networks() {
        let config = ApiConfig::from_env(&api_env(&[])).unwrap();
        assert_eq!(config.ssh.deny_networks, SshConfig::default_deny_networks());
        let config =
            ApiConfig::from_env(&api_env(&[("BERTH_SSH_DENY_NETWORKS", "10.0.0.0/8, none")]));
        assert!(
            config
                .unwrap_err()
                .to_string()
                .starts_with("BERTH_SSH_DENY_NETWORKS is malformed")
        );
        let config = ApiConfig::from_env(&api_env(&[("BERTH_SSH_DENY_NETWORKS", "none")])).unwrap();
        assert!(config.ssh.deny_networks.is_empty());
    }

    #[test]
    fn mail_falls_back_to_a_directory() {
        let mail = MailConfig::from_env(&env(&[
            ("BERTH_MAIL_DIR", "/tmp/m"),
            ("BERTH_MASTER_KEY", KEY),
        ]))
        .unwrap();
        assert!(
            matches!(mail.transport, MailTransport::Directory(ref p) if p == &PathBuf::from("/tmp/m"))
        );
        let mail = MailConfig::from_env(&env(&[
            ("SMTP_URL", "smtp://127.0.0.1:2525"),
            ("BERTH_MASTER_KEY", KEY),
        ]))
        .unwrap();
        assert!(matches!(mail.transport, MailTransport::Smtp(_)));
        // Links in mail point where the api is.
        let mail = MailConfig::from_env(&env(&[
            ("BERTH_API_ADDR", "127.0.0.1:9000"),
            ("BERTH_MASTER_KEY", KEY),
        ]))
        .unwrap();
        assert_eq!(mail.public_url, "http://127.0.0.1:9000");
        let mail = MailConfig::from_env(&env(&[
            ("BERTH_PUBLIC_URL", "https://berth.example/"),
            ("BERTH_MASTER_KEY", KEY),
        ]))
        .unwrap();
        assert_eq!(mail.public_url, "https://berth.example");
    }
}
