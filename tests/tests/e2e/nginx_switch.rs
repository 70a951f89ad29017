//! The release switch at nginx's level (issue 10's zero downtime): a
//! deployment's proxy site moved between two live backends twenty times,
//! through `berth-remote` over SSH (site written, `nginx -t`, reload), while
//! two clients request it without pause, and a streaming response begun
//! before the first switch completes after the last.
//!
//! One client opens a new connection per request and never retries: no
//! request may fail. The other keeps its connection alive, as browsers do.
//! At a reload nginx's old workers close their idle keep-alive connections,
//! and a request sent on one at that instant meets a closed connection
//! before any answer; HTTP lets a client send such an idempotent request
//! again (RFC 9112 §9.3.1) and browsers do, once. This client does the
//! same, counts those retries, and no request may fail after them.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use berth_e2e::fleet::Fleet;
use berth_e2e::load::Load;
use berth_e2e::nginx::PrivateNginx;
use berth_e2e::{free_port, scratch_dir};
use berth_remote::ops::On;
use berth_remote::ops::nginx::{Nginx, ProxySite};
use berth_ssh::Arg;
use tokio_util::sync::CancellationToken;

const HOST: &str = "app-1a2b3c4d.127.0.0.1.sslip.io";
const CHUNKS: u64 = 40;

/// A backend answering its name, and `/stream`: a chunk every 100 ms.
async fn backend(name: &'static str) -> u16 {
    let stream = || async {
        let chunks = futures::stream::unfold(0u64, |n| async move {
            if n == CHUNKS {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok::<_, std::io::Error>(format!("{n}\n")), n + 1))
        });
        Body::from_stream(chunks)
    };
    let app = Router::new()
        .route("/", get(move || async move { name }))
        .route("/stream", get(stream));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_switches_under_load_drop_no_request_and_no_stream() {
    let fleet = Fleet::start("probe", &[]).await;
    fleet.quiet_alerts().await;
    let id: uuid::Uuid = fleet.onboard(0).await.parse().unwrap();
    let remote = fleet.remote();
    let server = remote.load(id).await.unwrap().unwrap();
    let session = remote.session(&server).await.unwrap();
    let cancel = CancellationToken::new();
    let on = On::new(&session, &cancel);

    let dir = scratch_dir("nginx-switch");
    let nginx_master = PrivateNginx::start(&dir).await;
    let nginx = Nginx {
        config: Some(Arg::path(nginx_master.conf.to_str().unwrap()).unwrap()),
    };
    let conf_dir = Arg::path(nginx_master.sites.to_str().unwrap()).unwrap();
    let listen = free_port();
    let backends = [backend("A").await, backend("B").await];
    let acme_root = dir.join("acme");
    let site = |upstream_port| ProxySite {
        id,
        server_names: vec![HOST.into()],
        tls: Vec::new(),
        listen_port: listen,
        https_port: free_port(),
        upstream_port,
        acme_root: acme_root.to_str().unwrap().to_owned(),
    };
    nginx
        .install_proxy_site(&on, &conf_dir, &site(backends[0]))
        .await
        .unwrap();

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{listen}/");
    // A reload returns before the master has bound a new listen port.
    berth_e2e::eventually(
        Duration::from_secs(10),
        "nginx to serve the site",
        || async {
            match client.get(&url).header("Host", HOST).send().await {
                Ok(answer) => answer.text().await.is_ok_and(|t| t == "A"),
                Err(_) => false,
            }
        },
    )
    .await;

    // A long response, begun before any switch.
    let stream = client
        .get(format!("{url}stream"))
        .header("Host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    // The two client loops: requests back to back until told to stop.
    let load = Load::start(&url, HOST, Some("B"), Duration::ZERO);

    for switch in 1..=20 {
        let upstream = backends[switch % 2];
        nginx
            .install_proxy_site(&on, &conf_dir, &site(upstream))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = load.stop().await;

    let body = stream.text().await.unwrap();
    assert_eq!(
        body.lines().count() as u64,
        CHUNKS,
        "the stream begun before the switches completed after them: {body}"
    );
    for (seen, kind) in [
        (report.kept_alive, "kept-alive"),
        (report.new_connections, "new connections"),
    ] {
        println!(
            "20 switches, {kind}: {} requests answered, {} failed, \
             {} retried after a reload closed an idle connection, {} by B",
            seen.ok, seen.failed, seen.retried, seen.marked
        );
        assert_eq!(
            seen.failed, 0,
            "{kind}: no request failed ({} answered)",
            seen.ok
        );
        assert!(
            seen.ok > 20 && seen.marked > 0 && seen.marked < seen.ok,
            "{kind}: both backends served: {seen:?}"
        );
    }
    // The last switch went to A (20 is even): new requests reach A once
    // the reload is done (it returns before).
    berth_e2e::eventually(
        Duration::from_secs(10),
        "the last switch to take",
        || async {
            match client.get(&url).header("Host", HOST).send().await {
                Ok(answer) => answer.text().await.is_ok_and(|t| t == "A"),
                Err(_) => false,
            }
        },
    )
    .await;
    drop(nginx_master);
}
