//! The checks between starting a release and switching to it, run from a
//! real sshd test server: which ports are taken there, and a health check
//! retried within its budget, reported per attempt, and stopped by a cancel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use berth_e2e::fleet::Fleet;
use berth_remote::ops::health::{self, Health, HealthCheck};
use berth_remote::ops::{Lines, On, OpError};
use berth_ssh::{SshError, Stream};
use tokio_util::sync::CancellationToken;

/// `/healthz` fails twice, then answers 200; `/broken` always 500.
async fn app() -> u16 {
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(
            "/healthz",
            get(move || async move {
                if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }),
        )
        .route(
            "/broken",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn check(path: &str, retries: u32, interval: Duration) -> HealthCheck {
    HealthCheck {
        path: path.into(),
        expected_status: 200,
        timeout: Duration::from_secs(2),
        retries,
        start_period: Duration::ZERO,
        interval,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ports_in_use_are_seen_and_health_checks_keep_their_budget() {
    let fleet = Fleet::start("probe", &[]).await;
    let id: uuid::Uuid = fleet.onboard(0).await.parse().unwrap();
    let remote = fleet.remote();
    let server = remote.load(id).await.unwrap().unwrap();
    let session = remote.session(&server).await.unwrap();
    let cancel = CancellationToken::new();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    let lines: Lines =
        Arc::new(move |_: Stream, line: &str| sink.lock().unwrap().push(line.to_owned()));
    let on = On::new(&session, &cancel).with_lines(lines);

    let port = app().await;
    let busy = health::ports_taken(&on).await.unwrap();
    assert!(busy.contains(&port), "the app's port is taken: {busy:?}");
    assert!(busy.contains(&fleet.sshd.port), "so is sshd's");
    // From the app's port up: the first free one is not the app's.
    let picked = health::pick_port(port..=port.saturating_add(200), &busy, None).unwrap();
    assert!(picked != port && !busy.contains(&picked), "{picked}");

    let healthy =
        health::wait_healthy(&on, port, &check("/healthz", 5, Duration::from_millis(100)))
            .await
            .unwrap();
    assert_eq!(healthy, Health::Healthy { attempts: 3 });
    assert_eq!(
        seen.lock().unwrap().clone(),
        [
            "health check 1: status 503",
            "health check 2: status 503",
            "health check 3: status 200"
        ]
    );

    let broken = health::wait_healthy(&on, port, &check("/broken", 3, Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(
        matches!(broken, Health::Unhealthy { attempts: 3, ref last } if last.status == Some(500)),
        "{broken:?}"
    );

    // A cancel between attempts ends the wait at once.
    let stopper = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stopper.cancel();
    });
    let asked = std::time::Instant::now();
    let err = health::wait_healthy(&on, port, &check("/broken", 100, Duration::from_secs(60)))
        .await
        .unwrap_err();
    assert!(matches!(err, OpError::Ssh(SshError::Cancelled(_))), "{err}");
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "not after the interval"
    );
}
