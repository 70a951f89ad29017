//! berth-remote against a real sshd test server: kept sessions, commands
//! side by side on one, a lost session replaced, a changed host key refused on
//! reconnect, and the typed operations (files, docker on podman, nginx, git
//! over SSH with a deploy key, HTTP checks from the server).

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_config::SecretString;
use berth_e2e::fleet::Fleet;
use berth_e2e::nginx::PrivateNginx;
use berth_e2e::{eventually, free_port, scratch_dir};
use berth_remote::ops::{self, On, OpError, docker, files, git, http, nginx};
use berth_ssh::{Arg, ShellCommand, SshError, Stream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn echo(text: &'static str) -> ShellCommand {
    ShellCommand::new("echo").raw(text)
}

const SHORT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn kept_sessions_run_channels_side_by_side_are_replaced_when_lost_and_check_the_host_key() {
    let mut fleet = Fleet::start("probe", &[]).await;
    fleet.quiet_alerts().await;
    let id: Uuid = fleet.onboard(0).await.parse().unwrap();
    let remote = fleet.remote();
    let server = remote.load(id).await.unwrap().expect("the server");
    let cancel = CancellationToken::new();

    for _ in 0..5 {
        let session = remote.session(&server).await.unwrap();
        let out = session.exec(&echo("kept"), SHORT, &cancel).await.unwrap();
        assert_eq!(out.stdout, "kept\n");
    }
    let stats = remote.stats();
    assert_eq!(
        (stats.connects, stats.reuses, stats.open),
        (1, 4, 1),
        "{stats:?}"
    );

    // Eight commands at once on one session run side by side: each marks
    // itself present and waits until all eight are, which only happens when
    // all eight channels are open together (commands taking turns would each
    // give up after 20 s and print fewer). None fails, none is replaced.
    let rendezvous = scratch_dir("side-by-side");
    let dir = Arg::path(rendezvous.to_str().unwrap()).unwrap();
    let together = ShellCommand::new("cd")
        .arg(&dir)
        .raw("&& touch \"m$$\" && i=0; while [ \"$(ls | wc -l)\" -lt 8 ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; ls | wc -l");
    let session = remote.session(&server).await.unwrap();
    let outputs = futures::future::join_all((0..8).map(|_| async {
        session
            .exec(&together, SHORT, &cancel)
            .await
            .unwrap()
            .stdout
    }))
    .await;
    assert!(
        outputs.iter().all(|o| o.trim() == "8"),
        "all eight ran at once: {outputs:?}"
    );
    assert_eq!(
        remote.stats().replaced,
        0,
        "no healthy session is replaced: {:?}",
        remote.stats()
    );

    // The server drops every session: the kept one is replaced under the
    // next command, which runs once, on the new session.
    fleet.sshd.drop_connections();
    let session = remote.session(&server).await.unwrap();
    let out = session.exec(&echo("again"), SHORT, &cancel).await.unwrap();
    assert_eq!(out.stdout, "again\n");
    let stats = remote.stats();
    assert_eq!((stats.connects, stats.replaced), (2, 1), "{stats:?}");

    // Reinstalled with a new host key: the reconnect is refused before any
    // credential is sent, and so is every new session.
    // The kept session is found closed either at checkout or under the
    // command; both reconnect, and both are refused.
    fleet.sshd.change_host_key().await;
    let err = match remote.session(&server).await {
        Ok(session) => session.exec(&echo("x"), SHORT, &cancel).await.unwrap_err(),
        Err(e) => e,
    };
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
    let err = remote.session(&server).await.err().expect("refused");
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err}");
}

/// Output lines an operation streamed.
fn collector() -> (ops::Lines, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let lines: ops::Lines = Arc::new(move |_: Stream, line: &str| {
        sink.lock().unwrap().push(line.to_owned());
    });
    (lines, seen)
}

fn path(p: &std::path::Path) -> Arg {
    Arg::path(p.to_str().unwrap()).unwrap()
}

