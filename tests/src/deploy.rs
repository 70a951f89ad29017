//! A user ready to deploy: the api, a worker serving the deployment queues,
//! one sshd test server (podman behind `docker`) whose settings point at a
//! private nginx and a scratch data directory, and a test app in a git
//! repository on that server, reached over SSH.
//!
//! The test app is busybox's httpd serving `www/` on port 8080 (from the
//! busybox image made once per run); at start it writes `$GREETING` into
//! `www/greeting.txt`, so a request shows the env it runs with.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::accounts::{get_as, send_as};
use crate::fleet::Fleet;
use crate::nginx::PrivateNginx;
use crate::{eventually, free_port, images, scratch_dir};

pub struct DeployFleet {
    pub fleet: Fleet,
    pub nginx: PrivateNginx,
    pub server_id: String,
    /// Where nginx listens for the deployments' sites.
    pub http_port: u16,
    /// Where it serves them over HTTPS once a domain has a certificate.
    pub https_port: u16,
    pub data_dir: PathBuf,
    pub dir: PathBuf,
}

/// Worker settings for quick tests: health checks every 200 ms, no disk floor
/// to speak of, ports from a range of this run's own, below the kernel's
/// ephemeral range (as the default range is).
fn settings(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let first = 20000 + (free_port() % 9000);
    let mut settings = vec![
        ("BERTH_DEPLOY_HEALTH_INTERVAL_MS", "200".to_owned()),
        ("BERTH_DEPLOY_MIN_FREE_DISK_MB", "1".to_owned()),
        // The test app (busybox httpd as PID 1) ignores SIGTERM.
        ("BERTH_DEPLOY_STOP_GRACE_SECS", "1".to_owned()),
        (
            "BERTH_DEPLOY_PORT_RANGE",
            format!("{first}-{}", first + 200),
        ),
    ];
    settings.extend(extra.iter().cloned());
    settings
}

