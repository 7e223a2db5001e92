//! The console: a web page on the admin listener to watch, search and replay events.
//!
//! Login takes the admin token once (`/?token=TOKEN`, or the form at `/`) and keeps, in an
//! HttpOnly, SameSite=Strict cookie, a session value derived from it (an HMAC of the token,
//! never the token itself: changing the token ends every session). The page then calls the
//! admin API with that cookie; every state-changing call must also carry the CSRF token
//! (`x-csrf-token`, another HMAC of the admin token) that only a logged-in page can read from
//! `GET /admin/session`. Bearer-token calls (the CLI) need no CSRF token.
//!
//! The HTML, CSS and JavaScript are compiled into the binary (no CDN, nothing fetched at run
//! time) and served under a strict Content-Security-Policy: scripts and styles only from the
//! listener itself, no inline script, so a payload that carries markup stays text.

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

fn derive(token: &str, purpose: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(b"streamhook console ");
    mac.update(purpose.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// The session cookie's value for this admin token.
pub fn session_value(token: &str) -> String {
    derive(token, "session")
}

/// The CSRF token for this admin token.
pub fn csrf_value(token: &str) -> String {
    derive(token, "csrf")
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

/// Whether the request carries a valid session cookie.
pub fn has_session(headers: &HeaderMap, token: &str) -> bool {
    session_cookie(headers).is_some_and(|v| equal(v, &session_value(token)))
}

/// Whether a cookie-authenticated state-changing request carries the CSRF token.
pub fn csrf_ok(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| equal(v, &csrf_value(token)))
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

fn session_cookie_header(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        session_value(token)
    ))
    .expect("base64 is a valid header value")
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// `GET /`: the console when logged in, the login form otherwise; `?token=` logs in and
/// redirects to `/` without it.
async fn index(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    if let Some(given) = q.token {
        return log_in(&admin, &given);
    }
    if has_session(&headers, admin.token()) {
        page(StatusCode::OK, INDEX.to_owned())
    } else {
        login_page(StatusCode::OK, None)
    }
}

fn log_in(admin: &Admin, given: &str) -> Response {
    if !equal(given.trim(), admin.token()) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some(
                "Wrong admin token. Use the token the server printed at start or the one in DATA_DIR/admin.token.",
            ),
        );
    }
    let mut response = Redirect::to("/").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie_header(admin.token()));
    response
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /login`: the form's token.
async fn login(
    State(admin): State<Admin>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return login_page(StatusCode::FORBIDDEN, Some("Cross-site login refused."));
    }
    log_in(&admin, &form.token)
}

/// `POST /logout`: forgets the session (needs the CSRF token, like every change).
async fn logout(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !csrf_ok(&headers, admin.token()) {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
    }
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
