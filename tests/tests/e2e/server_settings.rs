//! SPEC §3.3's per-server settings: defaults shown, every value checked (a
//! refused change writes nothing), `null` clearing the optional ones, and
//! validation running `nginx -t` with them on the server.

use berth_e2e::accounts::send_as;
use berth_e2e::fleet::Fleet;
use berth_e2e::scratch_dir;
use reqwest::Method;
use serde_json::{Value, json};

async fn patch(w: &Fleet, id: &str, body: Value) -> (u16, Value) {
    send_as(
        &w.stack.app,
        &w.token,
        Method::PATCH,
        &format!("/api/v1/servers/{id}"),
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_have_defaults_are_checked_and_nginx_is_tested_with_them() {
    let w = Fleet::start("probe", &[]).await;
    let id = w.onboard(0).await;
    let server = w.server(&id).await;
    for (field, default) in [
        ("nginxConfDir", json!("/etc/nginx/conf.d")),
        ("nginxConfFile", Value::Null),
        ("httpPort", json!(80)),
        ("httpsPort", json!(443)),
        ("dataDir", json!("/var/lib/berth")),
        ("hostnameBase", Value::Null),
    ] {
        assert_eq!(server[field], default, "{field}: {server}");
    }
    assert_eq!(
        server["nginxConfigOk"], true,
        "the machine's nginx passes -t: {server}"
    );

    // Refused values, on create and on change, write nothing.
    for (field, value) in [
        ("nginxConfDir", json!("relative/dir")),
        ("nginxConfDir", json!("/")),
        ("nginxConfDir", json!("/etc/../root")),
        ("nginxConfDir", json!("/etc/nginx/conf.d'; reboot; '")),
        ("nginxConfFile", json!("/etc/nginx/")),
        ("nginxConfFile", json!("nginx.conf")),
        ("dataDir", json!("/var/lib/berth\n")),
        ("dataDir", json!("//")),
        ("httpPort", json!(0)),
        ("httpsPort", json!(65536)),
        ("httpsPort", json!(80)),
        ("hostnameBase", json!("203.0.113.7")),
        ("hostnameBase", json!("localhost")),
        ("hostnameBase", json!("bad_label.example.com")),
    ] {
        let mut body = w.key_server(1);
        body[field] = value.clone();
        let (status, answer) = w.create(body).await;
        assert_eq!(status, 400, "create {field}={value}: {answer}");
        assert!(
            answer["error"]["details"].to_string().contains(field),
            "{field}: {answer}"
        );
        let (status, answer) = patch(&w, &id, json!({ field: value })).await;
        assert_eq!(status, 400, "patch {field}={value}: {answer}");
    }
    assert_eq!(
        w.server(&id).await,
        server,
        "no refused change wrote anything"
    );

    // Accepted values are stored (a trailing slash dropped, a name lower-cased);
    // ports alone need no new validation.
    let (status, body) = patch(
        &w,
        &id,
        json!({"httpPort": 8080, "httpsPort": 8443, "dataDir": "/srv/berth/",
               "hostnameBase": "Apps.Example.COM"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["jobId"], Value::Null);
    let changed = &body["data"]["server"];
    assert_eq!(
        (
            &changed["httpPort"],
            &changed["httpsPort"],
            &changed["dataDir"],
            &changed["hostnameBase"]
        ),
        (
            &json!(8080),
            &json!(8443),
            &json!("/srv/berth"),
            &json!("apps.example.com")
        )
    );

    // A main config nginx refuses: validation says so in nginx's words, and
    // the server stays usable (it is a finding, not a lost connection).
    let dir = scratch_dir("nginx-settings");
    let broken = dir.join("broken.conf");
    std::fs::write(&broken, "events {}\nhttp { this_is_not_a_directive on; }\n").unwrap();
    let (status, body) = patch(&w, &id, json!({"nginxConfFile": broken.to_str().unwrap()})).await;
    assert_eq!(status, 200, "{body}");
    let job = w.job_done(body["data"]["jobId"].as_str().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let server = w.server(&id).await;
    assert_eq!(server["nginxConfigOk"], false, "{server}");
    assert!(
        server["nginxConfigError"]
            .as_str()
            .unwrap()
            .contains("this_is_not_a_directive"),
        "{server}"
    );
    assert_eq!(server["status"], "online", "{server}");

    // `null` puts nginx's own main config back, and it passes again.
    let (status, body) = patch(&w, &id, json!({"nginxConfFile": null})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["server"]["nginxConfFile"], Value::Null);
    w.job_done(body["data"]["jobId"].as_str().unwrap()).await;
    let server = w.server(&id).await;
    assert_eq!(server["nginxConfigOk"], true, "{server}");
    assert_eq!(server["nginxConfigError"], Value::Null, "{server}");
}
