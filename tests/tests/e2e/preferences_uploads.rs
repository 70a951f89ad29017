//! SPEC §3.2 preferences and uploads (avatar images).

use berth_e2e::accounts::{
    NewUser, Stack, access_token, audit_actions, create_user, get_as, send_as,
};
use reqwest::Method;
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn preferences_have_defaults_change_in_part_and_refuse_bad_values() {
    let stack = Stack::start(&[]).await;
    let app = &stack.app;
    let id = create_user(&stack.db, NewUser::verified("pia@example.test")).await;
    create_user(&stack.db, NewUser::verified("other@example.test")).await;
    let token = access_token(app, "pia@example.test").await;
    let path = "/api/v1/profile/preferences";

    let (status, body) = get_as(app, &token, path).await;
    assert_eq!(status, 200, "{body}");
    let defaults = json!({"theme": "system", "timezone": "UTC",
        "notifications": {"serverStatus": true, "recoveries": true, "securityEmail": true}});
    assert_eq!(body["data"], defaults);

    let (status, body) = send_as(
        app,
        &token,
        Method::PUT,
        path,
        json!({"theme": "dark", "timezone": "America/Argentina/Buenos_Aires"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["theme"], "dark");
    assert_eq!(body["data"]["notifications"], defaults["notifications"]);
    let (status, body) = send_as(
        app,
        &token,
        Method::PUT,
        path,
        json!({"notifications": {"securityEmail": false}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"],
        json!({"theme": "dark", "timezone": "America/Argentina/Buenos_Aires",
            "notifications": {"serverStatus": true, "recoveries": true, "securityEmail": false}})
    );
    assert_eq!(get_as(app, &token, path).await.1["data"], body["data"]);

    for (bad, field) in [
        (json!({"theme": "blue"}), "theme"),
        (json!({"timezone": "../../etc/passwd"}), "timezone"),
        (json!({"timezone": "x".repeat(65)}), "timezone"),
        (
            json!({"notifications": {"serverStatus": "yes"}}),
            "notifications.serverStatus",
        ),
        (json!({"colour": "red"}), "colour"),
    ] {
        let (status, body) = send_as(app, &token, Method::PUT, path, bad.clone()).await;
        assert_eq!(status, 400, "{bad} answered {body}");
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
        assert!(
            body["error"]["details"][0]["field"]
                .as_str()
                .unwrap()
                .contains(field),
            "{bad}: {body}"
        );
    }
    let (status, _) = send_as(app, &token, Method::PUT, path, json!([1])).await;
    assert_eq!(status, 400);
    assert_eq!(get_as(app, &token, path).await.1["data"]["theme"], "dark");

    // Each user has their own; no sign-in, no preferences; a token reads but
    // cannot change them.
    let other = access_token(app, "other@example.test").await;
    assert_eq!(get_as(app, &other, path).await.1["data"], defaults);
    let anonymous = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let (_, created) = send_as(
        app,
        &token,
        Method::POST,
        "/api/v1/tokens",
        json!({"name": "ci", "scopes": ["servers:read"]}),
    )
    .await;
    let api_token = created["data"]["token"].as_str().unwrap();
    assert_eq!(get_as(app, api_token, path).await.0, 200);
    let (status, body) =
        send_as(app, api_token, Method::PUT, path, json!({"theme": "light"})).await;
    assert_eq!(status, 403, "{body}");

    assert!(
        audit_actions(&stack.db, id)
            .await
            .contains(&"profile.preferences_update".to_owned())
    );
}

/// A PNG header (signature and IHDR) of `width`×`height`, padded to `len` bytes.
fn png(width: u32, height: u32, len: usize) -> Vec<u8> {
    let mut data = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    data.extend_from_slice(&width.to_be_bytes());
    data.extend_from_slice(&height.to_be_bytes());
    data.extend_from_slice(&[8, 6, 0, 0, 0, 0, 0, 0, 0]);
    data.resize(len.max(data.len()), 0);
    data
}

async fn upload(
    stack: &Stack,
    token: &str,
    bytes: Vec<u8>,
    name: &str,
    declared: &str,
) -> (u16, Value) {
    let part = Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str(declared)
        .unwrap();
    let res = stack
        .app
        .client
        .post(stack.app.url("/api/v1/uploads"))
        .bearer_auth(token)
        .multipart(Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_sniffed_bounded_served_safely_and_deleted_by_their_uploader() {
    let stack = Stack::start(&[
        ("BERTH_UPLOAD_MAX_BYTES", "4096"),
        ("BERTH_UPLOAD_MAX_PIXELS", "512"),
        ("BERTH_UPLOADS_PER_USER", "2"),
    ])
    .await;
    let app = &stack.app;
    create_user(&stack.db, NewUser::verified("uma@example.test")).await;
    create_user(&stack.db, NewUser::verified("eve@example.test")).await;
    let token = access_token(app, "uma@example.test").await;
    let eve = access_token(app, "eve@example.test").await;

    // The type comes from the bytes, not from what the client declared.
    let image = png(64, 32, 200);
    let (status, body) = upload(&stack, &token, image.clone(), "../../me.html", "text/html").await;
    assert_eq!(status, 201, "{body}");
    let stored = &body["data"];
    assert_eq!(stored["contentType"], "image/png");
    assert_eq!(
        (stored["width"].as_u64(), stored["height"].as_u64()),
        (Some(64), Some(32))
    );
    assert_eq!(stored["size"], 200);
    assert_eq!(stored["originalName"], "me.html");
    let id = stored["id"].as_str().unwrap().to_owned();
    let url = stored["url"].as_str().unwrap().to_owned();
    assert!(url.ends_with(&format!("/api/v1/uploads/{id}")), "{url}");

    // Served to anyone, as an image that can never run as a page.
    let served = app
        .client
        .get(app.url(&format!("/api/v1/uploads/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let headers = served.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    assert_eq!(served.bytes().await.unwrap().to_vec(), image);

    // Refused: not an image Berth keeps, too many pixels, too many bytes, no
    // file field, the wrong body type.
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>".to_vec();
    for (bytes, name) in [
        (svg, "a.svg"),
        (b"<html><script>alert(1)</script>".to_vec(), "a.png"),
        (Vec::new(), "empty.png"),
        (png(513, 10, 100), "wide.png"),
        (png(0, 10, 100), "none.png"),
    ] {
        let (status, body) = upload(&stack, &token, bytes, name, "image/png").await;
        assert_eq!(status, 400, "{name}: {body}");
        assert_eq!(body["error"]["details"][0]["field"], "file", "{body}");
    }
    let (status, body) = upload(&stack, &token, png(8, 8, 5000), "big.png", "image/png").await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE");
    let res = app
        .client
        .post(app.url("/api/v1/uploads"))
        .bearer_auth(&token)
        .multipart(Form::new().text("other", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let (status, _) = send_as(app, &token, Method::POST, "/api/v1/uploads", json!({})).await;
    assert_eq!(status, 400, "JSON is not an upload");

    // Two images per user here: a third waits for a deletion.
    let (status, second) = upload(&stack, &token, png(16, 16, 100), "b.png", "image/png").await;
    assert_eq!(status, 201, "{second}");
    let (status, body) = upload(&stack, &token, png(16, 16, 100), "c.png", "image/png").await;
    assert_eq!(status, 409, "{body}");

    // As the avatar; deleting the image clears it. Only the uploader deletes.
    let (status, body) = send_as(
        app,
        &token,
        Method::PATCH,
        "/api/v1/profile",
        json!({"avatarUrl": url}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/api/v1/uploads/{id}");
    let (status, body) = send_as(app, &eve, Method::DELETE, &path, json!({})).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = send_as(app, &token, Method::DELETE, &path, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["deleted"], true);
    assert_eq!(
        get_as(app, &token, "/api/v1/profile").await.1["data"]["avatarUrl"],
        Value::Null
    );
    let gone = app.client.get(app.url(&path)).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    let (status, _) = send_as(app, &token, Method::DELETE, &path, json!({})).await;
    assert_eq!(status, 404);
    let (status, body) = upload(&stack, &token, png(16, 16, 100), "c.png", "image/png").await;
    assert_eq!(status, 201, "room again: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_take_bodies_past_the_json_limit_up_to_their_own() {
    // Defaults: 1 MiB for JSON bodies, 2 MiB for an image.
    let stack = Stack::start(&[]).await;
    create_user(&stack.db, NewUser::verified("big@example.test")).await;
    let token = access_token(&stack.app, "big@example.test").await;
    let (status, body) = upload(
        &stack,
        &token,
        png(100, 100, 1536 * 1024),
        "big.png",
        "image/png",
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["data"]["size"], 1536 * 1024);
    let (status, body) = upload(
        &stack,
        &token,
        png(100, 100, 3 * 1024 * 1024),
        "huge.png",
        "image/png",
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "PAYLOAD_TOO_LARGE");
    // JSON elsewhere keeps its own limit.
    let (status, _) = send_as(
        &stack.app,
        &token,
        Method::PATCH,
        "/api/v1/profile",
        json!({"name": "x".repeat(1536 * 1024)}),
    )
    .await;
    assert_eq!(status, 413);
}
