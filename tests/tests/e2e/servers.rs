//! SPEC §3.3: servers added through the api, validated by a real `berth-worker`
//! over SSH against real sshd "servers" (`berth_e2e::ssh_servers`).

use std::net::SocketAddr;
use std::time::Duration;

use berth_e2e::accounts::{NewUser, access_token, create_user, get_as, send_as};
use berth_e2e::fleet::Fleet;
use berth_e2e::relay::TcpRelay;
use berth_e2e::ssh_servers::{KEY_PASSPHRASE, PASSWORD, PASSWORD_USER};
use berth_e2e::{BerthProcess, eventually};
use reqwest::Method;
use serde_json::{Value, json};

async fn world() -> Fleet {
    Fleet::start("probe", &[]).await
}

fn key_server(w: &Fleet, i: usize) -> Value {
    w.key_server(i)
}

#[tokio::test(flavor = "multi_thread")]
async fn onboarding_with_a_key_and_with_a_password() {
    let w = world().await;
    let (status, body) = w.create(key_server(&w, 0)).await;
    assert_eq!(status, 202, "{body}");
    let id = body["data"]["server"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["data"]["server"]["status"], "pending");
    let job = w.job_done(body["data"]["jobId"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["kind"], "server.validate");
    assert_eq!(job["queue"], "probe");

    let server = w.server(&id).await;
    assert_eq!(server["status"], "online", "{server}");
    assert_eq!(server["hostKey"], w.sshd.host_key_fingerprint().await);
    assert!(server["os"].as_str().unwrap().contains("Linux"), "{server}");
    assert_eq!(server["arch"], std::env::consts::ARCH);
    // The test servers have the docker CLI (over podman) and nginx.
    assert!(
        server["dockerVersion"]
            .as_str()
            .unwrap()
            .starts_with("Docker version"),
        "{server}"
    );
    assert!(
        server["nginxVersion"].as_str().unwrap().contains("nginx/"),
        "{server}"
    );
    assert!(server["validatedAt"].is_string());
    // Validation took the first sample: health is there at once.
    let (status, health) = get_as(
        &w.stack.app,
        &w.token,
        &format!("/api/v1/servers/{id}/health"),
    )
    .await;
    assert_eq!(status, 200, "{health}");
    assert!(health["data"]["latest"]["cpuUsage"].is_number(), "{health}");

    // Never a secret in an answer; sealed in the database.
    let (_, list) = get_as(&w.stack.app, &w.token, "/api/v1/servers").await;
    assert_eq!(list["data"]["total"], 1);
    for text in [list.to_string(), server.to_string()] {
        assert!(
            !text.contains("PRIVATE KEY") && !text.contains("secret"),
            "{text}"
        );
    }
    assert!(
        !w.worker.output().contains("PRIVATE KEY"),
        "a key in the worker's log"
    );
    let stored: String = sqlx::query_scalar("SELECT secret FROM servers WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&w.stack.db.pool)
        .await
        .unwrap();
    assert!(
        stored.starts_with("v1.") && !stored.contains("PRIVATE"),
        "{stored}"
    );

    // An encrypted key with its passphrase, and a password login.
    let (status, body) = w
        .create(json!({"name": "db", "host": w.sshd.host(1), "port": w.sshd.port, "username": "root",
                       "authType": "key", "privateKey": w.sshd.encrypted_key, "passphrase": KEY_PASSPHRASE}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        w.job_done(body["data"]["jobId"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    let (status, body) = w
        .create(
            json!({"name": "pw", "host": w.sshd.host(2), "port": w.sshd.port,
                       "username": PASSWORD_USER, "authType": "password", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let job = w.job_done(body["data"]["jobId"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_fails_validation_with_a_clear_reason() {
    let w = world().await;
    let (_, body) = w
        .create(
            json!({"name": "pw", "host": w.sshd.host(0), "port": w.sshd.port,
                       "username": PASSWORD_USER, "authType": "password", "password": "wrong one"}),
        )
        .await;
    let id = body["data"]["server"]["id"].as_str().unwrap().to_owned();
    let job = w.job_done(body["data"]["jobId"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["attempts"], 1, "a refused password is not retried");
    assert!(
        job["error"].as_str().unwrap().starts_with("AUTH_FAILED"),
        "{job}"
    );
    let server = w.server(&id).await;
    assert_eq!(server["status"], "error");
    assert!(
        server["statusReason"]
            .as_str()
            .unwrap()
            .contains("AUTH_FAILED")
    );
    assert!(!job.to_string().contains("wrong one"));
    assert!(
        !w.worker.output().contains("wrong one"),
        "a password in the worker's log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_host_key_stops_the_server_until_the_owner_repins_it() {
    let mut w = world().await;
    // Only the notices this test is about, whatever the machine's load.
    w.quiet_alerts().await;
    let (_, body) = w.create(key_server(&w, 0)).await;
    let id = body["data"]["server"]["id"].as_str().unwrap().to_owned();
    w.job_done(body["data"]["jobId"].as_str().unwrap()).await;
    let first = w.server(&id).await["hostKey"].clone();

    w.sshd.change_host_key().await;
    let path = format!("/api/v1/servers/{id}/validate");
    let (status, body) = send_as(&w.stack.app, &w.token, Method::POST, &path, json!({})).await;
    assert_eq!(status, 202, "{body}");
    let job = w.job_done(body["data"]["jobId"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .starts_with("HOST_KEY_MISMATCH"),
        "{job}"
    );
    let server = w.server(&id).await;
    assert_eq!(server["hostKey"], first, "the pin stays");
    let offered = w.sshd.host_key_fingerprint().await;
    assert_eq!(server["hostKeyOffered"], offered.as_str());
    assert_eq!(server["status"], "error");
    let notified: (String, String) =
        sqlx::query_as("SELECT kind, body FROM notifications WHERE data->>'serverId' = $1")
            .bind(&id)
            .fetch_one(&w.stack.db.pool)
            .await
            .unwrap();
    assert_eq!(notified.0, "host_key_mismatch");
    assert!(notified.1.contains(&offered));
    // A probe meeting the same key: still that one alert, not also "offline".
    let probe = w.probe(&id).await;
    assert_eq!(probe["state"], "failed");
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM notifications WHERE data->>'serverId' = $1")
            .bind(&id)
            .fetch_all(&w.stack.db.pool)
            .await
            .unwrap();
    assert_eq!(kinds, ["host_key_mismatch"]);

    // Only the offered key can be accepted.
    let path = format!("/api/v1/servers/{id}/host-key");
    let (status, _) = send_as(
        &w.stack.app,
        &w.token,
        Method::POST,
        &path,
        json!({"fingerprint": "SHA256:made-up"}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = send_as(
        &w.stack.app,
        &w.token,
        Method::POST,
        &path,
        json!({"fingerprint": offered}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let job = w.job_done(body["data"]["jobId"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let server = w.server(&id).await;
    assert_eq!(
        (server["hostKey"].as_str(), server["status"].as_str()),
        (Some(offered.as_str()), Some("online"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_ownership_scopes_and_updates() {
    let w = world().await;
    let app = &w.stack.app;
    // Every field that reaches a shell or a connection is checked.
    let base = key_server(&w, 0);
    for (field, value) in [
        ("host", json!("127.0.0.1; rm -rf /")),
        ("host", json!("$(reboot)")),
        ("host", json!("169.254.169.254")),
        ("username", json!("root;id")),
        ("username", json!("Root")),
        ("port", json!(0)),
        ("port", json!(70000)),
        ("name", json!("")),
        ("authType", json!("telnet")),
        ("privateKey", json!("not a key")),
        ("buildSlots", json!(0)),
        ("buildSlots", json!(17)),
    ] {
        let mut body = base.clone();
        body[field] = value.clone();
        let (status, answer) = w.create(body).await;
        assert_eq!(status, 400, "{field}={value}: {answer}");
        assert!(
            answer["error"]["details"].to_string().contains(field),
            "{field}: {answer}"
        );
    }
    let mut both = base.clone();
    both["password"] = json!("also a password");
    assert_eq!(
        w.create(both).await.0,
        400,
        "exactly one of password/privateKey"
    );
    let mut no_passphrase = base.clone();
    no_passphrase["privateKey"] = json!(w.sshd.encrypted_key);
    let (status, body) = w.create(no_passphrase).await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("passphrase"), "{body}");

    let (_, body) = w.create(base.clone()).await;
    let id = body["data"]["server"]["id"].as_str().unwrap().to_owned();
    w.job_done(body["data"]["jobId"].as_str().unwrap()).await;

    // Another user sees nothing; a read-only token cannot write.
    create_user(&w.stack.db, NewUser::verified("other@example.test")).await;
    let other = access_token(app, "other@example.test").await;
    assert_eq!(
        get_as(app, &other, &format!("/api/v1/servers/{id}"))
            .await
            .0,
        404
    );
    assert_eq!(
        send_as(
            app,
            &other,
            Method::DELETE,
            &format!("/api/v1/servers/{id}"),
            json!(null)
        )
        .await
        .0,
        404
    );
    let (_, token) = send_as(
        app,
        &w.token,
        Method::POST,
        "/api/v1/tokens",
        json!({"name": "ro", "scopes": ["servers:read"]}),
    )
    .await;
    let read_only = token["data"]["token"].as_str().unwrap();
    assert_eq!(
        get_as(app, read_only, &format!("/api/v1/servers/{id}"))
            .await
            .0,
        200
    );
    assert_eq!(create_with(&w, read_only, base.clone()).await.0, 403);

    // A rename changes nothing else; a new port drops the pin and validates again.
    let path = format!("/api/v1/servers/{id}");
    let (status, body) = send_as(
        app,
        &w.token,
        Method::PATCH,
        &path,
        json!({"name": "renamed"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["jobId"], Value::Null);
    assert_eq!(body["data"]["server"]["status"], "online");
    assert_eq!(
        body["data"]["server"]["buildSlots"], 1,
        "one build at a time by default"
    );
    // Builds per server: a setting of its own, no reconnect.
    let (status, body) = send_as(
        app,
        &w.token,
        Method::PATCH,
        &path,
        json!({"buildSlots": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["jobId"], Value::Null);
    assert_eq!(w.server(&id).await["buildSlots"], 3);
    let (status, body) = send_as(
        app,
        &w.token,
        Method::PATCH,
        &path,
        json!({"buildSlots": 99}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(w.server(&id).await["buildSlots"], 3, "nothing half-written");
    let (status, body) = send_as(app, &w.token, Method::PATCH, &path, json!({"port": 2})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["server"]["hostKey"], Value::Null);
    let job = w.job_done(body["data"]["jobId"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed", "nothing listens on port 2: {job}");
    assert!(
        job["error"].as_str().unwrap().starts_with("UNREACHABLE"),
        "{job}"
    );
    assert!(
        job["attempts"].as_i64().unwrap() > 1,
        "unreachable is retried: {job}"
    );
    assert_eq!(w.server(&id).await["status"], "offline");

    let (status, _) = send_as(app, &w.token, Method::DELETE, &path, json!(null)).await;
    assert_eq!(status, 200);
    assert_eq!(get_as(app, &w.token, &path).await.0, 404);
}

async fn create_with(w: &Fleet, token: &str, body: Value) -> (u16, Value) {
    send_as(&w.stack.app, token, Method::POST, "/api/v1/servers", body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_survive_a_master_key_rotation() {
    let mut w = world().await;
    let id = w.onboard(0).await;
    // A deployment's sealed env, webhook secret and release snapshot too.
    let (status, body) = send_as(
        &w.stack.app,
        &w.token,
        Method::POST,
        "/api/v1/deployments",
        json!({"serverId": id, "name": "sealed", "source": {"type": "image", "image": "example.test/app:1"},
               "env": {"API_KEY": "very-secret"}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let deployment = body["data"]["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // And a linked GitHub account's token, sealed as the OAuth flow seals it.
    let owner: uuid::Uuid =
        sqlx::query_scalar("SELECT owner_user_id FROM servers WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&w.stack.db.pool)
            .await
            .unwrap();
    let token_sealed = berth_e2e::keyring().seal(
        b"gho_test_token",
        berth_secrets::oauth_token_binding(&berth_secrets::oauth_identity_row(owner, "github")),
    );
    sqlx::query(
        "INSERT INTO oauth_identities (provider, provider_user_id, user_id, token_sealed) \
         VALUES ('github', '31337', $1, $2)",
    )
    .bind(owner)
    .bind(&token_sealed)
    .execute(&w.stack.db.pool)
    .await
    .unwrap();
    // And Berth's ACME account at a CA.
    let directory = "https://acme.example.test/directory";
    let account_sealed = berth_e2e::keyring().seal(
        br#"{"id":"https://acme.example.test/acct/1"}"#,
        berth_secrets::acme_account_binding(directory),
    );
    sqlx::query("INSERT INTO acme_accounts (directory_url, credentials_sealed) VALUES ($1, $2)")
        .bind(directory)
        .bind(&account_sealed)
        .execute(&w.stack.db.pool)
        .await
        .unwrap();
    let old_key = berth_e2e::MASTER_KEY;
    let new_key = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    let mut env = w.stack.env.clone();
    env.insert("BERTH_MASTER_KEY".into(), new_key.into());

    // Without the old key nothing opens: the command says which rows and fails.
    let mut reseal = BerthProcess::spawn("berth-api", &["reseal"], &env);
    let status = reseal.child.wait().await.unwrap();
    assert!(!status.success());
    assert!(
        reseal.output().contains(&format!("servers.secret:{id}")),
        "{}",
        reseal.output()
    );

    env.insert("BERTH_MASTER_KEY_PREVIOUS".into(), old_key.into());
    let mut reseal = BerthProcess::spawn("berth-api", &["reseal"], &env);
    assert!(
        reseal.child.wait().await.unwrap().success(),
        "{}",
        reseal.output()
    );
    let stored: String = sqlx::query_scalar("SELECT secret FROM servers WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&w.stack.db.pool)
        .await
        .unwrap();
    let before = berth_e2e::keyring();
    assert!(before.needs_reseal(&stored), "sealed under the new key now");
    let (env_sealed, webhook, snapshot): (String, String, String) = sqlx::query_as(
        "SELECT d.env_sealed, d.webhook_secret_sealed, r.snapshot_sealed FROM deployments d \
         JOIN releases r ON r.deployment_id = d.id WHERE d.id = $1::uuid",
    )
    .bind(&deployment)
    .fetch_one(&w.stack.db.pool)
    .await
    .unwrap();
    for sealed in [env_sealed, webhook, snapshot] {
        assert!(
            before.needs_reseal(&sealed),
            "a deployment's secret resealed too"
        );
    }
    let token_now: String = sqlx::query_scalar(
        "SELECT token_sealed FROM oauth_identities WHERE user_id = $1 AND provider = 'github'",
    )
    .bind(owner)
    .fetch_one(&w.stack.db.pool)
    .await
    .unwrap();
    assert!(
        before.needs_reseal(&token_now),
        "the GitHub token resealed too"
    );
    let account_now: String =
        sqlx::query_scalar("SELECT credentials_sealed FROM acme_accounts WHERE directory_url = $1")
            .bind(directory)
            .fetch_one(&w.stack.db.pool)
            .await
            .unwrap();
    assert!(
        before.needs_reseal(&account_now),
        "the ACME account resealed too"
    );

    // A worker that knows only the new key validates the server.
    w.worker.signal(nix::sys::signal::Signal::SIGKILL);
    env.remove("BERTH_MASTER_KEY_PREVIOUS");
    w.worker = BerthProcess::spawn("berth-worker", &["--queues", "probe"], &env);
    let path = format!("/api/v1/servers/{id}/validate");
    let (_, body) = send_as(&w.stack.app, &w.token, Method::POST, &path, json!({})).await;
    let job = w.job_done(body["data"]["jobId"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_validation_survives_its_worker_dying_and_a_failed_one_leaves_the_truth() {
    let mut w = Fleet::start("probe", &[("BERTH_SSH_HANDSHAKE_TIMEOUT_MS", "20000")]).await;
    let sshd: SocketAddr = format!("{}:{}", w.sshd.host(0), w.sshd.port)
        .parse()
        .unwrap();
    let mut servers = Vec::new();
    let mut relays = Vec::new();
    for name in ["survives", "capped"] {
        let relay = TcpRelay::start(sshd, 1).await;
        let mut body = w.key_server(0);
        body["name"] = json!(name);
        body["host"] = json!("127.0.0.1");
        body["port"] = json!(relay.port);
        relays.push(relay);
        let (status, created) = w.create(body).await;
        assert_eq!(status, 202, "{created}");
        servers.push((
            created["data"]["server"]["id"].as_str().unwrap().to_owned(),
            created["data"]["jobId"].as_str().unwrap().to_owned(),
        ));
    }
    // Both validations hang in the handshake; their worker dies.
    let pool = &w.stack.db.pool;
    eventually(
        Duration::from_secs(30),
        "both validations running",
        || async {
            let running: i64 =
                sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
                    .fetch_one(pool)
                    .await
                    .unwrap();
            running == 2
        },
    )
    .await;
    w.worker.signal(nix::sys::signal::Signal::SIGKILL);
    // One of them was on its last attempt.
    sqlx::query("UPDATE jobs SET max_attempts = 1 WHERE id = $1")
        .bind(&servers[1].1)
        .execute(pool)
        .await
        .unwrap();
    w.worker = BerthProcess::spawn("berth-worker", &["--queues", "probe"], &w.stack.env);

    // The attempt its worker died in counted; a busy machine may need one
    // more after it (a retryable failure), within the cap.
    let survived = w.job_done(&servers[0].1).await;
    assert_eq!(survived["state"], "succeeded", "{survived}");
    let attempts = survived["attempts"].as_u64().unwrap();
    assert!((2..=4).contains(&attempts), "{survived}");
    assert_eq!(w.server(&servers[0].0).await["status"], "online");

    let capped = w.job_done(&servers[1].1).await;
    assert_eq!(capped["state"], "failed", "{capped}");
    let server = w.server(&servers[1].0).await;
    assert_eq!(server["status"], "error", "never left pending: {server}");
    assert!(
        server["statusReason"]
            .as_str()
            .unwrap()
            .contains("attempt cap"),
        "{server}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_unreachable_at_onboarding_is_retried_with_backoff() {
    let mut w = Fleet::start("probe", &[("BERTH_PROBE_BACKOFF_MS", "2000")]).await;
    w.sshd.stop().await;
    let (status, body) = w.create(key_server(&w, 0)).await;
    assert_eq!(status, 202, "{body}");
    let id = body["data"]["server"]["id"].as_str().unwrap().to_owned();
    let job_id = body["data"]["jobId"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/jobs/{job_id}");
    eventually(
        Duration::from_secs(30),
        "the first attempt to fail",
        || async {
            let (_, job) = get_as(&w.stack.app, &w.token, &path).await;
            job["data"]["attempts"] == 1 && job["data"]["state"] == "queued"
        },
    )
    .await;
    let (_, job) = get_as(&w.stack.app, &w.token, &path).await;
    assert!(
        job["data"]["error"]
            .as_str()
            .unwrap()
            .starts_with("UNREACHABLE"),
        "{job}"
    );
    // Truthful meanwhile: offline with the reason, not pending.
    assert_eq!(w.server(&id).await["status"], "offline");

    w.sshd.resume().await;
    let job = w.job_done(&job_id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert!(job["attempts"].as_u64().unwrap() >= 2, "{job}");
    assert_eq!(w.server(&id).await["status"], "online");
}
