//! Real OpenSSH servers acting as users' servers: one `sshd` of the test's own
//! listening on several 127.x.y.z addresses (each one a "server"), with its own
//! host key, config and authorized keys in a scratch directory. Root logs in by
//! key; a dedicated user (`berth-ssh-test`) by password. Never touches the
//! machine's own sshd, its config or `/root/.ssh`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use crate::{eventually, free_port, scratch_dir};

pub const PASSWORD_USER: &str = "berth-ssh-test";
pub const PASSWORD: &str = "berth-test-Password-42";
pub const KEY_PASSPHRASE: &str = "key passphrase 42";

static PASSWORD_USER_READY: OnceCell<()> = OnceCell::const_new();
/// The test servers' container engine: podman's Docker-compatible service
/// (runc, cgroupfs, as TESTHOSTS.md says), reached by the real `docker` CLI
/// through `DOCKER_HOST`, which every SSH session gets (`SetEnv`). One per
/// [`TestSshd`], stopped with it. It trusts a plain-HTTP registry at
/// `127.0.0.1:<registry_port>` (a test's [`crate::registry::TestRegistry`]).
async fn podman_service(dir: &Path, registry_port: u16) -> Child {
    std::fs::write(
        dir.join("containers.conf"),
        "[containers]\ndefault_ulimits = []\n[engine]\nruntime = \"runc\"\n\
         cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("registries.conf"),
        format!("[[registry]]\nlocation = \"127.0.0.1:{registry_port}\"\ninsecure = true\n"),
    )
    .unwrap();
    let socket = dir.join("podman.sock");
    let child = Command::new("podman")
        .args(["system", "service", "--time", "0"])
        .arg(format!("unix://{}", socket.display()))
        .env("CONTAINERS_CONF", dir.join("containers.conf"))
        .env("CONTAINERS_REGISTRIES_CONF", dir.join("registries.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("podman (scripts/test.sh installs it)");
    eventually(Duration::from_secs(30), "podman service", || {
        let socket = socket.clone();
        async move { tokio::net::UnixStream::connect(&socket).await.is_ok() }
    })
    .await;
    child
}

/// Creates the password user once per test process (the harness runs as root).
async fn ensure_password_user() {
    PASSWORD_USER_READY
        .get_or_init(|| async {
            let exists = Command::new("id")
                .arg(PASSWORD_USER)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .expect("id")
                .success();
            if !exists {
                let status = Command::new("useradd")
                    .args(["--create-home", "--shell", "/bin/sh", PASSWORD_USER])
                    .status()
                    .await
                    .expect("useradd (the test harness runs as root)");
                assert!(status.success(), "useradd {PASSWORD_USER}");
            }
            let mut chpasswd = Command::new("chpasswd")
                .stdin(Stdio::piped())
                .spawn()
                .expect("chpasswd");
            use tokio::io::AsyncWriteExt;
            chpasswd
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{PASSWORD_USER}:{PASSWORD}\n").as_bytes())
                .await
                .unwrap();
            assert!(chpasswd.wait().await.unwrap().success(), "chpasswd");
        })
        .await;
}

async fn keygen(path: &Path, kind: &str, passphrase: &str, extra: &[&str]) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-C", "berth-test", "-f"])
        .arg(path)
        .args(extra)
        .stdout(Stdio::null())
        .status()
        .await
        .expect("ssh-keygen (openssh-client)");
    assert!(status.success(), "ssh-keygen {kind}");
}

/// Every process below `roots` (not the roots themselves).
fn descendants(roots: &[u32]) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found: Vec<u32> = Vec::new();
    let mut frontier = roots.to_vec();
    while let Some(parent) = frontier.pop() {
        for (pid, _) in parents.iter().filter(|(_, ppid)| *ppid == parent) {
            if !found.contains(pid) {
                found.push(*pid);
                frontier.push(*pid);
            }
        }
    }
    found
}

/// OpenSSH listens on at most 16 addresses per process (`MAX_LISTEN_SOCKS`).
const ADDRESSES_PER_SSHD: usize = 16;

pub struct TestSshd {
    dir: PathBuf,
    /// `None` for servers without a container engine.
    podman: Option<Child>,
    children: Vec<Child>,
    pub port: u16,
    pub addresses: Vec<Ipv4Addr>,
    /// Where its podman expects a test registry (plain HTTP).
    pub registry_port: u16,
    /// Root's private key (OpenSSH format, no passphrase).
    pub key: String,
    /// Root's second key, RSA PEM protected by [`KEY_PASSPHRASE`].
    pub encrypted_key: String,
}

impl TestSshd {
    /// An sshd answering on `count` loopback addresses of a random 127.x.y.0/24,
    /// with podman behind `docker` on it.
    pub async fn start(count: u8) -> TestSshd {
        Self::start_with(count, true).await
    }

    /// [`Self::start`] without a container engine (`docker` answers that
    /// there is none): for benchmarks of Berth's side, where one podman on
    /// the same two cores answering every server's `docker ps` would be what
    /// is measured.
    pub async fn start_without_containers(count: u8) -> TestSshd {
        Self::start_with(count, false).await
    }

