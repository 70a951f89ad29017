//! One way to reach a user's server, for the workers' jobs and (later) the
//! api's terminal and file manager.
//!
//! [`Remote`] loads a server's row, opens its sealed credentials (bound to
//! the row), connects with the pinned host key checked at every connect,
//! and keeps the authenticated session for the next job on that server
//! ([`sessions`]): each command runs on a new channel of it, side by side
//! with others. A session the server dropped is replaced transparently for
//! a command that never started. [`ops`] are typed operations built on it:
//! docker, nginx, git, files and HTTP checks, each a command of fixed text
//! and checked, quoted arguments; secrets reach the server through stdin or
//! a file, never a command line.

pub mod ops;
pub mod sessions;

use berth_config::{SecretString, SshConfig};
use berth_secrets::{Keyring, server_secret_binding};
use berth_ssh::{AddressPolicy, Auth, Limits, SshError, Target};
use sqlx::PgPool;
use uuid::Uuid;

pub use sessions::{Session, SessionPool, SessionStats};

/// A server as stored: where it is, whose it is, its sealed credentials and
/// its pinned host key.
#[derive(Clone, sqlx::FromRow)]
pub struct Server {
    pub id: Uuid,
    pub owner_user_id: Uuid,
    pub name: String,
    host: String,
    port: i32,
    username: String,
    auth_type: String,
    secret: String,
    passphrase: Option<String>,
    /// `SHA256:…`; `None` until the first successful validation pins it.
    pub host_key: Option<String>,
    /// How many builds run on it at once.
    pub build_slots: i32,
    /// Where Berth writes its nginx sites.
    pub nginx_conf_dir: String,
    /// nginx's main config file (`-c`); `None`: nginx's own default.
    pub nginx_conf_file: Option<String>,
    pub http_port: i32,
    pub https_port: i32,
    /// Berth's directory on the server.
    pub data_dir: String,
    /// What generated host names end in; `None`: the address under sslip.io.
    pub hostname_base: Option<String>,
}

impl Server {
    /// The address it is reached at (a host name or an IP address).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// What a cached session was opened with: a change of address, user,
    /// credentials or pin means a new session.
    fn identity(&self) -> String {
        format!(
            "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
            self.host,
            self.port,
            self.username,
            self.secret,
            self.passphrase.as_deref().unwrap_or(""),
            self.host_key.as_deref().unwrap_or("")
        )
    }
}

/// Reaches servers: loads them, opens their credentials, reuses sessions.
pub struct Remote {
    pool: PgPool,
    keys: Keyring,
    policy: AddressPolicy,
    limits: Limits,
    sessions: SessionPool,
}

impl Remote {
    pub fn new(pool: PgPool, keys: Keyring, ssh: &SshConfig) -> Self {
        Self {
            pool,
            keys,
            policy: AddressPolicy::new(ssh.deny_networks.clone()),
            limits: Limits::from(ssh),
            sessions: SessionPool::new(ssh.session_idle, ssh.max_sessions),
        }
    }

    pub async fn load(&self, id: Uuid) -> Result<Option<Server>, sqlx::Error> {
        sqlx::query_as!(
            Server,
            "SELECT id, owner_user_id, name, host, port, username, auth_type, secret, passphrase, \
                    host_key, build_slots, nginx_conf_dir, nginx_conf_file, http_port, https_port, \
                    data_dir, hostname_base \
             FROM servers WHERE id = $1",
            id,
        )
        .fetch_optional(&self.pool)
        .await
    }

    /// Pins `host_key` as the server's, unless one is pinned already (a
    /// re-pin is the owner's decision, through the api).
    pub async fn pin_host_key(&self, id: Uuid, host_key: &str) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "UPDATE servers SET host_key = COALESCE(host_key, $2) WHERE id = $1",
            id,
            host_key
        )
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// The connection settings, credentials opened. A credential that does not
    /// open (wrong key, altered row) fails closed, as refused credentials.
    fn target(&self, server: &Server) -> Result<Target, SshError> {
        let id = server.id.to_string();
        let open = |column: &str, sealed: &str| {
            self.keys
                .open_string(sealed, server_secret_binding(&id, column))
                .map(SecretString::from)
                .map_err(|e| {
                    SshError::AuthFailed(format!(
                        "the stored credentials do not open with BERTH_MASTER_KEY: {e}"
                    ))
                })
        };
        let auth = if server.auth_type == "password" {
            Auth::Password(open("secret", &server.secret)?)
        } else {
            Auth::Key {
                private_key: open("secret", &server.secret)?,
                passphrase: server
                    .passphrase
                    .as_deref()
                    .map(|p| open("passphrase", p))
                    .transpose()?,
            }
        };
        Ok(Target {
            host: server.host.clone(),
            port: u16::try_from(server.port)
                .map_err(|_| SshError::Denied(format!("port {} is out of range", server.port)))?,
            username: server.username.clone(),
            auth,
            pinned_host_key: server.host_key.clone(),
        })
    }

    /// A session to `server`: the one kept from an earlier job when it was
    /// opened with the same settings and is not lost, otherwise a new one
    /// (host key checked against the pin).
    pub async fn session(&self, server: &Server) -> Result<Session, SshError> {
        let identity = server.identity();
        if let Some(conn) = self.sessions.checkout(server.id, &identity) {
            return Ok(Session::new(
                conn,
                true,
                self.reconnector(server, identity)?,
            ));
        }
        let reconnect = self.reconnector(server, identity)?;
        let conn = reconnect.connect().await?;
        Ok(Session::new(conn, false, reconnect))
    }

    fn reconnector(
        &self,
        server: &Server,
        identity: String,
    ) -> Result<sessions::Reconnect, SshError> {
        Ok(sessions::Reconnect {
            server_id: server.id,
            identity,
            target: self.target(server)?,
            policy: self.policy.clone(),
            limits: self.limits,
            pool: self.sessions.clone(),
        })
    }

    /// Closes the kept session of a server (deleted, or its settings changed).
    pub fn forget(&self, server_id: Uuid) {
        self.sessions.forget(server_id);
    }

    pub fn stats(&self) -> SessionStats {
        self.sessions.stats()
    }
}
