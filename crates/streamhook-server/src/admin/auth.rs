//! Who may call the admin API: the bearer token (the CLI), the console's cookie sessions with
//! their CSRF tokens, the `Host` and `Origin` checks, and the guard that counts failed token
//! checks. [`authorize`] is the middleware in front of every `/admin/*` route.
//!
//! Login (the console's pages, `console.rs`) takes the admin token once and starts a session: a random id,
//! kept in the server's memory for 12 hours at most and forgotten at logout or restart, in an
//! HttpOnly, SameSite=Strict cookie (never the token itself). The page then calls the admin API
//! with that cookie; every state-changing call must also carry the session's CSRF token
//! (`x-csrf-token`, an HMAC of the session id under the admin token) that only a logged-in page
//! can read from `GET /admin/session`. Bearer-token calls (the CLI) need no CSRF token.
//!
//! Against DNS rebinding (a hostile page whose name comes to resolve to 127.0.0.1), login and
//! cookie calls are answered only for a `Host` that is an IP address or `localhost`. Against
//! guessing, a wrong token is answered slowly once a client has given more than a few in a
//! minute (the delay doubles, up to 3 s), per client address: the right token is never
//! refused, so nobody can lock the operator out by sending wrong ones. Each failure is logged.
//!
//! The cookie's name carries the listener's port: browsers share cookies of one host across
//! ports, and two consoles (two receivers through two tunnels) must not log each other out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use super::reply::error;

/// The session cookie's name, before the listener's port (`streamhook_session_8081`).
pub const COOKIE: &str = "streamhook_session";
/// The header that carries the CSRF token on state-changing console calls.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept at once (the oldest goes first).
const MAX_SESSIONS: usize = 256;
/// Wrong tokens a client may give per [`FAILURE_WINDOW`] before its answers slow down.
const FREE_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The longest a wrong token's answer is held.
const MAX_DELAY: Duration = Duration::from_secs(3);
/// The most answers held at once (past it a wrong token is answered 429 at once): held
/// answers hold connections.
const MAX_HELD: usize = 32;
/// The most client addresses whose failures are remembered.
const MAX_CLIENTS: usize = 4096;

/// What checks a caller: the admin token and the guard (sessions, failed checks).
#[derive(Clone)]
pub(crate) struct Auth {
    token: Arc<str>,
    guard: Arc<Guard>,
    /// The session cookie's name on this listener.
    cookie: Arc<str>,
}

impl Auth {
    /// A fresh guard (no sessions, no failures) for this token, on the listener at `port`.
    pub(crate) fn new(token: String, port: u16) -> Auth {
        Auth {
            token: token.into(),
            guard: Arc::default(),
            cookie: cookie_name(port).into(),
        }
    }

    /// The session cookie's name on this listener.
    pub(crate) fn cookie(&self) -> &str {
        &self.cookie
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    pub(crate) fn guard(&self) -> &Guard {
        &self.guard
    }
}

/// The session cookie's name for the listener at `port`.
pub fn cookie_name(port: u16) -> String {
    format!("{COOKIE}_{port}")
}

/// The console's sessions and the wrong tokens per client, shared by the admin routes.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    sessions: Mutex<HashMap<String, Instant>>,
    /// Per client address: since when it is counted, how many wrong tokens.
    failures: Mutex<HashMap<std::net::IpAddr, (Instant, u32)>>,
    /// Answers being held now.
    held: std::sync::atomic::AtomicUsize,
}

