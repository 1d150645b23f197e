//! The operators' web console at `/ui/` (DESIGN.md §9): server-rendered
//! HTML from compiled templates (`host/templates/`, askama, which escapes
//! every value), no script, no CDN.
//!
//! Sign-in takes the admin token and sets a session cookie (HttpOnly,
//! SameSite=Strict, expiring: [`session`]). Every form carries the
//! session's CSRF token, and a post whose `Origin` is another site, or
//! whose browser says it is cross-site, is refused before its token is
//! even looked at. Pages: Status, Failover, Cluster, Rules, Events,
//! Notifications, Contacts ([`pages`] has the middle ones). Every page
//! says which node it is and whether it is active.

mod pages;
mod session;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use askama::Template;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use self::session::{COOKIE, LIFETIME, Session, Sessions};
use super::{Failover, role_state, state_name};
use crate::internal_auth::same_secret;
use crate::node::Node;
use crate::store::contacts::{self, Group, Person};
use crate::store::events::{self, EventView};

/// What the console's handlers share.
#[derive(Clone)]
struct Console {
    node: Arc<Node>,
    failover: Option<Failover>,
    cluster: Option<crate::cluster::Handle>,
    /// The session key, or why there is none (every page then says so).
    sessions: Result<Arc<Sessions>, String>,
    /// What the last command of a session said, shown once on the page
    /// its answer redirects to (post/redirect/get).
    flash: Arc<std::sync::Mutex<HashMap<String, Result<String, String>>>>,
}

/// The console's routes, with their own state, ready to merge into the
/// admin app.
pub(super) fn routes<S: Clone + Send + Sync + 'static>(
    node: Arc<Node>,
    failover: Option<Failover>,
    cluster: Option<crate::cluster::Handle>,
) -> Router<S> {
    let sessions = Sessions::open(
        &node.config().node.data_dir,
        node.config().admin.token.as_deref(),
    )
    .map(Arc::new)
    .map_err(|e| e.to_string());
    if let Ok(k) = &sessions {
        // Sessions signed out before a restart stay signed out.
        let now = session::now_secs();
        match node
            .store()
            .read_blocking(|c| crate::store::console::signed_out(c, now))
        {
            Ok(list) => k.remember_revoked(list),
            Err(e) => tracing::warn!("web console: cannot read signed-out sessions: {e}"),
        }
    }
    if let Err(e) = &sessions {
        tracing::error!("web console unavailable: {e}");
    }
    let state = Console {
        node,
        failover,
        cluster,
        sessions,
        flash: Arc::default(),
    };
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(status_page))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/events", get(events_page))
        .route("/ui/contacts", get(contacts_page))
        .route("/ui/contacts/persons", post(add_person))
        .route("/ui/contacts/persons/delete", post(delete_person))
        .route("/ui/contacts/groups", post(add_group))
        .route("/ui/contacts/groups/delete", post(delete_group))
        .route("/ui/failover", get(pages::failover_page))
        .route(
            "/ui/failover/confirm/{command}",
            get(pages::confirm_failover),
        )
        .route("/ui/failover/{command}", post(pages::failover_command))
        .route("/ui/rules", get(pages::rules_page))
        .route(
            "/ui/rules/upload",
            post(pages::upload_rule).layer(DefaultBodyLimit::max(pages::MAX_UPLOAD)),
        )
        .route("/ui/rules/reset", post(pages::reset_rule))
        .route("/ui/rules/confirm-delete", get(pages::confirm_delete_rule))
        .route("/ui/rules/delete", post(pages::delete_rule))
        .route("/ui/notifications", get(pages::notifications_page))
        .route("/ui/cluster", get(pages::cluster_page))
        .with_state(state)
}

/// Why a console request is not served: each becomes its answer.
#[derive(Debug)]
enum Refusal {
    /// No session key: 503 naming why.
    Unavailable(String),
    /// Not signed in: to the sign-in page.
    SignIn,
    /// A post that is not from a page of this node's: 403.
    Forbidden(&'static str),
    /// A page this node does not have (a pair's on a standalone node...).
    NotHere(&'static str),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unavailable(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the console is unavailable: {e}"),
            )
                .into_response(),
            Refusal::SignIn => Redirect::to("/ui/login").into_response(),
            Refusal::Forbidden(why) => (StatusCode::FORBIDDEN, why).into_response(),
            Refusal::NotHere(why) => (StatusCode::NOT_FOUND, why).into_response(),
        }
    }
}

