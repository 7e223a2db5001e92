//! The admin API: sink status, dead letters, requeue, replay, an event tail and reload.
//!
//! Served on its own listener (loopback by default) and guarded by a bearer token
//! (`Authorization: Bearer <token>`). `streamhook replay`, `dead-letters` and `tail` drive it.
//! The same listener serves the operator's `GET /readyz` and `GET /metrics` without a token
//! (they reveal counts, not events), for probes and scrapers.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /admin/status` | each sink's cursor, lag, counters and dead letters |
//! | `GET /admin/dead-letters[?sink=NAME]` | dead letters with their last error |
//! | `POST /admin/dead-letters/requeue` | `{"sink", "seq"}` or `{"sink", "all": true}`: deliver again |
//! | `POST /admin/sinks/forget` | `{"sink"}`: a sink out of the configuration stops holding events |
//! | `POST /admin/replay` | `{"sink", "from_seq"}` or `{"sink", "since": "2026-11-28T09:00:00Z" or "2h"}`, `"dry_run"`: only move a sink back |
//! | `GET /admin/events?from=SEQ&limit=N&wait=SECS` | envelopes from SEQ on, as NDJSON; waits up to SECS for new ones |
//! | `POST /admin/reload` | re-reads the config (as SIGHUP does) |
//! | `GET /admin/session` | the CSRF token and sink names, for the console |
//! | `GET /admin/events/search?type&kind&resource&q&since&until&before&limit` | newest first, filtered |
//! | `GET /admin/events/live?after=SEQ&...` | server-sent events: new events as they commit |
//! | `GET /admin/events/states?seqs=1,2` | each sink's state of these events |
//! | `GET /admin/events/{seq}` | one event: envelope, body, how it arrived, each sink's attempts |
//! | `POST /admin/events/{seq}/resend` | `{"sink"}`: deliver this event to the sink again |
//! | `GET /admin/resources/{type}/{id}` | a resource's events, oldest first (its timeline) |
//! | `GET /admin/audit?limit=N` | the operator's actions (who, what, when), newest first |
//! | `GET /admin/reconcile` | reconciliation with Gcore's API: its state and last run |
//! | `POST /admin/reconcile` | `{"dry_run"}`: a run now; what it journaled (or would) |
//!
//! The console (`GET /`, see [`console`]) calls the same API with a session cookie;
//! then every `POST` must carry its CSRF token. docs/admin-api.md describes each call.
//!
//! This file holds only the router ([`admin_app`]); the rest is in files that import only
//! downwards, never this one:
//!
//! - `reply.rs`: the `{"error"}` answer, journal errors as status codes, journal calls off the
//!   runtime, `since` times (imports no sibling);
//! - `auth.rs`: the bearer token, cookie sessions, CSRF, the `Host`/`Origin` checks and the
//!   failed-check guard; the middleware in front of `/admin/*` (imports `reply`);
//! - `state.rs`: [`ReloadRequest`] and the state every handler gets (imports `auth`);
//! - `operator.rs`: status, dead letters, requeue, replay, resend, the events tail, reload
//!   (imports `reply`, `state`);
//! - `read.rs`: the console's read side: search, live, states, one event, timelines; no
//!   writes (imports `reply`, `state`);
//! - `console.rs`: the console's pages, assets, `GET /admin/session` and the security headers
//!   (imports `auth`, `state`).

use axum::http::StatusCode;
use axum::middleware;
use axum::routing::{get, post};
use streamhook_core::dispatch::SharedRouter;
use tokio::sync::mpsc;

use crate::intake::Intake;

mod auth;
pub mod console;
mod operator;
mod read;
mod reply;
mod state;

use reply::error;
use state::Admin;
pub use state::ReloadRequest;

/// The admin router and the console, on the listener at `port` (the console's cookie is
/// named after it). `reload` reaches the running server (None: reload unsupported); `router`
/// tells the console which sinks an event is routed to.
pub fn admin_app(
    intake: Intake,
    token: String,
    reloads: Option<mpsc::Sender<ReloadRequest>>,
    router: Option<SharedRouter>,
    port: u16,
) -> axum::Router {
    let state = Admin::new(intake, token, reloads, router, port);
    // The probes answer only by address or `localhost`, as the console does (a page that
    // reached this listener under another name, by DNS rebinding, reads nothing).
    let probes = crate::intake::operator_app(state.intake.clone())
        .layer(middleware::from_fn(auth::local_host_only));
    let admin = axum::Router::new()
        .route("/admin/status", get(operator::status))
        .route("/admin/session", get(console::session_info))
        .route("/admin/dead-letters", get(operator::dead_letters))
        .route("/admin/dead-letters/requeue", post(operator::requeue))
        .route("/admin/replay", post(operator::replay))
        .route("/admin/sinks/forget", post(operator::forget))
        .route("/admin/events", get(operator::events))
        .route("/admin/events/search", get(read::search))
        .route("/admin/events/live", get(read::live))
        .route("/admin/events/states", get(read::states))
        .route("/admin/events/{seq}", get(read::event))
        .route("/admin/events/{seq}/resend", post(operator::resend))
        .route("/admin/resources/{type}/{id}", get(read::timeline))
        .route("/admin/reload", post(operator::reload))
        .route("/admin/audit", get(operator::audit))
        .route(
            "/admin/reconcile",
            get(operator::reconcile_status).post(operator::reconcile),
        )
        .layer(middleware::from_fn_with_state(
            state.auth().clone(),
            auth::authorize,
        ))
        .with_state(state.clone());
    probes
        .merge(admin)
        .merge(console::routes(state))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .layer(middleware::from_fn(console::harden))
}
