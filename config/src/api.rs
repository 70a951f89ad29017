//! `berth-api`'s settings: address and URL, HTTP limits, uploads, sign-in
//! and OAuth.

use std::net::SocketAddr;
use std::time::Duration;

use crate::*;

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
    /// `POST /deployments/upload`: bytes of the archive as sent
    /// (`BERTH_DEPLOY_ARCHIVE_MAX_BYTES`, 100 MiB) and of its files unpacked
    /// (`BERTH_DEPLOY_ARCHIVE_MAX_UNPACKED_BYTES`, 1 GiB).
    pub deploy_archive_max_bytes: usize,
    pub deploy_archive_max_unpacked_bytes: u64,
    /// [`crate::backup_dir`].
    pub backup_dir: std::path::PathBuf,
    pub terminal: TerminalLimits,
    pub files: FileLimits,
}

/// What the file manager moves in one request (SPEC §3.7).
#[derive(Debug, Clone, Copy)]
pub struct FileLimits {
    /// A text file read or saved (`BERTH_FILES_READ_MAX_BYTES`, 5 MiB).
    pub read_max_bytes: u64,
    /// A file downloaded (`BERTH_FILES_DOWNLOAD_MAX_BYTES`, 1 GiB).
    pub download_max_bytes: u64,
    /// A file uploaded (`BERTH_FILES_UPLOAD_MAX_BYTES`, 256 MiB).
    pub upload_max_bytes: u64,
    /// An archive's files together: what compress gathers and what
    /// decompress unpacks, and the archive file itself
    /// (`BERTH_FILES_ARCHIVE_MAX_BYTES`, 1 GiB).
    pub archive_max_bytes: u64,
    /// How long a request that moves whole files may take (upload, copy,
    /// compress, decompress, search, delete; and an archive deploy's
    /// upload) instead of `BERTH_HTTP_REQUEST_TIMEOUT_SECS`
    /// (`BERTH_FILES_TRANSFER_TIMEOUT_SECS`, 3600). A download's body
    /// streams past it.
    pub transfer_timeout: Duration,
}

impl FileLimits {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let positive = |name: &str, default: u64| -> Result<u64, ConfigError> {
            match env.parsed(name, default)? {
                0 => Err(malformed(name, "must be at least 1")),
                n => Ok(n),
            }
        };
        const MIB: u64 = 1024 * 1024;
        Ok(Self {
            read_max_bytes: positive("BERTH_FILES_READ_MAX_BYTES", 5 * MIB)?,
            download_max_bytes: positive("BERTH_FILES_DOWNLOAD_MAX_BYTES", 1024 * MIB)?,
            upload_max_bytes: positive("BERTH_FILES_UPLOAD_MAX_BYTES", 256 * MIB)?,
            archive_max_bytes: positive("BERTH_FILES_ARCHIVE_MAX_BYTES", 1024 * MIB)?,
            transfer_timeout: Duration::from_secs(positive(
                "BERTH_FILES_TRANSFER_TIMEOUT_SECS",
                3600,
            )?),
        })
    }
}

/// What the web terminal allows (SPEC §3.7).
#[derive(Debug, Clone, Copy)]
pub struct TerminalLimits {
    /// A terminal with no input and no output this long is closed
    /// (`BERTH_TERMINAL_IDLE_TIMEOUT_SECS`, 900).
    pub idle_timeout: Duration,
    /// Terminals one user has open at once, on every api process
    /// (`BERTH_TERMINAL_MAX_SESSIONS`, 4).
    pub max_per_user: u32,
}

impl TerminalLimits {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let idle: u64 = env.parsed("BERTH_TERMINAL_IDLE_TIMEOUT_SECS", 900)?;
        if idle == 0 {
            return Err(malformed(
                "BERTH_TERMINAL_IDLE_TIMEOUT_SECS",
                "must be at least 1",
            ));
        }
        let max_per_user: u32 = env.parsed("BERTH_TERMINAL_MAX_SESSIONS", 4)?;
        if max_per_user == 0 {
            return Err(malformed(
                "BERTH_TERMINAL_MAX_SESSIONS",
                "must be at least 1",
            ));
        }
        Ok(Self {
            idle_timeout: Duration::from_secs(idle),
            max_per_user,
        })
    }
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
    /// GitHub only: the signed-in user's repositories (`GET /user/repos`).
    pub repos_url: Option<String>,
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
                    repos_url: Some(format!("{api}/user/repos")),
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
                repos_url: None,
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
pub(crate) fn public_url(env: &Env) -> Result<String, ConfigError> {
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
            deploy_archive_max_bytes: env
                .parsed("BERTH_DEPLOY_ARCHIVE_MAX_BYTES", 100 * 1024 * 1024)?,
            deploy_archive_max_unpacked_bytes: env.parsed(
                "BERTH_DEPLOY_ARCHIVE_MAX_UNPACKED_BYTES",
                1024 * 1024 * 1024,
            )?,
            backup_dir: crate::backup_dir(env)?,
            terminal: TerminalLimits::from_env(env)?,
            files: FileLimits::from_env(env)?,
        })
    }
}
