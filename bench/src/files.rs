//! Part 9: the file manager moving a large file through the api (in this
//! process, as the tests run it) to and from a real sshd test server,
//! beside OpenSSH's own `sftp` client moving the same file to the same
//! server in the same run; and how much this process grows while it does
//! (the bound: a download is streamed, never held whole), and while a
//! 1 GiB zip bomb is refused.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_e2e::fleet::Fleet;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::{Setup, median, setting};

/// VmRSS of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Samples this process's RSS every 5 ms until dropped; `peak` is the most seen.
struct RssWatch {
    start: u64,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    fn start() -> Self {
        let start = rss_kib();
        let peak = Arc::new(AtomicU64::new(start));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                seen.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        RssWatch { start, peak, task }
    }

    /// MiB grown above where it started.
    fn grown_mib(self) -> f64 {
        self.task.abort();
        let peak = self.peak.load(Ordering::Relaxed).max(rss_kib());
        peak.saturating_sub(self.start) as f64 / 1024.0
    }
}

/// OpenSSH's `sftp` running one batch command against the test server.
async fn bare_sftp(fleet: &Fleet, key: &Path, command: &str) -> anyhow::Result<f64> {
    let batch = tempfile::NamedTempFile::new()?;
    std::fs::write(batch.path(), format!("{command}\n"))?;
    let started = Instant::now();
    let out = tokio::process::Command::new("sftp")
        .arg("-q")
        .args(["-i", &key.display().to_string()])
        .args(["-P", &fleet.sshd.port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-b", &batch.path().display().to_string()])
        .arg(format!("root@{}", fleet.sshd.addresses[0]))
        .output()
        .await
        .context("sftp")?;
    if !out.status.success() {
        bail!("sftp: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn download(fleet: &Fleet, server: &str, path: &str) -> anyhow::Result<(f64, u64)> {
    let app = &fleet.stack.app;
    let url = app.url(&format!("/api/v1/files/{server}/download?path={path}"));
    let started = Instant::now();
    let res = app.client.get(url).bearer_auth(&fleet.token).send().await?;
    anyhow::ensure!(res.status() == 200, "download: {}", res.status());
    let mut body = res.bytes_stream();
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        bytes += chunk?.len() as u64;
    }
    Ok((started.elapsed().as_secs_f64(), bytes))
}

async fn upload(fleet: &Fleet, server: &str, local: &Path, dir: &str) -> anyhow::Result<f64> {
    let app = &fleet.stack.app;
    let size = std::fs::metadata(local)?.len();
    let file = tokio::fs::File::open(local).await?;
    let chunks = futures::stream::unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    let part =
        reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(chunks), size)
            .file_name("uploaded.bin");
    let started = Instant::now();
    let res = app
        .client
        .post(app.url(&format!("/api/v1/files/{server}/upload?path={dir}")))
        .bearer_auth(&fleet.token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status == 201, "upload: {status} {body}");
    Ok(started.elapsed().as_secs_f64())
}

pub async fn files(_setup: &Setup) -> anyhow::Result<()> {
    let mib: u64 = setting("BENCH_FILES_MIB", 256);
    let rounds: usize = setting("BENCH_FILES_ROUNDS", 3);
    let limit = (mib + 1) * 1024 * 1024;
    let fleet = Fleet::start(
        "probe",
        &[
            ("BERTH_FILES_UPLOAD_MAX_BYTES", &limit.to_string()),
            ("BERTH_FILES_ARCHIVE_MAX_BYTES", "536870912"),
        ],
    )
    .await;
    let server = fleet.onboard(0).await;
    let scratch = berth_e2e::scratch_dir("bench-files");
    let key = scratch.join("key");
    std::fs::write(&key, &fleet.sshd.key)?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let big = scratch.join("big.bin");
    {
        // Incompressible, so no layer can shortcut it.
        let mut data = vec![0u8; 1024 * 1024];
        let mut file = std::fs::File::create(&big)?;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..mib {
            for byte in data.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            std::io::Write::write_all(&mut file, &data)?;
        }
    }
    let big_path = big.display().to_string();

    let (mut ours_down, mut bare_down, mut ours_up, mut bare_up, mut grown) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let watch = RssWatch::start();
        let (seconds, bytes) = download(&fleet, &server, &big_path).await?;
        grown.push(watch.grown_mib());
        anyhow::ensure!(bytes == mib * 1024 * 1024, "downloaded {bytes} bytes");
        ours_down.push(seconds);
        bare_down.push(bare_sftp(&fleet, &key, &format!("get {big_path} /dev/null")).await?);

        let dir = scratch.join(format!("up-{round}"));
        std::fs::create_dir(&dir)?;
        ours_up.push(upload(&fleet, &server, &big, &dir.display().to_string()).await?);
        bare_up.push(
            bare_sftp(
                &fleet,
                &key,
                &format!("put {big_path} {}/bare.bin", dir.display()),
            )
            .await?,
        );
        std::fs::remove_dir_all(&dir)?;
    }
    let rate = |s: f64| mib as f64 / s;
    let list = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{:.0}", rate(*s)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "9. The file manager moving a {mib} MiB file, {rounds} rounds, alternating with OpenSSH sftp on the same server"
    );
    println!(
        "   download through the api:  median {:>5.0} MiB/s  (rounds: {})",
        rate(median(ours_down.clone())),
        list(&ours_down)
    );
    println!(
        "   sftp get (bound):          median {:>5.0} MiB/s  (rounds: {})",
        rate(median(bare_down.clone())),
        list(&bare_down)
    );
    println!(
        "   upload through the api:    median {:>5.0} MiB/s  (rounds: {}; spooled to disk, then written)",
        rate(median(ours_up.clone())),
        list(&ours_up)
    );
    println!(
        "   sftp put (bound):          median {:>5.0} MiB/s  (rounds: {})",
        rate(median(bare_up.clone())),
        list(&bare_up)
    );
    println!(
        "   this process grew at most {:.1} MiB while downloading {mib} MiB (bound: 64 MiB, far below the file)",
        grown.iter().cloned().fold(0.0, f64::max)
    );

    // A 1 GiB zip bomb against a 512 MiB limit: inflated in a stream and
    // refused at the limit, never held.
    let bomb = scratch.join("bomb.zip");
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED) as z:\n\
             \x20   with z.open('bomb.bin', 'w', force_zip64=True) as f:\n\
             \x20       zeros = bytes(1 << 20)\n\
             \x20       for _ in range(1024): f.write(zeros)\n",
        )
        .arg(&bomb)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = scratch.join("bomb-dest");
    std::fs::create_dir(&dest)?;
    let watch = RssWatch::start();
    let started = Instant::now();
    let (status, body) = berth_e2e::accounts::send_as(
        &fleet.stack.app,
        &fleet.token,
        reqwest::Method::POST,
        &format!("/api/v1/files/{server}/decompress"),
        json!({ "zipFilePath": bomb.display().to_string(), "destDir": dest.display().to_string() }),
    )
    .await;
    let seconds = started.elapsed().as_secs_f64();
    let grown = watch.grown_mib();
    anyhow::ensure!(status == 400, "the bomb was not refused: {status} {body}");
    anyhow::ensure!(std::fs::read_dir(&dest)?.next().is_none(), "the bomb wrote");
    println!(
        "   a 1 GiB zip bomb ({} KiB) refused at the 512 MiB limit in {seconds:.2} s, nothing written; \
         this process grew at most {grown:.1} MiB (bound: 64 MiB)",
        std::fs::metadata(&bomb)?.len() / 1024
    );
    println!();
    Ok(())
}
