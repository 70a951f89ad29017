//! Compress and decompress on a real sshd test server, and the hostile
//! archive set: each is refused whole with nothing written anywhere. The
//! fixtures are built in scratch directories by Python's `zipfile` and
//! `tarfile`, which write any name and any link they are given (and C zlib
//! makes the 1 GiB bomb in a second or two).

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use berth_e2e::fleet::Fleet;
use berth_e2e::scratch_dir;
use reqwest::Method;
use serde_json::json;

use super::{Files, file_audit};

/// Runs a Python script with `dir` as its first argument.
fn python(script: &str, dir: &Path) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const HOSTILE: &str = r#"
import io, sys, tarfile, zipfile
d = sys.argv[1]

def tgz(name, *entries):
    with tarfile.open(f"{d}/{name}", "w:gz") as t:
        good = tarfile.TarInfo("good.txt"); good.size = 2
        t.addfile(good, io.BytesIO(b"ok"))
        for e in entries:
            t.addfile(e, io.BytesIO(b"x" * e.size) if e.size else None)

def entry(name, kind=tarfile.REGTYPE, link=""):
    e = tarfile.TarInfo(name); e.type = kind; e.linkname = link
    e.size = 1 if kind == tarfile.REGTYPE else 0
    return e

tgz("dotdot.tar.gz", entry("../x"))
tgz("absolute.tar.gz", entry("/etc/berth-x"))
tgz("symlink.tar.gz", entry("passwd", tarfile.SYMTYPE, "/etc/passwd"))
tgz("symlink-up.tar.gz", entry("up", tarfile.SYMTYPE, "../../x"))
tgz("hardlink.tar.gz", entry("passwd", tarfile.LNKTYPE, "/etc/passwd"))
tgz("through-link.tar.gz", entry("dir", tarfile.SYMTYPE, "/tmp"), entry("dir/x"))
with zipfile.ZipFile(f"{d}/dotdot.zip", "w") as z:
    z.writestr("good.txt", "ok")
    z.writestr(zipfile.ZipInfo("../x"), "x")
