//! A user with servers: the api, a `berth-worker` for the `probe` (and, with
//! mail, `email`) queue, an SMTP listener, and real sshd "servers".

use std::time::Duration;

use berth_jobs::ServerProbe;
use berth_jobs::store::NewJob;
use reqwest::Method;
use serde_json::{Value, json};

use crate::accounts::{NewUser, Stack, access_token, create_user, get_as, send_as};
use crate::ssh_servers::TestSshd;
use crate::{BerthProcess, eventually};

pub struct Fleet {
    pub stack: Stack,
    pub sshd: TestSshd,
    pub worker: BerthProcess,
    pub token: String,
    worker_env: std::collections::HashMap<String, String>,
    queues: String,
}

impl Fleet {
    /// `queues` for the worker, e.g. `"probe"` or `"probe,email"` (with mail).
    pub async fn start(queues: &str, extra: &[(&str, &str)]) -> Fleet {
        let mut settings = vec![
            ("BERTH_RATE_LIMIT_SERVER_CREATE", "100/60"),
            ("BERTH_PROBE_BACKOFF_MS", "200"),
            // Retries show which failures count as transient.
            ("BERTH_PROBE_MAX_ATTEMPTS", "3"),
        ];
        settings.extend_from_slice(extra);
        let mail = queues.contains("email");
        let stack = if mail {
            Stack::with_mail(&settings).await
        } else {
            Stack::start(&settings).await
        };
        let mut env = stack.env.clone();
        if let Some(smtp) = &stack.smtp {
            env.insert("SMTP_URL".into(), smtp.url());
        }
        let worker = BerthProcess::spawn("berth-worker", &["--queues", queues], &env);
        create_user(&stack.db, NewUser::verified("ops@example.test")).await;
        let token = access_token(&stack.app, "ops@example.test").await;
        let sshd = TestSshd::start(3).await;
        Fleet {
            stack,
            sshd,
            worker,
            token,
            worker_env: env,
            queues: queues.to_owned(),
        }
    }

    /// SIGKILLs the worker (no chance to give anything back) and starts a
    /// new one with the same settings, as a crashed host's supervisor would.
    pub fn kill_and_replace_worker(&mut self) {
        self.worker.signal(nix::sys::signal::Signal::SIGKILL);
        self.worker = BerthProcess::spawn(
            "berth-worker",
            &["--queues", &self.queues],
            &self.worker_env,
        );
    }

    pub async fn create(&self, body: Value) -> (u16, Value) {
        send_as(
            &self.stack.app,
            &self.token,
            Method::POST,
            "/api/v1/servers",
            body,
        )
        .await
    }

    pub fn key_server(&self, i: usize) -> Value {
        json!({"name": format!("web-{i}"), "host": self.sshd.host(i), "port": self.sshd.port,
               "username": "root", "authType": "key", "privateKey": self.sshd.key})
    }

    /// Adds server `i` by key and waits for its validation; answers its id.
    pub async fn onboard(&self, i: usize) -> String {
        let (status, body) = self.create(self.key_server(i)).await;
        assert_eq!(status, 202, "{body}");
        let job = self.job_done(body["data"]["jobId"].as_str().unwrap()).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        body["data"]["server"]["id"].as_str().unwrap().to_owned()
    }

    /// Waits until the job succeeded or failed; answers it.
    pub async fn job_done(&self, job_id: &str) -> Value {
        let app = &self.stack.app;
        let path = format!("/api/v1/jobs/{job_id}");
        let what = format!("job {job_id} to finish");
        eventually(Duration::from_secs(60), &what, || async {
            let (_, body) = get_as(app, &self.token, &path).await;
            matches!(body["data"]["state"].as_str(), Some("succeeded" | "failed"))
        })
        .await;
        get_as(app, &self.token, &path).await.1["data"].clone()
    }

    /// The fleet's user.
    pub async fn owner(&self) -> uuid::Uuid {
        sqlx::query_scalar("SELECT id FROM users WHERE email = 'ops@example.test'")
            .fetch_one(&self.stack.db.pool)
            .await
            .unwrap()
    }

    /// Enqueues `diagnostic.remote_sleep` on `server` (the worker must serve
    /// the `diagnostic` queue); answers the job id.
    /// `berth-remote` as the fleet's worker has it: its database, master
    /// key and SSH settings.
    pub fn remote(&self) -> berth_remote::Remote {
        let ssh =
            berth_config::SshConfig::from_env(&berth_config::Env::from_map(self.stack.env.clone()))
                .expect("the fleet's SSH settings");
        berth_remote::Remote::new(self.stack.db.pool.clone(), crate::keyring(), &ssh)
    }

    pub async fn remote_sleep(&self, server: &str, seconds: u32) -> String {
        let server: uuid::Uuid = server.parse().unwrap();
        let job = NewJob::new(berth_jobs::RemoteSleep {
            server_id: server,
            seconds,
        })
        .owner(self.owner().await)
        .server(server);
        self.stack.app.state.jobs.enqueue(job).await.unwrap().id
    }

    /// The job as `GET /jobs/{id}` shows it now.
    pub async fn job_state(&self, job_id: &str) -> Value {
        get_as(
            &self.stack.app,
            &self.token,
            &format!("/api/v1/jobs/{job_id}"),
        )
        .await
        .1["data"]
            .clone()
    }

    /// Waits until the job ended in any way (cancelled too); answers it.
    pub async fn job_done_or_cancelled(&self, job_id: &str) -> Value {
        let what = format!("job {job_id} to end");
        eventually(Duration::from_secs(60), &what, || async {
            matches!(
                self.job_state(job_id).await["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
        .await;
        self.job_state(job_id).await
    }

    /// Runs a probe of `server` now (as the scheduler would) and waits for it.
    pub async fn probe(&self, server: &str) -> Value {
        let server: uuid::Uuid = server.parse().expect("a server id");
        let owner: uuid::Uuid =
            sqlx::query_scalar("SELECT owner_user_id FROM servers WHERE id = $1")
                .bind(server)
                .fetch_one(&self.stack.db.pool)
                .await
                .expect("the server exists");
        let enqueued = self
            .stack
            .app
            .state
            .jobs
            .enqueue(
                NewJob::new(ServerProbe { server_id: server })
                    .owner(owner)
                    .server(server),
            )
            .await
            .expect("enqueue a probe");
        self.job_done(&enqueued.id).await
    }

    /// Changes the user's alert rules (a partial `PUT /alerts/rules`).
    pub async fn set_alert_rules(&self, rules: Value) {
        let (status, body) = send_as(
            &self.stack.app,
            &self.token,
            Method::PUT,
            "/api/v1/alerts/rules",
            rules,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    /// Only offline/online and host-key notices, no mail: thresholds of 100
    /// never fire, whatever the test machine's own load, disk or swap.
    pub async fn quiet_alerts(&self) {
        self.set_alert_rules(
            json!({"emailAlerts": false, "cpuThreshold": 100, "ramThreshold": 100,
                                    "diskThreshold": 100, "swapThreshold": 100}),
        )
        .await;
    }

    pub async fn server(&self, id: &str) -> Value {
        get_as(
            &self.stack.app,
            &self.token,
            &format!("/api/v1/servers/{id}"),
        )
        .await
        .1["data"]
            .clone()
    }
}
