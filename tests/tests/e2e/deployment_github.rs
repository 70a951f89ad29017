//! SPEC §3.4 point 11: the linked GitHub account's repositories are synced,
//! listed, and a private one deployed with the account's token, which is
//! sealed at rest and never written on the server; disconnecting stops it.
//! GitHub is the local fake (`berth_e2e::fake_oauth`), serving the test's
//! repository over git's smart HTTP protocol to a token only.

use berth_e2e::accounts::{Browser, NewUser, PASSWORD, access_token, create_user, get_as};
use berth_e2e::deploy::{AppRepo, DeployFleet};
use berth_e2e::fake_oauth::{FakeOAuth, FakeRepo};
use reqwest::Method;
use serde_json::json;

use crate::oauth::{account, run_flow};

/// Every file under `dir` that holds `needle` (the server's disk).
fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && std::fs::read(&path)
                    .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_synced_private_repository_deploys_with_the_accounts_token_until_disconnected() {
    let fake = FakeOAuth::start().await;
    let env: Vec<(&'static str, String)> = fake
        .env()
        .into_iter()
        .map(|(k, v)| (&*k.leak(), v))
        .collect();
    let f = DeployFleet::start_with(&env).await;
    let app = &f.fleet.stack.app;
    let repo = AppRepo::new(&f);
    fake.add_repo(FakeRepo {
        id: 4242,
        full_name: "octo/private-app".into(),
        private: true,
        default_branch: "main".into(),
        bare: repo.bare.clone(),
    });
    // A name Berth would never pass on to a shell is not synced.
    fake.add_repo(FakeRepo {
        id: 4343,
        full_name: "octo/bad name;rm".into(),
        private: false,
        default_branch: "main".into(),
        bare: repo.bare.clone(),
    });

    // Nothing linked yet.
    let (status, body) = f.get("/api/v1/github/repos").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "NOT_FOUND");

    // The fleet's user links GitHub from a browser session.
    let browser = Browser::new(app, "test");
    assert_eq!(
        browser.login("ops@example.test", PASSWORD).await.status(),
        200
    );
    fake.sign_in_as(account("777", "ops@github.example.test", true));
    let end = run_flow(&browser, "github", Some("link")).await;
    assert_eq!(end.query(), Some("linked=github"), "{end}");
    let tokens = fake.issued_tokens();
    assert_eq!(tokens.len(), 1);
    let token = tokens[0].clone();
    // Sealed at rest: the row holds no trace of the token.
    let (sealed, scopes): (String, Option<String>) = sqlx::query_as(
        "SELECT token_sealed, token_scopes FROM oauth_identities WHERE provider = 'github'",
    )
    .fetch_one(&f.fleet.stack.db.pool)
    .await
    .unwrap();
    assert!(!sealed.contains(&token) && !sealed.is_empty());
    assert!(scopes.is_some());

    let (status, body) = f
        .send(Method::POST, "/api/v1/github/repos/sync", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["synced"], 1, "{body}");
    assert_eq!(body["data"]["login"], "user777");
    let (status, body) = f.get("/api/v1/github/repos").await;
    assert_eq!(status, 200, "{body}");
    let items = body["data"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["fullName"], "octo/private-app");
    assert_eq!(items[0]["private"], true);
    assert_eq!(items[0]["defaultBranch"], "main");
    assert_eq!(items[0]["id"], 4242);

    // Someone else sees no GitHub account of theirs.
    create_user(&f.fleet.stack.db, NewUser::verified("eve@example.test")).await;
    let eve = access_token(app, "eve@example.test").await;
    let (status, _) = get_as(app, &eve, "/api/v1/github/repos").await;
    assert_eq!(status, 404);

    // Bad and unknown repositories are refused before anything is stored.
    for (repo_name, expected) in [("octo/../x", 400), ("octo/not-synced", 404)] {
        let (status, body) = f
            .send(
                Method::POST,
                "/api/v1/deployments",
                json!({"serverId": f.server_id, "name": "nope", "port": 8080,
                       "source": {"type": "github", "repo": repo_name}}),
            )
            .await;
        assert_eq!(status, expected, "{repo_name}: {body}");
    }
    let (_, list) = f.get("/api/v1/deployments").await;
    assert_eq!(list["data"]["total"], 0, "nothing half-written: {list}");

    // Deployed by name (any case), on the default branch, with the token.
    let created = f
        .create(json!({"name": "from-github", "port": 8080,
                       "healthCheck": {"path": "/index.html", "retries": 100},
                       "source": {"type": "github", "repo": "Octo/Private-App"}}))
        .await;
    let id = created["deployment"]["id"].as_str().unwrap().to_owned();
    let url = created["deployment"]["url"].as_str().unwrap().to_owned();
    let source = &created["deployment"]["source"];
    assert_eq!(source["type"], "github", "{source}");
    assert_eq!(source["repo"], "octo/private-app");
    assert_eq!(source["branch"], "main");
    f.job_ok(created["jobId"].as_str().unwrap()).await;
    assert_eq!(
        f.through_nginx(&url, "/").await,
        Some((200, "v1\n".to_owned()))
    );
    assert!(fake.token_git_requests() > 0, "the clone used the token");
    // A GitHub source has no deploy key to show.
    let (status, _) = f.get(&format!("/api/v1/deployments/{id}/deploy-key")).await;
    assert_eq!(status, 404);
    // Never on the server's disk: not in the checkout, its git config, the
    // env file or anywhere else under the data directory.
    assert_eq!(files_holding(&f.data_dir, &token), Vec::<String>::new());
    // Nor in the job's log.
    let job = created["jobId"].as_str().unwrap();
    let (_, log) = f.get(&format!("/api/v1/jobs/{job}/logs?limit=1000")).await;
    assert!(!log.to_string().contains(&token));

    // A sync again: a renamed repository keeps its id, a new one taking
    // over the old name is the new one's, one listed twice is one; then
    // a repository no longer listed is removed.
    let listed = |id: i64, name: &str| FakeRepo {
        id,
        full_name: name.into(),
        private: true,
        default_branch: "main".into(),
        bare: repo.bare.clone(),
    };
    fake.set_repos(vec![
        listed(4242, "octo/app-v2"),
        listed(5151, "octo/private-app"),
        listed(5151, "octo/private-app"),
    ]);
    let names = || async {
        let (_, body) = f.get("/api/v1/github/repos").await;
        let mut found: Vec<(i64, String)> = body["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["id"].as_i64().unwrap(),
                    r["fullName"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        found.sort();
        found
    };
    let (status, body) = f
        .send(Method::POST, "/api/v1/github/repos/sync", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["synced"], 2, "{body}");
    assert_eq!(body["data"]["removed"], 0, "{body}");
    assert_eq!(
        names().await,
        vec![
            (4242, "octo/app-v2".to_owned()),
            (5151, "octo/private-app".to_owned())
        ]
    );
    fake.set_repos(vec![listed(5151, "octo/private-app")]);
    let (status, body) = f
        .send(Method::POST, "/api/v1/github/repos/sync", json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["removed"], 1, "{body}");
    assert_eq!(names().await, vec![(5151, "octo/private-app".to_owned())]);

    // A token GitHub revoked: the sync says so.
    fake.revoke_tokens();
    let (status, body) = f
        .send(Method::POST, "/api/v1/github/repos/sync", json!({}))
        .await;
    assert_eq!(status, 409, "{body}");

    // Disconnecting names what it affects, and the next release fails at
    // fetch with the reason.
    let res = browser
        .send(reqwest::Method::DELETE, "/api/v1/github", json!({}))
        .await;
    let status = res.status();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["deploymentsAffected"], 1, "{body}");
    let (status, _) = f.get("/api/v1/github/repos").await;
    assert_eq!(status, 404);
    let job = f.redeploy(&id).await["jobId"].as_str().unwrap().to_owned();
    let ended = f.job_end(&job).await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .unwrap()
            .contains("no longer linked"),
        "{ended}"
    );
    let d = f.deployment(&id).await;
    assert_eq!(d["liveRelease"], 1, "the live release keeps serving: {d}");
    assert_eq!(
        f.through_nginx(&url, "/").await,
        Some((200, "v1\n".to_owned()))
    );
}
