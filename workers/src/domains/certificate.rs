//! `domain.certificate`: a certificate for one domain, from the configured
//! ACME CA over HTTP-01, installed on the server and served over HTTPS.
//!
//! DNS first: a name that does not point at the server fails with what it
//! points at, and no CA attempt is spent. Then the site is written again
//! (so the challenge location is there), the token file goes under the
//! server's ACME root, the CA validates, the key (generated here, never
//! logged or stored by Berth) and chain go to files named by the serial
//! (key 0600), the site points at them (`nginx -t`, reload: the previous
//! certificate serves until then), and the older files go.

use std::sync::Arc;

use berth_deployments::names;
use berth_domains::acme::{Acme, AcmeError};
use berth_domains::dns::Pointing;
use berth_jobs::DomainCertificate;
use berth_jobs::joblog::LogStream;
use berth_jobs::runtime::{JobContext, JobFailure, JobHandler};
use berth_remote::ops::nginx::TlsName;
use berth_remote::ops::{On, files};
use berth_secrets::acme_account_binding;
use berth_ssh::Arg;

use super::{DomainJobs, load, op_failure, store, stored};

pub struct IssueCertificate(pub Arc<DomainJobs>);

/// Why an attempt failed, kept on the domain and told to its owner.
struct Refusal {
    failure: JobFailure,
    detail: String,
    problem_type: Option<String>,
}

impl Refusal {
    fn of(failure: JobFailure) -> Self {
        let detail = failure.reason().to_owned();
        Self {
            failure,
            detail,
            problem_type: None,
        }
    }

    fn acme(e: AcmeError) -> Self {
        Self {
            failure: JobFailure::retryable(e.to_string()),
            detail: e.detail,
            problem_type: e.problem_type,
        }
    }
}

impl JobHandler for IssueCertificate {
    type Job = DomainCertificate;

    async fn run(&self, job: DomainCertificate, ctx: JobContext) -> Result<(), JobFailure> {
        let jobs = &self.0;
        let Some((domain, deployment)) = load(jobs, job.domain_id).await? else {
            return Ok(());
        };
        if domain.status == "deleting" {
            return Ok(());
        }
        match jobs.certify(&job, &ctx, &domain, &deployment).await {
            Ok(()) => Ok(()),
            Err(refusal) => {
                store::certificate_failed(
                    jobs.pool(),
                    domain.id,
                    &refusal.detail,
                    refusal.problem_type.as_deref(),
                )
                .await
                .map_err(stored)?;
                let last = ctx.attempt >= ctx.max_attempts
                    || matches!(refusal.failure, JobFailure::Permanent(_));
                // Told at once, and again when Berth gives up; the retries
                // between are quiet.
                if ctx.attempt == 1 || last {
                    let what = if job.renewal {
                        "renewal"
                    } else {
                        "certificate"
                    };
                    let later = if last {
                        String::new()
                    } else {
                        " Berth tries again, waiting longer each time.".to_owned()
                    };
                    jobs.notify(
                        &domain,
                        "certificate_failed",
                        format!("The {what} for {} failed", domain.name),
                        format!("{}{later}", refusal.detail),
                    )
                    .await;
                }
                Err(refusal.failure)
            }
        }
    }
}

