//! OAuth sign-in and linking against a local server speaking GitHub's and
//! Google's protocol (`berth_e2e::fake_oauth`).

use berth_e2e::TestApp;
use berth_e2e::accounts::{Browser, NewUser, PASSWORD, Stack, access_token, create_user, get_as};
use berth_e2e::fake_oauth::{FakeAccount, FakeOAuth};
use reqwest::Url;
use uuid::Uuid;

async fn stack_with(fake: &FakeOAuth) -> Stack {
    let env = fake.env();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Stack::start(&pairs).await
}

pub(crate) fn account(id: &str, email: &str, verified: bool) -> FakeAccount {
    FakeAccount {
        id: id.into(),
        login: format!("user{id}"),
        name: format!("User {id}"),
        email: email.into(),
        email_verified: verified,
    }
}

fn location(res: &reqwest::Response) -> Url {
    let value = res.headers()["location"].to_str().unwrap();
    Url::parse(value).unwrap()
}

/// Follows the flow like a browser: start → provider → callback. Answers the
/// final redirect Berth gives.
pub(crate) async fn run_flow(browser: &Browser, provider: &str, mode: Option<&str>) -> Url {
    let start = match mode {
        Some(m) => format!("/api/v1/auth/oauth/{provider}?mode={m}"),
        None => format!("/api/v1/auth/oauth/{provider}"),
    };
    let res = browser.get(&start).await;
    assert_eq!(res.status(), 303, "{:?}", res.text().await);
    let to_provider = location(&res);
    let query: std::collections::HashMap<_, _> = to_provider.query_pairs().into_owned().collect();
    assert_eq!(query["code_challenge_method"], "S256");
    assert_eq!(query["code_challenge"].len(), 43);
    assert!(query["redirect_uri"].ends_with(&format!("/api/v1/auth/oauth/{provider}/callback")));
    let res = browser.client.get(to_provider).send().await.unwrap();
    assert!(res.status().is_redirection());
    let back = location(&res);
    let res = browser.client.get(back).send().await.unwrap();
    assert_eq!(res.status(), 303);
    location(&res)
}

fn error_of(url: &Url) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == "error")
        .map(|(_, v)| v.into_owned())
}

