//! Subscribers that can be changed (issue 21): `GET` and `PATCH` on
//! `/v1/topics/{topic}/subscribers/{id}`. A change keeps the id, secret,
//! cursor, dead letters and counters, and applies from the next attempt.

mod common;

use common::{Behaviour, Sink, TestServer};
use serde_json::{json, Value};

async fn patch(server: &TestServer, path: &str, body: Value) -> common::Reply {
    server
        .call(
            "PATCH",
            path,
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await
}

#[tokio::test]
async fn get_shows_the_subscriber_with_its_filter_and_never_its_secret() {
    let server = TestServer::start().await;
    let sub = server
        .subscriber(
            "t",
            json!({"url": "http://127.0.0.1:9/hook", "method": "PUT",
                   "headers": {"x-api-key": "secret-value"},
                   "filter": {"event_types": ["invoice.*"]}}),
        )
        .await;
    let id = sub["id"].as_str().unwrap();
    let r = server.get(&format!("/v1/topics/t/subscribers/{id}")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let detail = r.json();
    assert_eq!(detail["id"], id);
    assert_eq!(detail["topic"], "t");
    assert_eq!(detail["url"], "http://127.0.0.1:9/hook");
    assert_eq!(detail["method"], "PUT");
    assert_eq!(detail["header_names"], json!(["x-api-key"]));
    assert_eq!(detail["filter"]["event_types"], json!(["invoice.*"]));
    assert_eq!(detail["status"], "active");
    assert_eq!(detail["circuit"], "closed");
    assert_eq!(detail["lag"], 0);
    assert!(detail["counters"]["delivered"].is_u64());
    let text = String::from_utf8_lossy(&r.body);
    assert!(
        !text.contains("whsec_") && !text.contains("secret-value"),
        "{text}"
    );
    for unknown in [
        "/v1/topics/t/subscribers/sub_nope",
        "/v1/topics/nope/subscribers/sub_nope",
    ] {
        assert_eq!(
            server.get(unknown).await.error_code(404),
            "subscriber_not_found"
        );
    }
    let r = server
        .call("PUT", &format!("/v1/topics/t/subscribers/{id}"), &[], "")
        .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.headers["allow"], "GET, PATCH, DELETE");
}

/// The next message goes to the new URL with the new headers, signed
/// with the same secret; the old URL gets nothing more; the counters go
/// on.
#[tokio::test]
async fn a_patched_url_and_headers_take_the_next_message_with_the_same_secret() {
    let server = TestServer::start().await;
    let mut old = Sink::ok().await;
    let mut new = Sink::ok().await;
    let token = server.publisher("t", "p").await;
    let sub = server
        .subscriber(
            "t",
            json!({"url": old.url("/old"), "headers": {"x-old": "1"}}),
        )
        .await;
    let id = sub["id"].as_str().unwrap();
    let path = format!("/v1/topics/t/subscribers/{id}");
    server.publish("t", &token, "text/plain", "before").await;
    assert_eq!(old.next().await.body, "before");
    server.settle().await;

    let r = patch(
        &server,
        &path,
        json!({"url": new.url("/new"), "headers": {"x-new": "2"}, "method": "PUT"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let shown = r.json();
    assert_eq!(shown["id"], id);
    assert_eq!(shown["url"], new.url("/new"));
    assert_eq!(shown["method"], "PUT");
    assert_eq!(shown["header_names"], json!(["x-new"]));
    assert_eq!(shown["counters"]["delivered"], 1, "the counters go on");
    assert!(shown.get("secret").is_none());

    server.publish("t", &token, "text/plain", "after").await;
    let got = new.next().await;
    assert_eq!((got.method.as_str(), got.path.as_str()), ("PUT", "/new"));
    assert_eq!(got.body, "after");
    assert_eq!(got.headers["x-new"], "2");
    assert!(!got.headers.contains_key("x-old"));
    let verifier = standardwebhooks::Webhook::new(sub["secret"].as_str().unwrap()).unwrap();
    verifier
        .verify(&got.body, &got.headers)
        .expect("signed with the secret it was registered with");
    server.settle().await;
    assert!(old.drain_now().is_empty(), "the old URL got nothing more");
    let detail = server.get(&path).await.json();
    assert_eq!(detail["counters"]["delivered"], 2);
    assert_eq!(detail["offset"], 2);

    // The old (method, URL) is free again: registering it makes another
    // subscriber.
    let again = server
        .post_json("/v1/topics/t/subscribers", json!({"url": old.url("/old")}))
        .await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_ne!(again.json()["id"], id);
}

#[tokio::test]
async fn patch_changes_retry_order_and_filter_and_refuses_what_registration_refuses() {
    let server = TestServer::start().await;
    let a = server
        .subscriber("t", json!({"url": "http://127.0.0.1:9/a"}))
        .await;
    let b = server
        .subscriber("t", json!({"url": "http://127.0.0.1:9/b"}))
        .await;
    let path = format!("/v1/topics/t/subscribers/{}", a["id"].as_str().unwrap());
    let r = patch(
        &server,
        &path,
        json!({"retry": {"schedule": ["1s", "1m"]}, "ordered": true,
               "filter": {"expression": "payload.n > 1"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let shown = r.json();
    assert_eq!(shown["retry"]["schedule"], json!(["1s", "1m"]));
    assert_eq!(shown["ordered"], true);
    assert_eq!(shown["filter"]["expression"], "payload.n > 1");
    assert_eq!(shown["url"], "http://127.0.0.1:9/a", "the rest as it was");
    // `filter: null` removes it; an empty body changes nothing.
    let r = patch(&server, &path, json!({"filter": null})).await;
    assert_eq!(r.json()["filter"], Value::Null);
    assert_eq!(r.json()["ordered"], true);
    let r = patch(&server, &path, json!({})).await;
    assert_eq!(r.status, 200);

    // Onto another subscriber's (method, URL): 409 naming it.
    let r = patch(&server, &path, json!({"url": "http://127.0.0.1:9/b"})).await;
    assert_eq!(r.error_code(409), "subscriber_conflict");
    assert!(String::from_utf8_lossy(&r.body).contains(b["id"].as_str().unwrap()));
    // Another method on that URL is another key: allowed.
    let r = patch(
        &server,
        &path,
        json!({"url": "http://127.0.0.1:9/b", "method": "PUT"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Invalid values, as at registration: 400, nothing changed.
    for (body, code) in [
        (json!({"url": "ftp://x/"}), "invalid_endpoint"),
        (json!({"method": "GET"}), "invalid_endpoint"),
        (json!({"headers": {"host": "x"}}), "invalid_endpoint"),
        (json!({"retry": {"max_attempts": 0}}), "invalid_endpoint"),
        (
            json!({"filter": {"expression": "payload. >"}}),
            "invalid_filter",
        ),
        (json!({"url": null}), "invalid_json"),
        (json!({"secret": "whsec_x"}), "invalid_json"),
    ] {
        let r = patch(&server, &path, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.json()["error"]["code"], code, "{body}");
    }
    let detail = server.get(&path).await.json();
    assert_eq!(
        (detail["url"].clone(), detail["method"].clone()),
        (json!("http://127.0.0.1:9/b"), json!("PUT"))
    );
    let r = patch(&server, "/v1/topics/t/subscribers/sub_nope", json!({})).await;
    assert_eq!(r.error_code(404), "subscriber_not_found");
}

/// A subscriber whose endpoint answered `410 Gone` is disabled; moved to
/// a new URL and enabled, it gets exactly what it owed, once.
#[tokio::test]
async fn a_subscriber_disabled_by_410_moved_and_enabled_gets_what_it_owed_once() {
    let server = TestServer::start().await;
    let mut gone = Sink::start(Behaviour::Status(410)).await;
    let mut moved = Sink::ok().await;
    let token = server.publisher("t", "p").await;
    let sub = server
        .subscriber("t", json!({"url": gone.url("/gone"), "ordered": true}))
        .await;
    let path = format!("/v1/topics/t/subscribers/{}", sub["id"].as_str().unwrap());
    server.publish("t", &token, "text/plain", "first").await;
    assert_eq!(gone.next().await.body, "first");
    server.settle().await;
    assert_eq!(server.get(&path).await.json()["status"], "disabled");
    for body in ["a", "b", "c"] {
        server.publish("t", &token, "text/plain", body).await;
    }
    server.settle().await;
    assert!(gone.drain_now().is_empty());

    let r = patch(&server, &path, json!({"url": moved.url("/moved")})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["status"], "disabled", "a change does not enable");
    assert_eq!(r.json()["lag"], 3);
    server.settle().await;
    assert!(moved.drain_now().is_empty(), "nothing while disabled");
    let r = server.post_json(&format!("{path}/enable"), json!({})).await;
    assert_eq!(r.status, 200);
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push(moved.next().await.body);
    }
    server.settle().await;
    assert_eq!(bodies, ["a", "b", "c"]);
    assert!(moved.drain_now().is_empty(), "each once");
    assert!(gone.drain_now().is_empty());
    let detail = server.get(&path).await.json();
    assert_eq!(
        (detail["lag"].clone(), detail["offset"].clone()),
        (json!(0), json!(4))
    );
    // The 410'd message is its dead letter still, to redrive if wanted.
    let dead = server.get(&format!("{path}/dead-letters")).await.json();
    assert_eq!(dead["dead_letters"][0]["last_status"], 410);
}
