//! SPEC §3.7: the file manager over SFTP on a real sshd test server. The
//! test servers log in as root on this machine, so every fixture is in a
//! scratch directory of the test's own, and what must stay untouched
//! (`/etc/passwd`, reached through a link) is checked to be.

mod archives;
mod transfer;

use std::os::unix::fs::symlink;

use berth_e2e::accounts::{NewUser, access_token, create_user, get_as, send_as};
use berth_e2e::fleet::Fleet;
use berth_e2e::scratch_dir;
use reqwest::Method;
use serde_json::{Value, json};

struct Files<'a> {
    fleet: &'a Fleet,
    server: String,
}

impl Files<'_> {
    async fn get(&self, token: &str, route: &str, path: &str) -> (u16, Value) {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("path", path)
            .finish();
        get_as(
            &self.fleet.stack.app,
            token,
            &format!("/api/v1/files/{}/{route}?{query}", self.server),
        )
        .await
    }

    async fn send(&self, token: &str, method: Method, route: &str, body: Value) -> (u16, Value) {
        send_as(
            &self.fleet.stack.app,
            token,
            method,
            &format!("/api/v1/files/{}/{route}", self.server),
            body,
        )
        .await
    }

    /// A GET with more query parameters than `path`.
    async fn get_query(&self, token: &str, route: &str, pairs: &[(&str, &str)]) -> (u16, Value) {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        get_as(
            &self.fleet.stack.app,
            token,
            &format!("/api/v1/files/{}/{route}?{query}", self.server),
        )
        .await
    }

    fn url(&self, route: &str, pairs: &[(&str, &str)]) -> String {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        self.fleet
            .stack
            .app
            .url(&format!("/api/v1/files/{}/{route}?{query}", self.server))
    }
}

/// The `file.*` audit rows of `server`, oldest first.
async fn file_audit(fleet: &Fleet, server: &str) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT action, details FROM audit_logs WHERE target_id = $1 AND action LIKE 'file.%' \
         ORDER BY created_at",
    )
    .bind(server)
    .fetch_all(&fleet.stack.db.pool)
    .await
    .unwrap()
}

