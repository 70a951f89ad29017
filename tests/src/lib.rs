//! The test harness: real services started per test, and Berth's real binaries.
//! Postgres is one cluster per run (started by `scripts/test.sh`, found through
//! `BERTH_TEST_DATABASE_URL`) with a fresh database per test; Redis and the SMTP
//! listener are started per test so a test can stop and restart them.

pub mod accounts;
pub mod acme;
pub mod deploy;
pub mod fake_oauth;
pub mod fleet;
pub mod images;
pub mod load;
pub mod nginx;
pub mod pipeline;
pub mod registry;
pub mod relay;
pub mod ssh_servers;

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use berth_config::Env;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret!";
pub const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The keyring of [`MASTER_KEY`], as Berth's processes in tests build it.
pub fn keyring() -> berth_secrets::Keyring {
    let env = Env::from_map(HashMap::from([(
        "BERTH_MASTER_KEY".to_owned(),
        MASTER_KEY.to_owned(),
    )]));
    let mail = berth_config::MailConfig::from_env(&env).expect("mail config");
    berth_secrets::Keyring::from_config(&mail.master_key, &[])
}

pub fn scratch_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "berth-e2e-{label}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Waits until `check` is true, polling; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh, migrated database for one test.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let admin_url = std::env::var("BERTH_TEST_DATABASE_URL")
            .expect("BERTH_TEST_DATABASE_URL is not set: run the suite with scripts/test.sh");
        let name = format!("berth_test_{:016x}", rand::random::<u64>());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("connect to the test cluster");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let (base, _) = admin_url.rsplit_once('/').expect("database URL has a path");
        let url = format!("{base}/{name}");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .expect("connect to test database");
        berth_api::MIGRATOR.run(&pool).await.expect("migrations");
        TestDb { url, pool }
    }
}

/// A redis-server of the test's own, on a unix socket, that the test can stop and
/// start again at the same address.
pub struct TestRedis {
    dir: PathBuf,
    child: Option<Child>,
}

