//! Part 6: a remote job's output and its cancellation, end to end on a real
//! sshd test server: how late a line the server prints reaches a WebSocket
//! client following the job (bound: 500 ms), and how long from
//! `POST /jobs/{id}/cancel` until the remote process is gone (bound: 5 s).
//! The api runs in this process (the test harness's), the worker as its
//! release binary.

use std::time::{Duration, Instant};

use berth_e2e::accounts::send_as;
use berth_e2e::fleet::Fleet;
use berth_e2e::{connect_ws, next_json, now_nanos, processes_containing, subscribe};
use reqwest::Method;
use serde_json::json;

use crate::Setup;

fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95), values[values.len() - 1])
}

pub async fn remote_jobs(_setup: &Setup) -> anyhow::Result<()> {
    let ticks: u32 = crate::setting("BENCH_LOG_TICKS", 30);
    let cancels: u32 = crate::setting("BENCH_CANCELS", 5);
    let fleet = Fleet::start("probe,diagnostic", &[]).await;
    fleet.quiet_alerts().await;
    let server = fleet.onboard(0).await;

    // Remote print to WebSocket client, one line a second.
    let id = fleet.remote_sleep(&server, ticks).await;
    let mut socket = connect_ws(&fleet.stack.app.base, &fleet.token).await;
    let answer = subscribe(&mut socket, &format!("job:{id}")).await;
    anyhow::ensure!(answer["type"] == "subscribed", "{answer}");
    let mut delays = Vec::new();
    let until = Instant::now() + Duration::from_secs(u64::from(ticks) + 30);
    while Instant::now() < until {
        let event = next_json(&mut socket, Duration::from_secs(30)).await;
        if event["type"] == "job_log" {
            for line in event["data"]["lines"].as_array().into_iter().flatten() {
                let text = line["line"].as_str().unwrap_or_default();
                if let Some((n, stamp)) = text.strip_prefix("tick ").and_then(|r| r.split_once(' '))
                {
                    let stamp: i64 = stamp.parse()?;
                    delays.push((now_nanos() - stamp) as f64 / 1e6);
                    if n == ticks.to_string() {
                        break;
                    }
                }
            }
        }
        if delays.len() as u32 >= ticks.saturating_sub(1) {
            break;
        }
    }
    anyhow::ensure!(!delays.is_empty(), "no log line arrived");
    let (median, p95, max) = spread(delays.clone());
    println!("6. A remote job on a real sshd server, followed over the WebSocket");
    println!(
        "   remote print -> WebSocket client: {} lines, median {median:.0} ms, p95 {p95:.0} ms, \
         max {max:.0} ms (bound: 500 ms)",
        delays.len()
    );

    // Cancel to remote process gone.
    let mut gone = Vec::new();
    for i in 0..cancels {
        let seconds = 600 + i;
        let id = fleet.remote_sleep(&server, seconds).await;
        let marker = format!("-lt {seconds} ]");
        let started = Instant::now();
        while processes_containing(&marker) == 0 {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the remote loop never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let asked = Instant::now();
        let (status, body) = send_as(
            &fleet.stack.app,
            &fleet.token,
            Method::POST,
            &format!("/api/v1/jobs/{id}/cancel"),
            json!({}),
        )
        .await;
        anyhow::ensure!(status == 202, "cancel: {status} {body}");
        while processes_containing(&marker) > 0 {
            anyhow::ensure!(
                asked.elapsed() < Duration::from_secs(30),
                "the remote process stayed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        gone.push(asked.elapsed().as_secs_f64() * 1000.0);
        fleet.job_done_or_cancelled(&id).await;
    }
    let (median, _, max) = spread(gone.clone());
    println!(
        "   POST /jobs/{{id}}/cancel -> remote process gone: {} cancels, median {median:.0} ms, \
         max {max:.0} ms (bound: 5,000 ms)",
        gone.len()
    );
    Ok(())
}
