//! A container registry of a test's own: Debian's `docker-registry`
//! (distribution 2.8) on loopback, plain HTTP, storage in a scratch
//! directory; stopped on drop.

use std::path::Path;
use std::time::Duration;

use crate::eventually;

pub struct TestRegistry {
    child: tokio::process::Child,
    pub port: u16,
}

impl TestRegistry {
    pub async fn start(dir: &Path, port: u16) -> TestRegistry {
        std::fs::create_dir_all(dir.join("storage")).unwrap();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("docker-registry (scripts/test.sh installs it)");
        eventually(
            Duration::from_secs(20),
            "the registry to listen",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await;
        TestRegistry { child, port }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
