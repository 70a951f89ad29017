//! What one probe asks a server, in one command, and how its answer is read.
//!
//! CPU use is the change of `/proc/stat`'s counters between two readings: a
//! probe reads them once and compares with the previous probe's reading
//! (kept on the server's row), so the figure covers the whole minute between
//! probes and the command does not wait. The first probe of a server (or one
//! after a reboot reset the counters) has nothing to compare with and takes
//! two readings half a second apart instead ([`FIRST_PROBE_COMMAND`]).
//! Docker is asked once (`docker ps`: it fails when the daemon is down).

/// How long one probe command may take on the server.
pub const PROBE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// What every probe reads after the CPU counters. Fixed text.
macro_rules! probe_rest {
    () => {
        "grep -E '^(MemTotal|MemAvailable|SwapTotal|SwapFree):' /proc/meminfo | sed 's/^/mem /'; \
         echo \"df $(df -P / | tail -n 1)\"; echo \"load $(cat /proc/loadavg)\"; \
         echo \"uptime $(cut -d ' ' -f 1 /proc/uptime)\"; \
         if command -v docker >/dev/null 2>&1 && ids=$(docker ps -q 2>/dev/null); then \
         echo \"docker running $(printf '%s' \"$ids\" | grep -c .)\"; else echo 'docker stopped 0'; fi"
    };
}

/// A probe with the previous reading to compare with: one reading, no wait.
pub const PROBE_COMMAND: &str = concat!("echo \"stat1 $(head -n 1 /proc/stat)\"; ", probe_rest!());

/// A probe with nothing to compare with: two readings half a second apart.
pub const FIRST_PROBE_COMMAND: &str = concat!(
    "echo \"stat1 $(head -n 1 /proc/stat)\"; sleep 0.5; echo \"stat2 $(head -n 1 /proc/stat)\"; ",
    probe_rest!()
);

/// `/proc/stat`'s CPU counters (jiffies since boot): all, and idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuCounters {
    pub total: u64,
    pub idle: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub cpu_percent: f32,
    /// The last reading, for the next probe to compare with.
    pub cpu_counters: CpuCounters,
    pub memory_percent: f32,
    pub swap_percent: f32,
    pub disk_percent: f32,
    pub load: [f32; 3],
    pub uptime_secs: i64,
    pub docker_running: bool,
    pub containers: i32,
}

fn cpu_counters(line: &str) -> Option<CpuCounters> {
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if fields.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuCounters { total, idle })
}

fn percent(part: f64, whole: f64) -> f32 {
    if whole <= 0.0 {
        0.0
    } else {
        (100.0 * part / whole).clamp(0.0, 100.0) as f32
    }
}

