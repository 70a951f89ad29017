//! `probe` queue: work on users' servers over SSH (`berth-ssh`).
//!
//! Validation connects with the stored credentials (opened from their sealed
//! form, bound to the server's row), pins the host key on the first success,
//! and records OS, architecture and whether docker and nginx are there. A
//! changed host key is recorded as offered, the owner is notified, and the job
//! fails without retrying; so do refused credentials. An unreachable server is
//! a retryable failure, retried with backoff as far as the `probe` queue's
//! attempt cap allows (1 by default: the owner validates again, and probes
//! come every minute).

use std::time::Duration;

use berth_config::{SecretString, SshConfig};
use berth_jobs::runtime::{JobContext, JobFailure};
use berth_jobs::{ServerAction, ServerJob, server_secret_binding};
use berth_secrets::Keyring;
use berth_ssh::{AddressPolicy, Auth, Connection, ShellCommand, SshError, Target, Timeouts};
use sqlx::PgPool;
use uuid::Uuid;

/// Fixed text: what validation asks a server.
const FACTS: &str = "if [ -r /etc/os-release ]; then . /etc/os-release; fi; \
    echo \"os=${PRETTY_NAME:-$(uname -s)}\"; echo \"arch=$(uname -m)\"; \
    if command -v docker >/dev/null 2>&1; then echo \"docker=$(docker --version 2>/dev/null | head -n 1)\"; fi; \
    if command -v nginx >/dev/null 2>&1; then echo \"nginx=$(nginx -v 2>&1 | head -n 1)\"; fi";
const FACTS_DEADLINE: Duration = Duration::from_secs(30);

pub struct ServerJobs {
    pool: PgPool,
    keys: Keyring,
    policy: AddressPolicy,
    timeouts: Timeouts,
}

#[derive(sqlx::FromRow)]
struct ServerRow {
    id: Uuid,
    owner_user_id: Uuid,
    name: String,
    host: String,
    port: i32,
    username: String,
    auth_type: String,
    secret: String,
    passphrase: Option<String>,
    host_key: Option<String>,
}

/// What validation learned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub os: Option<String>,
    pub arch: Option<String>,
    pub docker: Option<String>,
    pub nginx: Option<String>,
}

pub fn parse_facts(output: &str) -> Facts {
    let mut facts = Facts::default();
    for line in output.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value =
            Some(value.trim().chars().take(200).collect::<String>()).filter(|v| !v.is_empty());
        match key {
            "os" => facts.os = value,
            "arch" => facts.arch = value,
            "docker" => facts.docker = value,
            "nginx" => facts.nginx = value,
            _ => {}
        }
    }
    facts
}

impl ServerJobs {
    pub fn new(pool: PgPool, keys: Keyring, ssh: &SshConfig) -> Self {
        Self {
            pool,
            keys,
            policy: AddressPolicy::new(ssh.deny_networks.clone()),
            timeouts: Timeouts {
                connect: ssh.connect_timeout,
                io: ssh.io_timeout,
            },
        }
    }

    pub async fn run(&self, job: ServerJob, _ctx: JobContext) -> Result<(), JobFailure> {
        match job.action {
            ServerAction::Validate => self.validate(job.server_id).await,
        }
    }

