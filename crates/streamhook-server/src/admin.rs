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
//! | `POST /admin/replay` | `{"sink", "from_seq"}` or `{"sink", "since": "2026-11-28T09:00:00Z" or "2h"}` |
//! | `GET /admin/events?from=SEQ&limit=N&wait=SECS` | envelopes from SEQ on, as NDJSON; waits up to SECS for new ones |
//! | `POST /admin/reload` | re-reads the config (as SIGHUP does) |
//! | `GET /admin/session` | the CSRF token and sink names, for the console |
//! | `GET /admin/events/search?type&kind&resource&q&since&until&before&limit` | newest first, filtered |
//! | `GET /admin/events/live?after=SEQ&...` | server-sent events: new events as they commit |
//! | `GET /admin/events/states?seqs=1,2` | each sink's state of these events |
//! | `GET /admin/events/{seq}` | one event: envelope, body, how it arrived, each sink's attempts |
//! | `POST /admin/events/{seq}/resend` | `{"sink"}`: deliver this event to the sink again |
//! | `GET /admin/resources/{type}/{id}` | a resource's events, oldest first (its timeline) |
//!
//! The console (`GET /`, see [`crate::console`]) calls the same API with a session cookie;
//! then every `POST` must carry its CSRF token. docs/admin-api.md describes each call.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use streamhook_core::{Journal, JournalError, ReplayFrom};
use tokio::sync::{mpsc, oneshot};

use crate::intake::Intake;
use crate::{console, explore};
use streamhook_core::dispatch::SharedRouter;

/// A request to reload, answered with a summary or the reason it was refused.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

#[derive(Clone)]
pub(crate) struct Admin {
    pub(crate) intake: Intake,
    token: Arc<str>,
    reload: Option<mpsc::Sender<ReloadRequest>>,
    router: Option<SharedRouter>,
    guard: Arc<console::Guard>,
}

impl Admin {
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    pub(crate) fn guard(&self) -> &console::Guard {
        &self.guard
    }

    /// The routes in force (None when the server did not share them).
    pub(crate) fn router(&self) -> Option<Arc<streamhook_core::Router>> {
        self.router
            .as_ref()
            .and_then(|r| r.read().ok().map(|r| Arc::clone(&r)))
    }
}

/// The admin router and the console. `reload` reaches the running server (None: reload
/// unsupported); `router` tells the console which sinks an event is routed to.
pub fn admin_app(
    intake: Intake,
    token: String,
    reloads: Option<mpsc::Sender<ReloadRequest>>,
    router: Option<SharedRouter>,
) -> axum::Router {
    let state = Admin {
        intake,
        token: token.into(),
        reload: reloads,
        router,
        guard: Arc::default(),
    };
    let operator = crate::intake::operator_app(state.intake.clone());
    let admin = axum::Router::new()
        .route("/admin/status", get(status))
        .route("/admin/session", get(session))
        .route("/admin/dead-letters", get(dead_letters))
        .route("/admin/dead-letters/requeue", post(requeue))
        .route("/admin/replay", post(replay))
        .route("/admin/events", get(events))
        .route("/admin/events/search", get(explore::search))
        .route("/admin/events/live", get(explore::live))
        .route("/admin/events/states", get(explore::states))
        .route("/admin/events/{seq}", get(explore::event))
        .route("/admin/events/{seq}/resend", post(explore::resend))
        .route("/admin/resources/{type}/{id}", get(explore::timeline))
        .route("/admin/reload", post(reload))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state.clone());
    operator
        .merge(admin)
        .merge(console::routes(state))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .layer(middleware::from_fn(console::harden))
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

