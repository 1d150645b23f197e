//! The web console in-process: `app(node)` driven with `oneshot`, on a real
//! SQLite file: sign-in, the session cookie, CSRF, cross-site posts, and
//! escaping of what signals and contacts put on a page.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tandem_host::config::Config;
use tandem_host::engine::Gate;
use tandem_host::node::Node;
use tower::ServiceExt;

/// A node and its app, built once as the server builds it (sessions
/// signed out live in the app).
struct Harness {
    node: Arc<Node>,
    app: axum::Router,
    _dir: tempfile::TempDir,
}

fn node() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nname = \"n1\"\ndata_dir = \"{}\"\n[admin]\ntoken = \"admin\"\ningest_token = \"ingest\"\n",
        dir.path().display()
    );
    let node = Node::open(Config::parse(&text).unwrap(), Gate::new(true)).unwrap();
    let app = tandem_host::admin::app(node.clone(), None);
    Harness {
        node,
        app,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    cookie: Option<String>,
    body: String,
}

async fn call(
    h: &Harness,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "console.test");
    if method == "POST"
        && !uri.starts_with("/api/")
        && !headers.iter().any(|(k, _)| *k == "content-type")
    {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = h
        .app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let get = |n: header::HeaderName| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (location, cookie) = (get(header::LOCATION), get(header::SET_COOKIE));
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    Answer {
        status,
        location,
        cookie,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// Sign in; the `Cookie` header value.
async fn sign_in(h: &Harness) -> String {
    let a = call(h, "POST", "/ui/login", &[], "token=admin").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    let set = a.cookie.unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// The CSRF token a page carries.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").unwrap() + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn sign_in_refuses_a_wrong_token_without_a_hint_and_sets_a_strict_expiring_cookie() {
    let h = node();
    let a = call(&h, "GET", "/ui/", &[], "").await;
    assert_eq!(a.location.as_deref(), Some("/ui/login"));
    let a = call(&h, "GET", "/", &[], "").await;
    assert_eq!(a.location.as_deref(), Some("/ui/"));
    // Two wrong tokens (one a prefix of the right one) and none: the same
    // answer, naming nothing.
    let mut bodies = Vec::new();
    for form in ["token=adm", "token=wrong-token", ""] {
        let a = call(&h, "POST", "/ui/login", &[], form).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{form}");
        assert!(a.cookie.is_none());
        assert!(a.body.contains("Sign-in failed."));
        bodies.push(a.body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    // The ingest token is not a console token.
    let a = call(&h, "POST", "/ui/login", &[], "token=ingest").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // The right one.
    let a = call(&h, "POST", "/ui/login", &[], "token=admin").await;
    assert_eq!(a.location.as_deref(), Some("/ui/"));
    let set = a.cookie.unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Max-Age=28800", "Path=/"] {
        assert!(set.contains(part), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    let a = call(&h, "GET", "/ui/", &[("cookie", &cookie)], "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.body.contains("n1") && a.body.contains("active"),
        "{}",
        a.body
    );
    // A tampered cookie is no session.
    let last = if cookie.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{last}", &cookie[..cookie.len() - 1]);
    let a = call(&h, "GET", "/ui/", &[("cookie", &tampered)], "").await;
    assert_eq!(a.location.as_deref(), Some("/ui/login"));
    // Sign-out needs the CSRF token, then ends the session.
    let page = call(&h, "GET", "/ui/", &[("cookie", &cookie)], "")
        .await
        .body;
    let a = call(&h, "POST", "/ui/logout", &[("cookie", &cookie)], "").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let form = format!("csrf={}", csrf(&page));
    let a = call(&h, "POST", "/ui/logout", &[("cookie", &cookie)], &form).await;
    assert_eq!(a.location.as_deref(), Some("/ui/login"));
    assert!(a.cookie.unwrap().contains("Max-Age=0"));
    let a = call(&h, "GET", "/ui/", &[("cookie", &cookie)], "").await;
    assert_eq!(a.location.as_deref(), Some("/ui/login"));
    // A restart (a new app on the same data dir) remembers the sign-out,
    // and still takes a session it did not see end.
    let other = sign_in(&h).await;
    let restarted = Harness {
        app: tandem_host::admin::app(h.node.clone(), None),
        node: h.node.clone(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let a = call(&restarted, "GET", "/ui/", &[("cookie", &cookie)], "").await;
    assert_eq!(
        a.location.as_deref(),
        Some("/ui/login"),
        "signed out stays out"
    );
    let a = call(&restarted, "GET", "/ui/", &[("cookie", &other)], "").await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn forms_need_the_sessions_csrf_token_and_a_cross_site_post_is_refused() {
    let h = node();
    let cookie = sign_in(&h).await;
    let other = sign_in(&h).await;
    let page = call(&h, "GET", "/ui/contacts", &[("cookie", &cookie)], "").await;
    assert_eq!(page.status, StatusCode::OK);
    let token = csrf(&page.body);
    let other_token = csrf(
        &call(&h, "GET", "/ui/contacts", &[("cookie", &other)], "")
            .await
            .body,
    );
    let person = |t: &str| format!("csrf={t}&name=ann&address=&email=ann%40example.org");
    for (headers, body) in [
        (
            vec![("cookie", cookie.as_str())],
            "name=ann&email=ann%40example.org".to_owned(),
        ),
        (vec![("cookie", cookie.as_str())], person("00")),
        (vec![("cookie", cookie.as_str())], person(&other_token)),
        (
            vec![
                ("cookie", cookie.as_str()),
                ("origin", "http://evil.example"),
            ],
            person(&token),
        ),
        (
            vec![
                ("cookie", cookie.as_str()),
                ("sec-fetch-site", "cross-site"),
            ],
            person(&token),
        ),
    ] {
        let a = call(&h, "POST", "/ui/contacts/persons", &headers, &body).await;
        assert_eq!(
            a.status,
            StatusCode::FORBIDDEN,
            "{headers:?} {body}: {}",
            a.body
        );
    }
    // Without a session, the sign-in page.
    let a = call(&h, "POST", "/ui/contacts/persons", &[], &person(&token)).await;
    assert_eq!(a.location.as_deref(), Some("/ui/login"));
    let list = || async {
        h.node
            .store()
            .read(|c| Ok(tandem_host::store::contacts::list_persons(c).unwrap()))
            .await
            .unwrap()
    };
    assert!(list().await.is_empty(), "nothing refused was written");
    // Same origin, right token: written.
    let a = call(
        &h,
        "POST",
        "/ui/contacts/persons",
        &[
            ("cookie", &cookie),
            ("origin", "http://console.test"),
            ("sec-fetch-site", "same-origin"),
        ],
        &person(&token),
    )
    .await;
    assert_eq!(a.location.as_deref(), Some("/ui/contacts"), "{}", a.body);
    assert_eq!(list().await[0].addresses["email"], "ann@example.org");
    // A refused field is shown on the page, and nothing is written.
    let bad = format!("csrf={token}&name=bob&email=bob%40");
    let a = call(
        &h,
        "POST",
        "/ui/contacts/persons",
        &[("cookie", &cookie)],
        &bad,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body.contains("not an email address"), "{}", a.body);
    assert_eq!(list().await.len(), 1);
    let group = format!("csrf={token}&name=it&members=ann");
    let a = call(
        &h,
        "POST",
        "/ui/contacts/groups",
        &[("cookie", &cookie)],
        &group,
    )
    .await;
    assert_eq!(a.location.as_deref(), Some("/ui/contacts"), "{}", a.body);
    let page = call(&h, "GET", "/ui/contacts", &[("cookie", &cookie)], "")
        .await
        .body;
    assert!(
        page.contains("<td>it</td>") && page.contains("<td>ann</td>"),
        "{page}"
    );
}

#[tokio::test]
async fn what_signals_and_contacts_put_on_a_page_shows_as_text() {
    let h = node();
    let cookie = sign_in(&h).await;
    let evil = "<script>alert(1)</script>";
    let signal = serde_json::json!({"name": "DOOR-1", "key": evil, "fields": {"note": evil}});
    let resp = h
        .app
        .clone()
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/api/v1/signals")
                .header("authorization", "Bearer admin")
                .header("content-type", "application/json")
                .body(Body::from(signal.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    h.node
        .store()
        .write(|c| {
            c.execute(
                "INSERT INTO person (name, address) VALUES ('<b>x</b>', '<img src=x onerror=alert(1)>')",
                [],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    for page in ["/ui/events", "/ui/events?name=%3Cscript%3E", "/ui/contacts"] {
        let a = call(&h, "GET", page, &[("cookie", &cookie)], "").await;
        assert_eq!(a.status, StatusCode::OK, "{page}");
        for raw in ["<script>", "<img", "<b>x"] {
            assert!(
                !a.body.contains(raw),
                "{page} holds {raw} unescaped: {}",
                a.body
            );
        }
    }
    let events = call(&h, "GET", "/ui/events", &[("cookie", &cookie)], "")
        .await
        .body;
    assert!(
        events.contains("&#60;script&#62;") || events.contains("&lt;script&gt;"),
        "{events}"
    );
}

#[tokio::test]
async fn events_filter_by_name_glob_key_and_status_newest_first() {
    let h = node();
    let cookie = sign_in(&h).await;
    let batch = serde_json::json!([
        {"name": "DOOR-1", "key": "k-door-1"},
        {"name": "DOOR-2", "key": "k-door-2"},
        {"name": "PANIC-1", "key": "k-panic-1"},
    ]);
    let a = call(
        &h,
        "POST",
        "/api/v1/signals",
        &[
            ("authorization", "Bearer ingest"),
            ("content-type", "application/json"),
        ],
        &batch.to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let page = |q: &'static str| {
        let cookie = cookie.clone();
        let h = &h;
        async move {
            call(
                h,
                "GET",
                &format!("/ui/events{q}"),
                &[("cookie", &cookie)],
                "",
            )
            .await
            .body
        }
    };
    let all = page("").await;
    let (d1, d2, p1) = (
        all.find("k-door-1").unwrap(),
        all.find("k-door-2").unwrap(),
        all.find("k-panic-1").unwrap(),
    );
    assert!(p1 < d2 && d2 < d1, "newest first");
    let doors = page("?name=DOOR-*").await;
    assert!(
        doors.contains("k-door-1") && doors.contains("k-door-2") && !doors.contains("k-panic-1")
    );
    let one = page("?key=k-door-2").await;
    assert!(one.contains("k-door-2") && !one.contains("k-door-1"));
    let none = page("?status=pending").await;
    assert!(!none.contains("k-door-1"), "{none}");
    // An unknown status is no filter, not an error.
    let any = page("?status=%3Cbogus%3E").await;
    assert!(any.contains("k-door-1") && !any.contains("<bogus>"));
}

#[tokio::test]
async fn an_upload_is_not_read_without_a_session_from_this_site() {
    let h = node();
    let cookie = sign_in(&h).await;
    let body = "--X\r\nContent-Disposition: form-data; name=\"wasm\"\r\n\r\nnot wasm\r\n--X--\r\n";
    let multipart = ("content-type", "multipart/form-data; boundary=X");
    let a = call(&h, "POST", "/ui/rules/upload", &[multipart], body).await;
    assert_eq!(a.location.as_deref(), Some("/ui/login"));
    let a = call(
        &h,
        "POST",
        "/ui/rules/upload",
        &[
            multipart,
            ("cookie", &cookie),
            ("origin", "http://evil.example"),
        ],
        body,
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // Signed in, from here, without the CSRF token: refused once read.
    let a = call(
        &h,
        "POST",
        "/ui/rules/upload",
        &[multipart, ("cookie", &cookie)],
        body,
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // With it: a bad module is refused, by a redirect to the page that says so.
    let page = call(&h, "GET", "/ui/rules", &[("cookie", &cookie)], "")
        .await
        .body;
    let token = csrf(&page);
    let body = format!(
        "--X\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{token}\r\n\
         --X\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbad\r\n\
         --X\r\nContent-Disposition: form-data; name=\"wasm\"; filename=\"bad.wasm\"\r\n\r\nnot wasm\r\n--X--\r\n"
    );
    let a = call(
        &h,
        "POST",
        "/ui/rules/upload",
        &[multipart, ("cookie", &cookie)],
        &body,
    )
    .await;
    assert_eq!(a.location.as_deref(), Some("/ui/rules"), "{}", a.body);
    let page = call(&h, "GET", "/ui/rules", &[("cookie", &cookie)], "")
        .await
        .body;
    assert!(page.contains("upload refused"), "{page}");
    // Shown once.
    let page = call(&h, "GET", "/ui/rules", &[("cookie", &cookie)], "")
        .await
        .body;
    assert!(!page.contains("upload refused"), "{page}");
}
