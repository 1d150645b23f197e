//! Delivery to real servers on loopback: an HTTPS receiver with a
//! certificate made in the test, Debian's aiosmtpd (plain, STARTTLS with
//! authentication), a receiver that hangs beside a healthy one, and one
//! that answers 429 with Retry-After.

use std::path::Path;
use std::time::{Duration, Instant};

use tandem_tests::http::{get, post};
use tandem_tests::node::{NodeProc, write_config};
use tandem_tests::sample_wasm;
use tandem_tests::smtp::{Smtp, SmtpOpts};
use tandem_tests::tls::TestCa;
use tandem_tests::webhook::{Hang, Webhook};

const WAIT: Duration = Duration::from_secs(30);

/// A node with panic-button (to `group:security`) and `sinks` (TOML).
fn node(dir: &Path, sinks: &str) -> NodeProc {
    let rd = dir.join("rules");
    std::fs::create_dir_all(&rd).expect("mkdir");
    std::fs::copy(sample_wasm("panic_button"), rd.join("panic.wasm")).expect("copy");
    let config = write_config(
        dir,
        "n1",
        &format!("[rules]\ndir = \"{}\"\n\n{sinks}", rd.display()),
    );
    NodeProc::start(dir, &config)
}

fn panic(node: &NodeProc, key: &str) -> Instant {
    let a = post(
        node.admin(),
        "/api/v1/signals",
        Some("ingest"),
        &format!(r#"{{"name":"PANIC-1","key":"{key}","fields":{{"location":"hall"}}}}"#),
    );
    assert_eq!(a.status, 202, "{}", a.body);
    Instant::now()
}

fn notifications(node: &NodeProc) -> Vec<serde_json::Value> {
    get(node.admin(), "/api/v1/notifications", Some("admin"))
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Two people in group `security`.
fn two_people(node: &NodeProc) {
    rusqlite::Connection::open(node.db())
        .expect("db")
        .execute_batch(
            "INSERT INTO person (id, name, address) VALUES (1, 'ann', 'ann@example.org'), (2, 'bob', 'bob@example.org');
             INSERT INTO contact_group (id, name) VALUES (1, 'security');
             INSERT INTO group_member VALUES (1, 1), (1, 2);",
        )
        .expect("contacts");
}

#[test]
fn https_webhooks_trust_the_ca_file_and_refuse_an_unknown_issuer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let ca_file = ca.write_ca(dir.path());
    let hook = Webhook::start_tls(ca.server.clone());
    let sinks = format!(
        "[[sinks]]\nname = \"trusted\"\nkind = \"webhook\"\nurl = \"{url}\"\nca_file = \"{ca}\"\n\
         headers = {{ Authorization = \"Bearer s3cret\" }}\n\
         [[sinks]]\nname = \"slack\"\nkind = \"webhook\"\nurl = \"{url}\"\nca_file = \"{ca}\"\nformat = \"slack\"\n\
         [[sinks]]\nname = \"untrusted\"\nkind = \"webhook\"\nurl = \"{url}\"\nmax_attempts = 1\n",
        url = hook.url(),
        ca = ca_file.display()
    );
    let node = node(dir.path(), &sinks);
    panic(&node, "tls-1");
    let got = hook.wait_for_delivered(2, WAIT);
    let tandem = got
        .iter()
        .find(|r| r.body.get("id").is_some())
        .expect("the tandem body");
    assert_eq!(tandem.body["signal"]["key"], "tls-1");
    assert!(
        tandem
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == "Bearer s3cret"),
        "{:?}",
        tandem.headers
    );
    let slack = got
        .iter()
        .find(|r| r.body.get("text").is_some())
        .expect("the slack body");
    assert!(
        slack.body["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("PANIC at hall: ")),
        "{}",
        slack.body
    );
    // Without the CA: a delivery failure naming the host and why.
    let t = Instant::now();
    let failed = loop {
        let rows = notifications(&node);
        if let Some(f) = rows
            .iter()
            .find(|n| n["sink"] == "untrusted" && n["status"] == "failed")
        {
            break f.clone();
        }
        assert!(t.elapsed() < WAIT, "{rows:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(hook.addr()) && error.to_ascii_lowercase().contains("certificate"),
        "{error}"
    );
    assert_eq!(
        hook.received().len(),
        2,
        "nothing reached the receiver untrusted"
    );
}

#[test]
fn a_hanging_sink_does_not_delay_a_healthy_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hang = Hang::start();
    let hook = Webhook::start();
    let sinks = format!(
        "[[sinks]]\nname = \"hung\"\nkind = \"webhook\"\nurl = \"{}\"\nconcurrency = 2\ntimeout = \"20s\"\n\
         [[sinks]]\nname = \"healthy\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        hang.url(),
        hook.url()
    );
    let node = node(dir.path(), &sinks);
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push((format!("h{i}"), panic(&node, &format!("h{i}"))));
    }
    let got = hook.wait_for_delivered(20, WAIT);
    for (key, at) in &sent {
        let r = got
            .iter()
            .find(|r| r.body["signal"]["key"] == key.as_str())
            .unwrap_or_else(|| panic!("{key} not delivered"));
        let latency = r.at.saturating_duration_since(*at);
        assert!(
            latency < Duration::from_secs(3),
            "{key} took {latency:?} beside a hung sink"
        );
    }
    assert!(hang.accepted() >= 2, "the hung sink really hung");
}

