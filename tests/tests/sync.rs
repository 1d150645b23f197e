//! Table sync between a real primary and secondary: rules and contacts
//! copied and hot-reloaded, preconditions, read-only tables, signatures.

use std::time::Duration;

use tandem_tests::http::{get, post, request};
use tandem_tests::node::NodeProc;
use tandem_tests::pair::*;

fn opts() -> Opts {
    Opts {
        sync_types: "[\"rule\", \"contact\"]",
        rules: vec![(
            "k",
            "panic_button",
            "signals = [\"K-*\"]\n[config]\nto = \"first@example.org\"\n",
        )],
        ..Opts::default()
    }
}

fn rules(node: &NodeProc) -> Vec<serde_json::Value> {
    get(node.admin(), "/api/v1/rules", Some("admin"))
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn people(node: &NodeProc) -> Vec<(i64, String, String)> {
    let db = rusqlite::Connection::open(node.db()).expect("db");
    let mut stmt = db
        .prepare("SELECT id, name, address FROM person ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[test]
fn rules_and_contacts_sync_and_the_secondary_reloads_without_a_restart() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pair = start_pair(opts(), None);
    wait_normal(&pair);
    assert!(
        rules(&pair.s).is_empty(),
        "a synced secondary does not load its rules directory"
    );
    {
        let db = rusqlite::Connection::open(pair.p.db()).expect("db");
        db.execute_batch(
            "INSERT INTO person (id, name, address) VALUES (1, 'ann', 'ann@example.org'), (2, 'bob', 'x''); DROP TABLE person; --');
             INSERT INTO contact_group (id, name) VALUES (1, 'security');
             INSERT INTO group_member VALUES (1, 1), (1, 2);",
        )
        .expect("contacts");
    }
    let a = post(pair.p.admin(), "/api/v1/sync", Some("admin"), "");
    assert_eq!(a.status, 200, "{}", a.body);
    let r = a.json();
    assert_eq!(r["generation"], 1);
    assert_eq!(r["rows"]["person"], 2);
    assert!(
        r["bytes_compressed"]
            .as_u64()
            .is_some_and(|c| c > 0 && c < r["bytes_raw"].as_u64().unwrap_or(0))
    );
    assert_eq!(people(&pair.p), people(&pair.s), "identical rows");
    let loaded = rules(&pair.s);
    assert!(
        loaded
            .iter()
            .any(|r| r["name"] == "k" && r["loaded"] == true),
        "{loaded:?}"
    );

    // A rule changed on the primary runs its new version on the secondary.
    let body = r#"{"script":"k","signals":["K-*"],"config":{"to":"second@example.org"}}"#;
    let a = request(
        "PUT",
        pair.p.admin(),
        "/api/v1/rules/k",
        Some("admin"),
        body.as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = post(pair.p.admin(), "/api/v1/sync", Some("admin"), "");
    assert_eq!(
        (a.status, a.json()["generation"].as_i64()),
        (200, Some(2)),
        "{}",
        a.body
    );
    let k = get(pair.s.admin(), "/api/v1/rules/k", Some("admin")).json();
    assert_eq!(
        (k["config"]["to"].as_str(), k["loaded"].as_bool()),
        (Some("second@example.org"), Some(true))
    );
    // Switch over and run it there: the new version, no restart.
    assert_eq!(
        post(pair.p.admin(), "/api/v1/switchover", Some("admin"), "").status,
        200
    );
    wait_until("S active", WAIT, || status(&pair.s).0 == 200);
    let reply = post(
        pair.s.admin(),
        "/api/v1/signals",
        Some("ingest"),
        r#"{"name":"K-1","key":"sync-1"}"#,
    )
    .json();
    assert_eq!(reply["accepted"][0]["executed"], true);
    let got = pair.hook.wait_until(WAIT, |g| {
        g.iter().any(|r| r.body["signal"]["key"] == "sync-1")
    });
    let n = got
        .iter()
        .find(|r| r.body["signal"]["key"] == "sync-1")
        .expect("notified");
    assert_eq!(n.body["to"], "second@example.org");
}

#[test]
fn synced_tables_are_read_only_on_the_secondary_and_refusals_say_why() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = start_pair(opts(), None);
    wait_normal(&pair);
    let a = request(
        "PUT",
        pair.s.admin(),
        "/api/v1/scripts/x",
        Some("admin"),
        b"\0asm",
    );
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("dev4120")),
        "{}",
        a.body
    );
    // A forged internal call.
    let forged = request(
        "POST",
        pair.s.admin(),
        "/internal/v1/sync",
        None,
        b"anything",
    );
    assert_eq!(forged.status, 401, "{}", forged.body);
    // Syncing to a secondary that is down.
    pair.s.kill9();
    wait_until("the link down", WAIT, || {
        get(pair.p.admin(), "/api/v1/status", Some("admin")).json()["peer"]["link_state"] == "down"
    });
    let a = post(pair.p.admin(), "/api/v1/sync", Some("admin"), "");
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("no secondary connected")),
        "{}",
        a.body
    );
    // The refusal is in the primary's sync log.
    std::thread::sleep(Duration::from_millis(100));
    let db = rusqlite::Connection::open(pair.p.db()).expect("db");
    let logged: i64 = db
        .query_row("SELECT count(*) FROM sync_log WHERE result = 'refused' AND detail LIKE '%no secondary%'", [], |r| r.get(0))
        .expect("sync_log");
    assert_eq!(logged, 1);
}

