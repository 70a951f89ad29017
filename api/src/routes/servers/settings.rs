//! The settings Berth needs to manage nginx and files on a server (SPEC
//! §3.3), checked; one statement writes them, on create and on change.

use berth_ssh::Arg;
use berth_ssh::command::check_host;
use sqlx::PgConnection;
use uuid::Uuid;

use super::input::ServerRequest;
use crate::error::{ApiError, FieldError};

/// Checked settings; `None` leaves a setting as it is (or at its default).
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    build_slots: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nginx_conf_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nginx_conf_file: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    http_port: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    https_port: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname_base: Option<Option<String>>,
}

/// An absolute directory Berth writes in: a checked path, not `/`, kept
/// without a trailing slash.
fn directory(field: &str, value: &str, errors: &mut Vec<FieldError>) -> String {
    let trimmed = value.trim_end_matches('/');
    if trimmed.is_empty() || Arg::path(trimmed).is_err() {
        errors.push(FieldError::new(
            field,
            "must be an absolute directory other than / (no .., quotes, backslashes or control characters)",
        ));
    }
    trimmed.to_owned()
}

fn file(field: &str, value: &str, errors: &mut Vec<FieldError>) -> String {
    if value.ends_with('/') || Arg::path(value).is_err() {
        errors.push(FieldError::new(
            field,
            "must be an absolute file path (no .., quotes, backslashes or control characters)",
        ));
    }
    value.to_owned()
}

pub(super) fn port(field: &str, value: i64, errors: &mut Vec<FieldError>) -> i32 {
    if !(1..=65535).contains(&value) {
        errors.push(FieldError::new(field, "must be 1 to 65535"));
    }
    value.clamp(1, 65535) as i32
}

/// A DNS name that host names can end in: not an address, at least two labels.
fn hostname_base(value: &str, errors: &mut Vec<FieldError>) -> String {
    let name = value.trim_end_matches('.').to_ascii_lowercase();
    let ok = name.len() <= 200
        && name.parse::<std::net::IpAddr>().is_err()
        && name.contains('.')
        && check_host(&name).is_ok();
    if !ok {
        errors.push(FieldError::new(
            "hostnameBase",
            "must be a DNS name of at least two labels (not an IP address), at most 200 characters",
        ));
    }
    name
}

impl Settings {
    pub(super) fn check(req: &ServerRequest, errors: &mut Vec<FieldError>) -> Settings {
        Settings {
            build_slots: req.build_slots.map(|slots| {
                if !(1..=16).contains(&slots) {
                    errors.push(FieldError::new("buildSlots", "must be 1–16"));
                }
                slots.clamp(1, 16) as i32
            }),
            nginx_conf_dir: req
                .nginx_conf_dir
                .as_deref()
                .map(|d| directory("nginxConfDir", d, errors)),
            nginx_conf_file: req
                .nginx_conf_file
                .as_ref()
                .map(|f| f.as_deref().map(|f| file("nginxConfFile", f, errors))),
            http_port: req.http_port.map(|p| port("httpPort", p, errors)),
            https_port: req.https_port.map(|p| port("httpsPort", p, errors)),
            data_dir: req
                .data_dir
                .as_deref()
                .map(|d| directory("dataDir", d, errors)),
            hostname_base: req
                .hostname_base
                .as_ref()
                .map(|b| b.as_deref().map(|b| hostname_base(b, errors))),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.build_slots.is_none()
            && self.nginx_conf_dir.is_none()
            && self.nginx_conf_file.is_none()
            && self.http_port.is_none()
            && self.https_port.is_none()
            && self.data_dir.is_none()
            && self.hostname_base.is_none()
    }

    /// HTTP and HTTPS on one port, as they would be after the change from
    /// `current` (HTTP, HTTPS).
    pub(super) fn port_conflict(&self, current: (i32, i32)) -> Option<FieldError> {
        let http = self.http_port.unwrap_or(current.0);
        let https = self.https_port.unwrap_or(current.1);
        (http == https).then(|| {
            let field = if self.https_port.is_some() {
                "httpsPort"
            } else {
                "httpPort"
            };
            FieldError::new(
                field,
                "must differ from the other of httpPort and httpsPort",
            )
        })
    }

    /// Writes the given settings to server `id`, refusing HTTP and HTTPS on
    /// one port (as they would be after the change).
    pub(super) async fn apply(&self, conn: &mut PgConnection, id: Uuid) -> Result<(), ApiError> {
        let ports: (i32, i32) =
            sqlx::query_as("SELECT http_port, https_port FROM servers WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *conn)
                .await?;
        if let Some(conflict) = self.port_conflict(ports) {
            return Err(ApiError::validation(vec![conflict]));
        }
        let (http, https) = (
            self.http_port.unwrap_or(ports.0),
            self.https_port.unwrap_or(ports.1),
        );
        sqlx::query(
            "UPDATE servers SET build_slots = COALESCE($2, build_slots), \
               nginx_conf_dir = COALESCE($3, nginx_conf_dir), \
               nginx_conf_file = CASE WHEN $4 THEN $5 ELSE nginx_conf_file END, \
               http_port = $6, https_port = $7, data_dir = COALESCE($8, data_dir), \
               hostname_base = CASE WHEN $9 THEN $10 ELSE hostname_base END \
             WHERE id = $1",
        )
        .bind(id)
        .bind(self.build_slots)
        .bind(&self.nginx_conf_dir)
        .bind(self.nginx_conf_file.is_some())
        .bind(self.nginx_conf_file.clone().flatten())
        .bind(http)
        .bind(https)
        .bind(&self.data_dir)
        .bind(self.hostname_base.is_some())
        .bind(self.hostname_base.clone().flatten())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Whether a change needs nginx checked again (a validation job).
    pub(super) fn touches_nginx(&self) -> bool {
        self.nginx_conf_dir.is_some() || self.nginx_conf_file.is_some()
    }
}
