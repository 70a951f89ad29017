//! Search, download, copy and upload on a real sshd test server.

use std::os::unix::fs::symlink;

use berth_e2e::fleet::Fleet;
use berth_e2e::scratch_dir;
use reqwest::Method;
use serde_json::{Value, json};

use super::{Files, file_audit};

fn found(body: &Value) -> Vec<String> {
    let mut paths: Vec<String> = body["data"]["matches"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|m| m["path"].as_str().unwrap().to_owned())
        .collect();
    paths.sort();
    paths
}

#[tokio::test]
async fn search_download_copy_and_upload_within_their_limits() {
    let fleet = Fleet::start(
        "probe",
        &[
            ("BERTH_FILES_DOWNLOAD_MAX_BYTES", "150000"),
            ("BERTH_FILES_UPLOAD_MAX_BYTES", "120000"),
        ],
    )
    .await;
    let server = fleet.onboard(0).await;
    let files = Files {
        fleet: &fleet,
        server: server.clone(),
    };
    let me = &fleet.token;
    let root = scratch_dir("files-transfer").join("tree");
    std::fs::create_dir_all(root.join("logs/old/older")).unwrap();
    std::fs::write(root.join("logs/App.log"), "a").unwrap();
    std::fs::write(root.join("logs/old/app-1.log"), "b").unwrap();
    std::fs::write(root.join("logs/old/older/app-0.log"), "c").unwrap();
    std::fs::write(root.join("notes.txt"), "notes").unwrap();
    // A loop (a link to its own directory) and a link out of the tree.
    symlink(".", root.join("logs/loop")).unwrap();
    symlink("/etc", root.join("etc-link")).unwrap();
    let big: Vec<u8> = (0..140_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    std::fs::write(root.join("huge.bin"), vec![7u8; 160_000]).unwrap();
    let dir = root.display().to_string();
    let at = |name: &str| format!("{dir}/{name}");

    // Search: by part and extension in any case, links matched by name and
    // never entered (the loop ends; nothing under /etc is found).
    let (status, body) = files
        .get_query(me, "search", &[("path", &dir), ("extension", "LOG")])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        found(&body),
        [
            at("logs/App.log"),
            at("logs/old/app-1.log"),
            at("logs/old/older/app-0.log")
        ]
    );
    assert_eq!(body["data"]["truncated"], false, "{body}");
    let (_, body) = files
        .get_query(me, "search", &[("path", &dir), ("query", "loop")])
        .await;
    assert_eq!(found(&body), [at("logs/loop")]);
    assert_eq!(body["data"]["matches"][0]["type"], "symlink");
    let (_, body) = files
        .get_query(me, "search", &[("path", &dir), ("query", "passwd")])
        .await;
    assert_eq!(
        found(&body),
        Vec::<String>::new(),
        "a link was followed: {body}"
    );
    let (_, body) = files
        .get_query(
            me,
            "search",
            &[("path", &dir), ("query", "app"), ("maxDepth", "2")],
        )
        .await;
    assert_eq!(found(&body), [at("logs/App.log")]);
    assert_eq!(body["data"]["truncated"], true, "{body}");
    let (_, body) = files
        .get_query(
            me,
            "search",
            &[("path", &dir), ("query", "app"), ("limit", "1")],
        )
        .await;
    assert_eq!(body["data"]["matches"].as_array().unwrap().len(), 1);
    assert_eq!(body["data"]["truncated"], true);
    for (pairs, want) in [
        (vec![("path", dir.as_str())], 400),
        (
            vec![("path", dir.as_str()), ("query", "a"), ("maxDepth", "0")],
            400,
        ),
        (
            vec![("path", dir.as_str()), ("query", "a"), ("limit", "5000")],
            400,
        ),
        (vec![("path", "rel"), ("query", "a")], 400),
        (vec![("path", &at("missing")), ("query", "a")], 404),
        (vec![("path", &at("notes.txt")), ("query", "a")], 409),
    ] {
        let (status, body) = files.get_query(me, "search", &pairs).await;
        assert_eq!(status, want, "{pairs:?}: {body}");
    }

    // Download: streamed in full past one SFTP read, named, and limited.
    let app = &fleet.stack.app;
    let res = app
        .client
        .get(files.url("download", &[("path", &at("big.bin"))]))
        .bearer_auth(me)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-disposition"],
        "attachment; filename*=UTF-8''big.bin"
    );
    assert_eq!(res.headers()["content-length"], "140000");
    assert_eq!(res.bytes().await.unwrap().as_ref(), big.as_slice());
    for (path, want) in [
        (at("huge.bin"), 413),
        (at("logs"), 409),
        (at("missing"), 404),
    ] {
        let (status, body) = files.get(me, "download", &path).await;
        assert_eq!(status, want, "{path}: {body}");
        assert_eq!(body["success"], false);
    }

    // Copy: a tree with its links as links; nothing replaced, never into itself.
    let (status, body) = files
        .send(
            me,
            Method::PUT,
            "copy",
            json!({ "srcPath": at("logs"), "dstPath": at("logs-copy") }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read_to_string(root.join("logs-copy/old/older/app-0.log")).unwrap(),
        "c"
    );
    assert_eq!(
        std::fs::read_link(root.join("logs-copy/loop")).unwrap(),
        std::path::Path::new(".")
    );
    for (src, dst, want) in [
        (at("notes.txt"), at("logs-copy"), 409),
        (at("logs"), at("logs/inside"), 400),
        (at("missing"), at("elsewhere"), 404),
        (at("notes.txt"), at("no-such-dir/notes.txt"), 404),
        (at("notes.txt"), format!("{dir}/it's"), 400),
    ] {
        let (status, body) = files
            .send(
                me,
                Method::PUT,
                "copy",
                json!({ "srcPath": src, "dstPath": dst }),
            )
            .await;
        assert_eq!(status, want, "{src} → {dst}: {body}");
    }

    // Upload: multipart, whole or not at all, nothing replaced, limited.
    let upload = |name: &str, bytes: Vec<u8>, into: &str| {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
        app.client
            .post(files.url("upload", &[("path", into)]))
            .bearer_auth(me)
            .multipart(form)
            .send()
    };
    let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 13) as u8).collect();
    let res = upload("up.bin", sent.clone(), &dir).await.unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["data"],
        json!({ "path": at("up.bin"), "size": 100_000 })
    );
    assert_eq!(std::fs::read(root.join("up.bin")).unwrap(), sent);
    for (name, bytes, into, want) in [
        ("up.bin", vec![1u8], dir.clone(), 409),
        ("too-big.bin", vec![0u8; 130_000], dir.clone(), 413),
        ("../escape.bin", vec![1u8], dir.clone(), 400),
        ("x.bin", vec![1u8], at("notes.txt"), 409),
        ("x.bin", vec![1u8], at("missing"), 404),
    ] {
        let res = upload(name, bytes, &into).await.unwrap();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "{name} into {into}: {body}");
    }
    let res = app
        .client
        .post(files.url("upload", &[("path", &dir)]))
        .bearer_auth(me)
        .multipart(reqwest::multipart::Form::new().text("other", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(std::fs::read(root.join("up.bin")).unwrap(), sent);
    let mut left: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "big.bin",
            "etc-link",
            "huge.bin",
            "logs",
            "logs-copy",
            "notes.txt",
            "up.bin"
        ],
        "no partial or hidden file is left"
    );

    let actions: Vec<String> = file_audit(&fleet, &server)
        .await
        .into_iter()
        .map(|(action, details)| format!("{action} {}", details["complete"]))
        .collect();
    assert_eq!(
        actions,
        ["file.copy true", "file.upload null"],
        "{actions:?}"
    );
}
