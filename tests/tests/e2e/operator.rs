//! The operator's first run and host commands: `berth-api admin …` and the
//! default admin's warning when it is ignored.

use std::time::Duration;

use berth_e2e::accounts::{NewUser, create_user, get_as, login};
use berth_e2e::{
    BerthProcess, TestApp, TestDb, TestRedis, base_env, berth_api_admin as admin, eventually,
};

fn shown_password(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix("password (shown once): "))
        .unwrap_or_else(|| panic!("no password in {output}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_commands_create_promote_and_reset_without_mail() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    let env = base_env(&db, &redis);
    let app = TestApp::spawn(env.clone()).await;

    let (ok, out) = admin(&env, &["create", "--email", "root@example.test"], "").await;
    assert!(ok, "{out}");
    let generated = shown_password(&out);
    assert!(generated.len() >= 20);
    let signed_in = login(&app, "root@example.test", &generated).await;
    assert_eq!(signed_in["user"]["role"], "super_admin", "{signed_in}");
    let token = signed_in["accessToken"].as_str().unwrap().to_owned();

    // Refusals: a taken address, a common password, an unknown role or user.
    let (ok, out) = admin(&env, &["create", "--email", "ROOT@example.test"], "").await;
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = admin(
        &env,
        &["create", "--email", "weak@example.test", "--password-stdin"],
        "password\n",
    )
    .await;
    assert!(!ok && out.contains("common"), "{out}");
    let (ok, out) = admin(
        &env,
        &["promote", "--email", "root@example.test", "--role", "god"],
        "",
    )
    .await;
    assert!(!ok && out.contains("unknown role"), "{out}");
    let (ok, out) = admin(&env, &["promote", "--email", "nobody@example.test"], "").await;
    assert!(!ok && out.contains("no user"), "{out}");

    // Promote an existing user; the next request sees the role.
    let ada = create_user(&db, NewUser::verified("ada@example.test")).await;
    let (ok, out) = admin(&env, &["promote", "--email", "ada@example.test"], "").await;
    assert!(ok, "{out}");
    let role: String = sqlx::query_scalar("SELECT role FROM users WHERE id = $1")
        .bind(ada)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(role, "admin");

    // A reset from standard input signs every session out.
    let (ok, out) = admin(
        &env,
        &[
            "reset-password",
            "--email",
            "root@example.test",
            "--password-stdin",
        ],
        "a brand new passphrase\n",
    )
    .await;
    assert!(ok, "{out}");
    assert!(!out.contains("a brand new passphrase"), "{out}");
    let (status, _) = get_as(&app, &token, "/api/v1/auth/me").await;
    assert_eq!(status, 401);
    login(&app, "root@example.test", "a brand new passphrase").await;
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_logs WHERE actor_user_id IS NULL ORDER BY created_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for action in [
        "admin.user_create",
        "admin.user_role",
        "admin.password_reset",
    ] {
        assert!(actions.iter().any(|a| a == action), "{actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ignored_default_admin_is_a_warning() {
    let db = TestDb::new().await;
    let redis = TestRedis::start().await;
    create_user(&db, NewUser::verified("someone@example.test")).await;
    let mut env = base_env(&db, &redis);
    env.insert(
        "BERTH_API_ADDR".into(),
        format!("127.0.0.1:{}", berth_e2e::free_port()),
    );
    env.insert("DEFAULT_ADMIN_EMAIL".into(), "boss@example.test".into());
    env.insert(
        "DEFAULT_ADMIN_PASSWORD".into(),
        "a long admin passphrase".into(),
    );
    let api = BerthProcess::spawn("berth-api", &[], &env);
    eventually(Duration::from_secs(30), "the warning", || {
        let out = api.output();
        async move { out.contains("WARN") && out.contains("DEFAULT_ADMIN_EMAIL") }
    })
    .await;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE email = 'boss@example.test')")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!exists);
}