fn mode_of(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread")]
async fn typed_operations_on_a_real_server() {
    let fleet = Fleet::start("probe", &[]).await;
    fleet.quiet_alerts().await;
    let base = berth_e2e::images::busybox().await;
    let id: Uuid = fleet.onboard(0).await.parse().unwrap();
    let remote = fleet.remote();
    let server = remote.load(id).await.unwrap().unwrap();
    let session = remote.session(&server).await.unwrap();
    let cancel = CancellationToken::new();
    let (lines, seen) = collector();
    let on = On::new(&session, &cancel).with_lines(lines);
    // The test server is this machine: what the operations did is checked
    // on its disk.
    let dir = scratch_dir("remote-ops");

    // Files: atomic writes with a mode, secrets 0600, nothing left beside.
    let app = dir.join("app");
    files::make_dir(&on, &path(&app), 0o750).await.unwrap();
    assert_eq!(mode_of(&app), 0o750);
    let page = app.join("index.html");
    files::put(&on, &path(&page), b"hello from berth\n", 0o640)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&page).unwrap(),
        "hello from berth\n"
    );
    assert_eq!(mode_of(&page), 0o640);
    assert_eq!(
        files::get(&on, &path(&page), 1024).await.unwrap(),
        b"hello from berth\n"
    );
    assert!(
        files::get(&on, &path(&page), 4).await.is_err(),
        "over the limit"
    );
    let env_file = dir.join("app.env");
    files::put_secret(&on, &path(&env_file), &SecretString::from("GREETING=hi\n"))
        .await
        .unwrap();
    assert_eq!(mode_of(&env_file), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(&app).unwrap())
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".berth-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Docker (podman behind the CLI): build with labels, run, inspect, check
    // over HTTP from the server, stop, remove, prune only what is labelled.
    std::fs::write(
        app.join("Dockerfile"),
        format!(
            "FROM {base}\nCOPY index.html /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
        ),
    )
    .unwrap();
    let deployment = format!("e2e-{}", &Uuid::new_v4().simple().to_string()[..12]);
    let label = Arg::label("berth.deployment", &deployment).unwrap();
    let tag = Arg::image(&format!("localhost/berth-e2e-app:{deployment}")).unwrap();
    docker::build(
        &on,
        &docker::Build {
            context: path(&app),
            dockerfile: None,
            tag: tag.clone(),
            labels: vec![label.clone()],
        },
        Duration::from_secs(300),
    )
    .await
    .unwrap();
    assert!(
        !seen.lock().unwrap().is_empty(),
        "the build's output streamed"
    );
    // The image: its size (pre-flight's figure) and Berth's labels on it.
    let image = docker::inspect_image(&on, &tag)
        .await
        .unwrap()
        .expect("the image");
    assert!(image.size > 0, "{image:?}");
    let image_labels = image.config.labels.unwrap_or_default();
    assert_eq!(
        image_labels.get("berth.deployment").map(String::as_str),
        Some(deployment.as_str())
    );
    let missing = Arg::image("localhost/berth-e2e-none:missing").unwrap();
    assert!(
        docker::inspect_image(&on, &missing)
            .await
            .unwrap()
            .is_none()
    );
    let name = Arg::name(&deployment).unwrap();
    let port = free_port();
    let container = docker::run(
        &on,
        &docker::Run {
            name: name.clone(),
            image: tag.clone(),
            labels: vec![label.clone()],
            env_file: Some(path(&env_file)),
            publish: vec![Arg::port_mapping([127, 0, 0, 1].into(), port, 8080)],
            memory: Some(64 * 1024 * 1024),
            cpus: Some(Arg::decimal(0.5).unwrap()),
        },
    )
    .await
    .unwrap();
    let inspected = docker::inspect(&on, &name)
        .await
        .unwrap()
        .expect("the container");
    assert!(container.starts_with(&inspected.id[..12]) || inspected.id.starts_with(&container));
    assert!(inspected.state.running, "{inspected:?}");
    let labels = inspected.config.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("berth.deployment"), Some(&deployment));
    assert_eq!(
        labels.get(docker::MANAGED_LABEL).map(String::as_str),
        Some("true")
    );
    let url = Arg::url(&format!("http://127.0.0.1:{port}/index.html")).unwrap();
    eventually(Duration::from_secs(30), "the app to answer", || async {
        http::check(&on, &url, Duration::from_secs(2))
            .await
            .unwrap()
            .status
            == Some(200)
    })
    .await;
    let closed = Arg::url(&format!("http://127.0.0.1:{}/", free_port())).unwrap();
    let refused = http::check(&on, &closed, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(refused.status, None);
    assert!(refused.error.is_some(), "{refused:?}");

    // nginx: a site installed atomically, checked, reloaded; a broken one is
    // refused with nginx's own words and the good one stays in place.
    let nginx_master = PrivateNginx::start(&dir).await;
    let nginx_conf = nginx_master.conf.clone();
    let nginx = nginx::Nginx {
        config: Some(path(&nginx_conf)),
    };
    let site = dir.join("sites/app.conf");
    let front = free_port();
    let good = format!(
        "server {{ listen 127.0.0.1:{front}; location / {{ proxy_pass http://127.0.0.1:{port}; }} }}\n"
    );
    nginx.install_site(&on, &path(&site), &good).await.unwrap();
    let through = Arg::url(&format!("http://127.0.0.1:{front}/index.html")).unwrap();
    eventually(
        Duration::from_secs(30),
        "nginx to proxy to the app",
        || async {
            http::check(&on, &through, Duration::from_secs(2))
                .await
                .unwrap()
                .status
                == Some(200)
        },
    )
    .await;
    let err = nginx
        .install_site(&on, &path(&site), "server { listen ")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            OpError::Failed {
                what: "nginx -t",
                ..
            }
        ) && err.to_string().contains("unexpected end of file"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&site).unwrap(),
        good,
        "the good site was put back"
    );
    assert_eq!(
        http::check(&on, &through, Duration::from_secs(2))
            .await
            .unwrap()
            .status,
        Some(200)
    );

    docker::stop(&on, &name, Duration::from_secs(1))
        .await
        .unwrap();
    let stopped = docker::inspect(&on, &name).await.unwrap().unwrap();
    assert!(!stopped.state.running, "{stopped:?}");
    docker::remove(&on, &name).await.unwrap();
    assert!(docker::inspect(&on, &name).await.unwrap().is_none());
    docker::remove(&on, &name)
        .await
        .expect("removing twice is fine");
    // The image, and any intermediate layer image the build kept with the label.
    assert!(docker::prune_images(&on, &label).await.unwrap() >= 1);
    let exists = |image: String| async move {
        tokio::process::Command::new("podman")
            .args(["image", "exists", &image])
            .status()
            .await
            .unwrap()
            .success()
    };
    assert!(
        !exists(tag.as_str().to_owned()).await,
        "the labelled image was pruned"
    );
    assert!(exists(base.to_owned()).await, "an unlabelled image was not");

    // git: a private repository over SSH, read with a deploy key that goes
    // through an agent fed on stdin; a wrong ref fails with git's words.
    let (url, commit) = bare_repository(&dir, &fleet).await;
    let checkout = dir.join("checkout");
    let clone = |reference: &str, access: git::Access| git::Clone {
        url: Arg::url(&url).unwrap(),
        reference: Arg::git_ref(reference).unwrap(),
        dest: path(&checkout),
        known_hosts: path(&dir.join("known hosts")),
        access,
    };
    let key = || git::Access::DeployKey(SecretString::from(fleet.sshd.key.clone()));
    let cloned = git::clone(&on, &clone("main", key()), Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(cloned, commit);
    assert_eq!(
        std::fs::read_to_string(checkout.join("README")).unwrap(),
        "first\n"
    );
    let on_disk = std::process::Command::new("grep")
        .args(["-rl", "PRIVATE KEY"])
        .arg(&checkout)
        .output()
        .unwrap();
    assert!(
        on_disk.stdout.is_empty(),
        "the deploy key never reached the disk"
    );
    let err = git::clone(
        &on,
        &clone("no-such-branch", key()),
        Duration::from_secs(120),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            OpError::Failed {
                what: "git clone",
                ..
            }
        ),
        "{err}"
    );
    let err = git::clone(
        &on,
        &clone("main", git::Access::Anonymous),
        Duration::from_secs(120),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("Permission denied"),
        "without the key: {err}"
    );

    let _ = std::fs::remove_dir_all(&dir);
}

/// A bare repository with one commit on `main`, reachable over SSH at the
/// test server; answers its URL and the commit.
async fn bare_repository(dir: &std::path::Path, fleet: &Fleet) -> (String, String) {
    let bare = dir.join("repo.git");
    let work = dir.join("work");
    let git = berth_e2e::deploy::git;
    std::fs::create_dir_all(&work).unwrap();
    git(&["init", "-q", "--bare", bare.to_str().unwrap()], dir);
    git(&["init", "-q", "-b", "main"], &work);
    std::fs::write(work.join("README"), "first\n").unwrap();
    git(&["add", "README"], &work);
    git(&["commit", "-q", "-m", "first"], &work);
    git(&["push", "-q", bare.to_str().unwrap(), "main"], &work);
    let commit = git(&["rev-parse", "HEAD"], &work);
    let url = format!(
        "ssh://root@{}:{}{}",
        fleet.sshd.host(0),
        fleet.sshd.port,
        bare.display()
    );
    (url, commit)
}
