//! Typed configuration read once from environment variables (SPEC §4).
//!
//! Every process builds its config through [`Env`], so a missing or malformed
//! value always stops start-up with an error naming the variable, and secrets are
//! held in [`SecretString`]/[`MasterKey`] whose `Debug` never prints them.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
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

fn malformed(name: &str, reason: &str) -> ConfigError {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where and how a process logs: standard output for a supervisor (the
/// default), or daily-rotated files in `BERTH_LOG_DIR` keeping the newest
/// `BERTH_LOG_KEEP_FILES`, so a long-running process never fills the disk.
#[derive(Debug, Clone)]
pub struct Logging {
    pub format: LogFormat,
    pub dir: Option<PathBuf>,
    pub keep_files: usize,
}

impl Logging {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let format = match env.optional("BERTH_LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(_) => return Err(malformed("BERTH_LOG_FORMAT", "expected text or json")),
        };
        let keep_files: usize = env.parsed("BERTH_LOG_KEEP_FILES", 7)?;
        if keep_files == 0 {
            return Err(malformed("BERTH_LOG_KEEP_FILES", "must be at least 1"));
        }
        Ok(Self {
            format,
            dir: env.optional("BERTH_LOG_DIR").map(PathBuf::from),
            keep_files,
        })
    }

    /// Installs the process-wide tracing subscriber; `RUST_LOG` filters
    /// (default `info`). With a log directory, `process` names the files
    /// (`berth-api.2026-12-01.log`).
    pub fn init(&self, process: &str) -> Result<(), ConfigError> {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let Some(dir) = &self.dir else {
            // Colour codes only for a terminal; in files and collectors they are noise.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(ansi);
            match self.format {
                LogFormat::Json => builder.json().init(),
                LogFormat::Text => builder.init(),
            }
            return Ok(());
        };
        let files = tracing_appender::rolling::Builder::new()
            .rotation(tracing_appender::rolling::Rotation::DAILY)
            .filename_prefix(process)
            .filename_suffix("log")
            .max_log_files(self.keep_files)
            // `<process>.log` always names the current file.
            .latest_symlink(format!("{process}.log"))
            .build(dir)
            .map_err(|e| malformed("BERTH_LOG_DIR", &format!("cannot write logs there: {e}")))?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(files);
        match self.format {
            LogFormat::Json => builder.json().init(),
            LogFormat::Text => builder.init(),
        }
        Ok(())
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT, so every binary drains the same way.
pub async fn cancel_on_shutdown_signal(shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

/// Settings every Berth process shares.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub database_url: ServiceUrl,
    pub redis_url: ServiceUrl,
    pub logging: Logging,
    pub database_max_connections: u32,
}

impl CommonConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            database_url: ServiceUrl::read(env, "DATABASE_URL", &["postgres", "postgresql"])?,
            redis_url: ServiceUrl::read(
                env,
                "REDIS_URL",
                &["redis", "rediss", "redis+unix", "unix"],
            )?,
            logging: Logging::from_env(env)?,
            database_max_connections: env.parsed("BERTH_DB_MAX_CONNECTIONS", 10)?,
        })
    }
}

/// How Berth reaches users' servers over SSH (api and workers).
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// Server addresses Berth refuses to connect to (checked on the resolved
    /// address at connect time): cloud metadata ranges by default.
    pub deny_networks: Vec<ipnet::IpNet>,
    pub connect_timeout: Duration,
    /// For the server's banner and key exchange, apart from job timeouts.
    pub handshake_timeout: Duration,
    pub io_timeout: Duration,
    /// Output kept per stream of one remote command.
    pub max_output_bytes: usize,
}

impl SshConfig {
    pub fn default_deny_networks() -> Vec<ipnet::IpNet> {
        ["169.254.0.0/16", "fd00:ec2::254/128"]
            .iter()
            .map(|n| n.parse().expect("valid network"))
            .collect()
    }