with zipfile.ZipFile(f"{d}/bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("good.txt", "ok")
    with z.open("bomb.bin", "w", force_zip64=True) as f:
        zeros = bytes(1 << 20)
        for _ in range(1024):
            f.write(zeros)
"#;

async fn decompress(
    files: &Files<'_>,
    token: &str,
    archive: impl std::fmt::Display,
    dest: impl std::fmt::Display,
) -> (u16, serde_json::Value) {
    files
        .send(
            token,
            Method::POST,
            "decompress",
            json!({ "zipFilePath": archive.to_string(), "destDir": dest.to_string() }),
        )
        .await
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn archives_round_trip_and_hostile_ones_are_refused_with_nothing_written() {
    let fleet = Fleet::start("probe", &[("BERTH_FILES_ARCHIVE_MAX_BYTES", "67108864")]).await;
    let server = fleet.onboard(0).await;
    let files = Files {
        fleet: &fleet,
        server: server.clone(),
    };
    let me = &fleet.token;
    let passwd_before = std::fs::read("/etc/passwd").unwrap();
    let scratch = scratch_dir("files-archives");
    let root = scratch.join("work");
    std::fs::create_dir_all(root.join("site/assets")).unwrap();
    std::fs::write(root.join("site/index.html"), "<h1>hi</h1>").unwrap();
    std::fs::write(root.join("site/assets/app.js"), "x".repeat(200_000)).unwrap();
    std::fs::write(root.join("site/run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        root.join("site/run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    symlink("index.html", root.join("site/home.html")).unwrap();
    symlink("/etc/passwd", root.join("passwd-link")).unwrap();
    let dir = root.display().to_string();
    let at = |name: &str| format!("{dir}/{name}");

    // Compress: links are stored as links, never followed.
    let (status, body) = files
        .send(
            me,
            Method::POST,
            "compress",
            json!({ "parentDir": dir, "paths": ["site", at("site/index.html")], "archiveName": "site.zip" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["path"], at("site.zip"));
    assert_eq!(
        (
            &body["data"]["files"],
            &body["data"]["directories"],
            &body["data"]["links"]
        ),
        (&json!(3), &json!(2), &json!(1)),
        "{body}"
    );
    // The link out goes in as a link, not as /etc/passwd's bytes; such an
    // archive is Berth's own to write, and still refused on the way back.
    let (status, body) = files
        .send(
            me,
            Method::POST,
            "compress",
            json!({ "parentDir": dir, "paths": [at("passwd-link")], "archiveName": "link.zip" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["data"]["size"].as_u64().unwrap() < 1000, "{body}");
    for (request, want) in [
        (
            json!({ "parentDir": dir, "paths": ["site"], "archiveName": "site.zip" }),
            409,
        ),
        (
            json!({ "parentDir": dir, "paths": ["site"], "archiveName": "site.tar" }),
            400,
        ),
        (
            json!({ "parentDir": dir, "paths": ["../.."], "archiveName": "a.zip" }),
            400,
        ),
        (
            json!({ "parentDir": dir, "paths": ["/etc"], "archiveName": "a.zip" }),
            400,
        ),
        (
            json!({ "parentDir": dir, "paths": [], "archiveName": "a.zip" }),
            400,
        ),
        (
            json!({ "parentDir": dir, "paths": ["missing"], "archiveName": "a.zip" }),
            404,
        ),
    ] {
        let (status, body) = files
            .send(me, Method::POST, "compress", request.clone())
            .await;
        assert_eq!(status, want, "{request}: {body}");
    }

    // Decompress it elsewhere: the same tree, links as links, modes kept.
    std::fs::create_dir(root.join("out")).unwrap();
    let (status, body) = decompress(&files, me, at("site.zip"), at("out")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["unpackedBytes"], 200_000 + 11 + 10, "{body}");
    let out = root.join("out");
    assert_eq!(
        std::fs::read_to_string(out.join("site/assets/app.js"))
            .unwrap()
            .len(),
        200_000
    );
    assert_eq!(
        std::fs::read_link(out.join("site/home.html")).unwrap(),
        Path::new("index.html")
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join("site/run.sh"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o755);

    // Into the same place again: every entry is there, nothing replaced.
    std::fs::write(out.join("site/index.html"), "changed").unwrap();
    let (status, body) = decompress(&files, me, at("site.zip"), at("out")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        std::fs::read_to_string(out.join("site/index.html")).unwrap(),
        "changed"
    );

    // A destination that is a link, or holds one on the way: refused.
    symlink(root.join("out"), root.join("out-link")).unwrap();
    let (status, body) = decompress(&files, me, at("site.zip"), at("out-link")).await;
    assert_eq!(status, 409, "{body}");
    std::fs::create_dir(root.join("out2")).unwrap();
    let elsewhere = scratch.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    symlink(&elsewhere, root.join("out2/site")).unwrap();
    let (status, body) = decompress(&files, me, at("site.zip"), at("out2")).await;
    assert_eq!(status, 409, "{body}");
    assert!(entries(&elsewhere).is_empty(), "written through the link");
    assert_eq!(entries(&root.join("out2")), ["site"]);

    // A client that gives up does not stop an extraction half done: it
    // runs to its end and is audited.
    python(
        "import os, sys, zipfile\n\
         with zipfile.ZipFile(sys.argv[1] + '/honest-large.zip', 'w') as z:\n\
         \x20   z.writestr('data.bin', os.urandom(40 << 20))\n\
         \x20   z.writestr('last.txt', 'done')\n",
        &root,
    );
    std::fs::create_dir(root.join("out3")).unwrap();
    let given_up = fleet
        .stack
        .app
        .client
        .post(
            fleet
                .stack
                .app
                .url(&format!("/api/v1/files/{server}/decompress")),
        )
        .bearer_auth(me)
        .json(&json!({ "zipFilePath": at("honest-large.zip"), "destDir": at("out3") }))
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(given_up.is_err(), "answered within 300 ms: {given_up:?}");
    let last = root.join("out3/last.txt");
    berth_e2e::eventually(
        std::time::Duration::from_secs(60),
        "the extraction to finish",
        || async { std::fs::read_to_string(&last).is_ok_and(|t| t == "done") },
    )
    .await;
    assert_eq!(
        std::fs::metadata(root.join("out3/data.bin")).unwrap().len(),
        40 << 20
    );

    // The hostile set, each into an empty directory of its own.
    let hostile = scratch.join("hostile");
    std::fs::create_dir(&hostile).unwrap();
    python(HOSTILE, &hostile);
    for name in [
        "dotdot.tar.gz",
        "absolute.tar.gz",
        "symlink.tar.gz",
        "symlink-up.tar.gz",
        "hardlink.tar.gz",
        "through-link.tar.gz",
        "dotdot.zip",
        "bomb.zip",
        "link.zip",
    ] {
        let dest = scratch.join(format!("dest-{name}"));
        std::fs::create_dir(&dest).unwrap();
        let archive = match name {
            "link.zip" => root.join(name),
            _ => hostile.join(name),
        };
        let (status, body) = decompress(&files, me, archive.display(), dest.display()).await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(
            body["error"]["details"][0]["field"], "zipFilePath",
            "{name}: {body}"
        );
        assert!(
            entries(&dest).is_empty(),
            "{name} wrote {:?}",
            entries(&dest)
        );
    }
    assert!(!scratch.join("x").exists() && !Path::new("/etc/berth-x").exists());
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd_before);

    // Not an archive, not a file, not there, larger than the limit.
    std::fs::write(root.join("plain.zip"), "not a zip").unwrap();
    std::fs::write(root.join("large.zip"), vec![0u8; 67_108_865]).unwrap();
    for (archive, want) in [
        (at("plain.zip"), 400),
        (at("site"), 409),
        (at("missing.zip"), 404),
        (at("large.zip"), 413),
    ] {
        let (status, body) = decompress(&files, me, &archive, at("out2")).await;
        assert_eq!(status, want, "{archive}: {body}");
    }

    let actions: Vec<String> = file_audit(&fleet, &server)
        .await
        .into_iter()
        .map(|(action, _)| action)
        .collect();
    assert_eq!(
        actions,
        [
            "file.compress",
            "file.compress",
            "file.decompress",
            "file.decompress"
        ]
    );
}