/// Flash entries kept at most (sessions whose answer page never loaded).
const MAX_FLASH: usize = 1000;

/// What every page shows around its content.
struct Chrome {
    node: String,
    /// `active`, `standby` or `fenced`.
    state: &'static str,
    signed_in: bool,
    /// Whether the node is in a pair (the Failover page) or a cluster.
    pair: bool,
    cluster: bool,
    csrf: String,
    error: Option<String>,
    notice: Option<String>,
}

impl Chrome {
    fn with_flash(mut self, flash: Option<Result<String, String>>) -> Self {
        match flash {
            Some(Ok(notice)) => self.notice = Some(notice),
            Some(Err(error)) => self.error = Some(error),
            None => {}
        }
        self
    }
}

impl Console {
    fn sessions(&self) -> Result<&Sessions, Refusal> {
        self.sessions
            .as_deref()
            .map_err(|e| Refusal::Unavailable(e.clone()))
    }

    /// Keep a command's outcome for the session's next page.
    fn flash(&self, session: &Session, outcome: Result<String, String>) {
        let mut flash = self.flash.lock().unwrap_or_else(|p| p.into_inner());
        // Each entry is taken by the next page; a bound keeps sessions
        // that never load one from piling up.
        if flash.len() >= MAX_FLASH {
            flash.clear();
        }
        flash.insert(session.id(), outcome);
    }

    fn chrome(&self, session: Option<&Session>) -> Chrome {
        let (active, _, _) = role_state(&self.node, &self.failover);
        let fenced = self.failover.as_ref().is_some_and(|f| f.view().fenced)
            || self
                .cluster
                .as_ref()
                .is_some_and(|h| h.status().fenced.is_some());
        Chrome {
            node: self.node.config().node.name.clone(),
            state: if fenced { "fenced" } else { state_name(active) },
            signed_in: session.is_some(),
            pair: self.failover.is_some(),
            cluster: self.cluster.is_some(),
            csrf: match (session, self.sessions.as_deref()) {
                (Some(s), Ok(k)) => k.csrf(s),
                _ => String::new(),
            },
            error: None,
            notice: None,
        }
        .with_flash(session.and_then(|s| {
            self.flash
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&s.id())
        }))
    }

    /// The session of a request, or a redirect to the sign-in page.
    fn signed_in(&self, headers: &HeaderMap) -> Result<Session, Refusal> {
        let sessions = self.sessions()?;
        cookies(headers)
            .find_map(|v| sessions.verify(v))
            .ok_or(Refusal::SignIn)
    }

    /// The session of a form post: signed in, from this site, with the
    /// session's CSRF token. Anything else is 403 (or the sign-in page).
    fn post_allowed(
        &self,
        headers: &HeaderMap,
        form: &BTreeMap<String, String>,
    ) -> Result<Session, Refusal> {
        same_site(headers)?;
        let session = self.signed_in(headers)?;
        let given = form.get("csrf").map_or("", String::as_str);
        if !self.sessions()?.csrf_ok(&session, given) {
            return Err(Refusal::Forbidden(
                "the form's CSRF token is missing or wrong: reload the page and try again",
            ));
        }
        Ok(session)
    }
}

/// Refuse a post that a browser says comes from another site: an `Origin`
/// whose host is not this request's `Host`, or `Sec-Fetch-Site:
/// cross-site`.
fn same_site(headers: &HeaderMap) -> Result<(), Refusal> {
    let get = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if get(header::HeaderName::from_static("sec-fetch-site")) == Some("cross-site") {
        return Err(Refusal::Forbidden("a cross-site form post is refused"));
    }
    if let Some(origin) = get(header::ORIGIN) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if Some(origin_host) != get(header::HOST) {
            return Err(Refusal::Forbidden("a cross-site form post is refused"));
        }
    }
    Ok(())
}

/// The values of the session cookie in a request (a browser may send
/// several of one name: another app on the same host, another path).
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .filter(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .take(16)
}

fn set_cookie(value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("tandem_session=; Max-Age=0"))
}

/// Render a page: 200, or 500 naming the template error.
fn render(t: &impl Template, status: StatusCode) -> Response {
    match t.render() {
        Ok(html) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
                ),
            ],
            html,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    chrome: Chrome,
}