    async fn load(&self, id: Uuid) -> Result<Option<ServerRow>, JobFailure> {
        sqlx::query_as(
            "SELECT id, owner_user_id, name, host, port, username, auth_type, secret, passphrase, host_key \
             FROM servers WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| JobFailure::retryable(format!("cannot read the server: {e}")))
    }

    fn target(&self, row: &ServerRow) -> Result<Target, JobFailure> {
        let id = row.id.to_string();
        let open = |column: &str, sealed: &str| {
            self.keys
                .open_string(sealed, server_secret_binding(&id, column))
                .map(SecretString::from)
                .map_err(|e| {
                    JobFailure::permanent(format!(
                        "the server's credentials do not open with BERTH_MASTER_KEY: {e}"
                    ))
                })
        };
        let auth = if row.auth_type == "password" {
            Auth::Password(open("secret", &row.secret)?)
        } else {
            Auth::Key {
                private_key: open("secret", &row.secret)?,
                passphrase: row
                    .passphrase
                    .as_deref()
                    .map(|p| open("passphrase", p))
                    .transpose()?,
            }
        };
        Ok(Target {
            host: row.host.clone(),
            port: row.port as u16,
            username: row.username.clone(),
            auth,
            pinned_host_key: row.host_key.clone(),
        })
    }

    async fn connect(&self, row: &ServerRow) -> Result<Connection, JobFailure> {
        let target = self.target(row)?;
        match berth_ssh::connect(&target, &self.policy, self.timeouts).await {
            Ok(conn) => Ok(conn),
            Err(e) => Err(self.connection_failed(row, e).await),
        }
    }

    /// Records why a server could not be reached and turns it into the job's failure.
    async fn connection_failed(&self, row: &ServerRow, error: SshError) -> JobFailure {
        let reason = format!("{}: {error}", error.code());
        let offered = match &error {
            SshError::HostKeyMismatch { actual, .. } => Some(actual.clone()),
            _ => None,
        };
        let status = if error.is_transient() {
            "offline"
        } else {
            "error"
        };
        let recorded = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "UPDATE servers SET status = $2, status_reason = $3, \
                 host_key_offered = COALESCE($4, host_key_offered), updated_at = now() WHERE id = $1",
            )
            .bind(row.id)
            .bind(status)
            .bind(&reason)
            .bind(&offered)
            .execute(&mut *tx)
            .await?;
            if let Some(offered) = &offered {
                sqlx::query(
                    "INSERT INTO notifications (id, user_id, kind, title, body, data) \
                     VALUES ($1, $2, 'host_key_mismatch', $3, $4, $5)",
                )
                .bind(Uuid::new_v4())
                .bind(row.owner_user_id)
                .bind(format!("{}: host key changed", row.name))
                .bind(format!(
                    "{} presented a different SSH host key ({offered}). Berth stopped connecting to it. \
                     If the server was reinstalled, accept the new key; otherwise treat this as an attack.",
                    row.name
                ))
                .bind(serde_json::json!({ "serverId": row.id, "offered": offered }))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        };
        if let Err(e) = recorded.await {
            tracing::warn!(error = %e, server = %row.id, "cannot record the server's state");
        }
        if error.is_transient() {
            JobFailure::retryable(reason)
        } else {
            JobFailure::permanent(reason)
        }
    }

    async fn validate(&self, id: Uuid) -> Result<(), JobFailure> {
        let Some(row) = self.load(id).await? else {
            // Deleted since: nothing to validate.
            return Ok(());
        };
        let conn = self.connect(&row).await?;
        let output = match conn.exec(&ShellCommand::new(FACTS), FACTS_DEADLINE).await {
            Ok(output) => output,
            Err(e) => return Err(self.connection_failed(&row, e).await),
        };
        let facts = parse_facts(&output.stdout);
        sqlx::query(
            "UPDATE servers SET status = 'online', status_reason = NULL, \
               host_key = COALESCE(host_key, $2), host_key_offered = NULL, \
               os = $3, arch = $4, docker_version = $5, nginx_version = $6, \
               validated_at = now(), updated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(conn.host_key())
        .bind(&facts.os)
        .bind(&facts.arch)
        .bind(&facts.docker)
        .bind(&facts.nginx)
        .execute(&self.pool)
        .await
        .map_err(|e| JobFailure::retryable(format!("cannot record the validation: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts() {
        let facts = parse_facts(
            "os=Debian GNU/Linux 12 (bookworm)\narch=x86_64\ndocker=Docker version 28.2.2, build e6534b4\nnoise\n",
        );
        assert_eq!(facts.os.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(facts.arch.as_deref(), Some("x86_64"));
        assert_eq!(
            facts.docker.as_deref(),
            Some("Docker version 28.2.2, build e6534b4")
        );
        assert_eq!(facts.nginx, None);
    }
}