impl DomainJobs {
    async fn certify(
        &self,
        job: &DomainCertificate,
        ctx: &JobContext,
        domain: &store::DomainRow,
        deployment: &crate::deploy::store::DeploymentRow,
    ) -> Result<(), Refusal> {
        if domain.name.starts_with("*.") {
            return Err(Refusal::of(JobFailure::permanent(
                "a wildcard certificate needs a DNS-01 challenge, which Berth does not run: \
                 attach the names one by one",
            )));
        }
        if self
            .serving_port(deployment)
            .await
            .map_err(Refusal::of)?
            .is_none()
        {
            return Err(Refusal::of(JobFailure::permanent(
                "the deployment serves nothing now (no live release, or stopped): \
                 deploy or restart it, then request the certificate",
            )));
        }
        let (server, session) = self
            .deployments
            .reach(deployment.server_id)
            .await
            .map_err(Refusal::of)?;
        ctx.log.step("checking where the name points");
        let (pointing, expected) = self.check_dns(domain, &server).await.map_err(Refusal::of)?;
        if let Pointing::Elsewhere { found } = pointing {
            let found = if found.is_empty() {
                "no address".to_owned()
            } else {
                found
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let expected = expected
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            let message = format!(
                "{} points at {found}, not at the server ({expected}): set its A/AAAA records \
                 to the server's address, then request the certificate again",
                domain.name
            );
            // A user's request stops here; a renewal tries again later, as
            // the records may be mid-change.
            let failure = if job.renewal {
                JobFailure::retryable(message.clone())
            } else {
                JobFailure::permanent(message.clone())
            };
            return Err(Refusal {
                failure,
                detail: message,
                problem_type: None,
            });
        }
        store::certificate_pending(self.pool(), domain.id)
            .await
            .map_err(|e| Refusal::of(stored(e)))?;
        ctx.log.step("making sure nginx serves the challenge path");
        self.install_site(ctx, &session, deployment, &server, None)
            .await
            .map_err(Refusal::of)?;
        let acme = self.account().await.map_err(Refusal::of)?;
        ctx.log.step(&format!(
            "ordering a certificate for {} from the CA",
            domain.name
        ));
        let on = On::new(&session, &ctx.cancel).with_lines(super::log_lines(ctx));
        let challenge_dir = make_readable_dir(&on, &names::acme_root(&server.data_dir))
            .await
            .map_err(|e| Refusal::of(op_failure("creating the challenge directory", &e)))?;
        let published = std::sync::Mutex::new(Vec::new());
        let order = acme.issue(&domain.name, |token, key_authorization| {
            let on = &on;
            let challenge_dir = &challenge_dir;
            let published = &published;
            async move {
                let path = Arg::path(&format!("{}/{token}", challenge_dir.as_str()))
                    .map_err(|e| e.to_string())?;
                files::put(on, &path, key_authorization.as_bytes(), 0o644)
                    .await
                    .map_err(|e| e.to_string())?;
                published.lock().expect("not poisoned").push(path);
                Ok(())
            }
        });
        // The CA is not told: an order left pending expires on its own.
        let issued = tokio::select! {
            issued = order => issued,
            () = ctx.cancel.cancelled() => Err(AcmeError {
                problem_type: None,
                detail: "stopped (cancelled, or past the job's timeout)".into(),
            }),
        };
        for path in published.into_inner().expect("not poisoned") {
            let _ = files::remove(&on, &path).await;
        }
        let certificate = issued.map_err(Refusal::acme)?;
        let leaf = berth_domains::cert::read_leaf(&certificate.chain_pem)
            .map_err(|e| Refusal::of(JobFailure::retryable(e.to_string())))?;
        if !leaf.names.iter().any(|n| n == &domain.name) {
            return Err(Refusal::of(JobFailure::retryable(format!(
                "the CA's certificate does not name {} (it names {:?})",
                domain.name, leaf.names
            ))));
        }
        ctx.log.line(
            LogStream::Stdout,
            &format!(
                "issued: serial {}, valid until {}",
                leaf.serial, leaf.not_after
            ),
        );
        ctx.log.step("installing the certificate");
        let dir = names::certificate_dir(&server.data_dir, deployment.id, domain.id);
        let dir = Arg::path(&dir).map_err(|e| Refusal::of(JobFailure::permanent(e)))?;
        files::make_dir(&on, &dir, 0o700)
            .await
            .map_err(|e| Refusal::of(op_failure("creating the certificate directory", &e)))?;
        let (chain_path, key_path) =
            names::certificate_files(&server.data_dir, deployment.id, domain.id, &leaf.serial);
        let put = |path: String, data: String, mode: i32| {
            let on = &on;
            async move {
                let path = Arg::path(&path).map_err(|e| Refusal::of(JobFailure::permanent(e)))?;
                files::put(on, &path, data.as_bytes(), mode)
                    .await
                    .map_err(|e| Refusal::of(op_failure("writing the certificate", &e)))
            }
        };
        put(key_path.clone(), certificate.key_pem.clone(), 0o600).await?;
        put(chain_path.clone(), certificate.chain_pem.clone(), 0o644).await?;
        ctx.log.step("serving the domain over HTTPS");
        let installed = self
            .install_site(
                ctx,
                &session,
                deployment,
                &server,
                Some((
                    &domain.name,
                    TlsName {
                        name: domain.name.clone(),
                        certificate: chain_path,
                        key: key_path,
                    },
                )),
            )
            .await
            .map_err(Refusal::of)?;
        if installed {
            self.confirm_redirect(ctx, &session, &server, &domain.name)
                .await
                .map_err(Refusal::of)?;
        }
        store::certificate_installed(self.pool(), domain.id, &leaf)
            .await
            .map_err(|e| Refusal::of(stored(e)))?;
        if let Some(old) = domain.cert_serial.as_deref().filter(|s| *s != leaf.serial) {
            remove_old_files(&on, &server.data_dir, deployment.id, domain.id, old).await;
        }
        Ok(())
    }

    /// Berth's account at the configured CA: the stored one, or one
    /// registered now and stored sealed.
    async fn account(&self) -> Result<Acme, JobFailure> {
        let directory = &self.config.acme.directory_url;
        let keys = &self.deployments.keys;
        let open = |sealed: &str| {
            keys.open_string(sealed, acme_account_binding(directory))
                .map_err(|e| JobFailure::permanent(format!("the ACME account does not open: {e}")))
        };
        if let Some(sealed) = store::acme_account(self.pool(), directory)
            .await
            .map_err(stored)?
        {
            let credentials = open(&sealed)?;
            let (acme, _) = Acme::account(&self.config.acme, Some(&credentials))
                .await
                .map_err(|e| JobFailure::retryable(e.to_string()))?;
            return Ok(acme);
        }
        let (acme, created) = Acme::account(&self.config.acme, None)
            .await
            .map_err(|e| JobFailure::retryable(e.to_string()))?;
        let Some(created) = created else {
            return Ok(acme);
        };
        let sealed = keys.seal(created.as_bytes(), acme_account_binding(directory));
        let kept = store::keep_acme_account(self.pool(), directory, &sealed)
            .await
            .map_err(stored)?;
        if kept == sealed {
            return Ok(acme);
        }
        // Another worker registered first: use the one that is kept.
        let credentials = open(&kept)?;
        Acme::account(&self.config.acme, Some(&credentials))
            .await
            .map(|(acme, _)| acme)
            .map_err(|e| JobFailure::retryable(e.to_string()))
    }
}

/// The challenge directory (`<root>/.well-known/acme-challenge`) and the
/// two above it, readable by nginx's workers whatever the umask.
async fn make_readable_dir(on: &On<'_>, root: &str) -> Result<Arg, berth_remote::ops::OpError> {
    let mut path = root.to_owned();
    for part in ["", "/.well-known", "/acme-challenge"] {
        path.push_str(part);
        files::make_dir(on, &Arg::path(&path)?, 0o755).await?;
    }
    Ok(Arg::path(&path)?)
}

/// The superseded certificate's files, now that the site no longer names
/// them; a failure only leaves them behind, in the domain's own directory.
async fn remove_old_files(
    on: &On<'_>,
    data_dir: &str,
    deployment_id: uuid::Uuid,
    domain_id: uuid::Uuid,
    serial: &str,
) {
    let (chain, key) = names::certificate_files(data_dir, deployment_id, domain_id, serial);
    for path in [chain, key] {
        if let Ok(path) = Arg::path(&path) {
            let _ = files::remove(on, &path).await;
        }
    }
}
