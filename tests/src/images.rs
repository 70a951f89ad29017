//! Container images for the test servers, made once per test run: no registry
//! is reachable here, so the base image is Debian's static busybox imported
//! into podman's storage (shared by every test server's podman service).

use std::process::Stdio;

use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::scratch_dir;

/// `busybox` with `sh`, `httpd`, `echo`, `cat`, `ls`, `sleep`, `env` linked.
pub const BUSYBOX: &str = "localhost/berth-test-busybox:latest";

static BUSYBOX_READY: OnceCell<()> = OnceCell::const_new();

async fn podman(args: &[&str]) -> bool {
    Command::new("podman")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("podman (scripts/test.sh installs it)")
        .success()
}

/// [`BUSYBOX`], imported on first use.
pub async fn busybox() -> &'static str {
    BUSYBOX_READY
        .get_or_init(|| async {
            if podman(&["image", "exists", BUSYBOX]).await {
                return;
            }
            let dir = scratch_dir("busybox");
            let bin = dir.join("rootfs/bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::create_dir_all(dir.join("rootfs/www")).unwrap();
            std::fs::copy("/bin/busybox", bin.join("busybox"))
                .expect("/bin/busybox (busybox-static; scripts/test.sh installs it)");
            for tool in ["sh", "httpd", "echo", "cat", "ls", "sleep", "env"] {
                std::os::unix::fs::symlink("busybox", bin.join(tool)).unwrap();
            }
            let tar = dir.join("busybox.tar");
            let packed = Command::new("tar")
                .arg("-C")
                .arg(dir.join("rootfs"))
                .arg("-cf")
                .arg(&tar)
                .arg(".")
                .status()
                .await
                .expect("tar");
            assert!(packed.success(), "tar of the busybox root");
            let tar = tar.to_str().unwrap().to_owned();
            assert!(
                podman(&["import", &tar, BUSYBOX]).await,
                "podman import {BUSYBOX}"
            );
            let _ = std::fs::remove_dir_all(&dir);
        })
        .await;
    BUSYBOX
}
