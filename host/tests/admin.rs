//! The admin API in-process: `app(node)` driven with `oneshot`, on a real
//! SQLite file and the real sample rules.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tandem_host::config::Config;
use tandem_host::engine::Gate;
use tandem_host::node::Node;
use tower::ServiceExt;

struct Harness {
    node: Arc<Node>,
    _dir: tempfile::TempDir,
}

fn node(gate_open: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nname = \"n1\"\ndata_dir = \"{}\"\n[admin]\ntoken = \"admin\"\ningest_token = \"ingest\"\n",
        dir.path().display()
    );
    let node = Node::open(Config::parse(&text).unwrap(), Gate::new(gate_open)).unwrap();
    Harness { node, _dir: dir }
}

async fn call(
    h: &Harness,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = tandem_host::admin::app(h.node.clone(), None)
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&bytes).into_owned(),
    ));
    (status, json)
}

async fn event_count(h: &Harness) -> usize {
    let (_, v) = call(
        h,
        "GET",
        "/api/v1/events?limit=1000",
        Some("admin"),
        Body::empty(),
    )
    .await;
    v.as_array().unwrap().len()
}

#[tokio::test]
async fn status_follows_the_gate() {
    let h = node(true);
    let (s, v) = call(&h, "GET", "/status", None, Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["state"].as_str(), v["fs"].as_i64()),
        (Some("active"), Some(1))
    );
    let h = node(false);
    let (s, v) = call(&h, "GET", "/status", None, Body::empty()).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["state"], "standby");
}

