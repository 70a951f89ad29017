//! A continuous client load on one site through nginx, for zero-downtime
//! checks and benchmarks: one client opening a new connection per request
//! (never retrying), and one keeping its connection alive as browsers do,
//! which sends a request once more when it met a connection closed before
//! any answer (RFC 9112 §9.3.1: nginx's old workers close idle keep-alive
//! connections at a reload). Both count answers, failures and, for one
//! expected body, how many answers carried it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    marked: AtomicU64,
}

/// What one client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub ok: u64,
    pub failed: u64,
    /// Requests sent again after a reload closed an idle connection.
    pub retried: u64,
    /// Answers whose body was the marker.
    pub marked: u64,
}

impl Counts {
    fn read(&self) -> Seen {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        Seen {
            ok: get(&self.ok),
            failed: get(&self.failed),
            retried: get(&self.retried),
            marked: get(&self.marked),
        }
    }
}

/// What the two clients saw, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    pub kept_alive: Seen,
    pub new_connections: Seen,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn failed(&self) -> u64 {
        self.kept_alive.failed + self.new_connections.failed
    }

    pub fn answered(&self) -> u64 {
        self.kept_alive.ok + self.new_connections.ok
    }

    pub fn per_second(&self) -> f64 {
        self.answered() as f64 / self.elapsed.as_secs_f64()
    }
}

pub struct Load {
    stop: Arc<AtomicBool>,
    counts: [Arc<Counts>; 2],
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// What a client requests, and how often.
#[derive(Clone)]
struct Target {
    url: String,
    host: String,
    marker: Option<String>,
    pause: Duration,
}

async fn client_loop(
    client: reqwest::Client,
    target: Target,
    retry: bool,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let Target {
        url,
        host,
        marker,
        pause,
    } = target;
    while !stop.load(Ordering::Relaxed) {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let send = || client.get(&url).header("Host", &host).send();
        let mut answer = send().await;
        if retry
            && answer
                .as_ref()
                .is_err_and(|e| e.is_request() && !e.is_timeout())
        {
            counts.retried.fetch_add(1, Ordering::Relaxed);
            answer = send().await;
        }
        match answer {
            Ok(response) if response.status() == 200 => {
                let text = response.text().await;
                if marker
                    .as_deref()
                    .is_some_and(|m| text.as_deref().is_ok_and(|t| t == m))
                {
                    counts.marked.fetch_add(1, Ordering::Relaxed);
                }
                counts.ok.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                if counts.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("failed: {other:?}");
                }
            }
        }
    }
}

impl Load {
    /// Starts both clients on `url` with `Host: host`, each waiting `pause`
    /// between two requests (zero: back to back, as fast as it goes).
    pub fn start(url: &str, host: &str, marker: Option<&str>, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = [Arc::new(Counts::default()), Arc::new(Counts::default())];
        let kept = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let fresh = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let target = Target {
            url: url.to_owned(),
            host: host.to_owned(),
            marker: marker.map(str::to_owned),
            pause,
        };
        let tasks = [(kept, true), (fresh, false)]
            .into_iter()
            .enumerate()
            .map(|(i, (client, retry))| {
                tokio::spawn(client_loop(
                    client,
                    target.clone(),
                    retry,
                    stop.clone(),
                    counts[i].clone(),
                ))
            })
            .collect();
        Load {
            stop,
            counts,
            tasks,
            started: Instant::now(),
        }
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        LoadReport {
            kept_alive: self.counts[0].read(),
            new_connections: self.counts[1].read(),
            elapsed: self.started.elapsed(),
        }
    }
}
