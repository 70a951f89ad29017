use anyhow::Context;
use berth_api::{AppState, MIGRATOR, bootstrap};
use berth_config::{ApiConfig, CommonConfig, Env};
use berth_jobs::Policies;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "berth-api", version)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Re-encrypt stored secrets under the current BERTH_MASTER_KEY (after a
    /// rotation, with the old key in BERTH_MASTER_KEY_PREVIOUS) and exit.
    Reseal,
    /// On the host, without mail or a running api: create, promote,
    /// reset-password, list users and backups, restore a backup.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create a verified account that can sign in at once.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "Administrator")]
        name: String,
        /// user, admin or super_admin.
        #[arg(long, default_value = "super_admin")]
        role: String,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Give an existing account a role (admin by default).
    Promote {
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "admin")]
        role: String,
    },
    /// Set a new password and sign out every session of the account.
    ResetPassword {
        #[arg(long)]
        email: String,
        /// Read the password from standard input instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts, newest first.
    Users {
        /// Part of an email, name or username.
        #[arg(long)]
        search: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// List backups of Berth's database, newest first.
    Backups,
    /// Restore a verified backup over the live database (a fresh backup is
    /// taken first). Run it where the backups directory is.
    Restore {
        /// The backup's id.
        id: uuid::Uuid,
        /// The backup's id again, to confirm.
        #[arg(long)]
        confirm: uuid::Uuid,
    },
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let result = match args.command.unwrap_or(Command::Serve) {
        Command::Serve => serve().await,
        Command::Migrate => migrate().await,
        Command::Reseal => reseal().await,
        Command::Admin(command) => admin(command).await,
    };
    if let Err(e) = result {
        tracing::error!("berth-api stopped: {e:#}");
        eprintln!("berth-api: {e:#}");
        std::process::exit(1);
    }
}

async fn migrate() -> anyhow::Result<()> {
    let common = CommonConfig::from_env(&Env::process())?;
    common.logging.init("berth-api")?;
    let pool = sqlx::PgPool::connect(common.database_url.expose())
        .await
        .context("cannot connect to DATABASE_URL")?;
    MIGRATOR.run(&pool).await.context("migrations failed")?;
    tracing::info!("migrations applied");
    Ok(())
}

/// The password from standard input (one line), or a generated one that is
/// printed once.
fn password_for(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((berth_api::operator::generate_password(), true));
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    Ok((line.trim_end_matches(['\r', '\n']).to_owned(), false))
}

async fn admin(command: AdminCommand) -> anyhow::Result<()> {
    let env = Env::process();
    let common = CommonConfig::from_env(&env)?;
    let pool = sqlx::PgPool::connect(common.database_url.expose())
        .await
        .context("cannot connect to DATABASE_URL")?;
    MIGRATOR.run(&pool).await.context("migrations failed")?;
    use berth_api::operator;
    match command {
        AdminCommand::Create {
            email,
            name,
            role,
            password_stdin,
        } => {
            let (password, generated) = password_for(password_stdin)?;
            operator::create(&pool, &email, &name, &role, &password).await?;
            println!("created {email} ({role})");
            if generated {
                println!("password (shown once): {password}");
            }
        }
        AdminCommand::Promote { email, role } => {
            operator::promote(&pool, &email, &role).await?;
            println!("{email} is now {role}");
        }
        AdminCommand::ResetPassword {
            email,
            password_stdin,
        } => {
            let (password, generated) = password_for(password_stdin)?;
            let revoked = operator::reset_password(&pool, &email, &password).await?;
            println!("password of {email} reset; {revoked} sessions signed out");
            if generated {
                println!("password (shown once): {password}");
            }
        }
        AdminCommand::Users { search, limit } => {
            print!(
                "{}",
                operator::backups::list_users(&pool, search.as_deref(), limit).await?
            );
        }
        AdminCommand::Backups => print!("{}", operator::backups::list_backups(&pool).await?),
        AdminCommand::Restore { id, confirm } => {
            if id != confirm {
                anyhow::bail!("--confirm must repeat the backup's id; nothing was done");
            }
            let setup = berth_database::catalogue::BackupSetup::from_env(
                &env,
                common.database_url.expose(),
            )?;
            let cancel = CancellationToken::new();
            tokio::spawn(berth_config::cancel_on_shutdown_signal(cancel.clone()));
            let safety =
                operator::backups::restore(&pool, &setup, common.redis_url.expose(), id, &cancel)
                    .await?;
            println!("backup {id} restored; the backup taken just before is {safety}");
        }
    }
    Ok(())
}

async fn reseal() -> anyhow::Result<()> {
    let config = ApiConfig::from_env(&Env::process())?;
    config.common.logging.init("berth-api")?;
    let pool = sqlx::PgPool::connect(config.common.database_url.expose())
        .await
        .context("cannot connect to DATABASE_URL")?;
    let keys =
        berth_secrets::Keyring::from_config(&config.master_key, &config.previous_master_keys);
    let outcome = berth_api::reseal::reseal_all(&pool, &keys).await?;
    tracing::info!(
        values = outcome.values,
        key = keys.current_key_id(),
        "secrets re-sealed"
    );
    if !outcome.failed.is_empty() {
        anyhow::bail!(
            "{} secrets do not open with BERTH_MASTER_KEY or BERTH_MASTER_KEY_PREVIOUS: {}",
            outcome.failed.len(),
            outcome.failed.join(", ")
        );
    }
    Ok(())
}

async fn serve() -> anyhow::Result<()> {
    let env = Env::process();
    let config = ApiConfig::from_env(&env)?;
    config.common.logging.init("berth-api")?;
    let policies = Policies::from_env(&env)?;
    let addr = config.addr;
    let run_migrations = config.run_migrations;
    let state = AppState::connect(config, policies).await?;
    if run_migrations {
        MIGRATOR
            .run(&state.pool)
            .await
            .context("migrations failed")?;
    }
    bootstrap::ensure_default_admin(&state.pool, &state.config).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on BERTH_API_ADDR {addr}"))?;
    tracing::info!(%addr, "berth-api listening");
    let shutdown = CancellationToken::new();
    tokio::spawn(berth_config::cancel_on_shutdown_signal(shutdown.clone()));
    berth_api::serve(listener, state, shutdown).await
}