#[test]
fn a_kill_9_of_the_secondary_during_import_leaves_the_old_data() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let o = Opts {
        advanced: "import_delay = \"2s\"",
        ..opts()
    };
    let mut pair = start_pair(o, None);
    wait_normal(&pair);
    let write = |node: &NodeProc, sql: &str| {
        rusqlite::Connection::open(node.db())
            .expect("db")
            .execute_batch(sql)
            .expect("sql");
    };
    write(&pair.p, "INSERT INTO person (id, name) VALUES (1, 'old');");
    // The first sync has to wait out the delay too.
    let a = post(pair.p.admin(), "/api/v1/sync", Some("admin"), "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(people(&pair.s).len(), 1);
    write(
        &pair.p,
        "UPDATE person SET name = 'new'; INSERT INTO person (id, name) VALUES (2, 'two');",
    );
    let admin = pair.p.admin().to_owned();
    let syncing =
        std::thread::spawn(move || post(&admin, "/api/v1/sync", Some("admin"), "").status);
    // Inside the import's delay: kill the secondary.
    std::thread::sleep(Duration::from_millis(800));
    pair.s.kill9();
    assert_ne!(
        syncing.join().expect("thread"),
        200,
        "the primary sees the failure"
    );
    pair.s.restart();
    assert_eq!(
        people(&pair.s),
        vec![(1, "old".to_owned(), String::new())],
        "the old data is intact"
    );
}

#[test]
fn sync_on_change_follows_a_rule_change_and_a_types_mismatch_is_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let o = Opts {
        failover_extra: "sync_on_change = true",
        ..opts()
    };
    let pair = start_pair(o, None);
    // Changed before the pair is up: the sync waits for the secondary and
    // both nodes to be Ready, then goes through.
    let body = r#"{"script":"k","signals":["K-*"],"config":{"to":"changed@example.org"}}"#;
    let a = request(
        "PUT",
        pair.p.admin(),
        "/api/v1/rules/k",
        Some("admin"),
        body.as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    wait_until("the change on the secondary", WAIT, || {
        get(pair.s.admin(), "/api/v1/rules/k", Some("admin")).json()["config"]["to"]
            == "changed@example.org"
    });
    // A contact change through the API syncs the same way, and the
    // secondary refuses contact changes, naming the primary.
    for (path, body) in [
        (
            "/api/v1/persons",
            r#"{"name": "ann", "address": "ann@example.org"}"#,
        ),
        ("/api/v1/groups", r#"{"name": "it", "members": ["ann"]}"#),
    ] {
        let a = post(pair.p.admin(), path, Some("admin"), body);
        assert_eq!(a.status, 201, "{}", a.body);
    }
    wait_until("the group on the secondary", WAIT, || {
        get(pair.s.admin(), "/api/v1/groups/it", Some("admin")).json()["members"]
            == serde_json::json!(["ann"])
    });
    let refused = post(
        pair.s.admin(),
        "/api/v1/persons",
        Some("admin"),
        r#"{"name": "bob", "address": "bob@example.org"}"#,
    );
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("dev4120"), "{}", refused.body);
    drop(pair);

    // Different table_sync_types on the two nodes: refused, with both lists.
    let o = Opts {
        sync_types: "[\"contact\"]",
        ..opts()
    };
    let pair = start_pair(o, None);
    wait_normal(&pair);
    // Make the secondary disagree by restarting it with another list.
    let cfg = std::fs::read_to_string(&pair.s.config).expect("config");
    std::fs::write(
        &pair.s.config,
        cfg.replace(
            "table_sync_types = [\"contact\"]",
            "table_sync_types = [\"device\"]",
        ),
    )
    .expect("write");
    let mut pair = pair;
    pair.s.restart();
    wait_normal(&pair);
    let a = post(pair.p.admin(), "/api/v1/sync", Some("admin"), "");
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("table_sync_types differ")),
        "{}",
        a.body
    );
}

