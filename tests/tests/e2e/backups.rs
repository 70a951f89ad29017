//! SPEC §3.9: backups of Berth's own database, proven by a restore into a
//! scratch database, and a restore over the live one that brings the old
//! rows back and leaves Berth serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use berth_e2e::accounts::{Stack, get_as, send_as, signed_in_with_role};
use berth_e2e::{BerthProcess, TestApp, scratch_dir};
use reqwest::Method;
use serde_json::{Value, json};

/// A stack whose backups go to a scratch directory of `label`'s.
async fn stack_with_backups(label: &str) -> (std::path::PathBuf, Stack) {
    let dir = scratch_dir(label).join("backups");
    let stack = Stack::start(&[("BERTH_BACKUP_DIR", dir.display().to_string().as_str())]).await;
    (dir, stack)
}

/// `GET path` until `done` says so (60 s at most).
async fn until(app: &TestApp, token: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get_as(app, token, path).await;
        if status == 200 && done(&body["data"]) {
            return body["data"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{path} never got there: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn project_names(app: &TestApp, token: &str) -> Vec<String> {
    let (status, body) = get_as(app, token, "/api/v1/projects").await;
    assert_eq!(status, 200, "{body}");
    body["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn new_project(app: &TestApp, token: &str, name: &str) {
    let (status, body) = send_as(
        app,
        token,
        Method::POST,
        "/api/v1/projects",
        json!({ "name": name }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn a_verified_backup_restores_the_old_rows_and_a_damaged_one_is_refused() {
    let (dir, stack) = stack_with_backups("backups").await;
    let _worker = BerthProcess::spawn("berth-worker", &["--queues", "backup,email"], &stack.env);
    let app = &stack.app;
    let (_, root) = signed_in_with_role(&stack, "root@example.com", "super_admin").await;
    let (_, ops) = signed_in_with_role(&stack, "ops@example.com", "admin").await;
    let (_, user) = signed_in_with_role(&stack, "user@example.com", "user").await;
    new_project(app, &root, "kept").await;

    // A user may not; an administrator may back up.
    let (status, _) = send_as(app, &user, Method::POST, "/api/v1/admin/backups", json!({})).await;
    assert_eq!(status, 403);
    let (status, taken) =
        send_as(app, &ops, Method::POST, "/api/v1/admin/backups", json!({})).await;
    assert_eq!(status, 202, "{taken}");
    let id = taken["data"]["backup"]["id"].as_str().unwrap().to_owned();
    let backup = until(app, &ops, &format!("/api/v1/admin/backups/{id}"), |b| {
        assert_ne!(b["status"], "failed", "{b}");
        b["status"] == "verified"
    })
    .await;
    assert_eq!(backup["sha256"].as_str().unwrap().len(), 64);
    assert!(backup["sizeBytes"].as_i64().unwrap() > 0);
    assert_eq!(backup["tableRows"]["projects"], 1, "{backup}");
    let file = dir.join(backup["fileName"].as_str().unwrap());
    assert_eq!(
        std::fs::metadata(&file).unwrap().len() as i64,
        backup["sizeBytes"].as_i64().unwrap()
    );

    // A change made after the backup.
    new_project(app, &root, "made later").await;
    assert_eq!(project_names(app, &root).await.len(), 2);

    // Only a super admin restores, with the backup's id typed again.
    let restore = format!("/api/v1/admin/backups/{id}/restore");
    let (status, _) = send_as(app, &ops, Method::POST, &restore, json!({ "confirm": id })).await;
    assert_eq!(status, 403);
    let (status, body) = send_as(
        app,
        &root,
        Method::POST,
        &restore,
        json!({ "confirm": "yes" }),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "confirm");
    let (status, accepted) =
        send_as(app, &root, Method::POST, &restore, json!({ "confirm": id })).await;
    assert_eq!(status, 202, "{accepted}");
    let job = accepted["data"]["jobId"].as_str().unwrap().to_owned();
    let safety = accepted["data"]["safetyBackupId"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = until(app, &root, &format!("/api/v1/jobs/{job}"), |j| {
        j["state"] != "queued" && j["state"] != "running"
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");

    // The change is gone, the old rows are back, and Berth serves: reads,
    // writes (the project role type is the restored schema's), the record.
    assert_eq!(project_names(app, &root).await, vec!["kept".to_owned()]);
    new_project(app, &root, "after the restore").await;
    let (_, list) = get_as(app, &root, "/api/v1/admin/backups").await;
    let listed: Vec<&str> = list["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert!(
        listed.contains(&id.as_str()) && listed.contains(&safety.as_str()),
        "{list}"
    );
    let safety = until(
        app,
        &root,
        &format!("/api/v1/admin/backups/{safety}"),
        |b| b["status"] == "verified",
    )
    .await;
    assert_eq!(safety["trigger"], "pre_restore");
    assert_eq!(
        safety["tableRows"]["projects"], 2,
        "the safety backup holds the later change"
    );
    let (_, audit) = get_as(
        app,
        &root,
        "/api/v1/admin/audit-logs?action=backup.&limit=100",
    )
    .await;
    let actions: Vec<&str> = audit["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for action in ["backup.restore", "backup.restored"] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }

    // A damaged file is refused before anything is touched.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let (status, accepted) =
        send_as(app, &root, Method::POST, &restore, json!({ "confirm": id })).await;
    assert_eq!(status, 202, "{accepted}");
    let job = accepted["data"]["jobId"].as_str().unwrap().to_owned();
    let refused = until(app, &root, &format!("/api/v1/jobs/{job}"), |j| {
        j["state"] != "queued" && j["state"] != "running"
    })
    .await;
    assert_eq!(refused["state"], "failed", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("nothing touched"),
        "{refused}"
    );
    assert_eq!(project_names(app, &root).await.len(), 2);
}

/// What a scan of every process saw while the backup tools ran.
#[derive(Default)]
struct Seen {
    tools: std::collections::BTreeSet<String>,
    /// Processes whose command line, or (for the tools) environment, held
    /// the password.
    leaks: Vec<String>,
}

/// Scans `/proc` until `stop`: every command line, and the environment of
/// each PostgreSQL tool.
fn watch_processes(secret: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let mut seen = Seen::default();
        while !stop.load(Ordering::Relaxed) {
            let Ok(entries) = std::fs::read_dir("/proc") else {
                continue;
            };
            for entry in entries.flatten() {
                let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
                    continue;
                };
                let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
                if cmdline.contains(&secret) {
                    seen.leaks.push(format!("command line: {cmdline}"));
                }
                let program = cmdline.split(' ').next().unwrap_or_default();
                let name = program.rsplit('/').next().unwrap_or_default();
                if matches!(name, "pg_dump" | "pg_restore" | "psql") {
                    seen.tools.insert(name.to_owned());
                    if let Ok(environ) = std::fs::read(entry.path().join("environ"))
                        && String::from_utf8_lossy(&environ).contains(&secret)
                    {
                        seen.leaks.push(format!("environment of {name}"));
                    }
                }
            }
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_is_on_no_command_line_while_the_tools_run() {
    let (_, stack) = stack_with_backups("backups-password").await;
    // A role whose password the test cluster checks (scripts/lib.sh).
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(&format!(
        "DO $$ BEGIN \
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'berth_password_probe') THEN \
             CREATE ROLE berth_password_probe LOGIN SUPERUSER; END IF; END $$; \
         ALTER ROLE berth_password_probe PASSWORD '{password}'"
    ))
    .execute(&stack.db.pool)
    .await
    .unwrap();
    let with_password = stack.db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://berth_password_probe:{password}@"),
        1,
    );
    assert_ne!(
        with_password, stack.db.url,
        "the test database URL changed form"
    );
    let wrong = with_password.replace(&password, "not-the-password");
    assert!(
        sqlx::PgPool::connect(&wrong).await.is_err(),
        "the cluster does not check this role's password"
    );
    let mut env = stack.env.clone();
    env.insert("DATABASE_URL".into(), with_password);
    let _worker = BerthProcess::spawn("berth-worker", &["--queues", "backup"], &env);
    let (_, ops) = signed_in_with_role(&stack, "ops@example.com", "admin").await;

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_processes(password.clone(), stop.clone());
    let (status, taken) = send_as(
        &stack.app,
        &ops,
        Method::POST,
        "/api/v1/admin/backups",
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{taken}");
    let id = taken["data"]["backup"]["id"].as_str().unwrap().to_owned();
    let backup = until(
        &stack.app,
        &ops,
        &format!("/api/v1/admin/backups/{id}"),
        |b| b["status"] == "verified" || b["status"] == "failed",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert_eq!(backup["status"], "verified", "{backup}");
    assert!(
        seen.tools.contains("pg_dump") && seen.tools.contains("pg_restore"),
        "the scan never saw the tools run: {:?}",
        seen.tools
    );
    assert!(seen.leaks.is_empty(), "{:?}", seen.leaks);
    // No passfile outlives its tool.
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("berth-pgpass-{}-", _worker.pid()))
        })
        .collect();
    assert!(left.is_empty(), "passfiles left: {left:?}");
}

/// `backup.create` jobs that ended `succeeded`.
async fn backups_taken(stack: &Stack) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'backup.create' AND state = 'succeeded'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_backups_keep_the_newest_and_the_host_restores_one() {
    let (dir, stack) = stack_with_backups("backups-scheduled").await;
    let _worker = BerthProcess::spawn("berth-worker", &["--queues", "backup"], &stack.env);
    let app = &stack.app;
    let (_, root) = signed_in_with_role(&stack, "root@example.com", "super_admin").await;
    new_project(app, &root, "kept").await;
    let (status, taken) =
        send_as(app, &root, Method::POST, "/api/v1/admin/backups", json!({})).await;
    assert_eq!(status, 202, "{taken}");
    let manual = taken["data"]["backup"]["id"].as_str().unwrap().to_owned();
    until(
        app,
        &root,
        &format!("/api/v1/admin/backups/{manual}"),
        |b| b["status"] == "verified",
    )
    .await;
    new_project(app, &root, "made later").await;

    // Every two seconds, the newest two kept; the manual one is never
    // retention's to delete.
    let mut env = stack.env.clone();
    for (k, v) in [
        ("BERTH_SCHEDULE_BACKUP", "*/2 * * * * *"),
        ("BERTH_BACKUP_KEEP", "2"),
        ("BERTH_SCHEDULE_PROBE", "off"),
        ("BERTH_SCHEDULE_PRUNE", "off"),
        ("BERTH_SCHEDULE_RECONCILE", "off"),
        ("BERTH_SCHEDULE_CERTIFICATES", "off"),
    ] {
        env.insert(k.into(), v.into());
    }
    let scheduler = BerthProcess::spawn("berth-scheduler", &[], &env);
    berth_e2e::eventually(
        Duration::from_secs(90),
        "four scheduled backups",
        || async { backups_taken(&stack).await >= 5 },
    )
    .await;
    drop(scheduler);
    berth_e2e::eventually(Duration::from_secs(60), "no backup in flight", || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE kind = 'backup.create' AND state IN ('queued', 'running')",
        )
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
        left == 0
    })
    .await;
    let (_, list) = get_as(app, &root, "/api/v1/admin/backups").await;
    let backups = list["data"]["items"].as_array().unwrap();
    let scheduled: Vec<&Value> = backups
        .iter()
        .filter(|b| b["trigger"] == "scheduled")
        .collect();
    assert_eq!(scheduled.len(), 2, "{list}");
    assert!(
        scheduled.iter().all(|b| b["status"] == "verified"),
        "{list}"
    );
    assert!(backups.iter().any(|b| b["id"] == manual.as_str()), "{list}");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = backups
        .iter()
        .map(|b| b["fileName"].as_str().unwrap().to_owned())
        .collect();
    expected.sort();
    assert_eq!(
        files, expected,
        "exactly the kept backups' files are on disk"
    );

    // The operator's commands, for when the api is down.
    let (ok, out) = berth_e2e::berth_api_admin(&stack.env, &["users"], "").await;
    assert!(
        ok && out.contains("root@example.com") && out.contains("super_admin"),
        "{out}"
    );
    let (ok, out) = berth_e2e::berth_api_admin(&stack.env, &["backups"], "").await;
    assert!(
        ok && out.contains(&manual) && out.contains("verified"),
        "{out}"
    );
    let other = scheduled[0]["id"].as_str().unwrap();
    let (ok, out) =
        berth_e2e::berth_api_admin(&stack.env, &["restore", &manual, "--confirm", other], "").await;
    assert!(!ok && out.contains("nothing was done"), "{out}");
    assert_eq!(project_names(app, &root).await.len(), 2);
    let (ok, out) =
        berth_e2e::berth_api_admin(&stack.env, &["restore", &manual, "--confirm", &manual], "")
            .await;
    assert!(ok, "{out}");
    assert!(out.contains("the api is in maintenance"), "{out}");
    assert_eq!(project_names(app, &root).await, vec!["kept".to_owned()]);
    let (_, list) = get_as(app, &root, "/api/v1/admin/backups").await;
    let safety: Vec<&Value> = list["data"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["trigger"] == "pre_restore")
        .collect();
    assert_eq!(safety.len(), 1, "{list}");
    assert_eq!(safety[0]["status"], "verified");
    assert_eq!(safety[0]["tableRows"]["projects"], 2, "{list}");
    let (_, audit) = get_as(
        app,
        &root,
        "/api/v1/admin/audit-logs?action=backup.restored",
    )
    .await;
    assert_eq!(
        audit["data"]["items"][0]["details"]["by"], "berth-api admin restore",
        "{audit}"
    );
    new_project(app, &root, "after the restore").await;
}

/// A directory of PostgreSQL tools that pass through to the real ones on
/// the `PATH`, but whose `pg_restore` restores the schema alone: every row
/// lost in the scratch database, as a damaged dump or a broken tool would.
fn tools_losing_rows(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("pg-bin");
    std::fs::create_dir_all(&bin).unwrap();
    for (tool, script) in [
        ("pg_dump", "exec pg_dump \"$@\""),
        ("psql", "exec psql \"$@\""),
        ("pg_restore", "exec pg_restore --schema-only \"$@\""),
    ] {
        let path = bin.join(tool);
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[tokio::test]
async fn a_backup_that_fails_its_verification_is_failed_and_every_administrator_is_told() {
    let scratch = scratch_dir("backup-unverified");
    let backups = scratch.join("backups");
    let bin = tools_losing_rows(&scratch);
    let stack = Stack::with_mail(&[
        ("BERTH_BACKUP_DIR", backups.display().to_string().as_str()),
        ("BERTH_PG_BIN_DIR", bin.display().to_string().as_str()),
    ])
    .await;
    let _worker = BerthProcess::spawn("berth-worker", &["--queues", "backup"], &stack.env);
    let app = &stack.app;
    let (_, root) = signed_in_with_role(&stack, "root@example.com", "super_admin").await;
    let (_, ops) = signed_in_with_role(&stack, "ops@example.com", "admin").await;
    let (_, user) = signed_in_with_role(&stack, "user@example.com", "user").await;
    new_project(app, &root, "counted").await;

    let (status, taken) =
        send_as(app, &ops, Method::POST, "/api/v1/admin/backups", json!({})).await;
    assert_eq!(status, 202, "{taken}");
    let id = taken["data"]["backup"]["id"].as_str().unwrap().to_owned();
    let backup = until(app, &ops, &format!("/api/v1/admin/backups/{id}"), |b| {
        assert_ne!(b["status"], "verified", "{b}");
        b["status"] == "failed"
    })
    .await;
    let failure = backup["failure"].as_str().unwrap();
    assert!(failure.contains("projects"), "{backup}");
    assert!(backup["verifiedAt"].is_null(), "{backup}");
    // A file that is not proven is not kept, and is no restore point.
    let left: Vec<_> = std::fs::read_dir(&backups)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let (status, body) = send_as(
        app,
        &root,
        Method::POST,
        &format!("/api/v1/admin/backups/{id}/restore"),
        json!({ "confirm": id }),
    )
    .await;
    assert_eq!(status, 409, "{body}");

    // Each administrator has a notification naming the backup, and a mail;
    // a user has neither.
    for (token, email) in [(&root, "root@example.com"), (&ops, "ops@example.com")] {
        let (_, list) = get_as(app, token, "/api/v1/notifications").await;
        let told: Vec<&Value> = list["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["kind"] == "backup_failed")
            .collect();
        assert_eq!(told.len(), 1, "{email}: {list}");
        assert!(told[0]["body"].as_str().unwrap().contains(&id), "{list}");
        assert!(
            told[0]["body"].as_str().unwrap().contains("projects"),
            "{list}"
        );
        let mail = stack.smtp().wait_for(email, "backup", 0).await;
        assert!(mail.contains(&id), "{mail}");
    }
    let (_, list) = get_as(app, &user, "/api/v1/notifications").await;
    assert_eq!(list["data"]["total"], 0, "{list}");
}