pub(crate) fn journal_error(e: JournalError) -> Response {
    let status = match e {
        JournalError::NoSuchDeadLetter { .. } | JournalError::NoSuchEvent { .. } => {
            StatusCode::NOT_FOUND
        }
        JournalError::AlreadyQueued { .. } => StatusCode::CONFLICT,
        JournalError::ReplayPastEnd { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

/// A bearer token (the CLI), or the console's session cookie, which must bring the session's
/// CSRF token on anything but GET.
async fn authorize(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    use subtle::ConstantTimeEq as _;
    match bearer {
        Some(_) if admin.guard.locked() => return console::locked_out(),
        Some(given) if bool::from(given.as_bytes().ct_eq(admin.token.as_bytes())) => {}
        Some(_) => {
            let peer = request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip());
            admin.guard.failed("admin API", peer);
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token (Authorization: Bearer <token>)",
            );
        }
        None => match console::session(headers, &admin.guard) {
            Some(id) => {
                let reads = matches!(
                    *request.method(),
                    axum::http::Method::GET | axum::http::Method::HEAD
                );
                if !reads && !console::csrf_ok(headers, &admin.token, id) {
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

/// `GET /admin/session`: what the console needs to make changes (a bearer caller gets no
/// CSRF token: it needs none).
async fn session(State(admin): State<Admin>, headers: axum::http::HeaderMap) -> Response {
    let csrf =
        console::session(&headers, &admin.guard).map(|id| console::csrf_value(&admin.token, id));
    Json(json!({
        "csrf": csrf,
        "sinks": admin.intake.sink_names(),
    }))
    .into_response()
}

pub(crate) async fn blocking<T: Send + 'static>(
    journal: &Journal,
    f: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
) -> Result<T, Response> {
    let journal = journal.clone();
    match tokio::task::spawn_blocking(move || f(&journal)).await {
        Ok(r) => r.map_err(journal_error),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("task failed: {e}"),
        )),
    }
}

async fn status(State(admin): State<Admin>) -> Response {
    let journal = admin.intake.journal().clone();
    let result = blocking(&journal, |j| {
        Ok((j.last_seq()?, j.len()?, j.cursors()?, j.dead_letters(None)?))
    })
    .await;
    let (last_seq, events, cursors, dead) = match result {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let running = admin.intake.sinks();
    let sinks: Vec<serde_json::Value> = cursors
        .iter()
        .map(|(name, cursor)| {
            let mut sink = json!({
                "name": name,
                "cursor": cursor,
                "lag": (last_seq + 1).saturating_sub(*cursor),
                "dead_letters": dead.iter().filter(|d| &d.sink == name).count(),
                "running": false,
            });
            if let Some((_, stats)) = running.iter().find(|(n, _)| n == name) {
                sink["running"] = json!(true);
                sink["activity"] = explore::sink_activity(stats);
                if journal.is_replicated() {
                    // Only the lease holder delivers; the others' cursors are copies.
                    sink["delivering_here"] =
                        json!(stats.leased.load(std::sync::atomic::Ordering::Relaxed) == 1);
                }
            }
            sink
        })
        .collect();
    let backend = if journal.is_replicated() {
        "jetstream"
    } else {
        "redb"
    };
    Json(json!({
        "backend": backend,
        "last_seq": last_seq,
        "events": events,
        "sinks": sinks,
    }))
    .into_response()
}

#[derive(Deserialize)]
struct SinkQuery {
    sink: Option<String>,
    limit: Option<usize>,
}

async fn dead_letters(State(admin): State<Admin>, Query(q): Query<SinkQuery>) -> Response {
    let limit = q.limit.unwrap_or(usize::MAX);
    match blocking(admin.intake.journal(), move |j| {
        j.dead_letters(q.sink.as_deref())
    })
    .await
    {
        Ok(letters) => {
            let out: Vec<serde_json::Value> = letters
                .into_iter()
                .take(limit)
                .map(|l| {
                    let envelope: serde_json::Value = serde_json::from_str(&l.envelope).unwrap_or_default();
                    json!({
                        "sink": l.sink, "seq": l.seq, "id": l.id, "error": l.error, "attempts": l.attempts,
                        "failed_at": l.failed_at, "kinds": envelope["kinds"], "resource": envelope["resource"],
                    })
                })
                .collect();
            Json(out).into_response()
        }
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequeueBody {
    sink: String,
    seq: Option<u64>,
    seqs: Option<Vec<u64>>,
    #[serde(default)]
    all: bool,
}

/// On a replicated journal, a change to a sink's delivery (replay, requeue, send again) is
/// made where the sink is delivered: elsewhere it would be recorded in a mirror nobody
/// delivers from. `409` naming the receiver that delivers it; `None` here.
pub(crate) async fn not_delivered_here(admin: &Admin, sink: &str) -> Option<Response> {
    let journal = admin.intake.journal();
    // An unknown sink gets the handler's own answer (404).
    if journal.delivers_here(sink) || !admin.intake.sink_names().iter().any(|s| s == sink) {
        return None;
    }
    let holder = journal.lease_holder(sink).await;
    let message = match holder {
        Some(holder) => format!(
            "sink {sink:?} is delivered by receiver {holder}, not this one: send this to its admin API"
        ),
        None => format!(
            "sink {sink:?} is delivered by no receiver right now (its lease is free): try again in a few seconds"
        ),
    };
    Some(error(StatusCode::CONFLICT, message))
}

async fn requeue(State(admin): State<Admin>, Json(body): Json<RequeueBody>) -> Response {
    if let Some(refused) = not_delivered_here(&admin, &body.sink).await {
        return refused;
    }
    let given =
        usize::from(body.seq.is_some()) + usize::from(body.seqs.is_some()) + usize::from(body.all);
    if given != 1 {
        return error(
            StatusCode::BAD_REQUEST,
            "give one of `seq`, `seqs` and `\"all\": true`",
        );
    }
    let single = body.seq.is_some();
    let result = blocking(admin.intake.journal(), move |j| {
        let seqs: Vec<u64> = match (body.seq, body.seqs) {
            (Some(seq), _) => vec![seq],
            (None, Some(seqs)) => seqs,
            (None, None) => j
                .dead_letters(Some(&body.sink))?
                .iter()
                .map(|d| d.seq)
                .collect(),
        };
        let mut done = Vec::with_capacity(seqs.len());
        for seq in seqs {
            match j.requeue(&body.sink, seq) {
                Ok(()) => done.push(seq),
                // In a list, one already requeued (or never dead) is not an error.
                Err(JournalError::NoSuchDeadLetter { .. }) if !single => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    })
    .await;
    match result {
        Ok(seqs) => Json(json!({ "requeued": seqs })).into_response(),
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    sink: String,
    from_seq: Option<u64>,
    since: Option<String>,
}

/// `since`: an RFC 3339 time, or a duration back from now (`"2h"`).
pub(crate) fn parse_since(since: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(since) {
        return Ok(t);
    }
    let ago = streamhook_core::duration::parse(since)
        .map_err(|_| format!("{since:?} is neither an RFC 3339 time nor a duration like \"2h\""))?;
    Ok(SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(SystemTime::UNIX_EPOCH))
}

async fn replay(State(admin): State<Admin>, Json(body): Json<ReplayBody>) -> Response {
    if let Some(refused) = not_delivered_here(&admin, &body.sink).await {
        return refused;
    }
    let from = match (body.from_seq, &body.since) {
        (Some(seq), None) => ReplayFrom::Seq(seq),
        (None, Some(since)) => match parse_since(since) {
            Ok(t) => ReplayFrom::Time(t),
            Err(m) => return error(StatusCode::BAD_REQUEST, m),
        },
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of `from_seq` and `since`",
            );
        }
    };
    let journal = admin.intake.journal();
    let known = match blocking(journal, |j| j.cursors()).await {
        Ok(c) => c.iter().any(|(n, _)| n == &body.sink),
        Err(resp) => return resp,
    };
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            format!("no sink named {:?}", body.sink),
        );
    }
    match journal.replay(&body.sink, from).await {
        // The sink's lease may have moved while the replay was handed over: then the replay
        // was recorded in a mirror nobody delivers from. Say so rather than 200.
        Ok(_) if !journal.delivers_here(&body.sink) => error(
            StatusCode::CONFLICT,
            format!(
                "sink {:?} moved to another receiver during the replay; ask the receiver that delivers it",
                body.sink
            ),
        ),
        Ok(seq) => Json(json!({ "sink": body.sink, "from_seq": seq })).into_response(),
        Err(e) => journal_error(e),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    from: Option<u64>,
    limit: Option<usize>,
    wait: Option<u64>,
}

async fn events(State(admin): State<Admin>, Query(q): Query<EventsQuery>) -> Response {
    let journal = admin.intake.journal().clone();
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(60));
    let mut changed = journal.subscribe();
    let from = match q.from {
        Some(f) => f,
        None => match blocking(&journal, |j| j.last_seq()).await {
            Ok(last) => last + 1,
            Err(resp) => return resp,
        },
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let found = match blocking(&journal, move |j| j.read_from(from, limit)).await {
            Ok(f) => f,
            Err(resp) => return resp,
        };
        let mut stopping = admin.intake.stopping();
        let stop_now = *stopping.borrow();
        if !found.is_empty() || tokio::time::Instant::now() >= deadline || stop_now {
            let mut body = String::new();
            for event in &found {
                body.push_str(&event.json_line());
                body.push('\n');
            }
            let next = found.last().map_or(from, |e| e.seq + 1);
            return (
                [
                    (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
                    (
                        header::HeaderName::from_static("x-next-from"),
                        next.to_string(),
                    ),
                ],
                body,
            )
                .into_response();
        }
        // Wait for a new event, the deadline, or shutdown (then the next round answers with
        // what there is, so a long poll never holds the drain).
        tokio::select! {
            _ = tokio::time::timeout_at(deadline, changed.changed()) => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
    }
}

async fn reload(State(admin): State<Admin>) -> Response {
    let Some(tx) = admin.reload else {
        return error(StatusCode::NOT_IMPLEMENTED, "this server cannot reload");
    };
    let (answer, wait) = oneshot::channel();
    if tx.send(answer).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        );
    }
    match wait.await {
        Ok(Ok(summary)) => Json(json!({ "reloaded": true, "summary": summary })).into_response(),
        Ok(Err(reason)) => error(
            StatusCode::BAD_REQUEST,
            format!("reload refused, the old config stays: {reason}"),
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ),
    }
}
