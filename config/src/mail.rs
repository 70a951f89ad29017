//! How mail leaves: SMTP, or files in a directory.

use std::path::PathBuf;

use crate::api::public_url;
use crate::*;

/// How `berth-worker` delivers mail: SMTP when `SMTP_URL` is set, else `.eml` files.
#[derive(Debug, Clone)]
pub enum MailTransport {
    Smtp(ServiceUrl),
    Directory(PathBuf),
}

#[derive(Debug, Clone)]
pub struct MailConfig {
    pub transport: MailTransport,
    /// Opens the codes and links that mail jobs carry sealed.
    pub master_key: MasterKey,
    pub previous_master_keys: Vec<MasterKey>,
    pub from: String,
    pub public_url: String,
}

impl MailConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let transport = if env.optional("SMTP_URL").is_some() {
            MailTransport::Smtp(ServiceUrl::read(env, "SMTP_URL", &["smtp", "smtps"])?)
        } else {
            MailTransport::Directory(
                env.optional("BERTH_MAIL_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("./data/mail")),
            )
        };
        let from = env
            .optional("MAIL_FROM")
            .unwrap_or_else(|| "Berth <berth@localhost>".to_owned());
        Ok(Self {
            transport,
            master_key: MasterKey::read(env, "BERTH_MASTER_KEY")?,
            previous_master_keys: MasterKey::read_previous(env)?,
            from,
            public_url: public_url(env)?,
        })
    }
}