impl TestRedis {
    pub async fn start() -> TestRedis {
        let mut redis = TestRedis {
            dir: scratch_dir("redis"),
            child: None,
        };
        redis.resume().await;
        redis
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    pub async fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let socket = self.socket();
        eventually(Duration::from_secs(10), "redis socket", || {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(&socket).await.is_ok() }
        })
        .await;
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
        let _ = std::fs::remove_file(self.socket());
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A real SMTP listener (aiosmtpd) that stores what it receives in a Maildir.
pub struct SmtpSink {
    pub port: u16,
    maildir: PathBuf,
    _child: Child,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let maildir = scratch_dir("maildir").join("mail");
        let port = free_port();
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3-aiosmtpd is installed (scripts/test.sh installs it)");
        eventually(Duration::from_secs(15), "SMTP listener", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        SmtpSink {
            port,
            maildir,
            _child: child,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Waits for a message to `to` whose subject contains `subject`, and
    /// returns the newest one, its quoted-printable soft breaks and `=3D` undone.
    pub async fn wait_for(&self, to: &str, subject: &str, seen_before: usize) -> String {
        let matching = |messages: Vec<String>| -> Vec<String> {
            messages
                .into_iter()
                .map(|m| {
                    m.replace("=\r\n", "")
                        .replace("=\n", "")
                        .replace("=3D", "=")
                })
                .filter(|m| {
                    m.lines().any(|l| l.starts_with("To:") && l.contains(to))
                        && m.lines()
                            .any(|l| l.starts_with("Subject:") && l.contains(subject))
                })
                .collect()
        };
        let what = format!("mail to {to} about {subject:?}");
        eventually(Duration::from_secs(30), &what, || {
            let found = matching(self.messages()).len();
            async move { found > seen_before }
        })
        .await;
        let mut all = matching(self.messages_in_order());
        all.pop().expect("a message")
    }

    /// How many messages to `to` with `subject` arrived so far.
    pub fn count(&self, to: &str, subject: &str) -> usize {
        self.messages()
            .iter()
            .filter(|m| {
                m.lines().any(|l| l.starts_with("To:") && l.contains(to))
                    && m.lines()
                        .any(|l| l.starts_with("Subject:") && l.contains(subject))
            })
            .count()
    }

    /// Messages oldest first (Maildir file times).
    fn messages_in_order(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| std::fs::read_to_string(p).ok())
            .collect()
    }

    /// The raw messages received so far.
    pub fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    }
}

/// The settings every Berth process of a test shares.
pub fn base_env(db: &TestDb, redis: &TestRedis) -> HashMap<String, String> {
    [
        ("DATABASE_URL", db.url.clone()),
        ("REDIS_URL", redis.url()),
        ("JWT_SECRET", JWT_SECRET.to_owned()),
        ("BERTH_MASTER_KEY", MASTER_KEY.to_owned()),
        ("COOKIE_SECURE", "false".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `berth-api` served in-process on a free port.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub state: berth_api::AppState,
    shutdown: CancellationToken,
}

impl TestApp {
    /// Serves on a free port; `BERTH_PUBLIC_URL` is that address unless `env` says.
    pub async fn spawn(mut env: HashMap<String, String>) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        env.entry("BERTH_PUBLIC_URL".into())
            .or_insert_with(|| base.clone());
        let env = Env::from_map(env);
        let config = berth_config::ApiConfig::from_env(&env).expect("api config");
        let policies = berth_jobs::Policies::from_env(&env).expect("policies");
        let state = berth_api::AppState::connect(config, policies)
            .await
            .expect("api state");
        let shutdown = CancellationToken::new();
        tokio::spawn(berth_api::serve(listener, state.clone(), shutdown.clone()));
        TestApp {
            base,
            client: reqwest::Client::new(),
            state,
            shutdown,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Berth's own binaries, built by `cargo build --workspace --bins`.
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    // The benchmarks run the harness with release binaries.
    let profile = std::env::var("BERTH_BIN_PROFILE").unwrap_or_else(|_| "debug".into());
    let path = target.join(profile).join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A running Berth process whose output goes to a log file the test can read.
pub struct BerthProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl BerthProcess {
    pub fn spawn(name: &str, args: &[&str], env: &HashMap<String, String>) -> BerthProcess {
        let log = scratch_dir(name).join("output.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(binary(name))
            .args(args)
            .env_clear()
            .envs(env)
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn Berth binary");
        BerthProcess { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("signal");
    }
}

/// Runs `berth-api admin ARGS` with `env`, feeding `stdin`; answers whether
/// it succeeded, and what it printed (standard output, then error).
pub async fn berth_api_admin(
    env: &HashMap<String, String>,
    args: &[&str],
    stdin: &str,
) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(binary("berth-api"))
        .arg("admin")
        .args(args)
        .env_clear()
        .envs(env)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth-api");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A WebSocket to `base`'s realtime channel, signed in with `token`.
pub async fn connect_ws(base: &str, token: &str) -> Socket {
    connect_ws_at(base, "/api/v1/ws", token).await
}

/// A WebSocket to `path` of `base`, signed in with `token`.
pub async fn connect_ws_at(base: &str, path: &str, token: &str) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}{path}", base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .expect("ws connect")
        .0
}

/// A WebSocket to the api.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON message on `socket`, within `within`.
pub async fn next_json(socket: &mut Socket, within: Duration) -> Value {
    loop {
        let message = tokio::time::timeout(within, socket.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

/// Asks to follow `topic`; answers `subscribed` or `error`.
pub async fn subscribe(socket: &mut Socket, topic: &str) -> Value {
    socket
        .send(Message::Text(
            json!({"type": "subscribe", "topic": topic})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    loop {
        let answer = next_json(socket, Duration::from_secs(5)).await;
        if matches!(answer["type"].as_str(), Some("subscribed" | "error")) {
            return answer;
        }
    }
}

/// Nanoseconds since the epoch, as the test servers' `date +%s%N` prints them.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Processes on this machine (the test servers are local sshd processes)
/// whose command line, arguments joined by spaces, satisfies `matches`.
fn processes_where(matches: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|raw| matches(String::from_utf8_lossy(raw).replace('\0', " ").trim_end()))
        .count()
}

/// Processes whose command line is exactly `cmdline`.
pub fn processes_running(cmdline: &str) -> usize {
    processes_where(|line| line == cmdline)
}

/// Processes whose command line contains `fragment`.
pub fn processes_containing(fragment: &str) -> usize {
    processes_where(|line| line.contains(fragment))
}