    /// `BERTH_SSH_DENY_NETWORKS` (comma-separated CIDR ranges, or `none`),
    /// `BERTH_SSH_CONNECT_TIMEOUT_MS`, `BERTH_SSH_HANDSHAKE_TIMEOUT_MS`,
    /// `BERTH_SSH_IO_TIMEOUT_MS`, `BERTH_SSH_MAX_OUTPUT_BYTES`.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        const NAME: &str = "BERTH_SSH_DENY_NETWORKS";
        let deny_networks = match env.optional(NAME) {
            None => Self::default_deny_networks(),
            Some(list) if list.trim() == "none" => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse()
                        .map_err(|e| malformed(NAME, &format!("{s}: {e} (expected CIDR ranges)")))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            deny_networks,
            connect_timeout: env.millis("BERTH_SSH_CONNECT_TIMEOUT_MS", Duration::from_secs(10))?,
            handshake_timeout: env
                .millis("BERTH_SSH_HANDSHAKE_TIMEOUT_MS", Duration::from_secs(10))?,
            io_timeout: env.millis("BERTH_SSH_IO_TIMEOUT_MS", Duration::from_secs(30))?,
            max_output_bytes: env.parsed("BERTH_SSH_MAX_OUTPUT_BYTES", 1024 * 1024)?,
        })
    }
}

/// Settings of `berth-api`.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub common: CommonConfig,
    pub addr: SocketAddr,
    pub public_url: String,
    pub master_key: MasterKey,
    pub previous_master_keys: Vec<MasterKey>,
    pub jwt_secret: SecretString,
    pub metrics_token: Option<SecretString>,
    pub cookie_secure: bool,
    pub run_migrations: bool,
    pub max_json_body_bytes: usize,
    pub default_admin_email: Option<String>,
    pub default_admin_password: Option<SecretString>,
    /// Take the client address from the last `X-Forwarded-For` entry (the one
    /// the reverse proxy in front of Berth added) instead of the peer address.
    pub trust_proxy: bool,
    pub contact_rate_limit: RateLimit,
    pub auth: AuthConfig,
    pub ssh: SshConfig,
    /// Server creations per user (`BERTH_RATE_LIMIT_SERVER_CREATE`).
    pub server_create_rate_limit: RateLimit,
    /// `POST /servers/{id}/validate` per user (`BERTH_RATE_LIMIT_SERVER_VALIDATE`).
    pub server_validate_rate_limit: RateLimit,
    pub http: HttpLimits,
    pub uploads: UploadLimits,
}

/// What one user may keep in `POST /uploads`.
#[derive(Debug, Clone, Copy)]
pub struct UploadLimits {
    /// Bytes of one image (`BERTH_UPLOAD_MAX_BYTES`, 2 MiB).
    pub max_bytes: usize,
    /// Width and height in pixels (`BERTH_UPLOAD_MAX_PIXELS`, 4096 each way).
    pub max_dimension: u32,
    /// Images kept per user (`BERTH_UPLOADS_PER_USER`, 20).
    pub per_user: u32,
}

impl UploadLimits {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let max_bytes: usize = env.parsed("BERTH_UPLOAD_MAX_BYTES", 2 * 1024 * 1024)?;
        if !(1024..=64 * 1024 * 1024).contains(&max_bytes) {
            return Err(malformed(
                "BERTH_UPLOAD_MAX_BYTES",
                "must be between 1024 and 67108864",
            ));
        }
        let max_dimension: u32 = env.parsed("BERTH_UPLOAD_MAX_PIXELS", 4096)?;
        if max_dimension == 0 {
            return Err(malformed("BERTH_UPLOAD_MAX_PIXELS", "must be at least 1"));
        }
        Ok(Self {
            max_bytes,
            max_dimension,
            per_user: env.parsed("BERTH_UPLOADS_PER_USER", 20)?,
        })
    }
}

