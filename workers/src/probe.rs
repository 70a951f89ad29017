//! What one probe asks a server, in one command, and how its answer is read.
//! CPU use needs two `/proc/stat` samples; they are half a second apart.
//! Docker is asked once (`docker ps`: it fails when the daemon is down),
//! not twice: `docker info` alone costs more than the rest of the probe.

/// Fixed text: one round trip collects everything.
/// How long one probe command may take on the server.
pub const PROBE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

pub const PROBE_COMMAND: &str = "echo \"stat1 $(head -n 1 /proc/stat)\"; sleep 0.5; \
    echo \"stat2 $(head -n 1 /proc/stat)\"; \
    grep -E '^(MemTotal|MemAvailable|SwapTotal|SwapFree):' /proc/meminfo | sed 's/^/mem /'; \
    echo \"df $(df -P / | tail -n 1)\"; echo \"load $(cat /proc/loadavg)\"; \
    echo \"uptime $(cut -d ' ' -f 1 /proc/uptime)\"; \
    if command -v docker >/dev/null 2>&1 && ids=$(docker ps -q 2>/dev/null); then \
    echo \"docker running $(printf '%s' \"$ids\" | grep -c .)\"; else echo 'docker stopped 0'; fi";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub cpu_percent: f32,
    pub memory_percent: f32,
    pub swap_percent: f32,
    pub disk_percent: f32,
    pub load: [f32; 3],
    pub uptime_secs: i64,
    pub docker_running: bool,
    pub containers: i32,
}

fn cpu_counters(line: &str) -> Option<(u64, u64)> {
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
    Some((total, idle))
}

fn percent(part: f64, whole: f64) -> f32 {
    if whole <= 0.0 {
        0.0
    } else {
        (100.0 * part / whole).clamp(0.0, 100.0) as f32
    }
}

/// Reads the probe's output; `None` names what was missing.
pub fn parse(output: &str) -> Result<Sample, String> {
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
    let ((t1, i1), (t2, i2)) = (
        stat[0].ok_or_else(|| missing("first CPU sample"))?,
        stat[1].ok_or_else(|| missing("second CPU sample"))?,
    );
    let (dt, di) = (t2.saturating_sub(t1) as f64, i2.saturating_sub(i1) as f64);
    let (total, available) = (
        mem_total.ok_or_else(|| missing("MemTotal"))?,
        mem_available.ok_or_else(|| missing("MemAvailable"))?,
    );
    let swap_total = swap_total.unwrap_or(0.0);
    let (docker_running, containers) = docker.ok_or_else(|| missing("docker state"))?;
    Ok(Sample {
        cpu_percent: percent(dt - di, dt),
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
        let sample = parse(output).unwrap();
        assert_eq!(sample.cpu_percent, 50.0);
        assert_eq!(sample.memory_percent, 75.0);
        assert_eq!(sample.swap_percent, 25.0);
        assert_eq!(sample.disk_percent, 60.0);
        assert_eq!(sample.load, [0.5, 0.4, 0.3]);
        assert_eq!(sample.uptime_secs, 12345);
        assert!(sample.docker_running);
        assert_eq!(sample.containers, 3);
        assert!(parse("garbage").unwrap_err().contains("CPU"));
        let no_swap = output.replace(
            "mem SwapTotal:       1000000 kB\nmem SwapFree:         750000 kB\n",
            "",
        );
        assert_eq!(parse(&no_swap).unwrap().swap_percent, 0.0);
    }
}
