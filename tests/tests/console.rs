//! The web console in a real headless Chromium (WebDriver, `fantoccini`)
//! against a real pair: sign in, see both nodes, keep contacts, upload a
//! rule and see it run, see the event and the notification reach every
//! member of a group, switch over and see the roles swap; a `<script>` in
//! a signal stays text, and a form posted from another site is refused.
//! A screenshot of each page goes to `target/console-screenshots/`
//! (docs/console.md shows them).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use tandem_tests::browser::Browser;
use tandem_tests::http::{get, request};
use tandem_tests::pair::{ONE_AT_A_TIME, Opts, WAIT, start_pair, wait_normal};
use tandem_tests::sample_wasm;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Sign in to `base` with `token`; the page after.
async fn sign_in(b: &Browser, base: &str, token: &str) -> String {
    b.goto(&format!("{base}/ui/login")).await;
    b.fill("input[name=token]", token).await;
    b.click("button[type=submit]").await;
    b.wait_here("the page after sign-in", WAIT, |s| {
        s.contains("Sign out") || s.contains("Sign-in failed.")
    })
    .await;
    b.source().await
}

#[test]
fn a_pair_operated_from_the_browser() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pair = start_pair(Opts::default(), None);
    wait_normal(&pair);
    let (p, s) = (pair.p.admin().to_owned(), pair.s.admin().to_owned());
    let work = tempfile::tempdir().expect("tempdir");
    runtime().block_on(async {
        let b = Browser::start().await;

        // A wrong token: refused, with no hint.
        let page = sign_in(&b, &p, "admin-but-wrong").await;
        assert!(page.contains("Sign-in failed."), "{page}");
        assert!(!page.contains("Sign out"));
        b.screenshot("sign-in").await;

        // Signed in: this node active, its peer standby.
        let page = sign_in(&b, &p, "admin").await;
        assert!(page.contains("dev4120"), "{page}");
        assert!(
            page.contains(r#"<span class="badge active">active</span>"#),
            "{page}"
        );
        b.wait_for(&format!("{p}/ui/"), "the peer's state", WAIT, |s| {
            s.contains("wat4120")
                && s.contains(r#"<span class="badge standby">standby</span>"#)
                && s.contains("ms (its clock minus ours)")
        })
        .await;
        b.screenshot("status").await;

        // Contacts: two people and a group of both.
        b.goto(&format!("{p}/ui/contacts")).await;
        for (name, addr) in [("ann", "ann@example.org"), ("bob", "bob@example.org")] {
            b.fill("form[action='/ui/contacts/persons'] input[name=name]", name)
                .await;
            b.fill(
                "form[action='/ui/contacts/persons'] input[name=address]",
                addr,
            )
            .await;
            b.click("form[action='/ui/contacts/persons'] button[type=submit]")
                .await;
            let cell = format!("<td>{name}</td>");
            b.wait_here(name, WAIT, |s| s.contains(&cell)).await;
        }
        b.fill(
            "form[action='/ui/contacts/groups'] input[name=name]",
            "security",
        )
        .await;
        b.fill(
            "form[action='/ui/contacts/groups'] input[name=members]",
            "ann, bob",
        )
        .await;
        b.click("form[action='/ui/contacts/groups'] button[type=submit]")
            .await;
        b.wait_here("the group", WAIT, |s| s.contains("<td>security</td>"))
            .await;
        let page = b.source().await;
        assert!(
            page.contains("<td>security</td>") && page.contains("<td>ann, bob</td>"),
            "{page}"
        );
        b.screenshot("contacts").await;

        // Upload a rule with its sidecar: listed, loaded.
        let sidecar = work.path().join("panic.toml");
        std::fs::write(
            &sidecar,
            "signals = [\"PANIC-*\"]\n[config]\nto = \"group:security\"\n",
        )
        .expect("sidecar");
        b.goto(&format!("{p}/ui/rules")).await;
        b.fill("input[name=name]", "panic").await;
        b.fill(
            "input[name=wasm]",
            &sample_wasm("panic_button")
                .canonicalize()
                .expect("wasm path")
                .display()
                .to_string(),
        )
        .await;
        b.fill("input[name=sidecar]", &sidecar.display().to_string())
            .await;
        b.click("form[action='/ui/rules/upload'] button[type=submit]")
            .await;
        b.wait_here("the upload's answer", WAIT, |s| {
            s.contains("uploaded and loaded") || s.contains("upload refused")
        })
        .await;
        let page = b.source().await;
        assert!(page.contains("rule `panic` uploaded and loaded"), "{page}");
        assert!(
            page.contains("<td>panic</td>") && page.contains("<td>PANIC-*</td>"),
            "{page}"
        );
        assert!(page.contains("<td>loaded</td>"), "{page}");
        b.screenshot("rules").await;

        // A signal whose field holds a script: it runs the uploaded rule,
        // the notification reaches both members, and the script is text.
        let evil = "<script>document.title='pwned'</script>";
        let signal = serde_json::json!({
            "name": "PANIC-1", "source": "button-7", "key": "console-1",
            "fields": {"location": evil},
        });
        let a = request(
            "POST",
            &p,
            "/api/v1/signals",
            Some("ingest"),
            signal.to_string().as_bytes(),
        );
        assert_eq!(a.status, 202, "{}", a.body);
        let got = pair.hook.wait_until(WAIT, |got| got.len() >= 2);
        let mut to: Vec<&str> = got.iter().filter_map(|r| r.body["to"].as_str()).collect();
        to.sort_unstable();
        assert_eq!(to, ["ann@example.org", "bob@example.org"]);
        b.goto(&format!("{p}/ui/events?name=PANIC-1")).await;
        let page = b.source().await;
        assert!(
            page.contains("console-1") && page.contains("panic"),
            "{page}"
        );
        assert!(page.contains("&lt;script&gt;document.title"), "{page}");
        assert_ne!(b.client.title().await.expect("title"), "pwned");
        assert!(
            b.client
                .find_all(fantoccini::Locator::Css("script"))
                .await
                .expect("find")
                .is_empty(),
            "no script element on the page"
        );
        b.screenshot("events").await;
        b.wait_for(
            &format!("{p}/ui/notifications"),
            "two sent notifications",
            WAIT,
            |s| s.matches("<td>sent</td>").count() >= 2,
        )
        .await;
        assert_ne!(b.client.title().await.expect("title"), "pwned");
        b.screenshot("notifications").await;

        // Switchover: a confirmation first, then the roles swap.
        b.goto(&format!("{p}/ui/failover")).await;
        b.screenshot("failover").await;
        b.click("a[href='/ui/failover/confirm/switchover']").await;
        b.wait_here("the confirmation", WAIT, |s| s.contains("Swap the roles"))
            .await;
        let page = b.source().await;
        assert!(page.contains("Swap the roles"), "{page}");
        b.screenshot("confirm-switchover").await;
        b.click("button[name=confirm]").await;
        b.wait_here("the switchover's answer", WAIT, |s| {
            s.contains("switchover: ") || s.contains("switchover refused")
        })
        .await;
        let page = b.source().await;
        assert!(!page.contains("switchover refused"), "{page}");
        // The answer came by a redirect: a reload cannot send it again.
        let url = b.client.current_url().await.expect("url");
        assert_eq!(url.path(), "/ui/failover");
        b.wait_for(&format!("{p}/ui/"), "the roles swapped", WAIT, |s| {
            s.contains(r#"<span class="badge standby">standby</span>"#)
                && s.contains(r#"<span class="badge active">active</span>"#)
                && s.find("badge standby") < s.find("badge active")
        })
        .await;
        let (code, _) = tandem_tests::pair::status(&pair.s);
        assert_eq!(code, 200, "the secondary is active now");
        b.screenshot("status-after-switchover").await;
        // The same page on a phone's screen.
        b.client.set_window_size(390, 844).await.expect("resize");
        b.goto(&format!("{p}/ui/")).await;
        b.screenshot("status-phone").await;
        b.client.set_window_size(1280, 900).await.expect("resize");

        // The secondary's console: its own sign-in, contacts read-only
        // (synced from the primary), and the copied rows.
        sign_in(&b, &s, "admin").await;
        b.goto(&format!("{s}/ui/contacts")).await;
        let page = b.source().await;
        assert!(page.contains("synced from the primary `dev4120`"), "{page}");
        assert!(!page.contains("Add person"), "{page}");
        b.close().await;
    });
}

/// Serve one page at `127.0.0.1:PORT` for every request until dropped.
fn serve_page(html: String) -> (String, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://localhost:{}/", l.local_addr().expect("addr").port());
    let h = std::thread::spawn(move || {
        for mut c in l.incoming().flatten().take(4) {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
        }
    });
    (url, h)
}

#[test]
fn a_form_posted_from_another_site_is_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = tandem_tests::node::write_config(dir.path(), "n1", "");
    let node = tandem_tests::node::NodeProc::start(dir.path(), &cfg);
    let base = node.admin().to_owned();
    runtime().block_on(async {
        let b = Browser::start().await;
        sign_in(&b, &base, "admin").await;
        // A page elsewhere with a form aimed at the console, with a
        // made-up CSRF token; the operator, signed in, is lured to press it.
        let html = format!(
            r#"<form method="post" action="{base}/ui/contacts/persons">
<input type="hidden" name="csrf" value="00">
<input type="hidden" name="name" value="mallory">
<input type="hidden" name="address" value="mallory@example.org">
<button type="submit">win a prize</button></form>"#
        );
        let (url, _server) = serve_page(html);
        b.goto(&url).await;
        b.click("button[type=submit]").await;
        // The browser lands on the refusal (403), or on the sign-in page
        // if it did not send the session cookie across sites.
        b.wait_here("the refusal", Duration::from_secs(10), |s| {
            s.contains("cross-site form post is refused") || s.contains("Sign in")
        })
        .await;
        let persons = get(&base, "/api/v1/persons", Some("admin")).json();
        assert_eq!(persons, serde_json::json!([]), "nothing was written");
        b.close().await;
    });
}

#[test]
fn a_cluster_members_console_shows_every_groups_owner() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let c = tandem_tests::cluster::start_cluster(tandem_tests::cluster::Opts::default());
    c.wait_owners(&tandem_tests::cluster::HOME, WAIT);
    let base = c.node("elementary").admin().to_owned();
    runtime().block_on(async {
        let b = Browser::start().await;
        let page = sign_in(&b, &base, "admin").await;
        assert!(
            page.contains("href=\"/ui/cluster\""),
            "a Cluster page: {page}"
        );
        assert!(
            !page.contains("href=\"/ui/failover\""),
            "no pair page: {page}"
        );
        assert!(
            page.contains("<td>default</td><td>office</td>"),
            "owners on Status: {page}"
        );
        b.goto(&format!("{base}/ui/cluster")).await;
        let page = b.source().await;
        for (group, owner) in tandem_tests::cluster::HOME {
            let row = format!("<td>{group}</td><td>{owner}</td>");
            assert!(page.contains(&row), "{row} in {page}");
        }
        // Its own group is owned here: the header says active.
        assert!(
            page.contains(r#"<span class="badge active">active</span>"#),
            "{page}"
        );
        b.screenshot("cluster").await;
        b.close().await;
    });
}
