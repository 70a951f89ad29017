//! An nginx of a test's own, run as the test server's nginx would be, with
//! `sites/*.conf` included: what Berth's nginx operations are tested against
//! (never the machine's own nginx configuration).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::eventually;

/// nginx's master, stopped with SIGTERM on drop (which stops its workers
/// too; a SIGKILL would leave them running).
pub struct PrivateNginx {
    child: std::process::Child,
    /// The main config file (`nginx -c`).
    pub conf: PathBuf,
    /// The directory whose `*.conf` files the config includes.
    pub sites: PathBuf,
}

impl Drop for PrivateNginx {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl PrivateNginx {
    /// Starts one with its files under `dir`.
    pub async fn start(dir: &Path) -> PrivateNginx {
        let d = dir.display();
        let sites = dir.join("sites");
        std::fs::create_dir_all(&sites).unwrap();
        std::fs::create_dir_all(dir.join("nginx-temp")).unwrap();
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{}}\n\
                 http {{ access_log off; client_body_temp_path {d}/nginx-temp; proxy_temp_path {d}/nginx-temp; \
                 fastcgi_temp_path {d}/nginx-temp; uwsgi_temp_path {d}/nginx-temp; scgi_temp_path {d}/nginx-temp; \
                 include {d}/sites/*.conf; }}\n"
            ),
        )
        .unwrap();
        let child = std::process::Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx (scripts/test.sh installs it)");
        let nginx = PrivateNginx { child, conf, sites };
        let pid = dir.join("nginx.pid");
        eventually(Duration::from_secs(15), "nginx to start", || {
            let pid = pid.clone();
            async move { pid.exists() }
        })
        .await;
        nginx
    }
}