    async fn start_with(count: u8, containers: bool) -> TestSshd {
        ensure_password_user().await;
        let dir = scratch_dir("sshd");
        let registry_port = free_port();
        let podman = if containers {
            Some(podman_service(&dir, registry_port).await)
        } else {
            None
        };
        keygen(&dir.join("client_key"), "ed25519", "", &[]).await;
        keygen(
            &dir.join("client_key_rsa"),
            "rsa",
            KEY_PASSPHRASE,
            &["-b", "2048", "-m", "PEM"],
        )
        .await;
        let mut authorized = std::fs::read_to_string(dir.join("client_key.pub")).unwrap();
        authorized.push_str(&std::fs::read_to_string(dir.join("client_key_rsa.pub")).unwrap());
        std::fs::write(dir.join("authorized_keys"), authorized).unwrap();
        let (b, c) = (rand::random_range(1..=254u8), rand::random_range(1..=254u8));
        let addresses: Vec<Ipv4Addr> = (1..=count).map(|d| Ipv4Addr::new(127, b, c, d)).collect();
        let mut sshd = TestSshd {
            key: std::fs::read_to_string(dir.join("client_key")).unwrap(),
            encrypted_key: std::fs::read_to_string(dir.join("client_key_rsa")).unwrap(),
            dir,
            podman,
            children: Vec::new(),
            port: free_port(),
            addresses,
            registry_port,
        };
        sshd.new_host_key().await;
        sshd.resume().await;
        sshd
    }

    /// `podman` as the test servers' own `docker` runs it (their
    /// containers.conf), for a test to act as the server's owner would.
    pub fn podman(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("podman");
        command
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.join("registries.conf"),
            );
        command
    }

    /// Lets `public_key` (an `authorized_keys` line) log in as root.
    pub fn authorize(&self, public_key: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("authorized_keys"))
            .unwrap();
        writeln!(file, "{}", public_key.trim()).unwrap();
    }

    pub fn host(&self, i: usize) -> String {
        self.addresses[i].to_string()
    }

    async fn new_host_key(&self) {
        let path = self.dir.join("host_ed25519");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(path.with_extension("pub"));
        keygen(&path, "ed25519", "", &[]).await;
    }

    fn write_config(&self, part: usize, addresses: &[Ipv4Addr]) -> PathBuf {
        let d = self.dir.display();
        let listen: String = addresses
            .iter()
            .map(|a| format!("ListenAddress {a}:{}\n", self.port))
            .collect();
        let config = format!(
            "{listen}HostKey {d}/host_ed25519\nPidFile {d}/sshd-{part}.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication yes\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             AllowUsers root {PASSWORD_USER}\nStrictModes no\nUsePAM no\n\
             MaxStartups 500:30:1000\nMaxSessions 100\nLogLevel ERROR\n\
             Subsystem sftp internal-sftp\n\
             SetEnv DOCKER_HOST=unix://{d}/podman.sock CONTAINERS_CONF={d}/containers.conf\n"
        );
        let path = self.dir.join(format!("sshd_config-{part}"));
        std::fs::write(&path, config).unwrap();
        path
    }

    /// Starts (again) at the same addresses and port: one sshd per 16 addresses.
    pub async fn resume(&mut self) {
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let chunks: Vec<Vec<Ipv4Addr>> = self
            .addresses
            .chunks(ADDRESSES_PER_SSHD)
            .map(<[Ipv4Addr]>::to_vec)
            .collect();
        for (part, addresses) in chunks.iter().enumerate() {
            let config = self.write_config(part, addresses);
            let child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("/usr/sbin/sshd (openssh-server; scripts/test.sh installs it)");
            self.children.push(child);
        }
        let port = self.port;
        for addresses in chunks {
            let address = addresses[0];
            eventually(Duration::from_secs(15), "sshd listening", || async move {
                tokio::net::TcpStream::connect((address, port))
                    .await
                    .is_ok()
            })
            .await;
        }
    }

    /// The server goes down: every session it serves ends (as on a reboot or
    /// a network cut), then the listeners stop.
    pub async fn stop(&mut self) {
        self.drop_connections();
        for mut child in self.children.drain(..) {
            let _ = child.kill().await;
            let _ = child.wait().await;
        }
    }

    /// Every open session ends (their sshd processes are killed), as when the
    /// server drops idle clients or the network breaks; listeners stay.
    pub fn drop_connections(&self) {
        let masters: Vec<u32> = self.children.iter().filter_map(Child::id).collect();
        for pid in descendants(&masters) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// The server is "reinstalled": a new host key, same address.
    pub async fn change_host_key(&mut self) {
        self.stop().await;
        self.new_host_key().await;
        self.resume().await;
    }

    /// `SHA256:…` of the current host key, as `ssh-keygen -l` prints it.
    pub async fn host_key_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(self.dir.join("host_ed25519.pub"))
            .output()
            .await
            .expect("ssh-keygen -l");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .expect("a fingerprint")
            .to_owned()
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        if let Some(podman) = &mut self.podman {
            let _ = podman.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
