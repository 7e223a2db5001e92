//! The webhook endpoint (`POST /webhook`, public with `GET /healthz`) and the operator's
//! endpoints (`GET /readyz`, `GET /metrics`, served on the admin listener).
//!
//! The request path: load shedding -> source filter -> body limit and timeout -> decode ->
//! journal append (durable: classified and fsync'd) -> `200 {"id", "kinds"}`. Every refusal
//! is one status with a JSON body `{"error": "..."}` that says what was wrong; nothing is
//! stored for it. Bodies are never logged above debug level.
//!
//! Keep, then judge: JSON from a verified source that does not fit the typed model is stored
//! with the kind `invalid` and its problems, and answered 200 with them (Gcore never resends,
//! so a refusal would lose the event). So is a body that is not JSON at all (cut short, not
//! UTF-8, empty): its bytes are kept as `{"unparsed": TEXT}` (or `{"unparsed_base64": ...}`)
//! in an `invalid` event. Strict mode answers 422 and 400 instead. The body size limit still
//! refuses (413).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http_body_util::{BodyExt, Limited};
use serde_json::json;
use streamhook_core::{
    ForwardingHeaders, Health, Journal, JournalError, Parsed, SinkStats, SourceError, SourceFilter,
    Unverified,
};
use streamhook_types::Problem;
use streamhook_types::classify::salvage_resource;
use streamhook_types::decode;
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, warn};

use crate::config::Limits;
use crate::metrics::{Metrics, Reason, SinkSnapshot};

/// What the webhook endpoint needs: the journal, the source filter (swappable on reload),
/// limits and metrics. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Intake {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    journal: Journal,
    filter: RwLock<Arc<SourceFilter>>,
    limits: Limits,
    strict: std::sync::atomic::AtomicBool,
    permits: Semaphore,
    metrics: Metrics,
    sinks: RwLock<Vec<(String, Arc<SinkStats>)>>,
    /// Turns true when the server starts shutting down.
    stopping: tokio::sync::watch::Sender<bool>,
    /// `retention.removed_sink_grace`, in ms (status shows until when a removed sink's cursor
    /// holds events).
    sink_grace_ms: std::sync::atomic::AtomicU64,
    /// Reconciliation with Gcore's API, when a key is configured.
    reconciler: std::sync::OnceLock<Arc<streamhook_reconcile::Reconciler>>,
}

impl Intake {
    /// Sets the reconciler (once) that the admin API, `/readyz` and `/metrics` report on.
    pub fn set_reconciler(&self, reconciler: Arc<streamhook_reconcile::Reconciler>) {
        let _ = self.inner.reconciler.set(reconciler);
    }

    /// The reconciler, when reconciliation is on.
    pub fn reconciler(&self) -> Option<&Arc<streamhook_reconcile::Reconciler>> {
        self.inner.reconciler.get()
    }

