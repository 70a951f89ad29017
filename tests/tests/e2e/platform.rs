use std::time::Duration;

use berth_e2e::relay::TcpRelay;
use berth_e2e::{TestApp, TestDb, TestRedis, base_env, eventually};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_redis_without_a_restart() {
    let db = TestDb::new().await;
    let mut redis = TestRedis::start().await;
    let app = TestApp::spawn(base_env(&db, &redis)).await;

    let res = app.get("/api/v1/health/ready").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"success": true, "data": {"database": "up", "redis": "up"}})
    );

    redis.stop().await;
    eventually(Duration::from_secs(15), "ready to answer 503", || async {
        app.get("/api/v1/health/ready").await.status() == 503
    })
    .await;
    let res = app.get("/api/v1/health/ready").await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("redis"),
        "{body}"
    );
    let health: Value = app.get("/api/v1/health").await.json().await.unwrap();
    assert_eq!(health["data"]["redis"], "down");
    assert_eq!(health["data"]["database"], "up");
    assert_eq!(health["data"]["api"], "up");

    redis.resume().await;
    eventually(
        Duration::from_secs(20),
        "ready to answer 200 again",
        || async { app.get("/api/v1/health/ready").await.status() == 200 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_stats_and_default_admin() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let mut env = base_env(&db, &redis);
    let app = TestApp::spawn(env.clone()).await;

    let status: Value = app.get("/api/v1/status").await.json().await.unwrap();
    assert_eq!(
        status,
        json!({"success": true, "data": {"userSetupComplete": false}})
    );
    let stats: Value = app.get("/api/v1/stats/public").await.json().await.unwrap();
    assert_eq!(
        stats["data"],
        json!({"users": 0, "servers": 0, "deployments": 0})
    );

    // A too-short default password stops start-up with a message naming it.
    env.insert("DEFAULT_ADMIN_EMAIL".into(), "admin@example.test".into());
    env.insert("DEFAULT_ADMIN_PASSWORD".into(), "short".into());
    let config =
        berth_config::ApiConfig::from_env(&berth_config::Env::from_map(env.clone())).unwrap();
    let err = berth_api::bootstrap::ensure_default_admin(&db.pool, &config)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("DEFAULT_ADMIN_PASSWORD"), "{err}");

    env.insert(
        "DEFAULT_ADMIN_PASSWORD".into(),
        "correct horse battery".into(),
    );
    let config = berth_config::ApiConfig::from_env(&berth_config::Env::from_map(env)).unwrap();
    assert!(
        berth_api::bootstrap::ensure_default_admin(&db.pool, &config)
            .await
            .unwrap()
    );
    assert!(
        !berth_api::bootstrap::ensure_default_admin(&db.pool, &config)
            .await
            .unwrap(),
        "created once"
    );
    let (role, verified, hash): (String, bool, String) =
        sqlx::query_as("SELECT role, email_verified, password_hash FROM users")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(role, "super_admin");
    assert!(verified);
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );

    let status: Value = app.get("/api/v1/status").await.json().await.unwrap();
    assert_eq!(status["data"]["userSetupComplete"], true);
    let stats: Value = app.get("/api/v1/stats/public").await.json().await.unwrap();
    assert_eq!(stats["data"]["users"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_need_the_token_when_set() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let mut env = base_env(&db, &redis);
    env.insert("METRICS_TOKEN".into(), "scrape-me".into());
    let app = TestApp::spawn(env).await;

    let res = app.get("/metrics").await;
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"]["code"],
        "UNAUTHORIZED"
    );
    let res = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let res = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("berth_queue_jobs{queue=\"email\",state=\"queued\"} 0"),
        "{text}"
    );
    assert!(
        text.contains(
            "berth_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"401\"} 2"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn binaries_refuse_to_start_naming_a_missing_or_malformed_setting() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let mut env = base_env(&db, &redis);
    env.remove("JWT_SECRET");
    let mut api = berth_e2e::BerthProcess::spawn("berth-api", &[], &env);
    let status = api.child.wait().await.unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        api.output().contains("JWT_SECRET is required but not set"),
        "{}",
        api.output()
    );

    let mut env = base_env(&db, &redis);
    env.insert("BERTH_EMAIL_CONCURRENCY".into(), "many".into());
    let mut worker = berth_e2e::BerthProcess::spawn("berth-worker", &[], &env);
    assert_eq!(worker.child.wait().await.unwrap().code(), Some(1));
    assert!(
        worker
            .output()
            .contains("BERTH_EMAIL_CONCURRENCY is malformed"),
        "{}",
        worker.output()
    );

    let mut worker = berth_e2e::BerthProcess::spawn(
        "berth-worker",
        &["--queues", "email,nope"],
        &base_env(&db, &redis),
    );
    assert_eq!(worker.child.wait().await.unwrap().code(), Some(1));
    assert!(
        worker.output().contains("unknown queue \"nope\""),
        "{}",
        worker.output()
    );
    let printed = api.output() + &worker.output();
    assert!(
        !printed.contains(berth_e2e::MASTER_KEY),
        "no secret in the output"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_subcommand_applies_migrations_to_an_empty_database() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    sqlx::raw_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut migrate =
        berth_e2e::BerthProcess::spawn("berth-api", &["migrate"], &base_env(&db, &redis));
    let status = migrate.child.wait().await.unwrap();
    assert!(status.success(), "{}", migrate.output());
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name IN ('jobs', 'schedule_ticks', 'users')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_answer_503_while_postgres_is_away() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    // The api reaches Postgres through a relay the test can cut.
    let url = url::Url::parse(&db.url).unwrap();
    let postgres = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
        .parse()
        .unwrap();
    let relay = TcpRelay::start(postgres, 0).await;
    let mut through_relay = url.clone();
    through_relay.set_port(Some(relay.port)).unwrap();
    let mut env = base_env(&db, &redis);
    env.insert("DATABASE_URL".into(), through_relay.to_string());
    let app = TestApp::spawn(env).await;
    let (status, _) = berth_e2e::accounts::post(
        &app,
        "/api/v1/contact",
        json!({"name": "Ada", "email": "ada@example.test", "subject": "Hi", "message": "Hello there"}),
    )
    .await;
    assert_eq!(status, 201);

    relay.cut();
    for (path, body) in [
        (
            "/api/v1/contact",
            json!({"name": "Ada", "email": "ada@example.test", "subject": "Hi", "message": "Hello again"}),
        ),
        (
            "/api/v1/auth/login",
            json!({"identifier": "ada@example.test", "password": "correct horse battery staple"}),
        ),
    ] {
        let (status, body) = berth_e2e::accounts::post(&app, path, body).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("database is unavailable"),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn log_files_rotate_and_keep_only_the_newest() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let dir = berth_e2e::scratch_dir("logs");
    for day in 1..=5 {
        std::fs::write(
            dir.join(format!("berth-worker.2020-01-0{day}.log")),
            "old\n",
        )
        .unwrap();
    }
    std::fs::write(dir.join("berth-api.2020-01-01.log"), "another process\n").unwrap();
    let mut env = base_env(&db, &redis);
    env.insert("BERTH_LOG_DIR".into(), dir.display().to_string());
    env.insert("BERTH_LOG_KEEP_FILES".into(), "3".into());
    let _worker = berth_e2e::BerthProcess::spawn("berth-worker", &["--queues", "diagnostic"], &env);
    let current = dir.join("berth-worker.log");
    eventually(
        Duration::from_secs(20),
        "the worker to log to its file",
        || async {
            std::fs::read_to_string(&current)
                .is_ok_and(|text| text.contains("berth-worker starting"))
        },
    )
    .await;
    assert!(
        std::fs::symlink_metadata(&current)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let mut kept: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("berth-worker.") && name != "berth-worker.log")
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 3, "{kept:?}");
    let today = chrono::Utc::now()
        .format("berth-worker.%Y-%m-%d.log")
        .to_string();
    assert!(kept.contains(&today), "{kept:?}");
    assert!(
        dir.join("berth-api.2020-01-01.log").exists(),
        "another process's files stay"
    );
}
