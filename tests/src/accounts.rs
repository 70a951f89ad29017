//! Helpers for tests of accounts: a running stack (api, optionally a mail
//! worker with a real SMTP listener), users made directly in the database, and a
//! browser-like client that keeps cookies and sends the CSRF header.

use std::collections::HashMap;
use std::sync::Arc;

use reqwest::cookie::CookieStore;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{BerthProcess, SmtpSink, TestApp, TestDb, TestRedis, base_env};

pub const PASSWORD: &str = "correct horse battery staple";

/// Postgres, Redis, the api, and with mail an SMTP listener and an email worker.
pub struct Stack {
    pub app: TestApp,
    pub smtp: Option<SmtpSink>,
    pub worker: Option<BerthProcess>,
    pub env: HashMap<String, String>,
    pub redis: TestRedis,
    pub db: TestDb,
}

impl Stack {
    pub async fn start(extra: &[(&str, &str)]) -> Stack {
        Self::build(extra, false).await
    }

    pub async fn with_mail(extra: &[(&str, &str)]) -> Stack {
        Self::build(extra, true).await
    }

    async fn build(extra: &[(&str, &str)], mail: bool) -> Stack {
        let db = TestDb::new().await;
        let redis = TestRedis::start().await;
        let mut env = base_env(&db, &redis);
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let app = TestApp::spawn(env.clone()).await;
        let (smtp, worker) = if mail {
            let smtp = SmtpSink::start().await;
            let mut worker_env = env.clone();
            worker_env.insert("SMTP_URL".into(), smtp.url());
            worker_env.insert("BERTH_PUBLIC_URL".into(), app.base.clone());
            let worker = BerthProcess::spawn("berth-worker", &["--queues", "email"], &worker_env);
            (Some(smtp), Some(worker))
        } else {
            (None, None)
        };
        Stack {
            app,
            smtp,
            worker,
            env,
            redis,
            db,
        }
    }

    pub fn smtp(&self) -> &SmtpSink {
        self.smtp.as_ref().expect("a stack started with_mail")
    }

    /// The newest 6-digit code mailed to `to` with `subject` in its subject line,
    /// once more than `seen_before` such messages arrived.
    pub async fn mailed_code(&self, to: &str, subject: &str, seen_before: usize) -> String {
        let message = self.smtp().wait_for(to, subject, seen_before).await;
        let subject_line = message
            .lines()
            .find(|l| l.starts_with("Subject:"))
            .expect("a subject");
        subject_line
            .rsplit(' ')
            .next()
            .filter(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))
            .unwrap_or_else(|| panic!("no code in {subject_line}"))
            .to_owned()
    }
}

pub struct NewUser<'a> {
    pub email: &'a str,
    pub username: Option<&'a str>,
    pub verified: bool,
    pub role: &'a str,
}

impl<'a> NewUser<'a> {
    pub fn verified(email: &'a str) -> Self {
        Self {
            email,
            username: None,
            verified: true,
            role: "user",
        }
    }
}

/// A user with password [`PASSWORD`], written straight to the database.
pub async fn create_user(db: &TestDb, user: NewUser<'_>) -> Uuid {
    let id = Uuid::new_v4();
    let hash = berth_api::auth::password::hash_password_blocking(PASSWORD).expect("hash");
    sqlx::query(
        "INSERT INTO users (id, email, username, name, password_hash, role, email_verified) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(user.email)
    .bind(user.username)
    .bind("Test User")
    .bind(hash)
    .bind(user.role)
    .bind(user.verified)
    .execute(&db.pool)
    .await
    .expect("insert user");
    id
}

/// A verified user with `role` ([`create_user`]), signed in: their id and
/// an access token.
pub async fn signed_in_with_role(stack: &Stack, email: &str, role: &str) -> (Uuid, String) {
    let id = create_user(
        &stack.db,
        NewUser {
            role,
            ..NewUser::verified(email)
        },
    )
    .await;
    (id, access_token(&stack.app, email).await)
}

/// Signs in by password as a program would; answers `data`.
pub async fn login(app: &TestApp, identifier: &str, password: &str) -> Value {
    let res = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({ "identifier": identifier, "password": password }))
        .send()
        .await
        .expect("request");
    let status = res.status();
    let body: Value = res.json().await.expect("json");
    assert_eq!(status, 200, "login failed: {body}");
    body["data"].clone()
}

/// The access token of a fresh sign-in.
pub async fn access_token(app: &TestApp, identifier: &str) -> String {
    login(app, identifier, PASSWORD).await["accessToken"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

/// An anonymous JSON POST; answers status and body.
pub async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let res = app
        .client
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A bearer GET; answers status and body.
pub async fn get_as(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let res = app
        .client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A bearer request with a JSON body; answers status and body.
pub async fn send_as(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let res = app
        .client
        .request(method, app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// A browser: keeps cookies, follows no redirects, and can send the CSRF header.
pub struct Browser {
    pub client: reqwest::Client,
    pub jar: Arc<reqwest::cookie::Jar>,
    base: String,
}

impl Browser {
    pub fn new(app: &TestApp, user_agent: &str) -> Browser {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = reqwest::Client::builder()
            .cookie_provider(jar.clone())
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(user_agent)
            .build()
            .expect("client");
        Browser {
            client,
            jar,
            base: app.base.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The value of cookie `name` as the browser would send it to `path`.
    pub fn cookie(&self, path: &str, name: &str) -> Option<String> {
        let url = self.url(path).parse().expect("url");
        let header = self.jar.cookies(&url)?;
        header
            .to_str()
            .ok()?
            .split("; ")
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// An unsafe request with the CSRF cookie's value in `X-CSRF-Token`.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> reqwest::Response {
        let mut req = self.client.request(method, self.url(path)).json(&body);
        if let Some(token) = self.cookie("/", "csrf_token") {
            req = req.header("x-csrf-token", token);
        }
        req.send().await.expect("request")
    }

    pub async fn login(&self, identifier: &str, password: &str) -> reqwest::Response {
        self.send(
            reqwest::Method::POST,
            "/api/v1/auth/login",
            json!({ "identifier": identifier, "password": password }),
        )
        .await
    }
}

/// Audit actions recorded for `user_id`, oldest first.
pub async fn audit_actions(db: &TestDb, user_id: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT action FROM audit_logs WHERE actor_user_id = $1 OR target_id = $2 ORDER BY created_at, id",
    )
    .bind(user_id)
    .bind(user_id.to_string())
    .fetch_all(&db.pool)
    .await
    .expect("audit rows")
}

/// The TOTP code for `base32` at now plus `offset_steps` 30-second steps.
pub fn totp_code(base32: &str, offset_steps: i64) -> String {
    let totp = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(base32).expect("a base32 secret"))
        .build()
        .expect("a TOTP");
    let now = chrono::Utc::now().timestamp() + offset_steps * 30;
    totp.generate(now as u64).to_string()
}

/// The field names of a validation error's details, in order.
pub fn field_errors(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|e| e["field"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}