#[test]
fn pull_restores_an_emptied_primary_and_import_loads_a_standalone_node() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = start_pair(opts(), None);
    wait_normal(&pair);
    rusqlite::Connection::open(pair.p.db())
        .expect("db")
        .execute_batch(
            "INSERT INTO person (id, name, address) VALUES (1, 'ann', 'a@x'), (2, 'bob', 'b@x');",
        )
        .expect("contacts");
    assert_eq!(
        post(pair.p.admin(), "/api/v1/sync", Some("admin"), "").status,
        200
    );
    let expected = people(&pair.s);
    assert_eq!(expected.len(), 2);

    // The primary is rebuilt: its data is gone.
    pair.p.kill9();
    std::fs::remove_dir_all(pair.p.dir.join("data")).expect("wipe");
    let config = pair.p.config.to_str().expect("utf-8").to_owned();
    let r = tandem_tests::tandem(&["sync", "pull", "--config", &config]);
    assert!(r.status.success(), "{r:?}");
    assert_eq!(people(&pair.p), expected, "the primary's tables are back");
    pair.p.restart();
    wait_normal(&pair);
    // The numbering goes on above the secondary's generation.
    let a = post(pair.p.admin(), "/api/v1/sync", Some("admin"), "");
    assert_eq!(
        (a.status, a.json()["generation"].as_i64()),
        (200, Some(2)),
        "{}",
        a.body
    );

    // A snapshot of the secondary, loaded into a standalone node.
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = dir.path().join("backup.snapshot");
    let s_config = pair.s.config.to_str().expect("utf-8").to_owned();
    let r = tandem_tests::tandem(&[
        "sync",
        "export",
        "--config",
        &s_config,
        "--format",
        "snapshot",
        "-o",
        snap.to_str().expect("utf-8"),
    ]);
    assert!(r.status.success(), "{r:?}");
    let standalone = tandem_tests::node::write_config(dir.path(), "solo", "");
    let r = tandem_tests::tandem(&[
        "sync",
        "import",
        "--config",
        standalone.to_str().expect("utf-8"),
        snap.to_str().expect("utf-8"),
    ]);
    assert!(r.status.success(), "{r:?}");
    assert!(r.stdout.contains("person: 2 rows"), "{}", r.stdout);
    let r = tandem_tests::tandem(&[
        "sync",
        "import",
        "--config",
        standalone.to_str().expect("utf-8"),
        snap.to_str().expect("utf-8"),
    ]);
    assert!(!r.status.success(), "the same snapshot twice is a replay");
    assert!(r.stderr.contains("not newer"), "{}", r.stderr);
    // The readable dump.
    let sql = dir.path().join("dump.sql");
    let r = tandem_tests::tandem(&[
        "sync",
        "export",
        "--config",
        &s_config,
        "--types",
        "contact",
        "-o",
        sql.to_str().expect("utf-8"),
    ]);
    assert!(r.status.success(), "{r:?}");
    let text = std::fs::read_to_string(&sql).expect("dump");
    assert!(
        text.contains(
            "INSERT INTO \"person\" (\"id\", \"name\", \"address\", \"addresses\") VALUES (1, 'ann', 'a@x', '{}');"
        ),
        "{text}"
    );
}

#[test]
fn an_unchanged_rule_keeps_its_state_across_a_sync() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut o = opts();
    o.rules.push(("t", "threshold", "signals = [\"SENSOR-*\"]\n[config]\nabove = 50\ncount = 2\nto = \"facilities@example.org\"\n"));
    let pair = start_pair(o, None);
    wait_normal(&pair);
    assert_eq!(
        post(pair.p.admin(), "/api/v1/sync", Some("admin"), "").status,
        200
    );
    assert_eq!(
        post(pair.p.admin(), "/api/v1/switchover", Some("admin"), "").status,
        200
    );
    wait_until("S active", WAIT, || status(&pair.s).0 == 200);
    let reading = |v: i64, key: &str| {
        let body = format!(
            r#"{{"name":"SENSOR-1","source":"t1","key":"{key}","fields":{{"value":{v}}}}}"#
        );
        post(pair.s.admin(), "/api/v1/signals", Some("ingest"), &body).json()
    };
    assert_eq!(reading(60, "r1")["accepted"][0]["executed"], true);
    // Another rule changes on the primary and is synced.
    let body = r#"{"script":"k","signals":["K-*"],"config":{"to":"third@example.org"}}"#;
    assert_eq!(
        request(
            "PUT",
            pair.p.admin(),
            "/api/v1/rules/k",
            Some("admin"),
            body.as_bytes()
        )
        .status,
        200
    );
    let a = post(pair.p.admin(), "/api/v1/sync", Some("admin"), "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        get(pair.s.admin(), "/api/v1/rules/k", Some("admin")).json()["config"]["to"],
        "third@example.org"
    );
    // The threshold rule kept its streak: the second reading completes it.
    reading(70, "r2");
    let got = pair.hook.wait_until(WAIT, |g| {
        g.iter().any(|r| r.body["to"] == "facilities@example.org")
    });
    let n = got
        .iter()
        .find(|r| r.body["to"] == "facilities@example.org")
        .expect("notified");
    assert_eq!(n.body["signal"]["key"], "r2");
}

