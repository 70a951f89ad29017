//! `server.validate`: connect, pin the host key on the first success, record
//! OS, architecture, docker and nginx, and take the first sample.

use std::sync::Arc;
use std::time::Duration;

use berth_jobs::ServerValidate;
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_remote::ops::{On, OpError, nginx::Nginx};
use berth_remote::{Server, Session};
use berth_ssh::{Arg, ShellCommand, SshError};
use tokio_util::sync::CancellationToken;

use crate::probe::{self, PROBE_DEADLINE};
use crate::servers::ServerJobs;

/// Fixed text: what validation asks a server.
const FACTS: &str = "if [ -r /etc/os-release ]; then . /etc/os-release; fi; \
    echo \"os=${PRETTY_NAME:-$(uname -s)}\"; echo \"arch=$(uname -m)\"; \
    if command -v docker >/dev/null 2>&1; then echo \"docker=$(docker --version 2>/dev/null | head -n 1)\"; fi; \
    if command -v nginx >/dev/null 2>&1; then echo \"nginx=$(nginx -v 2>&1 | head -n 1)\"; fi";
const FACTS_DEADLINE: Duration = Duration::from_secs(30);

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

/// Whether nginx accepts its configuration with the server's settings
/// (`nginx -t`, with `-c` when one is set), and nginx's words when not. Only
/// a lost connection fails the validation: a refused check is a finding.
async fn nginx_check(
    session: &Session,
    row: &Server,
    cancel: &CancellationToken,
) -> Result<Result<(), String>, SshError> {
    let config = match row.nginx_conf_file.as_deref().map(Arg::path).transpose() {
        Ok(config) => config,
        Err(refused) => return Ok(Err(refused.to_string())),
    };
    match (Nginx { config }).test(&On::new(session, cancel)).await {
        Ok(()) => Ok(Ok(())),
        Err(OpError::Ssh(e)) => Err(e),
        Err(other) => Ok(Err(other.to_string())),
    }
}

pub struct ValidateServer(pub Arc<ServerJobs>);

impl JobHandler for ValidateServer {
    type Job = ServerValidate;

    async fn run(&self, job: ServerValidate, ctx: JobContext) -> Result<(), JobFailure> {
        let (servers, id) = (&self.0, job.server_id);
        let Some(row) = servers.load(id).await? else {
            // Deleted since: nothing to validate.
            return Ok(());
        };
        let facts = async {
            let conn = servers.connect(&row).await?;
            let output = conn
                .exec(&ShellCommand::new(FACTS), FACTS_DEADLINE, &ctx.cancel)
                .await?;
            let facts = parse_facts(&output.stdout);
            // The first sample, on the same connection, so health is there at once.
            let sample = match conn
                .exec(
                    &ShellCommand::new(probe::FIRST_PROBE_COMMAND),
                    PROBE_DEADLINE,
                    &ctx.cancel,
                )
                .await
                .and_then(|out| probe::parse(&out.stdout, None).map_err(SshError::Protocol))
            {
                Ok(sample) => Some(sample),
                Err(e) => {
                    tracing::warn!(error = %e, server = %row.id, "validated, but the first probe failed");
                    None
                }
            };
            let nginx = match facts.nginx {
                Some(_) => Some(nginx_check(&conn, &row, &ctx.cancel).await?),
                None => None,
            };
            Ok::<_, SshError>((conn.host_key(), facts, sample, nginx))
        }
        .await;
        let (host_key, facts, sample, nginx) = match facts {
            Ok(found) => found,
            Err(error) => {
                if let Err(e) = servers.record(&row, Err(&error), false).await {
                    tracing::warn!(error = %e, server = %row.id, "cannot record the server's state");
                }
                return Err(ServerJobs::failure(&error));
            }
        };
        let recorded =
            |e: sqlx::Error| JobFailure::retryable(format!("cannot record the validation: {e}"));
        servers
            .remote
            .pin_host_key(id, &host_key)
            .await
            .map_err(recorded)?;
        let (nginx_ok, nginx_error) = match nginx {
            Some(Ok(())) => (Some(true), None),
            Some(Err(reason)) => (Some(false), Some(reason)),
            None => (None, None),
        };
        sqlx::query(
            "UPDATE servers SET os = $2, arch = $3, docker_version = $4, nginx_version = $5, \
             nginx_config_ok = $6, nginx_config_error = $7, validated_at = now() WHERE id = $1",
        )
        .bind(id)
        .bind(&facts.os)
        .bind(&facts.arch)
        .bind(&facts.docker)
        .bind(&facts.nginx)
        .bind(nginx_ok)
        .bind(&nginx_error)
        .execute(&servers.pool)
        .await
        .map_err(recorded)?;
        servers
            .record(&row, Ok(sample.as_ref()), sample.is_some())
            .await
            .map_err(|e| JobFailure::retryable(format!("cannot record the validation: {e}")))
    }

    /// A validation that ended failed without recording why (its worker died
    /// at the attempt cap) must not leave the server `pending` for ever.
    async fn failed(&self, job: ServerValidate, error: String) {
        let updated = sqlx::query(
            "UPDATE servers SET status = 'error', status_reason = $2, updated_at = now() \
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(job.server_id)
        .bind(format!("validation failed: {error}"))
        .execute(&self.0.pool)
        .await;
        if let Err(e) = updated {
            tracing::warn!(error = %e, server = %job.server_id, "cannot record the failed validation");
        }
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