    /// Intake over `journal`, checking sources with `filter`.
    pub fn new(journal: Journal, filter: SourceFilter, limits: Limits) -> Self {
        let permits = Semaphore::new(limits.max_concurrent_requests.max(1));
        Intake {
            inner: Arc::new(Inner {
                journal,
                filter: RwLock::new(Arc::new(filter)),
                limits,
                strict: std::sync::atomic::AtomicBool::new(false),
                permits,
                metrics: Metrics::default(),
                sinks: RwLock::new(Vec::new()),
                stopping: tokio::sync::watch::channel(false).0,
                sink_grace_ms: std::sync::atomic::AtomicU64::new(7 * 24 * 3600 * 1000),
                reconciler: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The source filter in force.
    pub fn filter(&self) -> Arc<SourceFilter> {
        self.inner
            .filter
            .read()
            .map(|f| Arc::clone(&f))
            .unwrap_or_else(|e| Arc::clone(&e.into_inner()))
    }

    /// Swaps the source filter (a reload); requests already past the check are not affected.
    pub fn set_filter(&self, filter: SourceFilter) {
        if let Ok(mut f) = self.inner.filter.write() {
            *f = Arc::new(filter);
        }
    }

    /// How long a sink taken out of the configuration keeps its place.
    pub fn set_sink_grace(&self, grace: std::time::Duration) {
        self.inner.sink_grace_ms.store(
            grace.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// See [`Intake::set_sink_grace`].
    pub fn sink_grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.inner
                .sink_grace_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Strict mode: JSON that does not fit the model is refused with 422 instead of being kept
    /// as an `invalid` event. Takes effect for the next request (a reload may switch it).
    pub fn set_strict(&self, strict: bool) {
        self.inner
            .strict
            .store(strict, std::sync::atomic::Ordering::Relaxed);
    }

    /// Marks the server as shutting down: long polls (`/admin/events?wait=`) return.
    pub fn begin_shutdown(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// A receiver that turns true when the server starts shutting down.
    pub fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.stopping.subscribe()
    }

    /// The request limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Tells readiness and metrics which sinks run, with their counters.
    pub fn set_sinks(&self, sinks: Vec<(String, Arc<SinkStats>)>) {
        if let Ok(mut s) = self.inner.sinks.write() {
            *s = sinks;
        }
    }

    /// The names of the running sinks.
    pub fn sink_names(&self) -> Vec<String> {
        self.sinks().into_iter().map(|(n, _)| n).collect()
    }

    pub(crate) fn sinks(&self) -> Vec<(String, Arc<SinkStats>)> {
        self.inner
            .sinks
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

/// The webhook router: `POST {path}` (and `{path}/{token}`) and `GET /healthz`, for the
/// public listener. Mount it in any axum app served with
/// `into_make_service_with_connect_info::<SocketAddr>()` (the source filter needs the peer).
/// `/readyz` and `/metrics` are in [`operator_app`], for a listener only operators reach.
pub fn app(intake: Intake, path: &str) -> axum::Router {
    axum::Router::new()
        .route(path, any(webhook))
        .route(&format!("{path}/{{token}}"), any(webhook_with_token))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(intake)
}

/// `GET /healthz`, `GET /readyz` and `GET /metrics`: cheap (no journal lock, no decoding), for
/// the admin listener or any listener only operators reach (load balancers and container
/// health checks that are not in the allowlist probe `/healthz` here).
pub fn operator_app(intake: Intake) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(intake)
}

/// A refusal: one status, one JSON message.
#[derive(Debug)]
pub struct ApiError {
    reason: Reason,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(reason: Reason, message: impl Into<String>) -> Self {
        ApiError {
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.reason.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(json!({ "error": self.message }))).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.reason == Reason::Method {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

async fn webhook(State(intake): State<Intake>, request: Request) -> Response {
    handle(intake, None, request).await
}

async fn webhook_with_token(
    State(intake): State<Intake>,
    Path(token): Path<String>,
    request: Request,
) -> Response {
    handle(intake, Some(token), request).await
}

async fn handle(intake: Intake, token: Option<String>, request: Request) -> Response {
    let request_id = format!("{:016x}", fastrand::u64(..));
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    // Per-request detail is debug: at info, the stdout sink already shows every event, and
    // formatting a line per request costs a quarter of the throughput.
    let span =
        tracing::debug_span!("webhook", request_id = %request_id, peer = ?peer.map(|p| p.ip()));
    let metrics_intake = intake.clone();
    let result = receive(intake, token, peer, request).instrument(span).await;
    let (reason, mut response) = match result {
        Ok((appended, problems, response)) => {
            metrics_intake.metrics().event(&appended.kinds);
            match problems.first() {
                Some(first) => {
                    metrics_intake.metrics().invalid(&first.path);
                    (Reason::AcceptedInvalid, response)
                }
                None => (Reason::Accepted, response),
            }
        }
        Err(e) => {
            let peer = peer.map(|p| p.ip().to_string()).unwrap_or_default();
            info!(request_id = %request_id, peer = %peer, status = e.reason.status(), reason = e.reason.label(), error = %e.message, "refused");
            (e.reason, e.into_response())
        }
    };
    metrics_intake.metrics().request(reason);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// At most this many headers are kept with an event, for the console.
const KEPT_HEADERS: usize = 64;
/// And at most this many bytes of them (names and values).
const KEPT_HEADER_BYTES: usize = 8 * 1024;
/// A longer value is cut to this many bytes.
const KEPT_VALUE_BYTES: usize = 1024;

/// Whether a header may carry a credential: its value is not kept.
fn secret_header(name: &str) -> bool {
    const WORDS: [&str; 13] = [
        "auth",
        "cookie",
        "token",
        "secret",
        "key",
        "sig",
        "pass",
        "session",
        "jwt",
        "hmac",
        "assertion",
        "credential",
        "dpop",
    ];
    WORDS.iter().any(|w| name.contains(w))
}

/// The request's headers as the console shows them: in order, bounded, credentials (by
/// name: anything with auth, cookie, token, secret, key, sig, pass, session, jwt, hmac,
/// assertion, credential or dpop in it) redacted, and the path token taken out of every value
/// (a proxy's `x-original-uri`, `x-forwarded-uri`, `x-envoy-original-path` carry the URL).
pub(crate) fn kept_headers(
    headers: &axum::http::HeaderMap,
    path_token: Option<&str>,
) -> Vec<(String, String)> {
    let mut kept = Vec::new();
    let mut bytes = 0;
    for (i, (name, value)) in headers.iter().enumerate() {
        let name = name.as_str();
        let mut value = if secret_header(name) {
            "(redacted)".to_owned()
        } else {
            let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match path_token {
                Some(t) if !t.is_empty() && text.contains(t) => text.replace(t, "(path token)"),
                _ => text,
            }
        };
        if value.len() > KEPT_VALUE_BYTES {
            let mut cut = KEPT_VALUE_BYTES;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
            value.push_str("…(cut)");
        }
        bytes += name.len() + value.len();
        if i >= KEPT_HEADERS || bytes > KEPT_HEADER_BYTES {
            kept.push((
                "…".to_owned(),
                format!("({} more headers not kept)", headers.len() - i),
            ));
            break;
        }
        kept.push((name.to_owned(), value));
    }
    kept
}

async fn receive(
    intake: Intake,
    token: Option<String>,
    peer: Option<SocketAddr>,
    request: Request,
) -> Result<(streamhook_core::Appended, Vec<Problem>, Response), ApiError> {
    if request.method() != Method::POST {
        return Err(ApiError::new(
            Reason::Method,
            format!(
                "method {} not allowed: webhooks are POSTed",
                request.method()
            ),
        ));
    }
    // Load shedding before anything else costs work.
    let _permit = intake.inner.permits.try_acquire().map_err(|_| {
        ApiError::new(
            Reason::Overloaded,
            "too many requests at once; retry shortly",
        )
        .retry_after(1)
    })?;
    let metrics = intake.metrics();
    metrics
        .in_flight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _in_flight = InFlight(&metrics.in_flight);

    let Some(peer) = peer else {
        warn!(
            "no peer address: serve the router with into_make_service_with_connect_info::<SocketAddr>()"
        );
        return Err(ApiError::new(Reason::Forbidden, "source address unknown"));
    };
    let (parts, body) = request.into_parts();
    let verified = {
        let headers = forwarding_headers(&parts.headers);
        let unverified = Unverified {
            peer: peer.ip(),
            headers,
            token: token.as_deref(),
        };
        intake.filter().verify(&unverified).map_err(|e| {
            let reason = match e {
                SourceError::NotAllowed(_) => Reason::Forbidden,
                SourceError::BadToken => Reason::BadToken,
                _ => Reason::BadForwarding,
            };
            ApiError::new(reason, e.to_string())
        })?
    };

    // The body: bounded in size and in time.
    let limits = &intake.inner.limits;
    let too_large = || {
        ApiError::new(
            Reason::TooLarge,
            format!("body larger than {} bytes", limits.max_body_bytes),
        )
    };
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limits.max_body_bytes as u64
    {
        return Err(too_large());
    }
    let collected = tokio::time::timeout(
        limits.body_timeout,
        Limited::new(body, limits.max_body_bytes).collect(),
    )
    .await;
    let bytes = match collected {
        Err(_) => {
            return Err(ApiError::new(
                Reason::BodyTimeout,
                format!(
                    "the body did not arrive within {}",
                    humantime::format_duration(limits.body_timeout)
                ),
            ));
        }
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(too_large());
        }
        Ok(Err(e)) => {
            return Err(ApiError::new(
                Reason::NotJson,
                format!("cannot read the body: {e}"),
            ));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    debug!(body = %String::from_utf8_lossy(&bytes), "received");

    // Decode without locating what was tolerated (the server does not report warnings); only
    // a problem needs a line and column, so only a problem decodes again to find them.
    let strict = intake
        .inner
        .strict
        .load(std::sync::atomic::Ordering::Relaxed);
    let value = match decode::parse_json(&bytes) {
        Ok(value) => value,
        Err(e) if strict => return Err(ApiError::new(Reason::NotJson, e.to_string())),
        // Not JSON (cut short, not UTF-8, empty) from a verified sender: kept whole, flagged.
        Err(e) => {
            let (payload, problem) = unparsed(&bytes, &e);
            let parsed = Parsed::Invalid {
                resource: salvage_resource(&serde_json::Value::Null),
                problems: vec![problem],
            };
            return accept(
                &intake,
                verified,
                &payload,
                parsed,
                &parts.headers,
                token.as_deref(),
            )
            .await;
        }
    };
    let parsed = match decode::decode_value(&value) {
        Ok(decoded) => Parsed::Webhook(decoded.webhook),
        Err(_) => {
            let problem = match decode::decode(&bytes) {
                Err(e) => Problem::from_error(&e),
                Ok(_) => Problem {
                    path: "$".into(),
                    line: None,
                    column: None,
                    message: "not a webhook".into(),
                },
            };
            if strict {
                return Err(ApiError::new(Reason::NotWebhook, problem.to_string()));
            }
            Parsed::Invalid {
                resource: salvage_resource(&value),
                problems: vec![problem],
            }
        }
    };
    accept(
        &intake,
        verified,
        &bytes,
        parsed,
        &parts.headers,
        token.as_deref(),
    )
    .await
}

/// A body that is not JSON, as the journal keeps it: `{"unparsed": TEXT}`, or
/// `{"unparsed_base64": ...}` when it is not UTF-8, with the problem.
fn unparsed(bytes: &[u8], error: &streamhook_types::DecodeError) -> (Vec<u8>, Problem) {
    use base64::Engine as _;
    let wrapper = match std::str::from_utf8(bytes) {
        Ok(text) => json!({ "unparsed": text }),
        Err(_) => json!({
            "unparsed_base64": base64::engine::general_purpose::STANDARD.encode(bytes)
        }),
    };
    (wrapper.to_string().into_bytes(), Problem::from_error(error))
}

/// Journals the event and answers `200 {"id", "kinds"}` (with `problems` for an invalid one).
async fn accept(
    intake: &Intake,
    verified: streamhook_core::Verified,
    bytes: &[u8],
    parsed: Parsed,
    headers: &HeaderMap,
    path_token: Option<&str>,
) -> Result<(streamhook_core::Appended, Vec<Problem>, Response), ApiError> {
    let problems = match &parsed {
        Parsed::Invalid { problems, .. } => problems.clone(),
        Parsed::Webhook(_) => Vec::new(),
    };
    let appended = intake
        .journal()
        .append_received(verified, bytes, parsed, kept_headers(headers, path_token))
        .await
        .map_err(|e| match e {
            JournalError::Busy => {
                ApiError::new(Reason::JournalBusy, "the journal is busy; retry shortly")
                    .retry_after(1)
            }
            e => {
                warn!(error = %e, "journal append failed; the event was not accepted");
                ApiError::new(
                    Reason::JournalError,
                    "the journal cannot write; the event was not accepted",
                )
                .retry_after(5)
            }
        })?;
    let kinds: Vec<&str> = appended.kinds.iter().map(|k| k.as_str()).collect();
    debug!(id = %appended.id, seq = appended.seq, kinds = %kinds.join(","), source = %verified.client(), "accepted");
    if let Some(first) = problems.first() {
        info!(id = %appended.id, seq = appended.seq, problem = %first, "kept a payload that does not fit the model as an invalid event");
    }
    let body = AcceptedBody {
        id: &appended.id,
        kinds: &appended.kinds,
        problems: &problems,
        spooled: appended.spooled,
    };
    let response = (StatusCode::OK, Json(body)).into_response();
    Ok((appended, problems, response))
}

/// The answer to a stored event: `{"id", "kinds"}`, `"problems"` for an `invalid` one, and
/// `"spooled": true` for one a replicated journal's receiver kept in its spool (its kinds are
/// then what this receiver's copy of the history says; the stream decides when it stores it).
#[derive(serde::Serialize)]
struct AcceptedBody<'a> {
    id: &'a streamhook_types::EventId,
    kinds: &'a [streamhook_types::EventKind],
    #[serde(skip_serializing_if = "<[Problem]>::is_empty")]
    problems: &'a [Problem],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    spooled: bool,
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn forwarding_headers(headers: &HeaderMap) -> ForwardingHeaders<'_> {
    let all = |name: &str| headers.get_all(name).iter().map(|v| v.as_bytes()).collect();
    ForwardingHeaders {
        forwarded: all("forwarded"),
        x_forwarded_for: all("x-forwarded-for"),
        x_real_ip: all("x-real-ip"),
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the journal can write: read from what the last commit and the writer thread
/// recorded (no database access, no lock), so it turns 503 at the first failed commit or a
/// dead writer. While not ready it asks the journal for a probe commit, so it turns 200 again
/// as soon as a commit can succeed, with or without traffic.
async fn readyz(State(intake): State<Intake>) -> Response {
    let journal = intake.journal();
    let health = journal.health();
    if !health.is_writable() {
        journal.probe();
    }
    let last_seq = journal.last_committed();
    let sinks: serde_json::Map<String, serde_json::Value> = intake
        .sinks()
        .iter()
        .map(|(name, stats)| {
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            let lag = (last_seq + 1).saturating_sub(load(&stats.cursor));
            (
                name.clone(),
                json!({
                    "lag": lag,
                    "retrying": load(&stats.retrying),
                    "delivered": load(&stats.delivered),
                    "paused_by_journal_error": load(&stats.paused) == 1,
                }),
            )
        })
        .collect();
    let (status, journal_state) = match &health {
        Health::Writable => (StatusCode::OK, "writable".to_owned()),
        Health::CannotWrite(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot write: {e}"),
        ),
        Health::WriterDead => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the journal writer stopped (a bug): restart the server".to_owned(),
        ),
        Health::Closed => (StatusCode::SERVICE_UNAVAILABLE, "closed".to_owned()),
    };
    let mut body = json!({
        "status": if status == StatusCode::OK { "ready" } else { "not ready" },
        "journal": journal_state,
        "last_seq": last_seq,
        "sinks": sinks,
    });
    if let Some(shared) = journal.shared_status() {
        body["nats"] = json!({"connected": shared.connected, "state": shared.state});
        if let Some(problem) = &shared.problem {
            // Events are still accepted (into the stream or the spool): ready, but an
            // operator must act.
            body["nats"]["problem"] = json!(problem);
        }
        if let Some(spool) = shared_snapshot(journal).await
            && spool.spool_events > 0
        {
            // Accepted and kept here, not yet in the shared stream (still ready: the spool
            // is written and synced like a single host's journal).
            body["spooling"] = json!({
                "events": spool.spool_events,
                "oldest_age_s": (spool.spool_oldest_age_s * 10.0).round() / 10.0,
            });
        }
    }
    if let Some(reconciler) = intake.reconciler() {
        // Never a reason to be unready: intake does not depend on Gcore's API.
        let status = reconciler.status();
        let mut r = serde_json::to_value(&status.state).unwrap_or_default();
        if let Some(last) = &status.last_run {
            r["last_run_at"] = json!(last.finished_at);
            r["last_outcome"] = json!(last.outcome);
        }
        body["reconcile"] = r;
    }
    (status, Json(body)).into_response()
}

/// A replicated journal's connection and spool, for `/readyz` and `/metrics` (`None`: one
/// host). Reads the spool's oldest entry only when it holds any.
async fn shared_snapshot(journal: &Journal) -> Option<crate::metrics::SharedSnapshot> {
    let status = journal.shared_status()?;
    let events = journal.spool_len();
    let mut oldest_age_s = 0.0;
    if events > 0 {
        let j = journal.clone();
        if let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || j.spool_stats()).await
            && let Some(oldest) = stats.oldest_ms
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            oldest_age_s = now.saturating_sub(oldest) as f64 / 1000.0;
        }
    }
    Some(crate::metrics::SharedSnapshot {
        connected: status.connected,
        problem: status.problem.is_some(),
        spool_events: events,
        spool_oldest_age_s: oldest_age_s,
    })
}

async fn metrics(State(intake): State<Intake>) -> Response {
    let journal = intake.journal().clone();
    let sinks = intake.sinks();
    let names: Vec<String> = sinks.iter().map(|(n, _)| n.clone()).collect();
    let last_seq = journal.last_committed();
    // Counting dead letters walks keys only; off the async workers all the same.
    let dead = tokio::task::spawn_blocking(move || -> Vec<usize> {
        names
            .iter()
            .map(|n| journal.dead_letter_count(n).unwrap_or(0) as usize)
            .collect()
    })
    .await
    .unwrap_or_default();
    let snapshots: Vec<SinkSnapshot<'_>> = sinks
        .iter()
        .zip(dead.iter().copied().chain(std::iter::repeat(0)))
        .map(|((name, stats), dead_letters)| SinkSnapshot {
            name,
            stats,
            dead_letters,
        })
        .collect();
    let writable = intake.journal().health().is_writable();
    let shared = shared_snapshot(intake.journal()).await;
    let mut text = intake.metrics().render(
        intake.journal().stats(),
        last_seq,
        writable,
        shared.as_ref(),
        &snapshots,
    );
    if let Some(reconciler) = intake.reconciler() {
        crate::metrics::render_reconcile(&mut text, reconciler);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn not_found(State(intake): State<Intake>, request: Request) -> Response {
    intake.metrics().request(Reason::NotFound);
    ApiError::new(
        Reason::NotFound,
        format!(
            "no such endpoint: {} {}",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response()
}
