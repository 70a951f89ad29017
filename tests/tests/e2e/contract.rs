//! SPEC §2 "the contract matches the answers": schemathesis (from PyPI,
//! installed by `scripts/test.sh`) drives the live api from its own OpenAPI
//! document with every check (`tests/schemathesis/schemathesis.toml` lists
//! the few exceptions and why) and must find nothing.

use std::process::Stdio;

use berth_e2e::accounts::{NewUser, Stack, access_token, create_user};

/// Fixed, so a run in CI is repeatable; set `BERTH_SCHEMATHESIS_SEED` to explore.
const SEED: &str = "20261201";

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_failure() {
    let schemathesis = std::env::var("BERTH_SCHEMATHESIS").expect(
        "BERTH_SCHEMATHESIS is not set: run the suite with scripts/test.sh, which installs schemathesis",
    );
    let stack = Stack::start(&[]).await;
    create_user(
        &stack.db,
        NewUser {
            role: "super_admin",
            ..NewUser::verified("contract@example.test")
        },
    )
    .await;
    let token = access_token(&stack.app, "contract@example.test").await;
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemathesis/schemathesis.toml"
    );
    let seed = std::env::var("BERTH_SCHEMATHESIS_SEED").unwrap_or_else(|_| SEED.to_owned());
    // Its own working directory: schemathesis keeps a hypothesis database there.
    let work = berth_e2e::scratch_dir("schemathesis");
    let out = tokio::process::Command::new(&schemathesis)
        .current_dir(&work)
        .args(["--config-file", config, "run"])
        .arg(stack.app.url("/api/v1/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", "40", "--seed", &seed, "--workers", "1"])
        .args([
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--no-color",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {schemathesis}: {e}"));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures (seed {seed}):\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("Tested:"), "no operation tested:\n{report}");
}
