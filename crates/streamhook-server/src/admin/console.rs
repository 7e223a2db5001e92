//! The console: a web page on the admin listener to watch, search and replay events. This file
//! owns its pages: `GET /` (the console, or the login form), `POST /login`, `POST /logout`, the
//! `/console/*` assets, `GET /admin/session` (what the page needs to make changes), and the
//! security headers on every answer of the admin listener (`harden`).
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
//! cookie calls are answered only for a `Host` that is an IP address or `localhost`. A login
//! from another site (by `Sec-Fetch-Site`, or `Origin` where a browser sends no such header) is
//! refused, the form's and `/?token=` alike; the pages' `Referrer-Policy: same-origin` lets a
//! browser send the form's origin. Wrong tokens slow their sender down, never the right token
//! (see `auth.rs`, which owns the sessions, the CSRF tokens and these checks; the public names
//! below are re-exported from there).
//!
//! The HTML, CSS and JavaScript are compiled into the binary (no CDN, nothing fetched at run
//! time) and served under a strict Content-Security-Policy: scripts and styles only from the
//! listener itself, no inline script, so a payload that carries markup stays text.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::auth::{
    Wrong, expired_cookie_header, local_host, same_origin, session, session_cookie_header,
};
use super::state::Admin;

pub use super::auth::{
    COOKIE, CSRF_HEADER, SESSION_TTL, cookie_name, csrf_ok, csrf_value, session_cookie,
};

const INDEX: &str = include_str!("../../console/index.html");
const LOGIN: &str = include_str!("../../console/login.html");
const APP_JS: &str = include_str!("../../console/app.js");
const STYLE: &str = include_str!("../../console/style.css");
const ICON: &str = include_str!("../../console/icon.svg");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

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
        // A link on another site (or an image pointing here) must not try tokens.
        if !same_origin(&headers) {
            return login_page(
                StatusCode::FORBIDDEN,
                Some("Refused: a login link from another site. Type the address yourself."),
            );
        }
        return log_in(&admin, &given, peer.ip()).await;
    }
    if session(&headers, admin.auth()).is_some() {
        page(StatusCode::OK, INDEX.to_owned())
    } else {
        login_page(StatusCode::OK, None)
    }
}

async fn log_in(admin: &Admin, given: &str, peer: std::net::IpAddr) -> Response {
    let guard = admin.guard();
    match guard
        .check(admin.token(), given.trim(), "console login", Some(peer))
        .await
    {
        Ok(()) => {}
        Err(Wrong::TooMany) => {
            return login_page(
                StatusCode::TOO_MANY_REQUESTS,
                Some(
                    "Too many wrong tokens are being tried right now: try again in a few seconds.",
                ),
            );
        }
        Err(Wrong::Refused) => {
            return login_page(
                StatusCode::UNAUTHORIZED,
                Some(
                    "Wrong admin token. Use the one in DATA_DIR/admin.token, or the config's [admin] token.",
                ),
            );
        }
    }
    let id = guard.open();
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie_header(admin.auth().cookie(), &id),
    );
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
    log_in(&admin, &form.token, peer.ip()).await
}

/// `POST /logout`: ends the session (needs the CSRF token, like every change).
async fn logout(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let Some(id) = session(&headers, admin.auth()) else {
        return Redirect::to("/").into_response();
    };
    if !csrf_ok(&headers, admin.token(), id) {
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
    }
    admin.guard().close(id);
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        expired_cookie_header(admin.auth().cookie()),
    );
    response
}

/// `GET /admin/session`: what the console needs to make changes (a bearer caller gets no
/// CSRF token: it needs none).
pub(crate) async fn session_info(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    let csrf = session(&headers, admin.auth()).map(|id| csrf_value(admin.token(), id));
    Json(json!({
        "csrf": csrf,
        "sinks": admin.intake.sink_names(),
    }))
    .into_response()
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

/// Security headers on every console and admin answer; `Cache-Control: no-store` on every
/// `/admin/*` and operator answer (events, tokens and counts stay out of caches).
pub(crate) async fn harden(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    let cached = path.starts_with("/console/");
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    if !cached {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Same-origin requests carry their origin (and referrer); nothing goes to other sites.
    // (`no-referrer` made a browser send `Origin: null` with the login form.)
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
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
