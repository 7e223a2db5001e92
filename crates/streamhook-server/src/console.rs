//! The console: a web page on the admin listener to watch, search and replay events.
//!
//! Login takes the admin token once (`/?token=TOKEN`, or the form at `/`) and starts a
//! session: a random id, kept in the server's memory for 12 hours at most and forgotten at
//! logout or restart, in an HttpOnly, SameSite=Strict cookie (never the token itself). The page
//! then calls the admin API with that cookie; every state-changing call must also carry the
//! session's CSRF token (`x-csrf-token`, an HMAC of the session id under the admin token) that
//! only a logged-in page can read from `GET /admin/session`. Bearer-token calls (the CLI) need
//! no CSRF token.
//!
//! Against DNS rebinding (a hostile page whose name comes to resolve to 127.0.0.1), login and
//! cookie calls are answered only for a `Host` that is an IP address or `localhost`. Failed
//! token checks (login or bearer) are counted: after 10 in 10 seconds, every check answers 429
//! until the 10 seconds are over, and each failure is logged.
//!
//! The HTML, CSS and JavaScript are compiled into the binary (no CDN, nothing fetched at run
//! time) and served under a strict Content-Security-Policy: scripts and styles only from the
//! listener itself, no inline script, so a payload that carries markup stays text.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Router};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::admin::Admin;

/// The session cookie's name.
pub const COOKIE: &str = "streamhook_session";
/// The header that carries the CSRF token on state-changing console calls.
pub const CSRF_HEADER: &str = "x-csrf-token";

const INDEX: &str = include_str!("../console/index.html");
const LOGIN: &str = include_str!("../console/login.html");
const APP_JS: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/style.css");
const ICON: &str = include_str!("../console/icon.svg");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept at once (the oldest goes first).
const MAX_SESSIONS: usize = 256;
/// Failed token checks allowed per [`FAILURE_WINDOW`].
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(10);

/// The console's sessions and the failed-login counter, shared by the admin routes.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    sessions: Mutex<HashMap<String, Instant>>,
    failures: Mutex<Option<(Instant, u32)>>,
}

impl Guard {
    /// Starts a session; returns its id.
    fn open(&self) -> String {
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), now + SESSION_TTL);
        id
    }

    /// Whether `id` is a live session.
    pub(crate) fn valid(&self, id: &str) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(id)
            .is_some_and(|expires| *expires > Instant::now())
    }

    fn close(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Whether token checks are refused for now (too many failures lately).
    pub(crate) fn locked(&self) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.is_some_and(|(since, n)| n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW)
    }

    /// Counts a failed token check (and logs it).
    pub(crate) fn failed(&self, what: &str, peer: Option<std::net::IpAddr>) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = match *failures {
            Some((since, n)) if since.elapsed() < FAILURE_WINDOW => {
                *failures = Some((since, n + 1));
                n + 1
            }
            _ => {
                *failures = Some((Instant::now(), 1));
                1
            }
        };
        let peer = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        tracing::warn!(%peer, failures = n, "{what}: wrong admin token");
    }
}

/// The 429 answer while token checks are locked.
pub(crate) fn locked_out() -> Response {
    crate::admin::error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many wrong admin tokens lately; wait 10 seconds",
    )
}

/// The CSRF token of a session.
pub fn csrf_value(token: &str, session: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(b"streamhook console csrf ");
    mac.update(session.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

fn equal(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The session cookie's value in a request, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The request's live session id, if it has one (and names this listener by address).
pub(crate) fn session<'a>(headers: &'a HeaderMap, guard: &Guard) -> Option<&'a str> {
    if !local_host(headers) {
        return None;
    }
    session_cookie(headers).filter(|id| guard.valid(id))
}

/// Whether a cookie-authenticated state-changing request carries its session's CSRF token.
pub fn csrf_ok(headers: &HeaderMap, token: &str, session: &str) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| equal(v, &csrf_value(token, session)))
}

/// Whether `Host` is an IP address or `localhost` (with any port): a page that reached this
/// listener under another name (DNS rebinding) gets neither login nor cookie access.
pub(crate) fn local_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// A browser's cross-site request shows an `Origin` that is not this listener.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|o| o == host)
}

fn page(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let message = message.map_or(String::new(), |m| {
        format!(r#"<p class="error" role="alert" id="login-error">{m}</p>"#)
    });
    page(status, LOGIN.replace("<!--MESSAGE-->", &message))
}

fn session_cookie_header(id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    ))
    .expect("a hex id is a valid header value")
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn wrong_host() -> Response {
    login_page(
        StatusCode::MISDIRECTED_REQUEST,
        Some(
            "Open the console by address (http://127.0.0.1:PORT/) or as localhost: this listener answers no other name.",
        ),
    )
}

/// `GET /`: the console when logged in, the login form otherwise; `?token=` logs in and
/// redirects to `/` without it.
async fn index(
    State(admin): State<Admin>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    if !local_host(&headers) {
        return wrong_host();
    }
    if let Some(given) = q.token {
        return log_in(&admin, &given, peer.ip());
    }
    if session(&headers, admin.guard()).is_some() {
        page(StatusCode::OK, INDEX.to_owned())
    } else {
        login_page(StatusCode::OK, None)
    }
}

fn log_in(admin: &Admin, given: &str, peer: std::net::IpAddr) -> Response {
    let guard = admin.guard();
    if guard.locked() {
        return login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many wrong tokens lately: wait 10 seconds and try again."),
        );
    }
    if !equal(given.trim(), admin.token()) {
        guard.failed("console login", Some(peer));
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some(
                "Wrong admin token. Use the one in DATA_DIR/admin.token, or the config's [admin] token.",
            ),
        );
    }
    let id = guard.open();
    let mut response = Redirect::to("/").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie_header(&id));
    response
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /login`: the form's token.
async fn login(
    State(admin): State<Admin>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !local_host(&headers) {
        return wrong_host();
    }
    if !same_origin(&headers) {
        return login_page(StatusCode::FORBIDDEN, Some("Cross-site login refused."));
    }
    log_in(&admin, &form.token, peer.ip())
}

/// `POST /logout`: ends the session (needs the CSRF token, like every change).
async fn logout(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let Some(id) = session(&headers, admin.guard()) else {
        return Redirect::to("/").into_response();
    };
    if !csrf_ok(&headers, admin.token(), id) {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
    }
    admin.guard().close(id);
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "streamhook_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Security headers on every console and admin answer.
pub(crate) async fn harden(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// The console's routes (`/`, `/login`, `/logout`, `/console/*` assets).
pub(crate) fn routes(admin: Admin) -> Router {
    use axum::routing::{get, post};
    Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/console/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/console/icon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
        .with_state(admin)
}
