//! The SSH layer (`berth-ssh`) against real OpenSSH servers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_config::SecretString;
use berth_e2e::processes_running;
use berth_e2e::ssh_servers::{KEY_PASSPHRASE, PASSWORD, PASSWORD_USER, TestSshd};
use berth_ssh::{AddressPolicy, Arg, Auth, Limits, ShellCommand, SshError, Stream, Target};
use tokio_util::sync::CancellationToken;

fn key_target(sshd: &TestSshd, i: usize) -> Target {
    Target {
        host: sshd.host(i),
        port: sshd.port,
        username: "root".into(),
        auth: Auth::Key {
            private_key: SecretString::from(sshd.key.clone()),
            passphrase: None,
        },
        pinned_host_key: None,
    }
}

const LONG: Duration = Duration::from_secs(30);

/// A token nobody cancels.
fn never() -> CancellationToken {
    CancellationToken::new()
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_and_timeout_kill_the_remote_process_group_and_nothing_else() {
    let sshd = TestSshd::start(1).await;
    let connect = || async {
        berth_ssh::connect(
            &key_target(&sshd, 0),
            &AddressPolicy::default(),
            Limits::default(),
        )
        .await
        .unwrap()
    };
    let (mine, sibling) = (connect().await, connect().await);
    // Distinct durations tell the processes apart; the child of a child shows
    // the whole group is killed, not only the shell.
    let cancel = CancellationToken::new();
    let stopped = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            mine.exec(
                &ShellCommand::new("sh -c 'sleep 611' & sleep 610; wait"),
                LONG,
                &cancel,
            )
            .await
        }
    });
    let sibling_cancel = CancellationToken::new();
    let other = tokio::spawn({
        let cancel = sibling_cancel.clone();
        async move {
            sibling
                .exec(&ShellCommand::new("sleep 612"), LONG, &cancel)
                .await
        }
    });
    berth_e2e::eventually(Duration::from_secs(10), "the commands to start", || async {
        ["sleep 610", "sleep 611", "sleep 612"]
            .iter()
            .all(|c| processes_running(c) == 1)
    })
    .await;
    let asked = std::time::Instant::now();
    cancel.cancel();
    let err = stopped.await.unwrap().expect_err("the command was stopped");
    assert_eq!(err.code(), "CANCELLED", "{err}");
    berth_e2e::eventually(
        Duration::from_secs(5),
        "the cancelled group to be gone",
        || async { processes_running("sleep 610") == 0 && processes_running("sleep 611") == 0 },
    )
    .await;
    println!("cancel to gone: {:?}", asked.elapsed());
    assert_eq!(processes_running("sleep 612"), 1, "the sibling was touched");
    assert!(!other.is_finished());

    // A deadline does the same.
    let timed = connect().await;
    let err = timed
        .exec(
            &ShellCommand::new("sleep 613"),
            Duration::from_millis(800),
            &never(),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "TIMEOUT");
    berth_e2e::eventually(
        Duration::from_secs(5),
        "the timed-out command to be gone",
        || async { processes_running("sleep 613") == 0 },
    )
    .await;
    assert_eq!(processes_running("sleep 612"), 1);

    // A command nobody waits for any more (its task aborted) is stopped too.
    let abandoned = tokio::spawn(async move {
        timed
            .exec(&ShellCommand::new("sleep 614"), LONG, &never())
            .await
    });
    berth_e2e::eventually(Duration::from_secs(10), "the command to start", || async {
        processes_running("sleep 614") == 1
    })
    .await;
    abandoned.abort();
    berth_e2e::eventually(
        Duration::from_secs(10),
        "the abandoned command to be gone",
        || async { processes_running("sleep 614") == 0 },
    )
    .await;
    assert_eq!(processes_running("sleep 612"), 1);

    // Cancelled at once, before its process group is known: nothing is
    // left running either.
    let early = CancellationToken::new();
    early.cancel();
    let err = connect()
        .await
        .exec(&ShellCommand::new("sleep 615"), LONG, &early)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CANCELLED", "{err}");
    berth_e2e::eventually(
        Duration::from_secs(10),
        "the command cancelled at once to be gone",
        || async { processes_running("sleep 615") == 0 },
    )
    .await;

    // The sibling is stopped the same way, so no test leaves it behind.
    sibling_cancel.cancel();
    assert_eq!(other.await.unwrap().unwrap_err().code(), "CANCELLED");
    berth_e2e::eventually(Duration::from_secs(5), "the sibling to be gone", || async {
        processes_running("sleep 612") == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn key_password_and_passphrase_logins_and_commands() {
    let sshd = TestSshd::start(2).await;
    let policy = AddressPolicy::default();
    let conn = berth_ssh::connect(&key_target(&sshd, 0), &policy, Limits::default())
        .await
        .unwrap();
    assert_eq!(conn.host_key(), sshd.host_key_fingerprint().await);

    let out = conn
        .exec(
            &ShellCommand::new("echo out; echo err >&2; exit 3"),
            LONG,
            &never(),
        )
        .await
        .unwrap();
    assert_eq!(
        (out.exit_status, out.stdout.as_str(), out.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    let who = conn
        .exec(&ShellCommand::new("id -un"), LONG, &never())
        .await
        .unwrap();
    assert_eq!(who.stdout.trim(), "root");

    // An encrypted RSA key with its passphrase; the second address is another "server".
    let mut target = key_target(&sshd, 1);
    target.auth = Auth::Key {
        private_key: SecretString::from(sshd.encrypted_key.clone()),
        passphrase: Some(SecretString::from(KEY_PASSPHRASE.to_owned())),
    };
    let conn2 = berth_ssh::connect(&target, &policy, Limits::default())
        .await
        .unwrap();
    assert_eq!(conn2.address().ip().to_string(), sshd.host(1));

    let password = Target {
        username: PASSWORD_USER.into(),
        auth: Auth::Password(SecretString::from(PASSWORD.to_owned())),
        ..key_target(&sshd, 0)
    };
    let conn3 = berth_ssh::connect(&password, &policy, Limits::default())
        .await
        .unwrap();
    let who = conn3
        .exec(&ShellCommand::new("id -un"), LONG, &never())
        .await
        .unwrap();
    assert_eq!(who.stdout.trim(), PASSWORD_USER);

    let wrong = Target {
        auth: Auth::Password(SecretString::from("not the password".to_owned())),
        ..password.clone()
    };
    let err = berth_ssh::connect(&wrong, &policy, Limits::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "AUTH_FAILED", "{err}");
    assert!(!err.is_transient());
    let mut wrong_passphrase = target.clone();
    wrong_passphrase.auth = Auth::Key {
        private_key: SecretString::from(sshd.encrypted_key.clone()),
        passphrase: Some(SecretString::from("nope".to_owned())),
    };
    let err = berth_ssh::connect(&wrong_passphrase, &policy, Limits::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "AUTH_FAILED", "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn output_streams_line_by_line_and_deadlines_hold() {
    let sshd = TestSshd::start(1).await;
    let conn = berth_ssh::connect(
        &key_target(&sshd, 0),
        &AddressPolicy::default(),
        Limits::default(),
    )
    .await
    .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    let out = conn
        .exec_streaming(
            &ShellCommand::new("for i in 1 2 3; do echo line $i; sleep 0.2; done; echo oops >&2"),
            LONG,
            &never(),
            move |stream, line| seen.lock().unwrap().push((stream, line.to_owned())),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_status, 0);
    assert_eq!(
        *lines.lock().unwrap(),
        vec![
            (Stream::Stdout, "line 1".to_owned()),
            (Stream::Stdout, "line 2".to_owned()),
            (Stream::Stdout, "line 3".to_owned()),
            (Stream::Stderr, "oops".to_owned()),
        ]
    );
    // Lots of stderr while stdout is quiet does not stall.
    let out = conn
        .exec(
            &ShellCommand::new("head -c 300000 /dev/zero | tr '\\0' x >&2; echo done"),
            LONG,
            &never(),
        )
        .await
        .unwrap();
    assert_eq!((out.stderr.len(), out.stdout.as_str()), (300_000, "done\n"));

    let err = conn
        .exec(
            &ShellCommand::new("sleep 5"),
            Duration::from_millis(500),
            &never(),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "TIMEOUT", "{err}");
    // The connection still works after a timed-out command.
    let again = berth_ssh::connect(
        &key_target(&sshd, 0),
        &AddressPolicy::default(),
        Limits::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        again
            .exec(&ShellCommand::new("echo ok"), LONG, &never())
            .await
            .unwrap()
            .stdout,
        "ok\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sftp_upload_and_download() {
    let sshd = TestSshd::start(1).await;
    let conn = berth_ssh::connect(
        &key_target(&sshd, 0),
        &AddressPolicy::default(),
        Limits::default(),
    )
    .await
    .unwrap();
    let dir = format!("/tmp/berth-sftp-{:08x}", rand::random::<u32>());
    conn.exec(
        &ShellCommand::new("mkdir -p").arg(&Arg::path(&dir).unwrap()),
        LONG,
        &never(),
    )
    .await
    .unwrap();
    let path = Arg::path(&format!("{dir}/my file.txt")).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    conn.upload(data.clone(), &path, 0o600).await.unwrap();
    let mode = conn
        .exec(&ShellCommand::new("stat -c %a").arg(&path), LONG, &never())
        .await
        .unwrap();
    assert_eq!(mode.stdout.trim(), "600");
    assert_eq!(conn.download(&path, 1 << 20).await.unwrap(), data);
    let err = conn.download(&path, 1000).await.err().unwrap();
    assert!(err.to_string().contains("more than"), "{err}");
    conn.exec(
        &ShellCommand::new("rm -rf").arg(&Arg::path(&dir).unwrap()),
        LONG,
        &never(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_host_key_is_refused_before_authenticating() {
    let mut sshd = TestSshd::start(1).await;
    let policy = AddressPolicy::default();
    let first = berth_ssh::connect(&key_target(&sshd, 0), &policy, Limits::default())
        .await
        .unwrap();
    let pinned = Target {
        pinned_host_key: Some(first.host_key().to_owned()),
        ..key_target(&sshd, 0)
    };
    berth_ssh::connect(&pinned, &policy, Limits::default())
        .await
        .unwrap();
    sshd.change_host_key().await;
    let err = berth_ssh::connect(&pinned, &policy, Limits::default())
        .await
        .err()
        .unwrap();
    match &err {
        SshError::HostKeyMismatch { expected, actual } => {
            assert_eq!(expected, first.host_key());
            assert_eq!(*actual, sshd.host_key_fingerprint().await);
        }
        other => panic!("expected a mismatch, got {other}"),
    }
    assert_eq!(err.code(), "HOST_KEY_MISMATCH");
    assert!(!err.is_transient());
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_unreachable_and_malformed_targets() {
    let sshd = TestSshd::start(1).await;
    let policy = AddressPolicy::default();
    let mut target = key_target(&sshd, 0);
    target.host = "169.254.169.254".into();
    let err = berth_ssh::connect(&target, &policy, Limits::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "ADDRESS_DENIED", "{err}");

    let strict = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
    let err = berth_ssh::connect(&key_target(&sshd, 0), &strict, Limits::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "ADDRESS_DENIED", "{err}");

    let mut closed = key_target(&sshd, 0);
    closed.port = berth_e2e::free_port();
    let err = berth_ssh::connect(&closed, &policy, Limits::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "UNREACHABLE", "{err}");
    assert!(err.is_transient());

    for (host, user) in [
        ("127.0.0.1;id", "root"),
        ("127.0.0.1", "root;id"),
        ("$(id)", "root"),
    ] {
        let target = Target {
            host: host.into(),
            username: user.into(),
            ..key_target(&sshd, 0)
        };
        let err = berth_ssh::connect(&target, &policy, Limits::default())
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), "ADDRESS_DENIED", "{host} {user}: {err}");
    }
}