/// Raw HTTP: send `head` (and then `body`), read whatever answer comes
/// within `limit`.
fn raw_exchange(addr: &str, head: &str, body: &[u8], limit: Duration) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(limit)).expect("timeout");
    s.write_all(head.as_bytes()).expect("head");
    let _ = s.write_all(body);
    let mut out = vec![0u8; 4096];
    let n = s.read(&mut out).unwrap_or(0);
    String::from_utf8_lossy(&out[..n]).into_owned()
}

fn data_files(node: &NodeProc) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(node.dir.join("data"))
        .expect("data dir")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("tandem.db"))
        .collect()
}

#[test]
fn an_unsigned_upload_is_refused_before_its_body_and_cannot_swap_a_signed_one() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pair = start_pair(opts(), None);
    wait_normal(&pair);
    let addr = pair.s.admin().trim_start_matches("http://").to_owned();
    let before = data_files(&pair.s);
    // Parked: a Content-Length and no body. The answer comes at once.
    let parked = raw_exchange(
        &addr,
        "POST /internal/v1/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 713\r\n\r\n",
        b"",
        Duration::from_secs(10),
    );
    assert!(parked.starts_with("HTTP/1.1 401"), "{parked}");
    // A forged snapshot of 10 MB: refused without being stored.
    let forged = raw_exchange(
        &addr,
        "POST /internal/v1/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 41943040\r\n\
         x-tandem-timestamp: 1\r\nx-tandem-nonce: 00112233445566778899aabbccddeeff\r\n\
         x-tandem-content-sha256: 0000000000000000000000000000000000000000000000000000000000000000\r\n\
         x-tandem-content-length: 41943040\r\nx-tandem-signature: 00\r\n\r\n",
        &vec![b'z'; 10 << 20],
        Duration::from_secs(10),
    );
    assert!(forged.starts_with("HTTP/1.1 401"), "{forged}");
    // The signed sync goes through with the primary's data, not an
    // attacker's, and nothing is left behind.
    let a = post(pair.p.admin(), "/api/v1/sync", Some("admin"), "");
    assert_eq!(a.status, 200, "{}", a.body);
    let names: Vec<_> = rules(&pair.s)
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(names.contains(&"k".to_owned()), "{names:?}");
    assert_eq!(data_files(&pair.s), before, "no temporary file left");
    let status = get(pair.s.admin(), "/api/v1/status", Some("admin")).json();
    assert_eq!(status["last_sync"]["direction"], "import", "{status}");
    assert_eq!(status["last_sync"]["result"], "ok", "{status}");
}

#[test]
fn a_sync_reaches_a_secondary_behind_a_tls_proxy_with_its_own_ca() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut pair = start_pair(opts(), None);
    let ca = tandem_tests::tls::TestCa::new();
    let ca_file = ca.write_ca(&pair.p.dir);
    let front = tandem_tests::tls::TlsFront::start(
        pair.s.admin().trim_start_matches("http://"),
        ca.server.clone(),
    );
    let config = std::fs::read_to_string(&pair.p.config).expect("config");
    let config = config.replace(
        &format!("peer_admin = \"{}\"", pair.s.admin()),
        &format!(
            "peer_admin = \"{}\"\npeer_ca_file = \"{}\"",
            front.url(),
            ca_file.display()
        ),
    );
    assert!(config.contains("https://"), "{config}");
    std::fs::write(&pair.p.config, config).expect("config");
    pair.p.restart();
    wait_normal(&pair);
    let a = post(pair.p.admin(), "/api/v1/sync", Some("admin"), "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(rules(&pair.s).iter().any(|r| r["name"] == "k"));
}
