//! The `email` job: renders a message's templates and delivers it by SMTP, or
//! writes it as an `.eml` file when no SMTP server is configured.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_config::{MailConfig, MailTransport};
use berth_jobs::runtime::{JobContext, JobFailure};
use berth_jobs::{EmailJob, EmailMessage};
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
    templates: Environment<'static>,
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
        ] {
            templates.add_template(name, source)?;
        }
        // `.html` templates are auto-escaped by minijinja; `.txt` ones are not.
        Ok(Arc::new(Self {
            transport,
            from,
            public_url: config.public_url.clone(),
            templates,
        }))
    }

    pub fn render(&self, message: &EmailMessage) -> Result<Rendered, minijinja::Error> {
        let (template, subject, context) = match message {
            EmailMessage::TestMessage { recipient_name } => (
                "test_message",
                "Berth test message".to_owned(),
                json!({ "recipient_name": recipient_name }),
            ),
            EmailMessage::VerificationCode {
                recipient_name,
                code,
                expires_in_minutes,
            } => (
                "verification_code",
                format!("Your Berth code: {code}"),
                json!({ "recipient_name": recipient_name, "code": code, "expires_in_minutes": expires_in_minutes }),
            ),
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

    /// Runs one email job. Bad addresses and templates fail at once; delivery
    /// errors are retried with backoff.
    pub async fn send(&self, job: EmailJob, _ctx: JobContext) -> Result<(), JobFailure> {
        let to: Mailbox = job
            .to
            .parse()
            .map_err(|e| JobFailure::permanent(format!("invalid recipient address: {e}")))?;
        let rendered = self
            .render(&job.message)
            .map_err(|e| JobFailure::permanent(format!("template error: {e}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mailer() -> Arc<Mailer> {
        let dir = std::env::temp_dir().join(format!("berth-mail-test-{}", std::process::id()));
        Mailer::new(&MailConfig {
            transport: MailTransport::Directory(dir),
            from: "Berth <berth@example.test>".into(),
            public_url: "https://berth.example.test".into(),
        })
        .unwrap()
    }

    #[test]
    fn renders_text_and_escaped_html() {
        let rendered = mailer()
            .render(&EmailMessage::VerificationCode {
                recipient_name: "<Ada>".into(),
                code: "123456".into(),
                expires_in_minutes: 10,
            })
            .unwrap();
        assert_eq!(rendered.subject, "Your Berth code: 123456");
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
}
