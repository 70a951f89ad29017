//! Alerts (SPEC §3.6): after each probe, every metric is compared with the
//! owner's thresholds and an unreachable server counts as `offline`. A state
//! change is one conditional upsert of `alert_states`, so a breach notifies
//! once when it starts and once when it clears, however many probes see it,
//! and a probe run twice notifies nothing new.
//!
//! Notifications go out the ways the user chose: an in-app row
//! (`browserAlerts`), a mail through the `email` queue (`emailAlerts`), and a
//! realtime event on the user's Redis channel (`realtimeAlerts`), published
//! after the transaction that records them commits. The user's preferences
//! (`/profile/preferences`) can turn off offline/online and recovery notices.

use berth_jobs::events::RealtimeEvent;
use berth_jobs::store::{self, NewJob};
use berth_jobs::{EmailJob, EmailMessage, Policies};
use redis::aio::ConnectionManager;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::probe::Sample;

#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Rules {
    pub cpu_threshold: f32,
    pub ram_threshold: f32,
    pub disk_threshold: f32,
    pub swap_threshold: f32,
    pub email_alerts: bool,
    pub browser_alerts: bool,
    pub realtime_alerts: bool,
    /// From the user's preferences: offline/online notices at all.
    pub notify_server_status: bool,
    /// From the user's preferences: notices that something cleared.
    pub notify_recoveries: bool,
}

impl Rules {
    /// Whether the user wants notices of `kind` (the preferences' choices);
    /// alerts raised and host-key changes are always sent.
    pub fn wants(&self, kind: &str) -> bool {
        match kind {
            "server_offline" => self.notify_server_status,
            "server_online" => self.notify_server_status && self.notify_recoveries,
            "alert_cleared" => self.notify_recoveries,
            _ => true,
        }
    }
}

/// The user's rules and preferences; a user who never set them gets the
/// schema's defaults.
pub async fn rules_of(conn: &mut PgConnection, user_id: Uuid) -> Result<Rules, sqlx::Error> {
    sqlx::query(
        "WITH rules AS (INSERT INTO alert_rules (user_id) VALUES ($1) ON CONFLICT DO NOTHING) \
         INSERT INTO user_preferences (user_id) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(user_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as(
        "SELECT r.cpu_threshold, r.ram_threshold, r.disk_threshold, r.swap_threshold, r.email_alerts, \
         r.browser_alerts, r.realtime_alerts, p.notify_server_status, p.notify_recoveries \
         FROM alert_rules r JOIN user_preferences p USING (user_id) WHERE r.user_id = $1",
    )
    .bind(user_id)
    .fetch_one(conn)
    .await
}

/// Something to tell a user.
#[derive(Debug, Clone)]
pub struct Notice {
    pub kind: &'static str,
    pub title: String,
    pub body: String,
    pub data: serde_json::Value,
}

/// The recipient of a notice.
pub struct Recipient {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
}

