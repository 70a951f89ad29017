//! Every route with a resource id, called by every kind of caller.

use berth_e2e::TestApp;
use berth_e2e::accounts::{get_as, send_as};
use serde_json::Value;

use super::table::{CALLERS, Expect, NOT_RESOURCES, Who, expect, table};
use super::world::world;

/// The 404 the access layer answers (other 404s name something more).
fn authorization_not_found(body: &Value) -> bool {
    let message = body["error"]["message"].as_str().unwrap_or("");
    [
        "server",
        "deployment",
        "domain",
        "job",
        "notification",
        "project",
        "session",
        "token",
        "upload",
        "invitation to your verified address",
    ]
    .iter()
    .any(|noun| message == format!("no such {noun}"))
}

/// Status and body of a WebSocket handshake to `path`.
async fn handshake(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}{path}", app.base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => (101, Value::Null),
        Err(Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (response.status().as_u16(), body)
        }
        Err(e) => panic!("handshake to {path}: {e}"),
    }
}

#[tokio::test]
async fn every_route_with_a_resource_id_answers_each_role_as_the_table_says() {
    let w = world().await;
    let table = table();

    // A documented route that takes an id and is not in the table fails here.
    let (status, doc) = get_as(w.app(), w.token(Who::Owner), "/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let path = path.trim_start_matches("/api/v1");
        if !path.contains('{') || NOT_RESOURCES.contains(&path) {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            if !table
                .iter()
                .any(|r| r.path == path && r.method.as_str() == method)
            {
                missing.push(format!("{method} {path}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes missing from the access table: {missing:?}"
    );

    let mut wrong = Vec::new();
    for row in &table {
        let mut allowed_seen = false;
        // The refused first, so a destructive route is tried by all of them
        // before anyone may succeed.
        let mut callers = CALLERS.to_vec();
        callers.sort_by_key(|who| expect(*who, row.needs) == Expect::Allowed);
        for who in callers {
            let expected = expect(who, row.needs);
            if expected == Expect::Allowed && row.destructive && allowed_seen {
                continue;
            }
            let path = w.path(row.path);
            let (status, body) = if row.websocket {
                handshake(w.app(), w.token(who), &path).await
            } else if row.multipart {
                let res = w
                    .app()
                    .client
                    .request(row.method.clone(), w.app().url(&path))
                    .bearer_auth(w.token(who))
                    .multipart(reqwest::multipart::Form::new().text("other", "x"))
                    .send()
                    .await
                    .unwrap();
                let status = res.status().as_u16();
                (status, res.json().await.unwrap_or(Value::Null))
            } else {
                send_as(
                    w.app(),
                    w.token(who),
                    row.method.clone(),
                    &path,
                    w.body(&row.method, row.path),
                )
                .await
            };
            let ok = match expected {
                Expect::NotFound => status == 404 && authorization_not_found(&body),
                Expect::Forbidden => status == 403,
                Expect::Allowed => {
                    allowed_seen = true;
                    status != 401
                        && status != 403
                        && !(status == 404 && authorization_not_found(&body))
                }
            };
            if !ok {
                wrong.push(format!(
                    "{} {} as {who:?}: expected {expected:?}, got {status} {}",
                    row.method, row.path, body["error"]["message"]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Every membership change left an audit row.
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT action FROM audit_logs WHERE action LIKE 'project.%' ORDER BY action",
    )
    .fetch_all(&w.stack.db.pool)
    .await
    .unwrap();
    for action in [
        "project.create",
        "project.delete",
        "project.invite",
        "project.invite_accept",
        "project.invite_revoke",
        "project.member_remove",
        "project.member_role",
        "project.update",
    ] {
        assert!(
            actions.contains(&action.to_owned()),
            "{action} not audited: {actions:?}"
        );
    }
}
