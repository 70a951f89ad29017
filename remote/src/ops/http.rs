//! An HTTP check made from the server itself (what nginx and a health check
//! see, not what the Berth host sees), with `curl`, or `wget` where there is
//! no curl.

use std::time::Duration;

use berth_ssh::{Arg, ShellCommand};

use super::{On, OpError};

/// What a check found: the status, or why there was none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub status: Option<u16>,
    pub error: Option<String>,
}

/// GETs `url` from the server, waiting at most `timeout` for the answer.
pub async fn check(on: &On<'_>, url: &Arg, timeout: Duration) -> Result<Checked, OpError> {
    check_as(on, url, None, timeout).await
}

/// [`check`] with `host` ([`Arg::host_header`]) sent as the `Host` header:
/// a site of nginx's reached on the server's loopback.
pub async fn check_as(
    on: &On<'_>,
    url: &Arg,
    host: Option<&Arg>,
    timeout: Duration,
) -> Result<Checked, OpError> {
    let seconds = Arg::number(timeout.as_secs().max(1));
    let mut command = ShellCommand::new("if command -v curl >/dev/null 2>&1; then curl -sS -o /dev/null -w 'status=%{http_code}\\n' --max-time")
        .arg(&seconds);
    if let Some(host) = host {
        command = command.raw("-H").arg(host);
    }
    command = command
        .raw("--")
        .arg(url)
        // wget, like curl, answers the first response: a redirect is an answer.
        .raw("; else wget -q -S --max-redirect=0 -O /dev/null -T")
        .arg(&seconds);
    if let Some(host) = host {
        command = command.raw("--header").arg(host);
    }
    // Fixed text: curl prints the status; wget's server headers carry it.
    let command = command
        .raw("--")
        .arg(url)
        .raw("2>&1 | awk '/^  HTTP\\//{s=$2} END{print \"status=\" (s ? s : \"000\")}'; fi");
    let output = on
        .session
        .exec(&command, timeout + Duration::from_secs(10), on.cancel)
        .await?;
    let status = output
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("status="))
        .next_back()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|s| *s != 0);
    let error = match status {
        Some(_) => None,
        None => Some(
            Some(output.stderr.trim())
                .filter(|e| !e.is_empty())
                .unwrap_or("no answer")
                .chars()
                .take(500)
                .collect(),
        ),
    };
    Ok(Checked { status, error })
}