async fn user_id(stack: &Stack, email: &str) -> Option<Uuid> {
    sqlx::query_scalar("SELECT id FROM users WHERE lower(email) = lower($1)")
        .bind(email)
        .fetch_optional(&stack.db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn github_sign_in_creates_a_verified_account_and_finds_it_again() {
    let fake = FakeOAuth::start().await;
    let stack = stack_with(&fake).await;
    let app: &TestApp = &stack.app;
    let providers: serde_json::Value = app
        .get("/api/v1/auth/providers")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(providers["data"]["github"], true);
    assert_eq!(providers["data"]["google"], true);

    fake.sign_in_as(account("4242", "octo@example.test", true));
    let browser = Browser::new(app, "test");
    let end = run_flow(&browser, "github", None).await;
    assert_eq!(end.as_str(), format!("{}/", app.base), "{end}");
    let me: serde_json::Value = browser.get("/api/v1/auth/me").await.json().await.unwrap();
    assert_eq!(me["data"]["user"]["email"], "octo@example.test");
    assert_eq!(me["data"]["user"]["emailVerified"], true);
    assert_eq!(me["data"]["user"]["name"], "User 4242");
    let id = user_id(&stack, "octo@example.test").await.unwrap();

    // Again, from another browser: the same account.
    let again = Browser::new(app, "test");
    run_flow(&again, "github", None).await;
    let me: serde_json::Value = again.get("/api/v1/auth/me").await.json().await.unwrap();
    assert_eq!(me["data"]["user"]["id"], id.to_string());
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions WHERE user_id = $1 AND auth_method = 'oauth_github'",
    )
    .bind(id)
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(sessions, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn linking_to_an_existing_account_needs_an_email_verified_at_the_provider() {
    let fake = FakeOAuth::start().await;
    let stack = stack_with(&fake).await;
    let app = &stack.app;
    let existing = create_user(&stack.db, NewUser::verified("lena@example.test")).await;

    // Unverified at the provider: no link, no account, a clear error.
    fake.sign_in_as(account("777", "lena@example.test", false));
    let browser = Browser::new(app, "test");
    let end = run_flow(&browser, "google", None).await;
    assert_eq!(end.path(), "/login");
    assert!(error_of(&end).unwrap().contains("not verified"), "{end}");
    let linked: i64 = sqlx::query_scalar("SELECT count(*) FROM oauth_identities")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert_eq!(linked, 0);
    assert_eq!(browser.get("/api/v1/auth/me").await.status(), 401);

    // Verified: linked to the existing account and signed in.
    fake.sign_in_as(account("777", "LENA@example.test", true));
    let end = run_flow(&browser, "google", None).await;
    assert_eq!(end.path(), "/", "{end}");
    let me: serde_json::Value = browser.get("/api/v1/auth/me").await.json().await.unwrap();
    assert_eq!(me["data"]["user"]["id"], existing.to_string());
    let token = access_token(app, "lena@example.test").await;
    let (_, profile) = get_as(app, &token, "/api/v1/profile").await;
    assert_eq!(profile["data"]["linkedProviders"][0]["provider"], "google");
    assert_eq!(
        profile["data"]["hasPassword"], true,
        "a verified account keeps its password"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_in_user_links_github_explicitly() {
    let fake = FakeOAuth::start().await;
    let stack = stack_with(&fake).await;
    let app = &stack.app;
    create_user(&stack.db, NewUser::verified("max@example.test")).await;
    let browser = Browser::new(app, "test");
    assert_eq!(
        browser.login("max@example.test", PASSWORD).await.status(),
        200
    );

    // A different address at GitHub: linking is the user's explicit act.
    fake.sign_in_as(account("99", "max@work.example.test", false));
    let end = run_flow(&browser, "github", Some("link")).await;
    assert_eq!(end.path(), "/settings", "{end}");
    assert_eq!(end.query(), Some("linked=github"));
    let profile: serde_json::Value = browser.get("/api/v1/profile").await.json().await.unwrap();
    assert_eq!(profile["data"]["linkedProviders"][0]["provider"], "github");

    // That GitHub account now signs in as max.
    let other = Browser::new(app, "test");
    run_flow(&other, "github", None).await;
    let me: serde_json::Value = other.get("/api/v1/auth/me").await.json().await.unwrap();
    assert_eq!(me["data"]["user"]["email"], "max@example.test");

    // Linking needs a session.
    let res = Browser::new(app, "test")
        .get("/api/v1/auth/oauth/github?mode=link")
        .await;
    assert_eq!(res.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mismatched_missing_or_replayed_state_is_rejected() {
    let fake = FakeOAuth::start().await;
    let stack = stack_with(&fake).await;
    let app = &stack.app;
    fake.sign_in_as(account("5", "sam@example.test", true));

    // The attacker's own flow…
    let attacker = Browser::new(app, "test");
    let res = attacker.get("/api/v1/auth/oauth/github").await;
    let res = attacker.client.get(location(&res)).send().await.unwrap();
    let callback = location(&res);

    // …replayed in the victim's browser: its state cookie does not match.
    let victim = Browser::new(app, "test");
    let res = victim.get("/api/v1/auth/oauth/github").await;
    assert_eq!(res.status(), 303);
    let res = victim.client.get(callback.clone()).send().await.unwrap();
    let end = location(&res);
    assert!(
        error_of(&end).unwrap().contains("state does not match"),
        "{end}"
    );
    assert_eq!(victim.get("/api/v1/auth/me").await.status(), 401);
    assert_eq!(fake.exchanges(), 0, "no code was exchanged");

    // Without any state cookie.
    let res = Browser::new(app, "test")
        .client
        .get(callback.clone())
        .send()
        .await
        .unwrap();
    assert!(error_of(&location(&res)).unwrap().contains("start again"));

    // The legitimate callback works once; replaying it fails.
    let res = attacker.client.get(callback.clone()).send().await.unwrap();
    let end = location(&res);
    assert_eq!(end.path(), "/", "{end}");
    let res = attacker.client.get(callback).send().await.unwrap();
    let end = location(&res);
    assert!(error_of(&end).is_some(), "{end}");
    let failures: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_logs WHERE action = 'auth.login_failed' AND target_type = 'oauth'")
        .fetch_one(&stack.db.pool)
        .await
        .unwrap();
    assert!(failures >= 2, "{failures}");

    // A provider error comes back as a message; an unknown provider is 404.
    let res = attacker
        .get("/api/v1/auth/oauth/github/callback?error=access_denied&state=x")
        .await;
    assert!(error_of(&location(&res)).unwrap().contains("access_denied"));
    assert_eq!(app.get("/api/v1/auth/oauth/gitlab").await.status(), 404);
}
