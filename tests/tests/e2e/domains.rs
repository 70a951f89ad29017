//! SPEC §3.5: domains and certificates, against a real nginx, pebble (a
//! local ACME CA validating HTTP-01 on that nginx) and pebble-challtestsrv
//! as the DNS both the CA and Berth's workers ask. Attach → the app by Host
//! header; a certificate from pebble → HTTPS with pebble's root trusted,
//! HTTP redirected; a name pointing elsewhere refused before the CA with
//! the address found; a forced renewal replaces the certificate under a
//! continuous HTTPS load without a failed request; delete removes the block
//! and the files; another user's domain is 404, a name attached twice 409;
//! a CA refusing the challenge leaves the domain `failed` with the ACME
//! problem type and tells its owner.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use berth_e2e::accounts::{NewUser, access_token, create_user, get_as, send_as};
use berth_e2e::acme::Pebble;
use berth_e2e::deploy::{AppRepo, DeployFleet};
use berth_e2e::{BerthProcess, connect_ws, eventually, free_port};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

const DOMAIN: &str = "shop.example.test";

/// A fleet whose worker asks `pebble` for certificates and its DNS for
/// names, its nginx on the port pebble validates on.
async fn fleet_with(
    pebble_http: u16,
    pebble: &Pebble,
    extra: &[(&'static str, String)],
) -> DeployFleet {
    let mut env = pebble.env();
    env.extend_from_slice(extra);
    let f = DeployFleet::start_on(&env, pebble_http).await;
    pebble.point_names_at(&f.fleet.sshd.host(0)).await;
    f
}

/// A live deployment of the test app; answers its id.
async fn live_app(f: &DeployFleet, name: &str) -> String {
    let repo = AppRepo::new(f);
    let (id, _) = f
        .git_deployment(
            &repo,
            json!({"name": name, "port": 8080, "drainSeconds": 1,
                   "healthCheck": {"path": "/index.html", "retries": 100}}),
        )
        .await;
    f.job_ok(f.redeploy(&id).await["jobId"].as_str().unwrap())
        .await;
    id
}

async fn domain(f: &DeployFleet, id: &str) -> Value {
    let (status, body) = f.get(&format!("/api/v1/domains/{id}")).await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

/// An HTTP request to the server's nginx for `host`, redirects not followed.
async fn over_http(f: &DeployFleet, host: &str, path: &str) -> (u16, String, Option<String>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let res = client
        .get(format!("http://127.0.0.1:{}{path}", f.http_port))
        .header("Host", host)
        .send()
        .await
        .unwrap();
    let location = res
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    (res.status().as_u16(), res.text().await.unwrap(), location)
}

/// A client that reaches `DOMAIN` at the server's HTTPS port, trusting
/// only pebble's issuing root and checking the name as a browser would.
fn https_client(f: &DeployFleet, root: reqwest::Certificate) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .resolve(
            DOMAIN,
            format!("127.0.0.1:{}", f.https_port).parse().unwrap(),
        )
        .tls_info(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The served certificate's DER, from one HTTPS request, and the body.
async fn served(client: &reqwest::Client, https_port: u16) -> Result<(Vec<u8>, String), String> {
    let res = client
        .get(format!("https://{DOMAIN}:{https_port}/"))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let der = res
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .map(<[u8]>::to_vec)
        .ok_or("no TLS info")?;
    let status = res.status();
    let body = res.text().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("status {status}: {body}"));
    }
    Ok((der, body))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_domain_gets_a_certificate_from_the_ca_is_renewed_under_load_and_removed() {
    let http_port = free_port();
    let pebble = Pebble::start(http_port).await;
    let f = fleet_with(http_port, &pebble, &[]).await;
    let id = live_app(&f, "shop").await;

    // Refused before anything is stored.
    for (name, status) in [
        ("203.0.113.7", 400),
        ("localhost", 400),
        ("*.example.test", 400),
        ("bad_name.example.test", 400),
    ] {
        let (got, body) = f
            .send(
                Method::POST,
                "/api/v1/domains",
                json!({"deploymentId": id, "domainName": name}),
            )
            .await;
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR", "{body}");
    }

    // Attach: nginx serves the app by the domain's Host header.
    let (status, body) = f
        .send(
            Method::POST,
            "/api/v1/domains",
            json!({"deploymentId": id, "domainName": "Shop.Example.TEST."}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let domain_id = body["data"]["domain"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["data"]["domain"]["domainName"], DOMAIN);
    f.job_ok(body["data"]["jobId"].as_str().unwrap()).await;
    let attached = domain(&f, &domain_id).await;
    assert_eq!(attached["status"], "active", "{attached}");
    assert_eq!(attached["dns"]["status"], "ok", "{attached}");
    assert_eq!(attached["certificate"]["status"], "none");
    assert_eq!(attached["url"], format!("http://{DOMAIN}/"));
    assert_eq!(over_http(&f, DOMAIN, "/").await.0, 200);
    assert_eq!(over_http(&f, DOMAIN, "/").await.1, "v1\n");
    let shown = f.deployment(&id).await;
    assert_eq!(shown["domains"][0]["domainName"], DOMAIN, "{shown}");

    // One name, one deployment, platform-wide.
    let (status, body) = f
        .send(
            Method::POST,
            "/api/v1/domains",
            json!({"deploymentId": id, "domainName": DOMAIN}),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    // Another user sees none of it and cannot act on it.
    create_user(&f.fleet.stack.db, NewUser::verified("eve@example.test")).await;
    let eve = access_token(&f.fleet.stack.app, "eve@example.test").await;
    let app = &f.fleet.stack.app;
    assert_eq!(
        get_as(app, &eve, &format!("/api/v1/domains/{domain_id}"))
            .await
            .0,
        404
    );
    assert_eq!(
        get_as(app, &eve, "/api/v1/domains").await.1["data"]["total"],
        0
    );
    for (method, path) in [
        (Method::POST, format!("/api/v1/domains/{domain_id}/ssl")),
        (Method::DELETE, format!("/api/v1/domains/{domain_id}")),
    ] {
        assert_eq!(
            send_as(app, &eve, method, &path, json!({})).await.0,
            404,
            "{path}"
        );
    }
    let (status, _) = send_as(
        app,
        &eve,
        Method::POST,
        "/api/v1/domains",
        json!({"deploymentId": id, "domainName": "eve.example.test"}),
    )
    .await;
    assert_eq!(status, 404, "not eve's deployment");

    // A name pointing elsewhere is refused before the CA, with what it
    // points at.
    let elsewhere = "elsewhere.example.test";
    pebble.set_a(elsewhere, &["198.51.100.23"]).await;
    let (status, body) = f
        .send(
            Method::POST,
            "/api/v1/domains",
            json!({"deploymentId": id, "domainName": elsewhere}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let elsewhere_id = body["data"]["domain"]["id"].as_str().unwrap().to_owned();
    f.job_ok(body["data"]["jobId"].as_str().unwrap()).await;
    let (status, body) = f
        .send(
            Method::POST,
            &format!("/api/v1/domains/{elsewhere_id}/ssl"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let refused = f.job_end(body["data"]["jobId"].as_str().unwrap()).await;
    assert_eq!(refused["state"], "failed", "{refused}");
    assert_eq!(
        refused["attempts"], 1,
        "no retries for a user's request: {refused}"
    );
    let shown = domain(&f, &elsewhere_id).await;
    assert_eq!(shown["dns"]["status"], "mismatch", "{shown}");
    assert_eq!(shown["dns"]["found"], json!(["198.51.100.23"]));
    assert_eq!(shown["certificate"]["status"], "failed");
    let detail = shown["certificate"]["lastError"]["detail"]
        .as_str()
        .unwrap();
    assert!(
        detail.contains("198.51.100.23") && detail.contains(&f.fleet.sshd.host(0)),
        "{detail}"
    );
    assert!(shown["certificate"]["lastError"]["type"].is_null());

    // The certificate: issued by pebble, installed, HTTPS serving the app,
    // plain HTTP redirected (but for the challenge path).
    let (status, body) = f
        .send(
            Method::POST,
            &format!("/api/v1/domains/{domain_id}/ssl"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let asked = std::time::Instant::now();
    f.job_ok(body["data"]["jobId"].as_str().unwrap()).await;
    let issued = domain(&f, &domain_id).await;
    assert_eq!(issued["certificate"]["status"], "issued", "{issued}");
    assert_eq!(issued["certificate"]["installed"], true);
    assert!(issued["certificate"]["expiresAt"].is_string());
    assert_eq!(issued["url"], format!("https://{DOMAIN}:{}/", f.https_port));
    let root = pebble.issuing_root().await;
    let client = https_client(&f, root.clone());
    let (first_der, body) = served(&client, f.https_port)
        .await
        .expect("HTTPS with pebble's root");
    println!(
        "POST /domains/{{id}}/ssl to HTTPS serving: {:?}",
        asked.elapsed()
    );
    assert_eq!(body, "v1\n");
    let (status, _, location) = over_http(&f, DOMAIN, "/some/path?q=1").await;
    assert_eq!(status, 301);
    assert_eq!(
        location.as_deref(),
        Some(format!("https://{DOMAIN}:{}/some/path?q=1", f.https_port).as_str())
    );
    assert_eq!(
        over_http(&f, DOMAIN, "/.well-known/acme-challenge/none")
            .await
            .0,
        404,
        "the challenge path is never redirected"
    );
    // The key is the server's only: mode 0600, under Berth's data dir.
    let serial = issued["certificate"]["serial"].as_str().unwrap();
    let key = f
        .data_dir
        .join(format!("deployments/{id}/certs/{domain_id}/{serial}.key"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A forced renewal (every certificate due) under a continuous HTTPS
    // load: a new certificate, and no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (client, stop, ok, failed) = (client.clone(), stop.clone(), ok.clone(), failed.clone());
        let port = f.https_port;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A connection a reload closed before any answer is asked
                // again once (RFC 9112 §9.3.1), as browsers do.
                let outcome = match served(&client, port).await {
                    Ok(done) => Ok(done),
                    Err(_) => served(&client, port).await,
                };
                match outcome {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("HTTPS request failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    let mut env = f.fleet.stack.env.clone();
    for (k, v) in [
        ("BERTH_SCHEDULE_CERTIFICATES", "* * * * * *"),
        ("BERTH_SCHEDULE_PROBE", "off"),
        ("BERTH_SCHEDULE_PRUNE", "off"),
        ("BERTH_SCHEDULE_RECONCILE", "off"),
        ("BERTH_CERT_RENEW_FRACTION", "1"),
    ] {
        env.insert(k.into(), v.into());
    }
    let scheduler = BerthProcess::spawn("berth-scheduler", &[], &env);
    eventually(
        Duration::from_secs(120),
        "a renewed certificate",
        || async { domain(&f, &domain_id).await["certificate"]["serial"].as_str() != Some(serial) },
    )
    .await;
    drop(scheduler);
    // A renewal the last ticks enqueued runs to its end first.
    eventually(Duration::from_secs(60), "no renewal left", || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM jobs WHERE kind = 'domain.certificate' \
             AND state IN ('queued', 'running')",
        )
        .fetch_one(&f.fleet.stack.db.pool)
        .await
        .unwrap();
        left == 0
    })
    .await;
    let renewed = domain(&f, &domain_id).await;
    assert_eq!(renewed["certificate"]["status"], "issued", "{renewed}");
    let new_serial = renewed["certificate"]["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually(
        Duration::from_secs(20),
        "the new certificate served",
        || async {
            served(&client, f.https_port)
                .await
                .is_ok_and(|(der, _)| der != first_der)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during the renewal"
    );
    assert!(ok.load(Ordering::Relaxed) > 10);
    // The superseded certificate's files are gone, the new ones there.
    let certs = f
        .data_dir
        .join(format!("deployments/{id}/certs/{domain_id}"));
    assert!(certs.join(format!("{new_serial}.key")).exists());
    let renewal_settled = || async {
        let files: Vec<String> = std::fs::read_dir(&certs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        !files.iter().any(|n| n.starts_with(serial))
    };
    eventually(
        Duration::from_secs(20),
        "the old files removed",
        renewal_settled,
    )
    .await;

    // A certificate 10 days from its end whose renewal has not happened:
    // the expiry warning goes out once, however many ticks see it.
    sqlx::query(
        "UPDATE domains SET cert_expires_at = now() + interval '10 days', \
         cert_not_before = now() - interval '80 days' WHERE id = $1::uuid",
    )
    .bind(&domain_id)
    .execute(&f.fleet.stack.db.pool)
    .await
    .unwrap();
    env.insert("BERTH_CERT_RENEW_FRACTION".into(), "0".into());
    let warnings = || async {
        let (_, listed) = f.get("/api/v1/notifications?limit=100").await;
        listed["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["kind"] == "certificate_expiring")
            .count()
    };
    let scheduler = BerthProcess::spawn("berth-scheduler", &[], &env);
    eventually(Duration::from_secs(30), "the expiry warning", || async {
        warnings().await == 1
    })
    .await;
    // Three more ticks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(scheduler);
    assert_eq!(warnings().await, 1, "warned once");
    assert_eq!(
        domain(&f, &domain_id).await["certificate"]["status"],
        "expiring"
    );

    // Delete: the block and the files go, nginx serves the name no more.
    let (status, body) = f
        .send(
            Method::DELETE,
            &format!("/api/v1/domains/{domain_id}"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    f.job_ok(body["data"]["jobId"].as_str().unwrap()).await;
    assert_eq!(f.get(&format!("/api/v1/domains/{domain_id}")).await.0, 404);
    assert!(!certs.exists(), "certificate files removed");
    let site = std::fs::read_to_string(f.nginx.sites.join(format!("berth-{id}.conf"))).unwrap();
    assert!(!site.contains(DOMAIN), "{site}");
    // A new connection (a pooled one may still reach an old worker).
    let fresh = https_client(&f, root);
    eventually(
        Duration::from_secs(10),
        "HTTPS no longer served",
        || async { served(&fresh, f.https_port).await.is_err() },
    )
    .await;
    // (Plain HTTP for an unknown name goes to nginx's default server for
    // the port, which is the server's own to choose: Berth never claims
    // `default_server`, which would clash with the distribution's site.)

    // Deleting the deployment removes its domains too.
    let (status, body) = f
        .send(
            Method::DELETE,
            &format!("/api/v1/deployments/{id}"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    f.job_ok(body["data"]["jobId"].as_str().unwrap()).await;
    assert_eq!(
        f.get(&format!("/api/v1/domains/{elsewhere_id}")).await.0,
        404
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_challenge_the_ca_refuses_fails_the_domain_with_the_problem_and_tells_its_owner() {
    // The CA validates on a port where nothing listens.
    let nginx_port = free_port();
    let pebble = Pebble::start(free_port()).await;
    let f = fleet_with(
        nginx_port,
        &pebble,
        &[
            ("BERTH_SSL_MAX_ATTEMPTS", "2".into()),
            ("BERTH_SSL_BACKOFF_MS", "500".into()),
        ],
    )
    .await;
    let id = live_app(&f, "refused").await;
    let (status, body) = f
        .send(
            Method::POST,
            "/api/v1/domains",
            json!({"deploymentId": id, "domainName": DOMAIN}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let domain_id = body["data"]["domain"]["id"].as_str().unwrap().to_owned();
    f.job_ok(body["data"]["jobId"].as_str().unwrap()).await;

    let mut events = connect_ws(&f.fleet.stack.app.base, &f.fleet.token).await;
    let (status, body) = f
        .send(
            Method::POST,
            &format!("/api/v1/domains/{domain_id}/ssl"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let asked = std::time::Instant::now();
    let job = body["data"]["jobId"].as_str().unwrap().to_owned();

    // Told at once (in-app, realtime, mail), with the CA's own words.
    let mut notification = Value::Null;
    while notification.is_null() {
        let message = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("a notification within a minute")
            .unwrap()
            .unwrap();
        if let Ok(text) = message.into_text() {
            let event: Value = serde_json::from_str(&text).unwrap();
            if event["type"] == "notification" {
                notification = event;
            }
        }
    }
    assert!(asked.elapsed() < Duration::from_secs(60));
    assert_eq!(
        notification["data"]["kind"], "certificate_failed",
        "{notification}"
    );
    assert_eq!(notification["data"]["data"]["domainId"], domain_id.as_str());
    let shown = domain(&f, &domain_id).await;
    assert_eq!(shown["certificate"]["status"], "failed", "{shown}");
    assert_eq!(shown["certificate"]["installed"], false);
    let problem = shown["certificate"]["lastError"]["type"]
        .as_str()
        .unwrap_or_default();
    assert!(
        problem.starts_with("urn:ietf:params:acme:error:"),
        "{shown}"
    );
    assert!(
        shown["certificate"]["lastError"]["detail"]
            .as_str()
            .unwrap()
            .contains("the CA says")
    );
    let (_, listed) = f.get("/api/v1/notifications?limit=50").await;
    assert!(
        listed["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["kind"] == "certificate_failed"),
        "{listed}"
    );
    let mails: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'email.send' AND payload::text LIKE '%failed%'",
    )
    .fetch_one(&f.fleet.stack.db.pool)
    .await
    .unwrap();
    assert!(mails >= 1, "a mail is on its way");

    // Retried with backoff, then given up: the job fails, the domain stays
    // failed, HTTP keeps serving the app.
    let ended = f.job_end(&job).await;
    assert_eq!(ended["state"], "failed", "{ended}");
    assert_eq!(ended["attempts"], 2, "{ended}");
    assert_eq!(
        domain(&f, &domain_id).await["certificate"]["status"],
        "failed"
    );
    assert_eq!(over_http(&f, DOMAIN, "/").await.1, "v1\n");
}
