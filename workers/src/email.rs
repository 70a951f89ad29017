//! The `email` job: renders a message's templates and delivers it by SMTP, or
//! writes it as an `.eml` file when no SMTP server is configured.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_config::{MailConfig, MailTransport};
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_jobs::{CodePurpose, EmailJob, EmailMessage};
use berth_secrets::Keyring;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};
use minijinja::Environment;
use serde_json::json;

type Smtp = AsyncSmtpTransport<Tokio1Executor>;

enum Transport {
    Smtp(Smtp),
    Directory(AsyncFileTransport<Tokio1Executor>),
}

pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    public_url: String,
    keys: Keyring,
    templates: Environment<'static>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("template error: {0}")]
    Template(#[from] minijinja::Error),
    #[error("the message's code does not open with BERTH_MASTER_KEY: {0}")]
    Sealed(#[from] berth_secrets::SecretError),
}

/// A rendered message, before it is addressed.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl Mailer {
    pub fn new(config: &MailConfig) -> anyhow::Result<Arc<Self>> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("MAIL_FROM is malformed: {e}"))?;
        let transport = match &config.transport {
            MailTransport::Smtp(url) => {
                let smtp = Smtp::from_url(url.expose())
                    .map_err(|e| anyhow::anyhow!("SMTP_URL is malformed: {e}"))?
                    .timeout(Some(Duration::from_secs(20)))
                    .build();
                Transport::Smtp(smtp)
            }
            MailTransport::Directory(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("BERTH_MAIL_DIR {} cannot be created: {e}", dir.display())
                })?;
                Transport::Directory(AsyncFileTransport::new(PathBuf::from(dir)))
            }
        };
        let mut templates = Environment::new();
        for (name, source) in [
            (
                "test_message.txt",
                include_str!("../templates/test_message.txt"),
            ),
            (
                "test_message.html",
                include_str!("../templates/test_message.html"),
            ),
            (
                "verification_code.txt",
                include_str!("../templates/verification_code.txt"),
            ),
            (
                "verification_code.html",
                include_str!("../templates/verification_code.html"),
            ),
            (
                "notification.txt",
                include_str!("../templates/notification.txt"),
            ),
            (
                "notification.html",
                include_str!("../templates/notification.html"),
            ),
            (
                "password_reset.txt",
                include_str!("../templates/password_reset.txt"),
            ),
            (
                "password_reset.html",
                include_str!("../templates/password_reset.html"),
            ),
            (
                "project_invite.txt",
                include_str!("../templates/project_invite.txt"),
            ),
            (
                "project_invite.html",
                include_str!("../templates/project_invite.html"),
            ),
        ] {
            templates.add_template(name, source)?;
        }
        // `.html` templates are auto-escaped by minijinja; `.txt` ones are not.
        Ok(Arc::new(Self {
            transport,
            from,
            public_url: config.public_url.clone(),
            keys: Keyring::from_config(&config.master_key, &config.previous_master_keys),
            templates,
        }))
    }

    /// Renders `message` for `to` (sealed codes open only for their recipient).
    pub fn render(&self, to: &str, message: &EmailMessage) -> Result<Rendered, RenderError> {
        let (template, subject, context) = match message {
            EmailMessage::TestMessage { recipient_name } => (
                "test_message",
                "Berth test message".to_owned(),
                json!({ "recipient_name": recipient_name }),
            ),
            EmailMessage::VerificationCode {
                recipient_name,
                purpose,
                code,
                expires_in_minutes,
            } => {
                let code = code.open(&self.keys, to)?;
                let (subject, action) = match purpose {
                    CodePurpose::VerifyEmail => (
                        format!("Verify your Berth account: {code}"),
                        "verify your email address",
                    ),
                    CodePurpose::SignIn => (format!("Your Berth sign-in code: {code}"), "sign in"),
                    CodePurpose::DeleteAccount => (
                        format!("Confirm deleting your Berth account: {code}"),
                        "confirm that your account should be deleted",
                    ),
                };
                (
                    "verification_code",
                    subject,
                    json!({ "recipient_name": recipient_name, "code": code, "action": action,
                            "expires_in_minutes": expires_in_minutes }),
                )
            }
            EmailMessage::Notification {
                recipient_name,
                title,
                body,
            } => (
                "notification",
                format!("Berth: {title}"),
                json!({ "recipient_name": recipient_name, "title": title, "body": body }),
            ),
            EmailMessage::PasswordReset {
                recipient_name,
                token,
                expires_in_minutes,
            } => {
                let token = token.open(&self.keys, to)?;
                let link = self.link("/reset-password", &[("token", &token)])?;
                (
                    "password_reset",
                    "Reset your Berth password".to_owned(),
                    json!({ "recipient_name": recipient_name, "reset_url": link,
                            "expires_in_minutes": expires_in_minutes }),
                )
            }
            EmailMessage::ProjectInvite {
                inviter_name,
                project_name,
                role,
                invitation_id,
                token,
                expires_in_days,
            } => {
                let token = token.open(&self.keys, to)?;
                let link = self.link(
                    &format!("/invitations/{invitation_id}"),
                    &[("token", &token)],
                )?;
                (
                    "project_invite",
                    format!("{inviter_name} invited you to {project_name} on Berth"),
                    json!({ "inviter_name": inviter_name, "project_name": project_name,
                            "role": role, "invite_url": link, "expires_in_days": expires_in_days }),
                )
            }
        };
        let mut context = context;
        context["public_url"] = json!(self.public_url);
        let text = self
            .templates
            .get_template(&format!("{template}.txt"))?
            .render(&context)?;
        let html = self
            .templates
            .get_template(&format!("{template}.html"))?
            .render(&context)?;
        Ok(Rendered {
            subject,
            text,
            html,
        })
    }

    /// A link into Berth's dashboard with `query`.
    fn link(&self, path: &str, query: &[(&str, &str)]) -> Result<String, RenderError> {
        let mut link = url::Url::parse(&format!("{}{path}", self.public_url)).map_err(|e| {
            RenderError::Template(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                format!("BERTH_PUBLIC_URL does not make a link: {e}"),
            ))
        })?;
        link.query_pairs_mut().extend_pairs(query);
        Ok(link.into())
    }

    /// Runs one email job. Bad addresses and templates fail at once; delivery
    /// errors are retried with backoff.
    pub async fn send(&self, job: EmailJob) -> Result<(), JobFailure> {
        let to: Mailbox = job
            .to
            .parse()
            .map_err(|e| JobFailure::permanent(format!("invalid recipient address: {e}")))?;
        let rendered = self
            .render(&job.to, &job.message)
            .map_err(|e| JobFailure::permanent(e.to_string()))?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))
            .map_err(|e| JobFailure::permanent(format!("cannot build the message: {e}")))?;
        match &self.transport {
            Transport::Smtp(smtp) => {
                let response = smtp.send(email).await.map_err(|e| {
                    if e.is_permanent() {
                        JobFailure::permanent(format!("SMTP server refused the message: {e}"))
                    } else {
                        JobFailure::retryable(format!("SMTP delivery failed: {e}"))
                    }
                })?;
                tracing::debug!(code = %response.code(), "message accepted by the SMTP server");
            }
            Transport::Directory(files) => {
                files.send(email).await.map_err(|e| {
                    JobFailure::retryable(format!("cannot write the message file: {e}"))
                })?;
            }
        }
        Ok(())
    }
}