fn names_and_types(listing: &Value) -> Vec<(String, String)> {
    listing["data"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_owner_browses_reads_and_changes_files_and_links_are_never_followed() {
    let fleet = Fleet::start("probe", &[("BERTH_FILES_READ_MAX_BYTES", "4096")]).await;
    let server = fleet.onboard(0).await;
    let files = Files {
        fleet: &fleet,
        server: server.clone(),
    };
    let me = &fleet.token;
    let passwd_before = std::fs::read("/etc/passwd").unwrap();

    let root = scratch_dir("files").join("tree");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.txt"), "hello\n").unwrap();
    std::fs::write(root.join("bin.dat"), [0xffu8, 0xfe, 0x00, 0x01]).unwrap();
    std::fs::write(root.join("big.txt"), "x".repeat(5000)).unwrap();
    symlink("/etc/passwd", root.join("passwd-link")).unwrap();
    let dir = root.display().to_string();
    let at = |name: &str| format!("{dir}/{name}");

    let (status, info) = files.get(me, "info", "/").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["data"]["connected"], true);
    assert_eq!(info["data"]["home"], "/root", "{info}");

    // Directories first; a link is a link.
    let (status, listing) = files.get(me, "list", &format!("{dir}/./sub/..")).await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing["data"]["path"], dir);
    assert_eq!(
        names_and_types(&listing),
        [
            ("sub".into(), "directory".into()),
            ("a.txt".into(), "file".into()),
            ("big.txt".into(), "file".into()),
            ("bin.dat".into(), "file".into()),
            ("passwd-link".into(), "symlink".into()),
        ]
    );
    let (_, props) = files.get(me, "properties", &at("passwd-link")).await;
    assert_eq!(props["data"]["type"], "symlink", "{props}");
    assert_eq!(props["data"]["linkTarget"], "/etc/passwd");
    let (_, props) = files.get(me, "properties", &at("a.txt")).await;
    assert_eq!(props["data"]["size"], 6);
    assert_eq!(props["data"]["mode"], "0644", "{props}");

    // Reads: text, and clear refusals.
    let (status, read) = files.get(me, "read", &at("a.txt")).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["data"]["content"], "hello\n");
    for (path, want) in [
        (at("sub"), 409),
        (at("bin.dat"), 409),
        (at("big.txt"), 413),
        (at("missing"), 404),
        ("relative/a.txt".to_owned(), 400),
        (format!("{dir}/a\u{0}b"), 400),
        (format!("{dir}/a\nb"), 400),
    ] {
        let (status, body) = files.get(me, "read", &path).await;
        assert_eq!(status, want, "{path:?}: {body}");
        assert_eq!(body["success"], false);
    }

    // Create, save, rename.
    let (status, body) = files
        .send(
            me,
            Method::POST,
            "create",
            json!({ "path": at("new.txt"), "type": "file" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = files
        .send(
            me,
            Method::POST,
            "create",
            json!({ "path": at("new.txt"), "type": "file" }),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = files
        .send(
            me,
            Method::POST,
            "create",
            json!({ "path": at("made"), "type": "folder" }),
        )
        .await;
    assert_eq!(status, 201);
    assert!(root.join("made").is_dir());
    let (status, body) = files
        .send(
            me,
            Method::PUT,
            "save",
            json!({ "path": at("new.txt"), "content": "saved ✓" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read_to_string(root.join("new.txt")).unwrap(),
        "saved ✓"
    );
    // Not through a link, not past the limit.
    let (status, body) = files
        .send(
            me,
            Method::PUT,
            "save",
            json!({ "path": at("passwd-link"), "content": "owned\n" }),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = files
        .send(
            me,
            Method::PUT,
            "save",
            json!({ "path": at("new.txt"), "content": "y".repeat(5000) }),
        )
        .await;
    assert_eq!(status, 413);
    let (status, body) = files
        .send(
            me,
            Method::PUT,
            "rename",
            json!({ "oldPath": at("new.txt"), "newPath": at("sub/moved.txt") }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(root.join("sub/moved.txt").is_file() && !root.join("new.txt").exists());
    let (status, _) = files
        .send(
            me,
            Method::PUT,
            "rename",
            json!({ "oldPath": at("a.txt"), "newPath": at("sub/moved.txt") }),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = files
        .send(
            me,
            Method::PUT,
            "rename",
            json!({ "oldPath": "/etc", "newPath": "/etc2" }),
        )
        .await;
    assert_eq!(status, 400);

    // Delete: never / or a system directory, every path checked first, a
    // link removed and not followed.
    for paths in [
        json!(["/"]),
        json!(["/usr"]),
        json!([]),
        json!([at("a.txt"), "/etc"]),
    ] {
        let (status, body) = files
            .send(me, Method::DELETE, "delete", json!({ "paths": paths }))
            .await;
        assert_eq!(status, 400, "{paths}: {body}");
    }
    let (status, _) = files
        .send(
            me,
            Method::DELETE,
            "delete",
            json!({ "paths": [at("a.txt"), at("missing")] }),
        )
        .await;
    assert_eq!(status, 404);
    assert!(
        root.join("a.txt").exists(),
        "nothing deleted when a path is missing"
    );
    let (status, body) = files
        .send(
            me,
            Method::DELETE,
            "delete",
            json!({ "paths": [at("sub"), at("passwd-link"), at("a.txt")] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["removed"], 4, "{body}");
    assert!(!root.join("sub").exists() && !root.join("passwd-link").exists());
    assert_eq!(std::fs::read("/etc/passwd").unwrap(), passwd_before);

    // Every write is audited, with its paths.
    let rows = file_audit(&fleet, &server).await;
    let actions: Vec<&str> = rows.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "file.create",
            "file.create",
            "file.save",
            "file.rename",
            "file.delete"
        ],
        "{rows:?}"
    );
    assert_eq!(rows[3].1["newPath"], at("sub/moved.txt"));
    assert_eq!(rows[4].1["removed"], 4);
}

#[tokio::test]
async fn only_the_owner_reaches_a_servers_files_and_a_read_token_only_reads() {
    let fleet = Fleet::start("probe", &[]).await;
    let server = fleet.onboard(0).await;
    let files = Files {
        fleet: &fleet,
        server,
    };
    let app = &fleet.stack.app;
    let dir = scratch_dir("files-access").display().to_string();

    create_user(&fleet.stack.db, NewUser::verified("eve@example.test")).await;
    let eve = access_token(app, "eve@example.test").await;
    let (status, _) = files.get(&eve, "list", &dir).await;
    assert_eq!(status, 404);
    let (status, _) = files
        .send(
            &eve,
            Method::POST,
            "create",
            json!({ "path": format!("{dir}/x"), "type": "file" }),
        )
        .await;
    assert_eq!(status, 404);

    let (status, body) = send_as(
        app,
        &fleet.token,
        Method::POST,
        "/api/v1/tokens",
        json!({ "name": "reader", "scopes": ["servers:read"] }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let reader = body["data"]["token"].as_str().unwrap().to_owned();
    let (status, body) = files.get(&reader, "list", &dir).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = files
        .send(
            &reader,
            Method::POST,
            "create",
            json!({ "path": format!("{dir}/x"), "type": "file" }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(!std::path::Path::new(&format!("{dir}/x")).exists());
}