impl DeployFleet {
    pub async fn start() -> DeployFleet {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[(&'static str, String)]) -> DeployFleet {
        Self::start_on(extra, free_port()).await
    }

    /// [`Self::start_with`], the server's nginx listening on `http_port`
    /// (what a local ACME CA validates on).
    pub async fn start_on(extra: &[(&'static str, String)], http_port: u16) -> DeployFleet {
        images::busybox().await;
        let settings = settings(extra);
        let borrowed: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let fleet = Fleet::start("probe,deploy,rollback,ssl,maintenance", &borrowed).await;
        let dir = scratch_dir("deploy");
        let nginx = PrivateNginx::start(&dir.join("nginx")).await;
        let data_dir = dir.join("data");
        let server_id = fleet.onboard(0).await;
        let https_port = free_port();
        let (status, body) = send_as(
            &fleet.stack.app,
            &fleet.token,
            Method::PATCH,
            &format!("/api/v1/servers/{server_id}"),
            json!({"nginxConfDir": nginx.sites.to_str().unwrap(),
                   "nginxConfFile": nginx.conf.to_str().unwrap(),
                   "httpPort": http_port,
                   "httpsPort": https_port,
                   "dataDir": data_dir.to_str().unwrap()}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if let Some(job) = body["data"]["jobId"].as_str() {
            let done = fleet.job_done(job).await;
            assert_eq!(done["state"], "succeeded", "{done}");
        }
        DeployFleet {
            fleet,
            nginx,
            server_id,
            http_port,
            https_port,
            data_dir,
            dir,
        }
    }

    pub async fn send(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        send_as(&self.fleet.stack.app, &self.fleet.token, method, path, body).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        get_as(&self.fleet.stack.app, &self.fleet.token, path).await
    }

    /// `POST /deployments` with `body` (serverId added); answers the 202's data.
    pub async fn create(&self, mut body: Value) -> Value {
        body["serverId"] = json!(self.server_id);
        let (status, answer) = self.send(Method::POST, "/api/v1/deployments", body).await;
        assert_eq!(status, 202, "{answer}");
        answer["data"].clone()
    }

    pub async fn deployment(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/deployments/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body["data"].clone()
    }

    /// Waits for the job to end; answers it.
    pub async fn job_end(&self, job_id: &str) -> Value {
        let what = format!("job {job_id} to end");
        eventually(Duration::from_secs(180), &what, || async {
            matches!(
                self.fleet.job_state(job_id).await["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
        .await;
        self.fleet.job_state(job_id).await
    }

    /// Waits for the job and expects it succeeded, showing its log if not.
    pub async fn job_ok(&self, job_id: &str) -> Value {
        let job = self.job_end(job_id).await;
        if job["state"] != "succeeded" {
            let (_, log) = self
                .get(&format!("/api/v1/jobs/{job_id}/logs?limit=1000"))
                .await;
            // The reason and the log's end first: CI shows a failure's start.
            let lines: Vec<String> = log["data"]["items"]
                .as_array()
                .map(|lines| {
                    lines
                        .iter()
                        .map(|l| l["line"].as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            panic!(
                "job {job_id} {}: {}\nthe log's last lines:\n{tail}\njob: {job}",
                job["state"], job["error"]
            );
        }
        job
    }

    /// GET `path` of the deployment's generated host, through nginx.
    pub async fn through_nginx(&self, url: &str, path: &str) -> Option<(u16, String)> {
        let host = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let res = client
            .get(format!("http://127.0.0.1:{}{path}", self.http_port))
            .header("Host", host)
            .send()
            .await
            .ok()?;
        let status = res.status().as_u16();
        Some((status, res.text().await.unwrap_or_default()))
    }

    /// Containers carrying the deployment's label (any state).
    pub async fn containers_of(&self, id: &str) -> Vec<String> {
        self.podman_list(&["ps", "-a", "--format", "{{.Names}}"], id)
            .await
    }

    /// Images carrying the deployment's label.
    pub async fn images_of(&self, id: &str) -> Vec<String> {
        self.podman_list(&["images", "-q"], id).await
    }

    /// `podman <args> --filter label=berth.deployment=<id>`'s lines; a
    /// listing that fails (podman's storage busy under parallel tests) is
    /// tried again, never read as empty.
    async fn podman_list(&self, args: &[&str], id: &str) -> Vec<String> {
        let mut last = None;
        for _ in 0..5 {
            let out = self
                .fleet
                .sshd
                .podman()
                .args(args)
                .arg("--filter")
                .arg(format!("label=berth.deployment={id}"))
                .output()
                .await
                .unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned)
                    .filter(|l| !l.is_empty())
                    .collect();
            }
            last = Some(out);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("podman {args:?} keeps failing: {last:?}");
    }

    /// A git deployment of `repo` (`body` without `source`) whose deploy key
    /// can read it: created, its first release failed at fetch (no key yet),
    /// the key authorized. Answers its id and url; nothing is live yet.
    pub async fn git_deployment(&self, repo: &AppRepo, mut body: Value) -> (String, String) {
        body["source"] = json!({"type": "git", "repoUrl": repo.url, "branch": "main"});
        let created = self.create(body).await;
        let id = created["deployment"]["id"].as_str().unwrap().to_owned();
        let url = created["deployment"]["url"].as_str().unwrap().to_owned();
        self.job_end(created["jobId"].as_str().unwrap()).await;
        self.authorize_deploy_key(&id).await;
        (id, url)
    }

    /// `POST /deployments/{id}/{action}` (redeploy, rollback, stop,
    /// restart); answers the 202's data (`jobId`, and `release` where one
    /// is made).
    pub async fn act(&self, id: &str, action: &str, body: Value) -> Value {
        let (status, answer) = self
            .send(
                Method::POST,
                &format!("/api/v1/deployments/{id}/{action}"),
                body,
            )
            .await;
        assert_eq!(status, 202, "{action}: {answer}");
        answer["data"].clone()
    }

    /// `POST /deployments/{id}/redeploy`; answers the 202's data.
    pub async fn redeploy(&self, id: &str) -> Value {
        self.act(id, "redeploy", json!({})).await
    }

    /// Lets the deployment's deploy key read the test server over SSH (as a
    /// user adds a deploy key to their repository).
    pub async fn authorize_deploy_key(&self, deployment_id: &str) {
        let (status, body) = self
            .get(&format!("/api/v1/deployments/{deployment_id}/deploy-key"))
            .await;
        assert_eq!(status, 200, "{body}");
        self.fleet
            .sshd
            .authorize(body["data"]["publicKey"].as_str().unwrap());
    }
}

/// The test app's repository: a bare one on the test server, and a work
/// tree to commit versions from.
pub struct AppRepo {
    pub bare: PathBuf,
    work: PathBuf,
    /// `ssh://root@<server>:<port>/…/app.git`.
    pub url: String,
}

/// Runs `git` in `cwd` as a fixed test author; answers its trimmed stdout.
pub fn git(args: &[&str], cwd: &Path) -> String {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.test")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The test app's files: a Dockerfile on the busybox image, `www/` with
/// `version` in its index, and a start that shows `$GREETING`.
pub fn write_app(dir: &Path, version: &str, healthy: bool) {
    write_app_with(dir, version, healthy, "")
}

/// [`write_app`] with `build_step` (a Dockerfile line) before the copy.
pub fn write_app_with(dir: &Path, version: &str, healthy: bool, build_step: &str) {
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let start = if healthy {
        "echo app starting; echo \"$GREETING\" > /www/greeting.txt; exec httpd -f -v -p 8080 -h /www"
    } else {
        "exit 3"
    };
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {}\n{build_step}\nCOPY www /www\nEXPOSE 8080\nCMD [\"sh\", \"-c\", {}]\n",
            images::BUSYBOX,
            serde_json::Value::String(start.into())
        ),
    )
    .unwrap();
    std::fs::write(dir.join("www/index.html"), format!("{version}\n")).unwrap();
}

impl AppRepo {
    pub fn new(fleet: &DeployFleet) -> AppRepo {
        let dir = fleet.dir.join("repo");
        let bare = dir.join("app.git");
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&["init", "-q", "--bare", bare.to_str().unwrap()], &dir);
        git(&["init", "-q", "-b", "main"], &work);
        let url = format!(
            "ssh://root@{}:{}{}",
            fleet.fleet.sshd.host(0),
            fleet.fleet.sshd.port,
            bare.display()
        );
        let repo = AppRepo { bare, work, url };
        repo.commit("v1", true);
        repo
    }

    /// Commits the app at `version` and pushes it to `main`; answers the commit.
    pub fn commit(&self, version: &str, healthy: bool) -> String {
        self.commit_with(version, healthy, "")
    }

    /// [`Self::commit`] with a build step (e.g. `RUN sleep 30`).
    pub fn commit_with(&self, version: &str, healthy: bool, build_step: &str) -> String {
        write_app_with(&self.work, version, healthy, build_step);
        git(&["add", "-A"], &self.work);
        git(&["commit", "-q", "-m", version], &self.work);
        git(
            &["push", "-q", self.bare.to_str().unwrap(), "main"],
            &self.work,
        );
        git(&["rev-parse", "HEAD"], &self.work)
    }

    /// A commit whose app starts listening only `seconds` after it starts.
    pub fn commit_slow_start(&self, version: &str, seconds: u32) -> String {
        write_app(&self.work, version, true);
        let dockerfile = std::fs::read_to_string(self.work.join("Dockerfile")).unwrap();
        std::fs::write(
            self.work.join("Dockerfile"),
            dockerfile.replace(
                "echo \\\"$GREETING",
                &format!("sleep {seconds}; echo \\\"$GREETING"),
            ),
        )
        .unwrap();
        git(&["add", "-A"], &self.work);
        git(&["commit", "-q", "-m", version], &self.work);
        git(
            &["push", "-q", self.bare.to_str().unwrap(), "main"],
            &self.work,
        );
        git(&["rev-parse", "HEAD"], &self.work)
    }

    /// A commit whose Dockerfile does not build.
    pub fn commit_broken_build(&self) -> String {
        std::fs::write(
            self.work.join("Dockerfile"),
            format!("FROM {}\nRUN exit 7\n", images::BUSYBOX),
        )
        .unwrap();
        git(&["add", "-A"], &self.work);
        git(&["commit", "-q", "-m", "broken"], &self.work);
        git(
            &["push", "-q", self.bare.to_str().unwrap(), "main"],
            &self.work,
        );
        git(&["rev-parse", "HEAD"], &self.work)
    }
}