#[tokio::test]
async fn tokens_guard_the_api() {
    let h = node(true);
    let (s, v) = call(&h, "GET", "/api/v1/rules", None, Body::empty()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["code"], "unauthorized");
    let (s, _) = call(&h, "GET", "/api/v1/rules", Some("wrong"), Body::empty()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(&h, "GET", "/api/v1/rules", Some("ingest"), Body::empty()).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the ingest token may only post signals"
    );
    let (s, _) = call(
        &h,
        "POST",
        "/api/v1/signals",
        Some("ingest"),
        r#"{"name":"X"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _) = call(&h, "GET", "/api/v1/rules", Some("admin"), Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&h, "GET", "/metrics", None, Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn bad_signals_are_refused_and_nothing_is_half_stored() {
    let h = node(true);
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("{not json".into(), StatusCode::BAD_REQUEST, "bad_json"),
        (
            r#"{"source":"x"}"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        ("[]".into(), StatusCode::BAD_REQUEST, "bad_signal"),
        (
            r#"[{"name":"OK-1"},{"name":"door open"}]"#.into(),
            StatusCode::BAD_REQUEST,
            "bad_signal",
        ),
        (
            r#"[{"name":"OK-1"},{"name":"FAILOVER-ON"}]"#.into(),
            StatusCode::BAD_REQUEST,
            "reserved_name",
        ),
        (
            r#"{"name":"NOTIFY-FAILED"}"#.into(),
            StatusCode::BAD_REQUEST,
            "reserved_name",
        ),
        (
            format!("[{}]", vec![r#"{"name":"A"}"#; 1001].join(",")),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            format!(
                r#"{{"name":"A","fields":{{{}}}}}"#,
                (0..300)
                    .map(|i| format!("\"f{i}\":1"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            format!(
                r#"{{"name":"A","fields":{{"x":"{}"}}}}"#,
                "y".repeat(2 << 20)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
    ];
    for (body, status, code) in cases {
        let (s, v) = call(&h, "POST", "/api/v1/signals", Some("admin"), body.clone()).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (status, Some(code)),
            "{}: {v}",
            &body[..body.len().min(60)]
        );
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(event_count(&h).await, 0);
}

#[tokio::test]
async fn signals_are_stored_with_their_outcome() {
    let h = node(true);
    let wasm = common::sample_wasm("panic_button");
    let (s, v) = call(&h, "PUT", "/api/v1/scripts/panic", Some("admin"), wasm).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["default_signals"], serde_json::json!(["PANIC-*"]));
    let (s, v) = call(
        &h,
        "POST",
        "/api/v1/signals",
        Some("ingest"),
        r#"[{"name":"PANIC-1","key":"k1"},{"name":"OTHER"}]"#,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(v["state"], "active");
    assert_eq!(v["accepted"][0]["key"], "k1");
    assert_eq!(
        v["accepted"][1]["key"],
        format!("n1:{}", v["accepted"][1]["id"])
    );
    let (_, events) = call(&h, "GET", "/api/v1/events", Some("admin"), Body::empty()).await;
    assert_eq!(events[0]["status"], "executed");
    assert_eq!(events[0]["outcome"][0]["rule"], "panic");
    assert_eq!(events[1]["outcome"], serde_json::json!([]));
    let (_, notes) = call(
        &h,
        "GET",
        "/api/v1/notifications?node=n1",
        Some("admin"),
        Body::empty(),
    )
    .await;
    assert_eq!(notes.as_array().unwrap().len(), 1);
    let (_, none) = call(
        &h,
        "GET",
        "/api/v1/notifications?node=other",
        Some("admin"),
        Body::empty(),
    )
    .await;
    assert_eq!(none.as_array().unwrap().len(), 0);

    // A closed gate: stored as suppressed, no rule runs.
    let h = node(false);
    let (s, v) = call(
        &h,
        "POST",
        "/api/v1/signals",
        Some("ingest"),
        r#"{"name":"PANIC-1"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(
        (v["state"].as_str(), v["accepted"][0]["executed"].as_bool()),
        (Some("standby"), Some(false))
    );
    assert_eq!(event_count(&h).await, 1);
}

/// A signal a rule raises is an event of its own, found by its name and
/// linked to the event that raised it; the parent's outcome still lists
/// every run.
#[tokio::test]
async fn a_raised_signal_is_an_event_linked_to_its_parent() {
    let h = node(true);
    let wasm = common::sample_wasm("door_held_open");
    let (s, v) = call(&h, "PUT", "/api/v1/scripts/door", Some("admin"), wasm).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = call(
        &h,
        "PUT",
        "/api/v1/rules/door",
        Some("admin"),
        r#"{"script": "door", "signals": ["DOOR-*-OPEN", "TICK"], "config": {"seconds": 10}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let t0 = 1_763_780_000_000_i64;
    let (s, v) = call(
        &h,
        "POST",
        "/api/v1/signals",
        Some("ingest"),
        format!(
            r#"[{{"name":"DOOR-4-OPEN","key":"open","time":{t0}}},
               {{"name":"TICK","key":"tick","time":{}}}]"#,
            t0 + 11_000
        ),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let tick_id = v["accepted"][1]["id"].as_u64().unwrap();
    let (_, raised) = call(
        &h,
        "GET",
        "/api/v1/events?name=DOOR-HELD-OPEN",
        Some("admin"),
        Body::empty(),
    )
    .await;
    let raised = raised.as_array().unwrap();
    assert_eq!(raised.len(), 1, "{raised:?}");
    let e = &raised[0];
    assert_eq!(e["status"], "raised");
    assert_eq!(e["parent"], tick_id);
    assert_eq!(e["key"], "tick/door/0");
    assert_eq!(e["source"], "door");
    assert_eq!(e["time"], t0 + 11_000);
    assert_eq!(e["fields"]["door"], "4");
    assert!(e["id"].as_u64().unwrap() > tick_id);
    // Its own outcome: the run it caused (DOOR-HELD-OPEN matches
    // DOOR-*-OPEN), one level down; the parent's lists both runs.
    let runs = e["outcome"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        (runs[0]["rule"].as_str(), runs[0]["depth"].as_u64()),
        (Some("door"), Some(1))
    );
    assert_eq!(runs[0]["signal"], "DOOR-HELD-OPEN");
    let (_, all) = call(&h, "GET", "/api/v1/events", Some("admin"), Body::empty()).await;
    let tick = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == tick_id)
        .unwrap();
    assert_eq!(tick["parent"], serde_json::Value::Null);
    assert_eq!(tick["outcome"].as_array().unwrap().len(), 2, "{tick}");
    // The next signal's id is above every raised one's.
    let (_, v) = call(
        &h,
        "POST",
        "/api/v1/signals",
        Some("ingest"),
        r#"{"name":"X"}"#,
    )
    .await;
    assert!(v["accepted"][0]["id"].as_u64().unwrap() > e["id"].as_u64().unwrap());
}

#[tokio::test]
async fn an_invalid_script_is_refused_and_the_old_one_keeps_running() {
    let h = node(true);
    let (s, _) = call(
        &h,
        "PUT",
        "/api/v1/scripts/panic",
        Some("admin"),
        common::sample_wasm("panic_button"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for bad in [b"garbage".to_vec(), common::fixture("no-marker")] {
        let (s, v) = call(&h, "PUT", "/api/v1/scripts/panic", Some("admin"), bad).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_script")),
            "{v}"
        );
        assert!(v["error"].as_str().unwrap().contains("rule `panic`"), "{v}");
    }
    let (_, v) = call(
        &h,
        "GET",
        "/api/v1/rules/panic",
        Some("admin"),
        Body::empty(),
    )
    .await;
    assert_eq!(v["loaded"], true);
    let (_, v) = call(
        &h,
        "POST",
        "/api/v1/signals",
        Some("admin"),
        r#"{"name":"PANIC-2"}"#,
    )
    .await;
    assert_eq!(v["accepted"][0]["executed"], true);
    let (_, notes) = call(
        &h,
        "GET",
        "/api/v1/notifications",
        Some("admin"),
        Body::empty(),
    )
    .await;
    assert_eq!(notes.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn rules_put_get_delete_and_reset() {
    let h = node(true);
    call(
        &h,
        "PUT",
        "/api/v1/scripts/threshold",
        Some("admin"),
        common::sample_wasm("threshold"),
    )
    .await;
    let (s, v) = call(&h, "PUT", "/api/v1/rules/hot", Some("admin"),
        r#"{"script":"threshold","signals":["TEMP-*"],"config":{"above":30,"count":1},"deadline":"20ms"}"#).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["deadline"].as_str(), v["loaded"].as_bool()),
        (Some("20ms"), Some(true))
    );
    // Its init refuses count 0: 400 and nothing changes.
    let (s, v) = call(
        &h,
        "PUT",
        "/api/v1/rules/hot",
        Some("admin"),
        r#"{"script":"threshold","config":{"count":0}}"#,
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_rule")),
        "{v}"
    );
    let (_, v) = call(&h, "GET", "/api/v1/rules/hot", Some("admin"), Body::empty()).await;
    assert_eq!(v["config"]["count"], 1);
    // A key the rule does not declare (a typo) is refused, naming it and
    // the keys the rule reads.
    let (s, v) = call(
        &h,
        "PUT",
        "/api/v1/rules/hot",
        Some("admin"),
        r#"{"script":"threshold","config":{"abvoe":30}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let e = v["error"].as_str().unwrap_or_default();
    assert!(e.contains("`abvoe`") && e.contains("`above`"), "{e}");
    for (body, code) in [
        (r#"{"script":"nope"}"#, "unknown_script"),
        (r#"{"script":"threshold","signals":["temp"]}"#, "bad_rule"),
        (r#"{"script":"threshold","deadline":"soon"}"#, "bad_rule"),
        (r#"{"script":"threshold","colour":"red"}"#, "bad_json"),
    ] {
        let (s, v) = call(&h, "PUT", "/api/v1/rules/x", Some("admin"), body).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}: {v}"
        );
    }
    let (_, v) = call(
        &h,
        "POST",
        "/api/v1/signals",
        Some("admin"),
        r#"{"name":"TEMP-1","fields":{"value":31}}"#,
    )
    .await;
    assert_eq!(v["accepted"][0]["executed"], true);
    let (s, _) = call(
        &h,
        "POST",
        "/api/v1/rules/hot/reset",
        Some("admin"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        &h,
        "POST",
        "/api/v1/rules/nope/reset",
        Some("admin"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(
        &h,
        "DELETE",
        "/api/v1/rules/hot",
        Some("admin"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        &h,
        "DELETE",
        "/api/v1/rules/hot",
        Some("admin"),
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(&h, "GET", "/api/v1/nothing", Some("admin"), Body::empty()).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn a_full_disk_answers_503_and_stores_nothing() {
    let h = node(true);
    call(
        &h,
        "POST",
        "/api/v1/signals",
        Some("admin"),
        r#"{"name":"WARM-UP"}"#,
    )
    .await;
    // SQLite's own "database or disk is full": no page may be added.
    h.node
        .store()
        .write_blocking(|c| {
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            c.pragma_update(None, "max_page_count", pages)?;
            Ok(())
        })
        .unwrap();
    let big: Vec<String> = (0..500)
        .map(|i| {
            format!(
                r#"{{"name":"FILL-{i}","fields":{{"pad":"{}"}}}}"#,
                "x".repeat(500)
            )
        })
        .collect();
    let (s, v) = call(
        &h,
        "POST",
        "/api/v1/signals",
        Some("admin"),
        format!("[{}]", big.join(",")),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("disk_full")),
        "{v}"
    );
    assert_eq!(event_count(&h).await, 1, "nothing of the batch was stored");
}

#[tokio::test]
async fn prune_drops_rows_past_the_retention() {
    let h = node(true);
    call(
        &h,
        "POST",
        "/api/v1/signals",
        Some("admin"),
        r#"[{"name":"OLD"},{"name":"NEW"}]"#,
    )
    .await;
    h.node
        .store()
        .write_blocking(|c| {
            Ok(c.execute(
                "UPDATE event_log SET received_at = 0 WHERE name = 'OLD'",
                [],
            )?)
        })
        .unwrap();
    let (events, _) = h.node.prune().await.unwrap();
    assert_eq!(events, 1);
    let (_, v) = call(&h, "GET", "/api/v1/events", Some("admin"), Body::empty()).await;
    assert_eq!(v[0]["name"], "NEW");
    // While a failover is open, pending signals and executed keys stay.
    h.node
        .store()
        .write_blocking(|c| {
            c.execute_batch(
                "INSERT INTO event_log (id, key, name, source, time, received_at, fields, node, status)
                     VALUES (100, 'p1', 'X', '', 0, 0, '{}', 'n1', 'pending');
                 INSERT INTO executed_key (key, at) VALUES ('e1', 0);
                 INSERT INTO failover_log (node, started_at, reason, failback_mode) VALUES ('n1', 0, 'test', 'auto');",
            )?;
            Ok(())
        })
        .unwrap();
    h.node.prune().await.unwrap();
    let kept: (i64, i64) = h
        .node
        .store()
        .read_blocking(|c| {
            Ok((
                c.query_row(
                    "SELECT count(*) FROM event_log WHERE status = 'pending'",
                    [],
                    |r| r.get(0),
                )?,
                c.query_row(
                    "SELECT count(*) FROM executed_key WHERE key = 'e1'",
                    [],
                    |r| r.get(0),
                )?,
            ))
        })
        .unwrap();
    assert_eq!(kept, (1, 1), "kept while the failover is open");
    h.node
        .store()
        .write_blocking(|c| Ok(c.execute("UPDATE failover_log SET ended_at = 1", [])?))
        .unwrap();
    h.node.prune().await.unwrap();
    let gone: i64 = h
        .node
        .store()
        .read_blocking(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM executed_key WHERE key = 'e1'",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(gone, 0, "pruned once it closed");
    // Even with every row pruned, a reopened node never reuses an id.
    h.node
        .store()
        .write_blocking(|c| Ok(c.execute("DELETE FROM event_log", [])?))
        .unwrap();
    let dir = h.node.config().node.data_dir.clone();
    let text = format!(
        "[node]\nname = \"n1\"\ndata_dir = \"{}\"\n[admin]\ntoken = \"admin\"\n",
        dir.display()
    );
    let again = Harness {
        node: Node::open(Config::parse(&text).unwrap(), Gate::new(true)).unwrap(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let (_, v) = call(
        &again,
        "POST",
        "/api/v1/signals",
        Some("admin"),
        r#"{"name":"LATER"}"#,
    )
    .await;
    assert_eq!(
        v["accepted"][0]["id"], 3,
        "ids 1 and 2 were handed out before"
    );
}

/// A person body.
fn person(address: &str) -> String {
    serde_json::json!({ "address": address }).to_string()
}

#[tokio::test]
async fn contacts_persons_groups_and_members_with_each_bad_field_named() {
    let h = node(true);
    let admin = Some("admin");
    // Create, read, update.
    let (s, v) = call(
        &h,
        "POST",
        "/api/v1/persons",
        admin,
        r#"{"name": "ann", "address": "ann@example.org", "addresses": {"sms": "+15550100"}}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["addresses"]["sms"], "+15550100");
    let (s, _) = call(
        &h,
        "PUT",
        "/api/v1/persons/bob",
        admin,
        person("bob@example.org"),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = call(
        &h,
        "PUT",
        "/api/v1/persons/bob",
        admin,
        person("b2@example.org"),
    )
    .await;
    assert_eq!(
        (s, v["address"].as_str()),
        (StatusCode::OK, Some("b2@example.org"))
    );
    // Each refusal names its field, and writes nothing.
    for (method, uri, body, field, code) in [
        (
            "POST",
            "/api/v1/persons",
            r#"{"name": "ann", "address": "a@example.org"}"#,
            "name",
            "duplicate_name",
        ),
        (
            "POST",
            "/api/v1/persons",
            r#"{"name": "cy", "address": "cy@"}"#,
            "address",
            "invalid_field",
        ),
        (
            "POST",
            "/api/v1/persons",
            r#"{"name": "cy", "addresses": {"email": "cy at example"}}"#,
            "addresses",
            "invalid_field",
        ),
        (
            "POST",
            "/api/v1/persons",
            r#"{"name": "c:y", "address": "cy@example.org"}"#,
            "name",
            "invalid_field",
        ),
        (
            "POST",
            "/api/v1/persons",
            r#"{"name": "cy"}"#,
            "address",
            "invalid_field",
        ),
        (
            "POST",
            "/api/v1/groups",
            r#"{"name": "it", "members": ["ann", "zed"]}"#,
            "members",
            "invalid_field",
        ),
        (
            "POST",
            "/api/v1/groups",
            r#"{"name": ""}"#,
            "name",
            "invalid_field",
        ),
    ] {
        let (s, v) = call(&h, method, uri, admin, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(
            (v["field"].as_str(), v["code"].as_str()),
            (Some(field), Some(code)),
            "{body}: {v}"
        );
    }
    // Not JSON, unknown fields, a wrong type: 400 too.
    for body in [
        "{",
        r#"{"name": "cy", "address": "cy@example.org", "admin": true}"#,
        r#"{"name": 7}"#,
    ] {
        let (s, v) = call(&h, "POST", "/api/v1/persons", admin, body).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_body")),
            "{body}"
        );
    }
    let (_, v) = call(&h, "GET", "/api/v1/persons", admin, Body::empty()).await;
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    let (_, v) = call(&h, "GET", "/api/v1/groups", admin, Body::empty()).await;
    assert_eq!(v, serde_json::json!([]));
    // Groups and members.
    let (s, v) = call(
        &h,
        "POST",
        "/api/v1/groups",
        admin,
        r#"{"name": "it", "members": ["ann"]}"#,
    )
    .await;
    assert_eq!(
        (s, &v["members"]),
        (StatusCode::CREATED, &serde_json::json!(["ann"]))
    );
    let (s, v) = call(
        &h,
        "POST",
        "/api/v1/groups/it/members",
        admin,
        r#"{"person": "bob"}"#,
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, serde_json::json!(["ann", "bob"])));
    let (s, v) = call(
        &h,
        "POST",
        "/api/v1/groups/it/members",
        admin,
        r#"{"person": "zed"}"#,
    )
    .await;
    assert_eq!(
        (s, v["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("members"))
    );
    let (_, v) = call(&h, "GET", "/api/v1/persons/ann", admin, Body::empty()).await;
    assert_eq!(v["groups"], serde_json::json!(["it"]));
    let (s, v) = call(
        &h,
        "DELETE",
        "/api/v1/groups/it/members/ann",
        admin,
        Body::empty(),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, serde_json::json!(["bob"])));
    let (s, _) = call(
        &h,
        "DELETE",
        "/api/v1/groups/it/members/ann",
        admin,
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(
        &h,
        "PUT",
        "/api/v1/groups/it/members",
        admin,
        r#"["ann", "bob"]"#,
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, serde_json::json!(["ann", "bob"])));
    let (s, _) = call(
        &h,
        "GET",
        "/api/v1/groups/nope/members",
        admin,
        Body::empty(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Deleting a person takes them out of their groups.
    let (s, _) = call(&h, "DELETE", "/api/v1/persons/bob", admin, Body::empty()).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = call(&h, "GET", "/api/v1/groups/it", admin, Body::empty()).await;
    assert_eq!(v["members"], serde_json::json!(["ann"]));
    let (s, _) = call(&h, "DELETE", "/api/v1/groups/it", admin, Body::empty()).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(&h, "DELETE", "/api/v1/groups/it", admin, Body::empty()).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The ingest token cannot touch contacts.
    let (s, _) = call(&h, "GET", "/api/v1/persons", Some("ingest"), Body::empty()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn contacts_are_read_only_on_a_secondary_that_syncs_them() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"[node]
name = "wat4120"
data_dir = "{}"
[admin]
token = "admin"
[failover]
role = "secondary"
rank = 2
primary = "dev4120"
secondary = "wat4120"
listen = "127.0.0.1:0"
peer_admin = "http://127.0.0.1:1"
secret = "k3Jq9ZxV2mWp7RtL0sYb4NcH8eGdF6uA"
table_sync_types = ["contact"]
"#,
        dir.path().display()
    );
    let h = Harness {
        node: Node::open(Config::parse(&text).unwrap(), Gate::new(false)).unwrap(),
        _dir: dir,
    };
    for (method, uri, body) in [
        (
            "POST",
            "/api/v1/persons",
            r#"{"name": "ann", "address": "ann@example.org"}"#,
        ),
        (
            "PUT",
            "/api/v1/persons/ann",
            r#"{"address": "ann@example.org"}"#,
        ),
        ("DELETE", "/api/v1/persons/ann", ""),
        ("POST", "/api/v1/groups", r#"{"name": "it"}"#),
        ("PUT", "/api/v1/groups/it/members", "[]"),
        ("DELETE", "/api/v1/groups/it", ""),
    ] {
        let (s, v) = call(&h, method, uri, Some("admin"), body).await;
        assert_eq!(s, StatusCode::CONFLICT, "{method} {uri}: {v}");
        assert!(v["error"].as_str().unwrap().contains("dev4120"), "{v}");
    }
    // Reading is fine.
    let (s, _) = call(&h, "GET", "/api/v1/persons", Some("admin"), Body::empty()).await;
    assert_eq!(s, StatusCode::OK);
}
