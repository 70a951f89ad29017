//! Part 8: a backup of Berth's database holding 10,000 users and 100,000
//! job rows, taken and proven by the code the `backup.create` job runs
//! (`berth_database::catalogue::take`: a counted snapshot, `pg_dump`, a
//! restore into a scratch database, the counts compared), beside its bound
//! on the same server in the same run: a bare `pg_dump --format=custom` of
//! the same database, and a bare `createdb` + `pg_restore` + `dropdb` of
//! that file.

use std::time::Instant;

use anyhow::{Context, bail};
use berth_database::catalogue::{self, BackupSetup};
use berth_database::{PgTarget, PgTools};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Setup, median, setting};

const DATABASE: &str = "berth_bench_backup";

async fn seed(pool: &sqlx::PgPool, users: i64, jobs: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO users (id, email, name, password_hash, role, status, email_verified) \
         SELECT gen_random_uuid(), 'user' || i || '@bench.example', 'User ' || i, \
                '$argon2id$v=19$m=19456,t=2,p=1$' || md5(i::text) || '$' || md5((i * 7)::text), \
                'user', 'active', true \
         FROM generate_series(1, $1) i",
    )
    .bind(users)
    .execute(pool)
    .await?;
    // Finished jobs as the pipeline leaves them: a payload, an owner, times.
    sqlx::query(
        "WITH u AS (SELECT array_agg(id) AS ids FROM users) \
         INSERT INTO jobs (id, kind, queue, state, payload, delivery_id, attempts, max_attempts, \
                           timeout_ms, owner_user_id, created_at, started_at, finished_at, updated_at) \
         SELECT lpad(i::text, 26, '0'), 'server.probe', 'probe', 'succeeded', \
                jsonb_build_object('serverId', gen_random_uuid(), 'attempt', 1, 'note', md5(i::text)), \
                'd' || i, 1, 1, 60000, u.ids[1 + i % cardinality(u.ids)], \
                now() - interval '1 hour', now() - interval '59 minutes', now() - interval '58 minutes', now() \
         FROM generate_series(1, $1) i, u",
    )
    .bind(jobs)
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    Ok(())
}

/// Runs `program args`, failing with its error output; answers the seconds taken.
async fn timed(program: &std::path::Path, args: &[&str]) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("{}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

pub async fn backups(setup: &Setup) -> anyhow::Result<()> {
    let users: i64 = setting("BENCH_BACKUP_USERS", 10_000);
    let jobs: i64 = setting("BENCH_BACKUP_JOBS", 100_000);
    let bin_dir = setup
        .pgbench
        .parent()
        .context("pgbench has a directory")?
        .to_path_buf();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        .execute(&setup.pool)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
        .execute(&setup.pool)
        .await?;
    let (base, _) = setup
        .database_url
        .rsplit_once('/')
        .context("a database URL with a path")?;
    let url = format!("{base}/{DATABASE}");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    berth_api::MIGRATOR.run(&pool).await?;
    seed(&pool, users, jobs).await?;
    let dir = tempfile::tempdir()?;
    let backup = BackupSetup {
        dir: dir.path().join("backups"),
        tools: PgTools::new(Some(bin_dir.clone())),
        target: PgTarget::from_url(&url)?,
    };
    let cancel = CancellationToken::new();
    let (mut dump, mut verify, mut bare_dump, mut bare_restore) = (vec![], vec![], vec![], vec![]);
    let (mut size, mut bare_size) = (0, 0);
    for round in 0..setup.rounds {
        let id = Uuid::new_v4();
        let proven = catalogue::take(&pool, &backup, id, "manual", None, &|_| {}, &cancel)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (dump_ms, verify_ms): (i64, i64) =
            sqlx::query_as("SELECT dump_ms, verify_ms FROM backups WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await?;
        dump.push(dump_ms as f64 / 1000.0);
        verify.push(verify_ms as f64 / 1000.0);
        size = proven.size_bytes;
        berth_database::remove_backup_file(&backup.dir, &proven.file_name).await?;
        sqlx::query("DELETE FROM backups WHERE id = $1")
            .bind(id)
            .execute(&pool)
            .await?;

        let file = dir.path().join(format!("bare-{round}.dump"));
        let file_text = file.display().to_string();
        bare_dump.push(
            timed(
                &bin_dir.join("pg_dump"),
                &["--format=custom", "-f", &file_text, "-d", &url],
            )
            .await?,
        );
        bare_size = std::fs::metadata(&file)?.len() as i64;
        let scratch = format!("{DATABASE}_bare_{round}");
        let scratch_url = format!("{base}/{scratch}");
        let admin_url = format!("{base}/postgres");
        let started = Instant::now();
        timed(
            &bin_dir.join("createdb"),
            &["--maintenance-db", &admin_url, &scratch],
        )
        .await?;
        timed(
            &bin_dir.join("pg_restore"),
            &["--single-transaction", "-d", &scratch_url, &file_text],
        )
        .await?;
        timed(
            &bin_dir.join("dropdb"),
            &["--maintenance-db", &admin_url, &scratch],
        )
        .await?;
        bare_restore.push(started.elapsed().as_secs_f64());
        std::fs::remove_file(&file)?;
    }
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        .execute(&setup.pool)
        .await?;

    let mib = |b: i64| b as f64 / 1_048_576.0;
    println!(
        "8. Backup of Berth's database: {users} users, {jobs} job rows (median of {})",
        setup.rounds
    );
    println!(
        "   dump:   {:.2} s, {:.1} MiB   (bound: bare pg_dump --format=custom {:.2} s, {:.1} MiB)",
        median(dump.clone()),
        mib(size),
        median(bare_dump.clone()),
        mib(bare_size)
    );
    println!(
        "   verify: {:.2} s            (bound: bare createdb + pg_restore + dropdb {:.2} s)",
        median(verify.clone()),
        median(bare_restore.clone())
    );
    println!(
        "   backup proven in {:.2} s in all; rounds: dump {:?}, verify {:?}",
        median(dump.iter().zip(&verify).map(|(d, v)| d + v).collect()),
        dump,
        verify
    );
    println!();
    Ok(())
}
