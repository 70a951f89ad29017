//! The checks between starting a release and switching to it: a port on
//! the server no socket holds, and the new container answering its
//! health check, retried within a budget, every attempt in the job's log.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use berth_ssh::{Arg, ShellCommand, SshError, Stream};

use super::http::{self, Checked};
use super::{On, OpError};

/// The TCP ports a socket holds on the server (IPv4 and IPv6), listening
/// or connected: a port an outgoing connection uses locally cannot be
/// listened on either. Read from `/proc/net/tcp*`: no `ss` or `netstat`.
pub async fn ports_taken(on: &On<'_>) -> Result<HashSet<u16>, OpError> {
    // Not streamed: the kernel's table is no news for a job's log.
    let output = on
        .session
        .exec(
            &ShellCommand::new("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; true"),
            Duration::from_secs(30),
            on.cancel,
        )
        .await?;
    Ok(parse_taken(&output.stdout))
}

/// Lines of `/proc/net/tcp`: `sl local_address rem_address st …`, the
/// local port in hex after the colon (the header line has none).
fn parse_taken(table: &str) -> HashSet<u16> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields.get(1)?.rsplit_once(':')?.1;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// A port in `range` nothing listens on now, the lowest after `after`
/// (wrapping), so consecutive releases do not reuse the port just left.
pub fn pick_port(
    range: std::ops::RangeInclusive<u16>,
    busy: &HashSet<u16>,
    after: Option<u16>,
) -> Option<u16> {
    let start = after
        .filter(|p| range.contains(p))
        .map_or(*range.start(), |p| p.saturating_add(1));
    (start..=*range.end())
        .chain(*range.start()..start)
        .find(|p| !busy.contains(p) && range.contains(p))
}

/// A deployment's health check (SPEC §3.4's `healthCheck`).
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// An absolute path, e.g. `/healthz`.
    pub path: String,
    pub expected_status: u16,
    /// Per attempt.
    pub timeout: Duration,
    /// Attempts after the start period.
    pub retries: u32,
    /// Failures within it do not count (the app is still starting).
    pub start_period: Duration,
    pub interval: Duration,
}

/// How the check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy {
        attempts: u32,
    },
    /// The last attempt's answer, for the release's failure.
    Unhealthy {
        attempts: u32,
        last: Checked,
    },
}

/// Checks `http://127.0.0.1:<port><path>` from the server until it answers
/// the expected status or the budget (start period, then `retries`
/// attempts) is spent. The job's cancellation stops it between attempts.
pub async fn wait_healthy(on: &On<'_>, port: u16, check: &HealthCheck) -> Result<Health, OpError> {
    if !check.path.starts_with('/') {
        return Err(berth_ssh::Refused {
            what: "healthCheck.path",
            value: check.path.clone(),
            rule: "must start with /",
        }
        .into());
    }
    let url = Arg::url(&format!("http://127.0.0.1:{port}{}", check.path))?;
    let started = Instant::now();
    let mut attempts = 0u32;
    let mut counted = 0u32;
    loop {
        attempts += 1;
        let answer = http::check(on, &url, check.timeout).await?;
        let healthy = answer.status == Some(check.expected_status);
        let in_start_period = started.elapsed() < check.start_period;
        (on.lines)(
            Stream::Stdout,
            &format!(
                "health check {attempts}: {}{}",
                answer.status.map_or_else(
                    || answer.error.clone().unwrap_or_default(),
                    |s| format!("status {s}")
                ),
                if in_start_period && !healthy {
                    " (starting)"
                } else {
                    ""
                }
            ),
        );
        if healthy {
            return Ok(Health::Healthy { attempts });
        }
        if !in_start_period {
            counted += 1;
            if counted >= check.retries.max(1) {
                return Ok(Health::Unhealthy {
                    attempts,
                    last: answer,
                });
            }
        }
        tokio::select! {
            () = on.cancel.cancelled() => {
                return Err(SshError::Cancelled("the health check was stopped".into()).into());
            }
            () = tokio::time::sleep(check.interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_ports_are_read_from_the_kernels_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
           1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n\
           0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 0 0 0 0 0 3 1\n";
        let ports = parse_taken(table);
        assert_eq!(
            ports,
            HashSet::from([8080, 50000, 80]),
            "a connected socket's local port is taken too"
        );
    }

    #[test]
    fn ports_are_picked_after_the_last_and_wrap() {
        let busy = HashSet::from([20001, 20002]);
        assert_eq!(pick_port(20000..=20003, &busy, None), Some(20000));
        assert_eq!(pick_port(20000..=20003, &busy, Some(20000)), Some(20003));
        assert_eq!(pick_port(20000..=20003, &busy, Some(20003)), Some(20000));
        let full = HashSet::from([20000, 20001]);
        assert_eq!(pick_port(20000..=20001, &full, None), None);
    }
}