/// `email.send`.
pub struct SendEmail(pub Arc<Mailer>);

impl JobHandler for SendEmail {
    type Job = EmailJob;

    async fn run(&self, job: EmailJob, _ctx: JobContext) -> Result<(), JobFailure> {
        self.0.send(job).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_jobs::Sealed;

    fn mailer() -> Arc<Mailer> {
        let dir = std::env::temp_dir().join(format!("berth-mail-test-{}", std::process::id()));
        Mailer::new(&MailConfig {
            transport: MailTransport::Directory(dir),
            master_key: key(),
            previous_master_keys: Vec::new(),
            from: "Berth <berth@example.test>".into(),
            public_url: "https://berth.example.test".into(),
        })
        .unwrap()
    }

    fn key() -> berth_config::MasterKey {
        let env = berth_config::Env::from_map(
            [(
                "BERTH_MASTER_KEY".to_owned(),
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned(),
            )]
            .into(),
        );
        berth_config::MailConfig::from_env(&env).unwrap().master_key
    }

    fn keys() -> Keyring {
        Keyring::from_config(&key(), &[])
    }

    #[test]
    fn renders_text_and_escaped_html() {
        let to = "ada@example.test";
        let rendered = mailer()
            .render(
                to,
                &EmailMessage::VerificationCode {
                    recipient_name: "<Ada>".into(),
                    purpose: CodePurpose::VerifyEmail,
                    code: Sealed::seal(&keys(), to, "123456"),
                    expires_in_minutes: 10,
                },
            )
            .unwrap();
        assert_eq!(rendered.subject, "Verify your Berth account: 123456");
        assert!(rendered.text.contains("Hello <Ada>,"));
        assert!(rendered.text.contains("expires in 10 minutes"));
        assert!(
            rendered.html.contains("Hello &lt;Ada&gt;,"),
            "{}",
            rendered.html
        );
        // minijinja escapes `/` too; browsers decode it in attributes and text.
        assert!(
            rendered
                .html
                .contains("https:&#x2f;&#x2f;berth.example.test"),
            "{}",
            rendered.html
        );
        assert!(rendered.text.contains("https://berth.example.test"));
    }

    #[test]
    fn sealed_secrets_open_only_for_their_recipient() {
        let token = Sealed::seal(&keys(), "ada@example.test", "tok-en_1");
        let message = EmailMessage::PasswordReset {
            recipient_name: "Ada".into(),
            token,
            expires_in_minutes: 30,
        };
        let rendered = mailer().render("ada@example.test", &message).unwrap();
        assert!(
            rendered
                .text
                .contains("https://berth.example.test/reset-password?token=tok-en_1"),
            "{}",
            rendered.text
        );
        let err = mailer().render("eve@example.test", &message).unwrap_err();
        assert!(matches!(err, RenderError::Sealed(_)), "{err}");
    }
}
