//! nginx on a server: a site's config written atomically, checked with
//! `nginx -t` before it is used, the previous one put back when the check
//! fails, and a reload (never a restart: open connections are kept).

use std::time::Duration;

use berth_ssh::{Arg, ShellCommand};

use super::{On, OpError, files};

const DEADLINE: Duration = Duration::from_secs(60);

/// Which nginx: the system's (`config: None`), or one started with `-c`.
#[derive(Debug, Clone, Default)]
pub struct Nginx {
    pub config: Option<Arg>,
}

impl Nginx {
    fn command(&self, fixed: &'static str) -> ShellCommand {
        let command = ShellCommand::new("nginx");
        let command = match &self.config {
            Some(config) => command.raw("-c").arg(config),
            None => command,
        };
        command.raw(fixed)
    }

    /// `nginx -t`: the whole configuration as nginx would load it.
    pub async fn test(&self, on: &On<'_>) -> Result<(), OpError> {
        on.run("nginx -t", &self.command("-t"), DEADLINE)
            .await
            .map(|_| ())
    }

    /// Reloads gracefully: workers finish their requests on the old config.
    pub async fn reload(&self, on: &On<'_>) -> Result<(), OpError> {
        on.run("nginx reload", &self.command("-s reload"), DEADLINE)
            .await
            .map(|_| ())
    }

    /// Installs `content` at `path` (a file nginx includes), checks the whole
    /// configuration and reloads. When the check fails, the previous file (or
    /// none) is put back, nginx keeps serving what it served, and the error
    /// carries `nginx -t`'s own words.
    pub async fn install_site(
        &self,
        on: &On<'_>,
        path: &Arg,
        content: &str,
    ) -> Result<(), OpError> {
        let backup = Arg::path(&format!("{}.berth-previous", path.as_str()))?;
        on.run(
            "keeping the previous site",
            &ShellCommand::new("rm -f --")
                .arg(&backup)
                .raw("; if [ -e")
                .arg(path)
                .raw("]; then cp -p --")
                .arg(path)
                .arg(&backup)
                .raw("; fi"),
            DEADLINE,
        )
        .await?;
        files::put(on, path, content.as_bytes(), 0o644).await?;
        if let Err(error) = self.test(on).await {
            let restore = ShellCommand::new("if [ -e")
                .arg(&backup)
                .raw("]; then mv -f --")
                .arg(&backup)
                .arg(path)
                .raw("; else rm -f --")
                .arg(path)
                .raw("; fi");
            on.run("putting the previous site back", &restore, DEADLINE)
                .await?;
            return Err(error);
        }
        files::remove(on, &backup).await?;
        self.reload(on).await
    }

    /// Removes the site at `path` and reloads.
    pub async fn remove_site(&self, on: &On<'_>, path: &Arg) -> Result<(), OpError> {
        files::remove(on, path).await?;
        self.test(on).await?;
        self.reload(on).await
    }
}
