//! The push webhook: GitHub's signature over the raw body checked against
//! the deployment's secret; a push to its branch releases that commit once,
//! whatever GitHub redelivers; everything else is answered and ignored.

use berth_e2e::deploy::{AppRepo, DeployFleet};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::Sha256;

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn deliver(
    f: &DeployFleet,
    event: &str,
    delivery: &str,
    body: &Value,
    signature: Option<String>,
) -> (u16, Value) {
    let body = body.to_string();
    let app = &f.fleet.stack.app;
    let mut req = app
        .client
        .post(app.url("/api/v1/webhooks/github"))
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", delivery)
        .body(body.clone());
    if let Some(signature) = signature {
        req = req.header("X-Hub-Signature-256", signature);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_to_the_branch_deploy_once_and_bad_signatures_are_refused() {
    let f = DeployFleet::start().await;
    let repo = AppRepo::new(&f);
    let (id, url) = f
        .git_deployment(
            &repo,
            json!({"name": "hooked", "port": 8080, "drainSeconds": 0,
                   "healthCheck": {"path": "/index.html"}}),
        )
        .await;
    let (status, hook) = f.get(&format!("/api/v1/deployments/{id}/webhook")).await;
    assert_eq!(status, 200, "{hook}");
    assert!(
        hook["data"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/api/v1/webhooks/github")
    );
    let secret = hook["data"]["secret"].as_str().unwrap().to_owned();

    let repository = json!({"ssh_url": repo.url, "clone_url": "https://example.test/other.git"});
    let ping = json!({"zen": "hi", "repository": repository});
    let (status, body) = deliver(
        &f,
        "ping",
        "d-ping",
        &ping,
        Some(sign(&secret, ping.to_string().as_bytes())),
    )
    .await;
    assert_eq!(
        (status, body["data"]["outcome"].as_str()),
        (200, Some("pong")),
        "{body}"
    );
    let (status, _) = deliver(&f, "ping", "d-ping2", &ping, None).await;
    assert_eq!(status, 401, "no signature");
    let (status, body) = deliver(
        &f,
        "ping",
        "d-ping3",
        &ping,
        Some(sign("wrong", ping.to_string().as_bytes())),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "UNAUTHORIZED");

    let commit = repo.commit("v2", true);
    let push = |branch: &str, after: &str| {
        json!({"ref": format!("refs/heads/{branch}"), "after": after, "deleted": false,
               "repository": repository})
    };
    // Another branch: ignored.
    let other = push("feature", &commit);
    let (status, body) = deliver(
        &f,
        "push",
        "d-1",
        &other,
        Some(sign(&secret, other.to_string().as_bytes())),
    )
    .await;
    assert_eq!(
        (status, body["data"]["outcome"].as_str()),
        (202, Some("ignored")),
        "{body}"
    );
    // Another event: ignored.
    let issue = json!({"action": "opened", "repository": repository});
    let (status, body) = deliver(
        &f,
        "issues",
        "d-2",
        &issue,
        Some(sign(&secret, issue.to_string().as_bytes())),
    )
    .await;
    assert_eq!(
        (status, body["data"]["outcome"].as_str()),
        (202, Some("ignored")),
        "{body}"
    );
    // The branch: that commit is released.
    let main = push("main", &commit);
    let signature = sign(&secret, main.to_string().as_bytes());
    let (status, body) = deliver(&f, "push", "d-3", &main, Some(signature.clone())).await;
    assert_eq!(
        (status, body["data"]["outcome"].as_str()),
        (202, Some("deployed")),
        "{body}"
    );
    let released = &body["data"]["releases"][0];
    assert_eq!(released["deploymentId"], id.as_str());
    f.job_ok(released["jobId"].as_str().unwrap()).await;
    assert_eq!(f.through_nginx(&url, "/").await, Some((200, "v2\n".into())));
    let d = f.deployment(&id).await;
    assert_eq!(d["currentRelease"]["trigger"], "webhook");
    assert_eq!(d["currentRelease"]["sourceRef"], commit.as_str());
    // GitHub's redelivery of the same delivery: ignored, no new release.
    let (status, body) = deliver(&f, "push", "d-3", &main, Some(signature.clone())).await;
    assert_eq!(
        (status, body["data"]["outcome"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
    let (_, releases) = f.get(&format!("/api/v1/deployments/{id}/releases")).await;
    assert_eq!(releases["data"].as_array().unwrap().len(), 2);
    // A body changed after signing is refused.
    let mut tampered = main.clone();
    tampered["after"] = json!("0123456789abcdef0123456789abcdef01234567");
    let (status, _) = deliver(&f, "push", "d-4", &tampered, Some(signature.clone())).await;
    assert_eq!(status, 401);
    // A rotated secret: the old one no longer signs.
    let (status, rotated) = f
        .send(
            Method::POST,
            &format!("/api/v1/deployments/{id}/webhook/rotate"),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["data"]["secret"], secret.as_str());
    let (status, _) = deliver(&f, "push", "d-5", &main, Some(signature)).await;
    assert_eq!(status, 401);
}