#[test]
fn a_429_with_retry_after_is_retried_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    hook.answer_with(&[429]);
    hook.retry_after("1");
    let sinks = format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        hook.url()
    );
    let node = node(dir.path(), &sinks);
    panic(&node, "ra-1");
    let got = hook.wait_for_delivered(1, WAIT);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!((got[0].answered, got[1].answered), (429, 200));
    let gap = got[1].at.saturating_duration_since(got[0].at);
    assert!(gap >= Duration::from_millis(900), "retried after {gap:?}");
    assert_eq!(got[0].idempotency_key, got[1].idempotency_key);
}

#[test]
fn email_goes_to_each_member_of_a_group_with_a_message_id_from_the_notification() {
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = Smtp::start(dir.path(), SmtpOpts::default());
    let sinks = format!(
        "[[sinks]]\nname = \"mail\"\nkind = \"email\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
         from = \"Tandem <tandem@example.org>\"\n",
        smtp.port
    );
    let node = node(dir.path(), &sinks);
    two_people(&node);
    panic(&node, "mail-1");
    let got = smtp.wait_for(2, WAIT);
    let mut to: Vec<String> = got.iter().map(|m| m["to"][0].to_string()).collect();
    to.sort();
    assert_eq!(to, ["\"ann@example.org\"", "\"bob@example.org\""]);
    let ids: Vec<String> = notifications(&node)
        .iter()
        .filter_map(|n| n["id"].as_str().map(str::to_owned))
        .collect();
    for m in &got {
        let content = m["content"].as_str().unwrap_or_default();
        assert!(content.contains("Subject: PANIC at hall"), "{content}");
        assert!(
            ids.iter()
                .any(|id| content.contains(&format!("Message-ID: <{id}@tandem>"))),
            "{ids:?} {content}"
        );
        assert_eq!(m["tls"], false);
    }
}

#[test]
fn email_with_starttls_and_authentication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new();
    let ca_file = ca.write_ca(dir.path());
    let (cert, key) = ca.write_server(dir.path());
    let smtp = Smtp::start(
        dir.path(),
        SmtpOpts {
            starttls: Some((&cert, &key)),
            auth: Some(("tandem", "mail-pass")),
        },
    );
    let sinks = format!(
        "[[sinks]]\nname = \"mail\"\nkind = \"email\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\n\
         ca_file = \"{}\"\nusername = \"tandem\"\npassword = \"mail-pass\"\nfrom = \"tandem@example.org\"\n",
        smtp.port,
        ca_file.display()
    );
    let node = node(dir.path(), &sinks);
    two_people(&node);
    panic(&node, "mail-tls");
    let got = smtp.wait_for(2, WAIT);
    for m in &got {
        assert_eq!(
            (m["tls"].clone(), m["auth"].clone()),
            (true.into(), true.into()),
            "{m}"
        );
    }
}

#[test]
fn a_kill_9_during_delivery_resends_what_was_in_flight_under_the_same_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = Webhook::start();
    // The first four requests (the sink's concurrency) hang in flight.
    hook.answer_with(&[0, 0, 0, 0]);
    let sinks = format!(
        "[[sinks]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\ntimeout = \"60s\"\n",
        hook.url()
    );
    let mut node = node(dir.path(), &sinks);
    for i in 0..10 {
        panic(&node, &format!("kill-{i}"));
    }
    let hung = hook.wait_until(WAIT, |g| g.iter().filter(|r| r.answered == 0).count() == 4);
    node.kill9();
    node.restart();
    let got = hook.wait_for_delivered(10, WAIT);
    let mut delivered: Vec<String> = got
        .iter()
        .filter(|r| r.answered == 200)
        .filter_map(|r| r.idempotency_key.clone())
        .collect();
    delivered.sort();
    let before = delivered.len();
    delivered.dedup();
    assert_eq!(
        (before, delivered.len()),
        (10, 10),
        "each row delivered once"
    );
    for h in hung.iter().filter(|r| r.answered == 0) {
        assert!(
            h.idempotency_key
                .as_ref()
                .is_some_and(|k| delivered.contains(k)),
            "the hung request was sent again under its key"
        );
    }
}
