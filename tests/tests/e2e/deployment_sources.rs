//! The other two sources: an uploaded archive (multipart), checked entry by
//! entry before anything is stored, and an image pulled from a registry
//! (Debian's docker-registry, the test server's podman trusting it).

use std::io::Write;

use berth_e2e::deploy::{DeployFleet, write_app};
use berth_e2e::registry::TestRegistry;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

async fn upload(f: &DeployFleet, name: &str, archive: Vec<u8>, file_name: &str) -> (u16, Value) {
    let form = Form::new()
        .text("serverId", f.server_id.clone())
        .text("name", name.to_owned())
        .text("port", "8080")
        .text("drainSeconds", "0")
        .text("env", json!({"GREETING": "from an archive"}).to_string())
        .text("healthCheck", json!({"path": "/index.html"}).to_string())
        .part("file", Part::bytes(archive).file_name(file_name.to_owned()));
    let app = &f.fleet.stack.app;
    let res = app
        .client
        .post(app.url("/api/v1/deployments/upload"))
        .bearer_auth(&f.fleet.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

fn tar_gz_of(dir: &std::path::Path) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    builder.append_dir_all(".", dir).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

/// A zip holding `entry` (a file or, with `link`, a symbolic link).
fn hostile_zip(entry: &str, link: Option<&str>) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("Dockerfile", options).unwrap();
    zip.write_all(b"FROM scratch\n").unwrap();
    match link {
        Some(target) => zip.add_symlink(entry, target, options).unwrap(),
        None => {
            zip.start_file(entry, options).unwrap();
            zip.write_all(b"owned\n").unwrap();
        }
    }
    zip.finish().unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_archive_and_an_image_are_deployed_and_hostile_archives_write_nothing() {
    let f = DeployFleet::start().await;

    // Hostile archives: refused whole, nothing stored, nothing written.
    for (entry, link) in [
        ("../escape.txt", None),
        ("/etc/berth-absolute", None),
        ("www/passwd", Some("/etc/passwd")),
        ("www/up", Some("../../..")),
    ] {
        let (status, body) = upload(&f, "evil", hostile_zip(entry, link), "app.zip").await;
        assert_eq!(status, 400, "{entry}: {body}");
        assert_eq!(body["error"]["details"][0]["field"], "file", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("refused"),
            "{body}"
        );
    }
    let (status, body) = upload(&f, "evil", b"not an archive".to_vec(), "app.zip").await;
    assert_eq!(status, 400, "{body}");
    let (_, list) = f.get("/api/v1/deployments").await;
    assert_eq!(list["data"]["total"], 0, "nothing was stored");
    let archives: i64 = sqlx::query_scalar("SELECT count(*) FROM release_archives")
        .fetch_one(&f.fleet.stack.db.pool)
        .await
        .unwrap();
    assert_eq!(archives, 0);
    assert!(
        !f.data_dir.join("deployments").exists(),
        "nothing reached the server"
    );
    assert!(!std::path::Path::new("/etc/berth-absolute").exists());

    // An honest archive.
    let app = f.dir.join("upload-app");
    write_app(&app, "from-upload", true);
    let (status, body) = upload(&f, "site", tar_gz_of(&app), "app.tar.gz").await;
    assert_eq!(status, 202, "{body}");
    let id = body["data"]["deployment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = body["data"]["deployment"]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(body["data"]["deployment"]["source"]["type"], "upload");
    f.job_ok(body["data"]["jobId"].as_str().unwrap()).await;
    assert_eq!(
        f.through_nginx(&url, "/").await,
        Some((200, "from-upload\n".into()))
    );
    assert_eq!(
        f.through_nginx(&url, "/greeting.txt").await,
        Some((200, "from an archive\n".into()))
    );
    let d = f.deployment(&id).await;
    assert!(
        d["currentRelease"]["sourceRef"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{d}"
    );
    // A redeploy of an upload uses the same archive again.
    f.job_ok(f.redeploy(&id).await["jobId"].as_str().unwrap())
        .await;
    assert_eq!(
        f.through_nginx(&url, "/").await,
        Some((200, "from-upload\n".into()))
    );
    let archives: i64 = sqlx::query_scalar("SELECT count(*) FROM release_archives")
        .fetch_one(&f.fleet.stack.db.pool)
        .await
        .unwrap();
    assert_eq!(archives, 1, "only the newest archive is kept");

    // An image from a registry.
    let registry = TestRegistry::start(&f.dir.join("registry"), f.fleet.sshd.registry_port).await;
    let image = format!("127.0.0.1:{}/team/app:1", registry.port);
    let image_app = f.dir.join("image-app");
    write_app(&image_app, "from-image", true);
    for args in [
        vec![
            "build",
            "-q",
            "-t",
            image.as_str(),
            image_app.to_str().unwrap(),
        ],
        vec!["push", "-q", image.as_str()],
        vec!["rmi", image.as_str()],
    ] {
        let out = f.fleet.sshd.podman().args(&args).output().await.unwrap();
        assert!(out.status.success(), "podman {args:?}: {out:?}");
    }
    let created = f
        .create(
            json!({"name": "img", "source": {"type": "image", "image": image},
                       "port": 8080, "drainSeconds": 0, "healthCheck": {"path": "/index.html"}}),
        )
        .await;
    let img_id = created["deployment"]["id"].as_str().unwrap().to_owned();
    let img_url = created["deployment"]["url"].as_str().unwrap().to_owned();
    f.job_ok(created["jobId"].as_str().unwrap()).await;
    assert_eq!(
        f.through_nginx(&img_url, "/").await,
        Some((200, "from-image\n".into()))
    );
    let d = f.deployment(&img_id).await;
    let source_ref = d["currentRelease"]["sourceRef"].as_str().unwrap();
    assert!(
        source_ref.contains("@sha256:"),
        "the digest is recorded: {d}"
    );
    let steps: Vec<&str> = d["currentRelease"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        !steps.contains(&"build"),
        "an image is not built: {steps:?}"
    );
}