/// What one client may hold of the api's HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A handler that has not answered by then is cancelled with a 408.
    pub request_timeout: Duration,
    /// A connection that does not finish a request's headers this long after
    /// opening, or after its previous answer (idle keep-alive), is closed.
    pub header_timeout: Duration,
    /// Open connections at most; past it new ones wait in the listen backlog.
    pub max_connections: usize,
}

impl HttpLimits {
    /// `BERTH_HTTP_REQUEST_TIMEOUT_SECS` (30), `BERTH_HTTP_HEADER_TIMEOUT_SECS`
    /// (10), `BERTH_HTTP_MAX_CONNECTIONS` (4096).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let secs = |name: &str, default: u64| -> Result<Duration, ConfigError> {
            match env.parsed::<u64>(name, default)? {
                0 => Err(malformed(name, "must be at least 1")),
                n => Ok(Duration::from_secs(n)),
            }
        };
        let max_connections: usize = env.parsed("BERTH_HTTP_MAX_CONNECTIONS", 4096)?;
        if max_connections == 0 {
            return Err(malformed(
                "BERTH_HTTP_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }
        Ok(Self {
            request_timeout: secs("BERTH_HTTP_REQUEST_TIMEOUT_SECS", 30)?,
            header_timeout: secs("BERTH_HTTP_HEADER_TIMEOUT_SECS", 10)?,
            max_connections,
        })
    }
}

/// Sign-in methods, token lifetimes and the limits of SPEC §3.2.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub password_login: bool,
    pub email_code_login: bool,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// Absolute lifetime of a session, however often it is refreshed.
    pub session_max_age: Duration,
    pub limits: AuthLimits,
    pub github: Option<OAuthProvider>,
    pub google: Option<OAuthProvider>,
}

#[derive(Debug, Clone, Copy)]
pub struct AuthLimits {
    /// Per client address.
    pub register: RateLimit,
    /// Per client address.
    pub login: RateLimit,
    /// Failed sign-ins per account (or unknown identifier) and client address.
    pub login_failures: RateLimit,
    /// Failed sign-ins per account from all addresses; past it, sign-ins to
    /// the account go through the slow lane.
    pub login_failures_account: RateLimit,
    /// Sign-in attempts per account while over the account ceiling.
    pub login_slow_lane: RateLimit,
    /// Wrong second-factor codes per account, from all addresses.
    pub second_factor_failures: RateLimit,
    /// Per client address.
    pub csrf: RateLimit,
    /// Mails with a code or link, per recipient address.
    pub email_send: RateLimit,
    /// Registration code resends, per address: the cooldown.
    pub otp_resend: RateLimit,
    /// Code and token checks (verify, 2FA, reset), per client address.
    pub code_attempts: RateLimit,
}

/// An OAuth 2.0 provider's client settings and endpoints.
#[derive(Debug, Clone)]
pub struct OAuthProvider {
    pub client_id: String,
    pub client_secret: SecretString,
    pub authorize_url: String,
    pub token_url: String,
    pub user_url: String,
    /// GitHub only: where the verified addresses are listed.
    pub emails_url: Option<String>,
}