async fn login_page(State(c): State<Console>, headers: HeaderMap) -> Response {
    if c.signed_in(&headers).is_ok() {
        return Redirect::to("/ui/").into_response();
    }
    render(
        &LoginPage {
            chrome: c.chrome(None),
        },
        StatusCode::OK,
    )
}

async fn login(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    if let Err(r) = same_site(&headers) {
        return r.into_response();
    }
    let sessions = match c.sessions() {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let given = form.get("token").map_or("", String::as_str);
    let ok = c
        .node
        .config()
        .admin
        .token
        .as_deref()
        .is_some_and(|t| same_secret(given.as_bytes(), t.as_bytes()));
    if !ok {
        // No hint of what was wrong.
        let mut chrome = c.chrome(None);
        chrome.error = Some("Sign-in failed.".into());
        return render(&LoginPage { chrome }, StatusCode::UNAUTHORIZED);
    }
    match sessions.create() {
        Ok((_, value)) => {
            let mut r = Redirect::to("/ui/").into_response();
            r.headers_mut()
                .insert(header::SET_COOKIE, set_cookie(&value, LIFETIME.as_secs()));
            r
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

async fn logout(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    match c.post_allowed(&headers, &form) {
        Ok(s) => {
            if let Ok(k) = c.sessions() {
                k.revoke(&s);
            }
            let (id, expires, now) = (s.id(), s.expires, session::now_secs());
            if let Err(e) = c
                .node
                .store()
                .write(move |conn| crate::store::console::sign_out(conn, &id, expires, now))
                .await
            {
                // Signed out here, but a restart would forget it: say so.
                tracing::warn!("web console: cannot store a sign-out: {e}");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "signed out on this node, but the sign-out could not be stored ({e}): a restart would accept this session again until it expires"
                    ),
                )
                    .into_response();
            }
            let mut r = Redirect::to("/ui/login").into_response();
            r.headers_mut()
                .insert(header::SET_COOKIE, set_cookie("", 0));
            r
        }
        Err(r) => r.into_response(),
    }
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage {
    chrome: Chrome,
    s: super::ApiStatus,
    uptime: String,
    heartbeat: String,
    peer_state: String,
    /// A cluster member's view of each group's owner.
    owners: Vec<crate::cluster::OwnerView>,
}

async fn status_page(State(c): State<Console>, headers: HeaderMap) -> Response {
    let session = match c.signed_in(&headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let s = super::status::full_status(&c.node, &c.failover).await;
    let secs = s.uptime_ms / 1000;
    // The peer's FS as it last reported it: 1 is active.
    let peer_state = match s.peer.as_ref().and_then(|p| p.status.as_ref()) {
        Some(v) if v.fs == 1 => "active",
        Some(_) => "standby",
        None => "unknown",
    }
    .to_owned();
    render(
        &StatusPage {
            chrome: c.chrome(Some(&session)),
            uptime: format!("{}h {}m {}s", secs / 3600, secs / 60 % 60, secs % 60),
            heartbeat: s
                .peer
                .as_ref()
                .and_then(|p| p.last_heartbeat)
                .map_or_else(|| "never".to_owned(), pages::when),
            peer_state,
            owners: c
                .cluster
                .as_ref()
                .map(|h| h.status().owners)
                .unwrap_or_default(),
            s,
        },
        StatusCode::OK,
    )
}

/// The Events page's filters, as the form sends them (empty: any).
#[derive(Debug, Default, Deserialize)]
struct EventsFilter {
    #[serde(default)]
    name: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    status: String,
}

/// The statuses the Events page filters by (`replayed` is a flag of its
/// own in the log), `""` for any.
const EVENT_STATUSES: [&str; 7] = [
    "",
    "executed",
    "pending",
    "covered",
    "suppressed",
    "raised",
    "replayed",
];

/// An event as the page shows it.
struct EventRow {
    received: String,
    e: EventView,
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    chrome: Chrome,
    q: EventsFilter,
    statuses: Vec<(&'static str, bool)>,
    events: Vec<EventRow>,
}

async fn events_page(
    State(c): State<Console>,
    headers: HeaderMap,
    Query(q): Query<EventsFilter>,
) -> Response {
    let session = match c.signed_in(&headers) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
    let status = EVENT_STATUSES
        .iter()
        .find(|s| **s == q.status)
        .copied()
        .unwrap_or("");
    let filter = events::EventFilter {
        name: some(&q.name),
        key: some(&q.key),
        status: some(status).filter(|s| s != "replayed"),
        replayed: status == "replayed",
    };
    let mut chrome = c.chrome(Some(&session));
    let events = match c
        .node
        .store()
        .read(move |conn| events::recent(conn, &filter, 200))
        .await
    {
        Ok(e) => e
            .into_iter()
            .map(|e| EventRow {
                received: pages::when(e.received_at),
                e,
            })
            .collect(),
        Err(e) => {
            chrome.error = Some(e.to_string());
            Vec::new()
        }
    };
    let statuses = EVENT_STATUSES.iter().map(|s| (*s, *s == status)).collect();
    render(
        &EventsPage {
            chrome,
            q,
            statuses,
            events,
        },
        StatusCode::OK,
    )
}

#[derive(Template)]
#[template(path = "contacts.html")]
struct ContactsPage {
    chrome: Chrome,
    persons: Vec<Person>,
    groups: Vec<Group>,
    editable: bool,
}

async fn contacts_page(State(c): State<Console>, headers: HeaderMap) -> Response {
    match c.signed_in(&headers) {
        Ok(s) => contacts_view(&c, &s, None, StatusCode::OK).await,
        Err(r) => r.into_response(),
    }
}

/// The contacts page, with an error from a refused change if any.
async fn contacts_view(
    c: &Console,
    session: &Session,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let mut chrome = c.chrome(Some(session));
    chrome.error = error;
    let read_only = super::read_only(&c.node, "contact", "contacts").err();
    if let Some(e) = &read_only {
        chrome.notice = Some(e.message.clone());
    }
    let lists = c
        .node
        .store()
        .read(|conn| Ok((contacts::list_persons(conn), contacts::list_groups(conn))))
        .await;
    let (persons, groups) = match lists {
        Ok((Ok(p), Ok(g))) => (p, g),
        Ok((Err(e), _)) | Ok((_, Err(e))) => {
            chrome.error = Some(e.to_string());
            (Vec::new(), Vec::new())
        }
        Err(e) => {
            chrome.error = Some(e.to_string());
            (Vec::new(), Vec::new())
        }
    };
    render(
        &ContactsPage {
            chrome,
            persons,
            groups,
            editable: read_only.is_none(),
        },
        status,
    )
}

/// A contacts form: checked, applied through the same code as the API,
/// then the page again (with the refusal, if any).
async fn contacts_change(
    c: Console,
    headers: HeaderMap,
    form: BTreeMap<String, String>,
    f: impl FnOnce(
        &mut rusqlite::Connection,
        &BTreeMap<String, String>,
    ) -> Result<(), contacts::ContactError>
    + Send
    + 'static,
) -> Response {
    let session = match c.post_allowed(&headers, &form) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    match super::contacts::change(&c.node, move |conn| f(conn, &form)).await {
        Ok(()) => Redirect::to("/ui/contacts").into_response(),
        Err(e) => contacts_view(&c, &session, Some(e.message), e.status).await,
    }
}

fn field<'a>(form: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    form.get(name).map_or("", |v| v.trim())
}

async fn add_person(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    contacts_change(c, headers, form, |conn, form| {
        let mut addresses = BTreeMap::new();
        if !field(form, "email").is_empty() {
            addresses.insert("email".to_owned(), field(form, "email").to_owned());
        }
        let p = Person {
            name: field(form, "name").to_owned(),
            address: field(form, "address").to_owned(),
            addresses,
            groups: Vec::new(),
        };
        contacts::save_person(conn, &p, true).map(|_| ())
    })
    .await
}

async fn delete_person(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    contacts_change(c, headers, form, |conn, form| {
        let name = field(form, "name");
        match contacts::delete_person(conn, name)? {
            true => Ok(()),
            false => Err(contacts::ContactError::NoPerson(name.to_owned())),
        }
    })
    .await
}

async fn add_group(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    contacts_change(c, headers, form, |conn, form| {
        let g = Group {
            name: field(form, "name").to_owned(),
            members: field(form, "members")
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        contacts::create_group(conn, &g)
    })
    .await
}

async fn delete_group(
    State(c): State<Console>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    contacts_change(c, headers, form, |conn, form| {
        let name = field(form, "name");
        match contacts::delete_group(conn, name)? {
            true => Ok(()),
            false => Err(contacts::ContactError::NoGroup(name.to_owned())),
        }
    })
    .await
}