pub async fn recipient(conn: &mut PgConnection, user_id: Uuid) -> Result<Recipient, sqlx::Error> {
    let (email, name): (String, String) =
        sqlx::query_as("SELECT email, name FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(conn)
            .await?;
    Ok(Recipient {
        user_id,
        email,
        name,
    })
}

/// Records `notice` the ways `rules` ask, in `conn`'s transaction. Returns the
/// realtime event to publish after commit, if any.
pub async fn deliver(
    conn: &mut PgConnection,
    policies: &Policies,
    to: &Recipient,
    rules: &Rules,
    notice: &Notice,
) -> Result<Option<RealtimeEvent>, sqlx::Error> {
    if !rules.wants(notice.kind) {
        return Ok(None);
    }
    let id = Uuid::new_v4();
    let created_at: Option<chrono::DateTime<chrono::Utc>> = if rules.browser_alerts {
        Some(
            sqlx::query_scalar(
                "INSERT INTO notifications (id, user_id, kind, title, body, data) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at",
            )
            .bind(id)
            .bind(to.user_id)
            .bind(notice.kind)
            .bind(&notice.title)
            .bind(&notice.body)
            .bind(&notice.data)
            .fetch_one(&mut *conn)
            .await?,
        )
    } else {
        None
    };
    if rules.email_alerts {
        let job = NewJob::new(EmailJob {
            to: to.email.clone(),
            message: EmailMessage::Notification {
                recipient_name: to.name.clone(),
                title: notice.title.clone(),
                body: notice.body.clone(),
            },
        })
        .owner(to.user_id);
        // Pushed by the relay sweep of this worker within seconds.
        store::enqueue(conn, policies, job).await?;
    }
    Ok(rules.realtime_alerts.then(|| RealtimeEvent::Notification {
        id: created_at.map(|_| id),
        kind: notice.kind.to_owned(),
        title: notice.title.clone(),
        body: notice.body.clone(),
        data: notice.data.clone(),
        created_at: created_at.unwrap_or_else(chrono::Utc::now),
    }))
}

/// Publishes realtime events after commit; a failure only loses the live push
/// (the notification row and the mail are committed).
pub async fn publish(redis: &ConnectionManager, user_id: Uuid, events: &[RealtimeEvent]) {
    for event in events {
        berth_jobs::events::publish(redis, user_id, event).await;
    }
}

/// Sets one alert's state; returns whether to notify and in which direction.
async fn transition(
    conn: &mut PgConnection,
    server_id: Uuid,
    metric: &str,
    active: bool,
) -> Result<Option<bool>, sqlx::Error> {
    let changed: Option<bool> = sqlx::query_scalar(
        "INSERT INTO alert_states (server_id, metric, active) VALUES ($1, $2, $3) \
         ON CONFLICT (server_id, metric) DO UPDATE SET active = EXCLUDED.active, changed_at = now() \
         WHERE alert_states.active IS DISTINCT FROM EXCLUDED.active \
         RETURNING (xmax = 0)",
    )
    .bind(server_id)
    .bind(metric)
    .bind(active)
    .fetch_optional(conn)
    .await?;
    Ok(match changed {
        // A first sample that is fine is not news.
        Some(true) if !active => None,
        Some(_) => Some(active),
        None => None,
    })
}

/// Marks a server's host key as changed (or not); true when it just changed
/// to changed, so the owner is told once.
pub async fn set_host_key_changed(
    conn: &mut PgConnection,
    server_id: Uuid,
    changed: bool,
) -> Result<bool, sqlx::Error> {
    Ok(transition(conn, server_id, "host_key", changed).await? == Some(true))
}

pub struct ServerRef<'a> {
    pub id: Uuid,
    pub name: &'a str,
}

/// The notices a probe result causes: `sample` is `None` when the server
/// could not be reached (`reason` says why).
pub async fn evaluate(
    conn: &mut PgConnection,
    server: &ServerRef<'_>,
    rules: &Rules,
    sample: Option<&Sample>,
    reason: Option<&str>,
) -> Result<Vec<Notice>, sqlx::Error> {
    let mut notices = Vec::new();
    let name = server.name;
    let data = |metric: &str, value: Option<f32>, threshold: Option<f32>| serde_json::json!({ "serverId": server.id, "metric": metric, "value": value, "threshold": threshold });
    if let Some(raised) = transition(conn, server.id, "offline", sample.is_none()).await? {
        notices.push(if raised {
            Notice {
                kind: "server_offline",
                title: format!("{name} is offline"),
                body: format!(
                    "Berth cannot reach {name}: {}",
                    reason.unwrap_or("no answer")
                ),
                data: data("offline", None, None),
            }
        } else {
            Notice {
                kind: "server_online",
                title: format!("{name} is back online"),
                body: format!("Berth reaches {name} again."),
                data: data("offline", None, None),
            }
        });
    }
    let Some(sample) = sample else {
        return Ok(notices);
    };
    for (metric, label, value, threshold) in [
        ("cpu", "CPU", sample.cpu_percent, rules.cpu_threshold),
        ("ram", "memory", sample.memory_percent, rules.ram_threshold),
        ("disk", "disk", sample.disk_percent, rules.disk_threshold),
        ("swap", "swap", sample.swap_percent, rules.swap_threshold),
    ] {
        // Strictly above, so a threshold of 100 never fires.
        let Some(raised) = transition(conn, server.id, metric, value > threshold).await? else {
            continue;
        };
        notices.push(if raised {
            Notice {
                kind: "alert_raised",
                title: format!("{name}: {label} at {value:.0} %"),
                body: format!("{label} use on {name} is {value:.1} %, above your {threshold:.0} % threshold."),
                data: data(metric, Some(value), Some(threshold)),
            }
        } else {
            Notice {
                kind: "alert_cleared",
                title: format!("{name}: {label} back to {value:.0} %"),
                body: format!("{label} use on {name} is {value:.1} %, at or below your {threshold:.0} % threshold again."),
                data: data(metric, Some(value), Some(threshold)),
            }
        });
    }
    Ok(notices)
}