/// Reads the probe's output; the error names what was missing. `previous`
/// is the last probe's reading, used when the answer has only one.
pub fn parse(output: &str, previous: Option<CpuCounters>) -> Result<Sample, String> {
    let mut stat = [None, None];
    let (mut mem_total, mut mem_available, mut swap_total, mut swap_free) =
        (None, None, None, None);
    let (mut disk, mut load, mut uptime, mut docker) = (None, None, None, None);
    for line in output.lines() {
        let Some((tag, rest)) = line.split_once(' ') else {
            continue;
        };
        match tag {
            "stat1" => stat[0] = cpu_counters(rest),
            "stat2" => stat[1] = cpu_counters(rest),
            "mem" => {
                let mut parts = rest.split_whitespace();
                let (name, kb) = (
                    parts.next(),
                    parts.next().and_then(|v| v.parse::<f64>().ok()),
                );
                match name {
                    Some("MemTotal:") => mem_total = kb,
                    Some("MemAvailable:") => mem_available = kb,
                    Some("SwapTotal:") => swap_total = kb,
                    Some("SwapFree:") => swap_free = kb,
                    _ => {}
                }
            }
            "df" => {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                if let (Some(used), Some(available)) = (
                    fields.get(2).and_then(|v| v.parse::<f64>().ok()),
                    fields.get(3).and_then(|v| v.parse::<f64>().ok()),
                ) {
                    disk = Some(percent(used, used + available));
                }
            }
            "load" => {
                let values: Vec<f32> = rest
                    .split_whitespace()
                    .take(3)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                if let [a, b, c] = values[..] {
                    load = Some([a, b, c]);
                }
            }
            "uptime" => uptime = rest.trim().parse::<f64>().ok().map(|s| s as i64),
            "docker" => {
                let mut parts = rest.split_whitespace();
                let running = parts.next() == Some("running");
                let count = parts.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                docker = Some((running, count));
            }
            _ => {}
        }
    }
    let missing = |what: &str| format!("the probe's answer has no {what}");
    let first = stat[0].ok_or_else(|| missing("CPU reading"))?;
    // Two readings in the answer, or the previous probe's and this one's; a
    // reboot (counters went back) leaves the average since boot.
    let (from, to) = match (stat[1], previous) {
        (Some(second), _) => (first, second),
        (None, Some(previous)) if previous.total <= first.total && previous.idle <= first.idle => {
            (previous, first)
        }
        (None, _) => (CpuCounters { total: 0, idle: 0 }, first),
    };
    let (dt, di) = (
        to.total.saturating_sub(from.total) as f64,
        to.idle.saturating_sub(from.idle) as f64,
    );
    let (total, available) = (
        mem_total.ok_or_else(|| missing("MemTotal"))?,
        mem_available.ok_or_else(|| missing("MemAvailable"))?,
    );
    let swap_total = swap_total.unwrap_or(0.0);
    let (docker_running, containers) = docker.ok_or_else(|| missing("docker state"))?;
    Ok(Sample {
        cpu_percent: percent(dt - di, dt),
        cpu_counters: to,
        memory_percent: percent(total - available, total),
        swap_percent: percent(swap_total - swap_free.unwrap_or(swap_total), swap_total),
        disk_percent: disk.ok_or_else(|| missing("disk usage"))?,
        load: load.ok_or_else(|| missing("load average"))?,
        uptime_secs: uptime.ok_or_else(|| missing("uptime"))?,
        docker_running,
        containers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_probe() {
        let output = "stat1 cpu  100 0 100 800 0 0 0 0 0 0\n\
            stat2 cpu  150 0 150 900 0 0 0 0 0 0\n\
            mem MemTotal:        8000000 kB\nmem MemAvailable:    2000000 kB\n\
            mem SwapTotal:       1000000 kB\nmem SwapFree:         750000 kB\n\
            df /dev/sda1 100 60 40 60% /\nload 0.50 0.40 0.30 1/200 1234\n\
            uptime 12345.67\ndocker running 3\n";
        let sample = parse(output, None).unwrap();
        assert_eq!(sample.cpu_percent, 50.0);
        assert_eq!(sample.memory_percent, 75.0);
        assert_eq!(sample.swap_percent, 25.0);
        assert_eq!(sample.disk_percent, 60.0);
        assert_eq!(sample.load, [0.5, 0.4, 0.3]);
        assert_eq!(sample.uptime_secs, 12345);
        assert!(sample.docker_running);
        assert_eq!(sample.containers, 3);
        assert!(parse("garbage", None).unwrap_err().contains("CPU"));
        assert_eq!(
            sample.cpu_counters,
            CpuCounters {
                total: 1200,
                idle: 900
            }
        );
        // One reading: compared with the previous probe's.
        let one = output.replace("stat2 cpu  150 0 150 900 0 0 0 0 0 0\n", "");
        let previous = CpuCounters {
            total: 800,
            idle: 700,
        };
        let later = parse(&one, Some(previous)).unwrap();
        assert_eq!(later.cpu_percent, 50.0, "(1000-800) ticks, (800-700) idle");
        // Counters that went back (a reboot): the average since boot.
        let rebooted = parse(
            &one,
            Some(CpuCounters {
                total: 5000,
                idle: 4000,
            }),
        )
        .unwrap();
        assert_eq!(rebooted.cpu_percent, 20.0);
        let no_swap = output.replace(
            "mem SwapTotal:       1000000 kB\nmem SwapFree:         750000 kB\n",
            "",
        );
        assert_eq!(parse(&no_swap, None).unwrap().swap_percent, 0.0);
    }
}