fn http_url(env: &Env, name: &str, default: &str) -> Result<String, ConfigError> {
    let url = env.optional(name).unwrap_or_else(|| default.to_owned());
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(malformed(name, "expected an http(s) URL"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn oauth_client(env: &Env, prefix: &str) -> Result<Option<(String, SecretString)>, ConfigError> {
    let id_name = format!("{prefix}_CLIENT_ID");
    let secret_name = format!("{prefix}_CLIENT_SECRET");
    match (env.optional(&id_name), env.optional(&secret_name)) {
        (None, None) => Ok(None),
        (Some(id), Some(secret)) => Ok(Some((id, SecretString::from(secret)))),
        (Some(_), None) => Err(ConfigError::Missing { name: secret_name }),
        (None, Some(_)) => Err(ConfigError::Missing { name: id_name }),
    }
}

impl AuthConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let github = match oauth_client(env, "GITHUB")? {
            None => None,
            Some((client_id, client_secret)) => {
                let web = http_url(env, "BERTH_GITHUB_OAUTH_URL", "https://github.com")?;
                let api = http_url(env, "BERTH_GITHUB_API_URL", "https://api.github.com")?;
                Some(OAuthProvider {
                    client_id,
                    client_secret,
                    authorize_url: format!("{web}/login/oauth/authorize"),
                    token_url: format!("{web}/login/oauth/access_token"),
                    user_url: format!("{api}/user"),
                    emails_url: Some(format!("{api}/user/emails")),
                })
            }
        };
        let google = match oauth_client(env, "GOOGLE")? {
            None => None,
            Some((client_id, client_secret)) => Some(OAuthProvider {
                client_id,
                client_secret,
                authorize_url: http_url(
                    env,
                    "BERTH_GOOGLE_AUTH_URL",
                    "https://accounts.google.com/o/oauth2/v2/auth",
                )?,
                token_url: http_url(
                    env,
                    "BERTH_GOOGLE_TOKEN_URL",
                    "https://oauth2.googleapis.com/token",
                )?,
                user_url: http_url(
                    env,
                    "BERTH_GOOGLE_USERINFO_URL",
                    "https://openidconnect.googleapis.com/v1/userinfo",
                )?,
                emails_url: None,
            }),
        };
        let secs = |name: &str, default: u64| -> Result<Duration, ConfigError> {
            let value: u64 = env.parsed(name, default)?;
            if value == 0 {
                return Err(malformed(name, "must be at least 1"));
            }
            Ok(Duration::from_secs(value))
        };
        Ok(Self {
            password_login: env.bool("BERTH_AUTH_PASSWORD_ENABLED", true)?,
            email_code_login: env.bool("BERTH_AUTH_EMAIL_CODE_ENABLED", true)?,
            access_token_ttl: secs("BERTH_ACCESS_TOKEN_TTL_SECS", 15 * 60)?,
            refresh_token_ttl: secs("BERTH_REFRESH_TOKEN_TTL_SECS", 30 * 24 * 3600)?,
            session_max_age: secs("BERTH_SESSION_MAX_AGE_SECS", 90 * 24 * 3600)?,
            limits: AuthLimits {
                register: RateLimit::read(
                    env,
                    "BERTH_RATE_LIMIT_REGISTER",
                    RateLimit::per_secs(10, 60),
                )?,
                login: RateLimit::read(env, "BERTH_RATE_LIMIT_LOGIN", RateLimit::per_secs(10, 60))?,
                login_failures: RateLimit::read(
                    env,
                    "BERTH_RATE_LIMIT_LOGIN_FAILURES",
                    RateLimit::per_secs(5, 15 * 60),
                )?,
                login_failures_account: RateLimit::read(
                    env,
                    "BERTH_RATE_LIMIT_LOGIN_FAILURES_ACCOUNT",
                    RateLimit::per_secs(100, 15 * 60),
                )?,
                login_slow_lane: RateLimit::read(
                    env,
                    "BERTH_RATE_LIMIT_LOGIN_SLOW_LANE",
                    RateLimit::per_secs(1, 3),
                )?,
                second_factor_failures: RateLimit::read(
                    env,
                    "BERTH_RATE_LIMIT_SECOND_FACTOR_FAILURES",
                    RateLimit::per_secs(10, 15 * 60),
                )?,
                csrf: RateLimit::read(env, "BERTH_RATE_LIMIT_CSRF", RateLimit::per_secs(60, 60))?,
                email_send: RateLimit::read(
                    env,
                    "BERTH_RATE_LIMIT_EMAIL_SEND",
                    RateLimit::per_secs(5, 3600),
                )?,
                otp_resend: RateLimit::read(
                    env,
                    "BERTH_RATE_LIMIT_OTP_RESEND",
                    RateLimit::per_secs(1, 60),
                )?,
                code_attempts: RateLimit::read(
                    env,
                    "BERTH_RATE_LIMIT_CODE_ATTEMPTS",
                    RateLimit::per_secs(30, 60),
                )?,
            },
            github,
            google,
        })
    }
}

fn api_addr(env: &Env) -> Result<SocketAddr, ConfigError> {
    env.parsed("BERTH_API_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))
}

/// `BERTH_PUBLIC_URL` without a trailing slash; by default the api's own address.
/// The api and the worker (links in mail) must agree on it.
fn public_url(env: &Env) -> Result<String, ConfigError> {
    let url = match env.optional("BERTH_PUBLIC_URL") {
        Some(url) => url,
        None => format!("http://{}", api_addr(env)?),
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(malformed("BERTH_PUBLIC_URL", "expected an http(s) URL"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

impl ApiConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let addr = api_addr(env)?;
        let public_url = public_url(env)?;
        let jwt_secret = env.secret("JWT_SECRET")?;
        if jwt_secret.expose_secret().len() < 32 {
            return Err(malformed("JWT_SECRET", "must be at least 32 characters"));
        }
        Ok(Self {
            common: CommonConfig::from_env(env)?,
            addr,
            public_url,
            master_key: MasterKey::read(env, "BERTH_MASTER_KEY")?,
            previous_master_keys: MasterKey::read_previous(env)?,
            jwt_secret,
            metrics_token: env.optional("METRICS_TOKEN").map(SecretString::from),
            cookie_secure: env.bool("COOKIE_SECURE", true)?,
            run_migrations: env.bool("BERTH_RUN_MIGRATIONS", true)?,
            max_json_body_bytes: env.parsed("BERTH_MAX_JSON_BODY_BYTES", 1024 * 1024)?,
            default_admin_email: env.optional("DEFAULT_ADMIN_EMAIL"),
            default_admin_password: env
                .optional("DEFAULT_ADMIN_PASSWORD")
                .map(SecretString::from),
            trust_proxy: env.bool("BERTH_TRUST_PROXY", false)?,
            contact_rate_limit: RateLimit::read(
                env,
                "BERTH_RATE_LIMIT_CONTACT",
                RateLimit::per_secs(5, 600),
            )?,
            auth: AuthConfig::from_env(env)?,
            ssh: SshConfig::from_env(env)?,
            server_create_rate_limit: RateLimit::read(
                env,
                "BERTH_RATE_LIMIT_SERVER_CREATE",
                RateLimit::per_secs(8, 600),
            )?,
            server_validate_rate_limit: RateLimit::read(
                env,
                "BERTH_RATE_LIMIT_SERVER_VALIDATE",
                RateLimit::per_secs(20, 600),
            )?,
            http: HttpLimits::from_env(env)?,
            uploads: UploadLimits::from_env(env)?,
        })
    }
}

/// How `berth-worker` delivers mail: SMTP when `SMTP_URL` is set, else `.eml` files.
#[derive(Debug, Clone)]
pub enum MailTransport {
    Smtp(ServiceUrl),
    Directory(PathBuf),
}

#[derive(Debug, Clone)]
pub struct MailConfig {
    pub transport: MailTransport,
    /// Opens the codes and links that mail jobs carry sealed.
    pub master_key: MasterKey,
    pub previous_master_keys: Vec<MasterKey>,
    pub from: String,
    pub public_url: String,
}

impl MailConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let transport = if env.optional("SMTP_URL").is_some() {
            MailTransport::Smtp(ServiceUrl::read(env, "SMTP_URL", &["smtp", "smtps"])?)
        } else {
            MailTransport::Directory(
                env.optional("BERTH_MAIL_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("./data/mail")),
            )
        };
        let from = env
            .optional("MAIL_FROM")
            .unwrap_or_else(|| "Berth <berth@localhost>".to_owned());
        Ok(Self {
            transport,
            master_key: MasterKey::read(env, "BERTH_MASTER_KEY")?,
            previous_master_keys: MasterKey::read_previous(env)?,
            from,
            public_url: public_url(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
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