impl Guard {
    /// Starts a session; returns its id.
    pub(crate) fn open(&self) -> String {
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

    pub(crate) fn close(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Checks a given token. The right one always passes. A wrong one is logged and counted
    /// for its client; past [`FREE_FAILURES`] in [`FAILURE_WINDOW`] its answer is held (the
    /// delay doubles with each, up to [`MAX_DELAY`]), or, when too many answers are held
    /// already, refused at once with 429.
    pub(crate) async fn check(
        &self,
        token: &str,
        given: &str,
        what: &str,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(), Wrong> {
        if equal(given, token) {
            return Ok(());
        }
        let n = {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let key = peer.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            if failures.len() >= MAX_CLIENTS && !failures.contains_key(&key) {
                failures.retain(|_, (since, _)| since.elapsed() < FAILURE_WINDOW);
                if failures.len() >= MAX_CLIENTS {
                    failures.clear();
                }
            }
            let entry = failures.entry(key).or_insert((Instant::now(), 0));
            if entry.0.elapsed() >= FAILURE_WINDOW {
                *entry = (Instant::now(), 0);
            }
            entry.1 += 1;
            entry.1
        };
        let shown = peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string());
        tracing::warn!(peer = %shown, failures_this_minute = n, "{what}: wrong admin token");
        if n <= FREE_FAILURES {
            return Err(Wrong::Refused);
        }
        use std::sync::atomic::Ordering;
        if self.held.fetch_add(1, Ordering::SeqCst) >= MAX_HELD {
            self.held.fetch_sub(1, Ordering::SeqCst);
            return Err(Wrong::TooMany);
        }
        let delay = Duration::from_millis(250)
            .saturating_mul(1u32 << (n - FREE_FAILURES - 1).min(8))
            .min(MAX_DELAY);
        tokio::time::sleep(delay).await;
        self.held.fetch_sub(1, Ordering::SeqCst);
        Err(Wrong::Refused)
    }
}

/// Why a token check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrong {
    /// The token is wrong (401).
    Refused,
    /// Wrong, and too many wrong answers are being held now (429, at once).
    TooMany,
}

/// The 429 answer while too many wrong tokens are being answered.
pub(crate) fn too_many() -> Response {
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many wrong admin tokens at once; try again in a few seconds",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
    response
}

/// The CSRF token of a session.
pub fn csrf_value(token: &str, session: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(b"streamhook console csrf ");
    mac.update(session.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// Compares in constant time.
pub(crate) fn equal(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in a request, if any.
pub fn session_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value that starts session `id` under cookie `name`.
pub(crate) fn session_cookie_header(name: &str, id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    ))
    .expect("a hex id is a valid header value")
}

/// The `Set-Cookie` value that ends a session in the browser.
pub(crate) fn expired_cookie_header(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
    .expect("a cookie name is a valid header value")
}

/// The request's live session id, if it has one (and names this listener by address).
pub(crate) fn session<'a>(headers: &'a HeaderMap, auth: &Auth) -> Option<&'a str> {
    if !local_host(headers) {
        return None;
    }
    session_cookie(headers, auth.cookie()).filter(|id| auth.guard.valid(id))
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

/// Whether a request comes from this listener's own pages (or from no page at all: a typed
/// address, a bookmark, the CLI). A browser says where a request comes from in
/// `Sec-Fetch-Site` (every current one); without it, in `Origin` (`null` is refused: a page
/// that hides its origin is not ours).
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return matches!(site, "same-origin" | "none");
    }
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

/// Answers `421` to a request whose `Host` is neither an address nor `localhost`.
pub(crate) async fn local_host_only(request: Request, next: Next) -> Response {
    if !local_host(request.headers()) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "the admin listener answers by address or as localhost only (Host)",
        );
    }
    next.run(request).await
}

/// A bearer token (the CLI), or the console's session cookie, which must bring the session's
/// CSRF token on anything but GET.
pub(crate) async fn authorize(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    match bearer {
        Some(given) => {
            let peer = request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip());
            match auth
                .guard
                .check(&auth.token, &given, "admin API", peer)
                .await
            {
                Ok(()) => {}
                Err(Wrong::TooMany) => return too_many(),
                Err(Wrong::Refused) => {
                    return error(
                        StatusCode::UNAUTHORIZED,
                        "missing or wrong admin token (Authorization: Bearer <token>)",
                    );
                }
            }
        }
        None => match session(headers, &auth) {
            Some(id) => {
                let reads = matches!(
                    *request.method(),
                    axum::http::Method::GET | axum::http::Method::HEAD
                );
                if !reads && !csrf_ok(headers, &auth.token, id) {
                    return error(
                        StatusCode::FORBIDDEN,
                        "missing or wrong CSRF token (x-csrf-token, from GET /admin/session)",
                    );
                }
            }
            None => {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong admin token (Authorization: Bearer <token>), and no console session",
                );
            }
        },
    }
    next.run(request).await
}
