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
//! cookie calls are answered only for a `Host` that is an IP address or `localhost`. Failed
//! token checks (login or bearer) are counted: after 10 in 10 seconds, every check answers 429
//! until the 10 seconds are over, and each failure is logged.

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

/// The session cookie's name.
pub const COOKIE: &str = "streamhook_session";
/// The header that carries the CSRF token on state-changing console calls.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// The most sessions kept at once (the oldest goes first).
const MAX_SESSIONS: usize = 256;
/// Failed token checks allowed per [`FAILURE_WINDOW`].
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(10);

/// What checks a caller: the admin token and the guard (sessions, failed checks).
#[derive(Clone)]
pub(crate) struct Auth {
    token: Arc<str>,
    guard: Arc<Guard>,
}

impl Auth {
    /// A fresh guard (no sessions, no failures) for this token.
    pub(crate) fn new(token: String) -> Auth {
        Auth {
            token: token.into(),
            guard: Arc::default(),
        }
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    pub(crate) fn guard(&self) -> &Guard {
        &self.guard
    }
}

/// The console's sessions and the failed-login counter, shared by the admin routes.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    sessions: Mutex<HashMap<String, Instant>>,
    failures: Mutex<Option<(Instant, u32)>>,
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
    error(
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

/// Compares in constant time.
pub(crate) fn equal(a: &str, b: &str) -> bool {
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

/// The `Set-Cookie` value that starts session `id`.
pub(crate) fn session_cookie_header(id: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    ))
    .expect("a hex id is a valid header value")
}

/// The `Set-Cookie` value that ends a session in the browser.
pub(crate) fn expired_cookie_header() -> HeaderValue {
    HeaderValue::from_static("streamhook_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
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
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
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

/// A bearer token (the CLI), or the console's session cookie, which must bring the session's
/// CSRF token on anything but GET.
pub(crate) async fn authorize(State(auth): State<Auth>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        Some(_) if auth.guard.locked() => return locked_out(),
        Some(given) if bool::from(given.as_bytes().ct_eq(auth.token.as_bytes())) => {}
        Some(_) => {
            let peer = request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip());
            auth.guard.failed("admin API", peer);
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token (Authorization: Bearer <token>)",
            );
        }
        None => match session(headers, &auth.guard) {
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
