//! A fetched source read on a real sshd test server (`ops::source::facts`),
//! then detected and pre-flighted by `berth-build`: what a deploy's
//! pre-flight step and `GET /deployments/{id}/preflight` work from.

use berth_build::{BuildSettings, Stack, detect, preflight};
use berth_e2e::fleet::Fleet;
use berth_e2e::scratch_dir;
use berth_remote::ops::{On, OpError, source};
use berth_ssh::Arg;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread")]
async fn a_source_is_read_detected_and_preflighted() {
    let fleet = Fleet::start("probe", &[]).await;
    let id: uuid::Uuid = fleet.onboard(0).await.parse().unwrap();
    let remote = fleet.remote();
    let server = remote.load(id).await.unwrap().unwrap();
    let session = remote.session(&server).await.unwrap();
    let cancel = CancellationToken::new();
    let on = On::new(&session, &cancel);

    // A Node app with its dependencies and a .env committed by mistake, a
    // Dockerfile off the default path, and a Procfile too large to read.
    let dir = scratch_dir("source facts");
    std::fs::write(
        dir.join("package.json"),
        r#"{"scripts": {"start": "node server.js"}}"#,
    )
    .unwrap();
    std::fs::write(dir.join("package-lock.json"), "{}").unwrap();
    std::fs::write(dir.join("server.js"), "require('http')").unwrap();
    std::fs::write(dir.join(".env"), "SECRET=x\n").unwrap();
    std::fs::write(dir.join("Procfile"), "x".repeat(70 * 1024)).unwrap();
    std::fs::create_dir_all(dir.join("node_modules/left-pad")).unwrap();
    std::fs::write(dir.join("node_modules/left-pad/index.js"), "").unwrap();
    std::fs::create_dir_all(dir.join("deploy")).unwrap();
    std::fs::write(dir.join("deploy/Dockerfile"), "FROM x\nEXPOSE 8080\n").unwrap();
    let root = Arg::path(dir.to_str().unwrap()).unwrap();

    let facts = source::facts(&on, &root, None).await.unwrap();
    assert!(
        facts
            .read("package.json")
            .unwrap()
            .contains("node server.js")
    );
    for present in [
        "package-lock.json",
        "server.js",
        ".env",
        "node_modules",
        "Procfile",
    ] {
        assert!(facts.has(present), "{present}: {facts:?}");
    }
    assert!(facts.read("Procfile").is_none(), "too large to read");
    assert_eq!(facts.file_count, 7);
    assert!(facts.total_bytes >= 70 * 1024, "{facts:?}");
    let settings = BuildSettings {
        port: 3000,
        ..Default::default()
    };
    let found = detect(&facts, &settings);
    assert!(
        matches!(found.stack, Stack::Node { locked: true, start: Some(ref s), .. } if s == "npm run start"),
        "{found:?}"
    );
    let report = preflight::report(&facts, &found, &settings, &preflight::Context::default());
    let codes: Vec<&str> = report.issues.iter().map(|i| i.code).collect();
    assert_eq!(codes, ["NODE_MODULES_IN_SOURCE", "ENV_FILE_IN_SOURCE"]);

    // The Dockerfile where the deployment says it is wins.
    let facts = source::facts(&on, &root, Some("deploy/Dockerfile"))
        .await
        .unwrap();
    let settings = BuildSettings {
        dockerfile_path: Some("deploy/Dockerfile".into()),
        ..settings
    };
    let found = detect(&facts, &settings);
    assert_eq!(
        found.stack,
        Stack::Dockerfile {
            path: "deploy/Dockerfile".into(),
            exposes: vec![8080]
        }
    );
    let report = preflight::report(&facts, &found, &settings, &preflight::Context::default());
    assert_eq!(report.issues[0].code, "PORT_MISMATCH");

    // A path out of the source is refused before anything runs.
    let err = source::facts(&on, &root, Some("../etc/passwd"))
        .await
        .unwrap_err();
    assert!(matches!(err, OpError::Refused(_)), "{err}");
}
