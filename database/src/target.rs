//! Where Berth's database is, as the PostgreSQL tools are told: host, port,
//! user and database in their environment, the password in a passfile.

use std::io::Write;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use tempfile::NamedTempFile;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("DATABASE_URL is not a postgres:// URL")]
    NotPostgres,
    #[error("DATABASE_URL names no database")]
    NoDatabase,
    #[error("cannot write the PostgreSQL passfile: {0}")]
    Passfile(std::io::Error),
}

/// Variables a PostgreSQL tool is started with.
pub(crate) type ToolEnv = Vec<(&'static str, String)>;

/// Berth's database, taken apart from `DATABASE_URL`.
#[derive(Clone)]
pub struct PgTarget {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    database: String,
    sslmode: Option<String>,
    options: PgConnectOptions,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

fn decoded(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl PgTarget {
    pub fn from_url(database_url: &str) -> Result<Self, TargetError> {
        let url = url::Url::parse(database_url).map_err(|_| TargetError::NotPostgres)?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(TargetError::NotPostgres);
        }
        let options =
            PgConnectOptions::from_str(database_url).map_err(|_| TargetError::NotPostgres)?;
        let query = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let database = url.path().trim_start_matches('/');
        let database = if database.is_empty() {
            query("dbname").ok_or(TargetError::NoDatabase)?
        } else {
            decoded(database)
        };
        Ok(Self {
            host: query("host").unwrap_or_else(|| url.host_str().unwrap_or("localhost").to_owned()),
            port: url.port().unwrap_or(5432),
            user: if url.username().is_empty() {
                "postgres".to_owned()
            } else {
                decoded(url.username())
            },
            password: url.password().map(decoded),
            database,
            sslmode: query("sslmode"),
            options,
        })
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// Connection options for `database` on the same server, as the same user.
    pub fn options_for(&self, database: &str) -> PgConnectOptions {
        self.options.clone().database(database)
    }

    /// The environment a PostgreSQL tool connects to `database` with, and the
    /// passfile it reads the password from (kept alive while the tool runs;
    /// created 0600 in the system's temporary directory, removed on drop;
    /// [`remove_stale_passfiles`] removes those of processes killed meanwhile).
    pub(crate) fn environment(
        &self,
        database: &str,
    ) -> Result<(ToolEnv, NamedTempFile), TargetError> {
        let mut passfile = NamedTempFile::with_prefix(passfile_prefix(std::process::id()))
            .map_err(TargetError::Passfile)?;
        if let Some(password) = &self.password {
            // The passfile's escapes: backslash and colon.
            let escape = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
            writeln!(
                passfile,
                "*:*:*:{}:{}",
                escape(&self.user),
                escape(password)
            )
            .and_then(|()| passfile.flush())
            .map_err(TargetError::Passfile)?;
        }
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", database.to_owned()),
            ("PGPASSFILE", passfile.path().display().to_string()),
            ("PGCONNECT_TIMEOUT", "10".to_owned()),
            ("PGAPPNAME", "berth-backup".to_owned()),
        ];
        if let Some(mode) = &self.sslmode {
            env.push(("PGSSLMODE", mode.clone()));
        }
        Ok((env, passfile))
    }
}

/// Passfiles are named for the process that wrote them, so that one left by
/// a killed process can be told from one in use.
fn passfile_prefix(pid: u32) -> String {
    format!("berth-pgpass-{pid}-")
}

/// Removes the passfiles of processes that no longer run (one killed while
/// a tool ran could not remove its own); returns how many. Run at start.
pub fn remove_stale_passfiles() -> usize {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("berth-pgpass-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let running = std::path::Path::new("/proc").join(pid.to_string()).exists();
        if !running && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_taken_apart_and_the_password_goes_only_to_the_passfile() {
        let target = PgTarget::from_url(
            "postgres://berth:p%3Ass%5Cw@db.internal:6543/berth?sslmode=require",
        )
        .unwrap();
        assert_eq!(target.database(), "berth");
        let (env, passfile) = target.environment("scratch").unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PGHOST"), Some("db.internal"));
        assert_eq!(get("PGPORT"), Some("6543"));
        assert_eq!(get("PGUSER"), Some("berth"));
        assert_eq!(get("PGDATABASE"), Some("scratch"));
        assert_eq!(get("PGSSLMODE"), Some("require"));
        assert!(env.iter().all(|(_, v)| !v.contains("p:ss")));
        let written = std::fs::read_to_string(passfile.path()).unwrap();
        assert_eq!(written, "*:*:*:berth:p\\:ss\\\\w\n");
        assert!(PgTarget::from_url("mysql://x@y/z").is_err());
        assert!(PgTarget::from_url("postgres://x@y").is_err());
    }

    #[test]
    fn only_the_passfiles_of_processes_gone_are_removed() {
        let tmp = std::env::temp_dir();
        let gone = tmp.join(format!("{}test", passfile_prefix(u32::MAX - 7)));
        let mine =
            tempfile::NamedTempFile::with_prefix(passfile_prefix(std::process::id())).unwrap();
        std::fs::write(&gone, "*:*:*:u:p\n").unwrap();
        assert!(remove_stale_passfiles() >= 1);
        assert!(!gone.exists());
        assert!(mine.path().exists());
    }
}
