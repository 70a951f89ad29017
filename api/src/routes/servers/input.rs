//! What a server request may carry, checked: the fields that reach a shell
//! or a connection, and the credentials, sealed before they are stored.

use berth_secrets::server_secret_binding;
use berth_ssh::command::{check_host, check_username};
use berth_ssh::keys::inspect_private_key;
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::state::AppState;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerRequest {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F]*$"
    )]
    pub(super) name: Option<String>,
    /// An IP address or DNS name.
    #[schema(min_length = 1, max_length = 253)]
    pub(super) host: Option<String>,
    /// 1–65535 (default 22).
    #[schema(minimum = 1, maximum = 65535)]
    pub(super) port: Option<i64>,
    /// `[a-z_][a-z0-9_-]*`, at most 32.
    #[schema(pattern = "^[a-z_][a-z0-9_-]{0,31}$")]
    pub(super) username: Option<String>,
    /// `password` or `key`.
    #[schema(pattern = "^(password|key)$")]
    pub(super) auth_type: Option<String>,
    pub(super) password: Option<String>,
    /// PEM or OpenSSH private key.
    pub(super) private_key: Option<String>,
    /// For an encrypted private key.
    pub(super) passphrase: Option<String>,
    /// How many builds run on the server at once, 1–16 (default 1).
    #[schema(minimum = 1, maximum = 16)]
    pub(super) build_slots: Option<i64>,
    /// Where Berth writes its nginx sites (default `/etc/nginx/conf.d`).
    #[schema(max_length = 4096)]
    pub(super) nginx_conf_dir: Option<String>,
    /// nginx's main config file, passed as `-c` to `nginx -t` and reload;
    /// `null` (the default): the one nginx was built with.
    #[serde(default, deserialize_with = "crate::validate::present")]
    #[schema(value_type = Option<String>, max_length = 4096)]
    pub(super) nginx_conf_file: Option<Option<String>>,
    /// The port nginx serves HTTP on (default 80).
    #[schema(minimum = 1, maximum = 65535)]
    pub(super) http_port: Option<i64>,
    /// The port nginx serves HTTPS on (default 443).
    #[schema(minimum = 1, maximum = 65535)]
    pub(super) https_port: Option<i64>,
    /// Berth's directory on the server: release dirs, env files,
    /// certificates (default `/var/lib/berth`).
    #[schema(max_length = 4096)]
    pub(super) data_dir: Option<String>,
    /// The DNS name deployments' generated host names end in (a wildcard
    /// record pointing at the server); `null` (the default): the server's
    /// address under `sslip.io`.
    #[serde(default, deserialize_with = "crate::validate::present")]
    #[schema(value_type = Option<String>, max_length = 200)]
    pub(super) hostname_base: Option<Option<String>>,
}

/// Checked connection credentials.
pub(super) struct Credentials {
    pub(super) auth_type: &'static str,
    pub(super) secret: String,
    pub(super) passphrase: Option<String>,
}

pub(super) fn check_secret_text(
    field: &str,
    value: &str,
    max: usize,
    errors: &mut Vec<FieldError>,
) {
    if value.is_empty() || value.len() > max || value.contains('\0') {
        errors.push(FieldError::new(field, format!("must be 1 to {max} bytes")));
    }
}

/// Exactly one of password or privateKey, matching authType; a key parses and
/// has its passphrase when encrypted.
pub(super) fn credentials(
    req: &ServerRequest,
    errors: &mut Vec<FieldError>,
) -> Option<Credentials> {
    match req.auth_type.as_deref() {
        Some("password") => {
            if req.private_key.is_some() || req.passphrase.is_some() {
                errors.push(FieldError::new(
                    "privateKey",
                    "must be absent when authType is password",
                ));
            }
            let Some(password) = &req.password else {
                errors.push(FieldError::new(
                    "password",
                    "is required when authType is password",
                ));
                return None;
            };
            check_secret_text("password", password, 1024, errors);
            Some(Credentials {
                auth_type: "password",
                secret: password.clone(),
                passphrase: None,
            })
        }
        Some("key") => {
            if req.password.is_some() {
                errors.push(FieldError::new(
                    "password",
                    "must be absent when authType is key",
                ));
            }
            let Some(key) = &req.private_key else {
                errors.push(FieldError::new(
                    "privateKey",
                    "is required when authType is key",
                ));
                return None;
            };
            match inspect_private_key(key) {
                Ok(true) if req.passphrase.as_deref().is_none_or(str::is_empty) => {
                    errors.push(FieldError::new(
                        "passphrase",
                        "is required: the key is encrypted",
                    ));
                }
                Ok(_) => {}
                Err(refused) => errors.push(FieldError::new("privateKey", refused.rule)),
            }
            if let Some(passphrase) = &req.passphrase {
                check_secret_text("passphrase", passphrase, 1024, errors);
            }
            Some(Credentials {
                auth_type: "key",
                secret: format!("{}\n", key.trim()),
                passphrase: req.passphrase.clone().filter(|p| !p.is_empty()),
            })
        }
        _ => {
            errors.push(FieldError::new("authType", "must be password or key"));
            None
        }
    }
}

pub(super) fn check_host_field(
    state: &AppState,
    host: &str,
    errors: &mut Vec<FieldError>,
) -> String {
    let host = host.trim().to_owned();
    if let Err(refused) = check_host(&host) {
        errors.push(FieldError::new("host", refused.rule));
    } else if let Ok(ip) = host.parse::<std::net::IpAddr>()
        && !berth_ssh::AddressPolicy::new(state.config.ssh.deny_networks.clone()).allows(ip)
    {
        errors.push(FieldError::new(
            "host",
            "is in a network Berth does not connect to (BERTH_SSH_DENY_NETWORKS)",
        ));
    }
    host
}

pub(super) fn check_username_field(username: &str, errors: &mut Vec<FieldError>) -> String {
    if let Err(refused) = check_username(username) {
        errors.push(FieldError::new("username", refused.rule));
    }
    username.to_owned()
}

/// Seals the credentials into the row's `secret` and `passphrase` columns.
pub(super) async fn store_credentials(
    conn: &mut PgConnection,
    state: &AppState,
    id: Uuid,
    credentials: &Credentials,
) -> Result<(), ApiError> {
    let row = id.to_string();
    let secret = state.keys.seal(
        credentials.secret.as_bytes(),
        server_secret_binding(&row, "secret"),
    );
    let passphrase = credentials.passphrase.as_ref().map(|p| {
        state
            .keys
            .seal(p.as_bytes(), server_secret_binding(&row, "passphrase"))
    });
    sqlx::query(
        "UPDATE servers SET auth_type = $2, secret = $3, passphrase = $4, secret_key_id = $5, \
         updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(credentials.auth_type)
    .bind(secret)
    .bind(passphrase)
    .bind(state.keys.current_key_id())
    .execute(conn)
    .await?;
    Ok(())
}
