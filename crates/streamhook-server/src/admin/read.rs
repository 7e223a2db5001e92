//! The admin API's read side for the console: search events newest first, follow them live
//! (server-sent events), one event in full, a resource's timeline, and per-sink states. Nothing
//! here writes: sending an event again is an operator call (`operator.rs`).
//!
//! Searches scan the journal backwards from a seq, at most [`SCAN_BUDGET`] records a call,
//! and say where they stopped (`next_before`), so a call costs the same on a journal of any
//! size; the console goes on scanning while the page is not full.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use streamhook_core::{Journal, JournalError, KindPattern, RouteInput, StoredEvent};
use streamhook_types::Envelope;

use super::reply::{blocking, error, parse_since};
use super::state::Admin;

/// The most records one search call reads.
pub const SCAN_BUDGET: usize = 20_000;
/// The most records a timeline reads (newest first).
pub const TIMELINE_BUDGET: usize = 100_000;
/// The most events a timeline returns.
pub const TIMELINE_MAX: usize = 2_000;

/// What the console filters on. Every field is optional; all given must match.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct FilterQuery {
    /// The webhook type: `stream`, `video`, ...
    #[serde(rename = "type", default)]
    pub type_name: Option<String>,
    /// A kind glob: `stream.*`, `*.stopped`.
    #[serde(default)]
    pub kind: Option<String>,
    /// The resource id.
    #[serde(default)]
    pub resource: Option<String>,
    /// Text anywhere in the envelope (body included), case-insensitive.
    #[serde(default)]
    pub q: Option<String>,
    /// From this time (RFC 3339, or a duration back from now: `2h`).
    #[serde(default)]
    pub since: Option<String>,
    /// Up to this time (same forms).
    #[serde(default)]
    pub until: Option<String>,
    /// With `state`: the sink whose delivery state is filtered on.
    #[serde(default)]
    pub sink: Option<String>,
    /// A delivery state for `sink`: `delivered`, `pending` (waiting or retrying), `dead`,
    /// `not routed`.
    #[serde(default)]
    pub state: Option<String>,
}

/// The delivery states one can filter on.
pub const STATES: [&str; 5] = ["delivered", "pending", "dead", "requeued", "not routed"];

/// A filter, checked and compiled.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    type_name: Option<String>,
    kind: Option<KindPattern>,
    resource: Option<u64>,
    text: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
    /// A sink and the state its events must be in.
    state: Option<(String, String)>,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Filter {
    /// Reads a query; an unusable value is a message for a 400.
    pub fn new(q: &FilterQuery) -> Result<Filter, String> {
        fn some(s: &Option<String>) -> Option<&str> {
            s.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        let resource = match some(&q.resource) {
            Some(r) => Some(
                r.parse::<u64>()
                    .map_err(|_| format!("resource {r:?} is not a numeric id"))?,
            ),
            None => None,
        };
        let kind = match some(&q.kind) {
            Some(k) => Some(KindPattern::new(k)?),
            None => None,
        };
        let time = |s: Option<&str>| -> Result<Option<u64>, String> {
            s.map(|s| parse_since(s).map(ms)).transpose()
        };
        let state = match (some(&q.sink), some(&q.state)) {
            (Some(sink), Some(state)) => {
                let state = state.replace(['_', '-'], " ");
                if !STATES.contains(&state.as_str()) {
                    return Err(format!("state {state:?}: one of {}", STATES.join(", ")));
                }
                Some((sink.to_owned(), state))
            }
            (None, None) => None,
            (None, Some(_)) => return Err("state: say which sink (sink=NAME)".into()),
            (Some(_), None) => return Err("sink: say which state (state=dead, ...)".into()),
        };
        Ok(Filter {
            type_name: some(&q.type_name).map(str::to_owned),
            kind,
            resource,
            text: some(&q.q).map(str::to_lowercase),
            since_ms: time(some(&q.since))?,
            until_ms: time(some(&q.until))?,
            state,
        })
    }

    /// Whether the stored record may match, before decoding it (cheap tests first).
    fn may_match(&self, event: &StoredEvent) -> bool {
        if self.since_ms.is_some_and(|s| event.received_at_ms < s)
            || self.until_ms.is_some_and(|u| event.received_at_ms > u)
        {
            return false;
        }
        if let Some(id) = self.resource
            && !event.json.contains(&format!("\"id\":{id}"))
        {
            return false;
        }
        if let Some(text) = &self.text
            && !contains_lowercase(&event.json, text)
        {
            return false;
        }
        true
    }

    /// Whether an event's sink states pass the state filter (always, without one).
    fn state_matches(&self, states: &BTreeMap<String, Value>) -> bool {
        self.state.as_ref().is_none_or(|(sink, state)| {
            states
                .get(sink)
                .and_then(|v| v["state"].as_str())
                .is_some_and(|s| s == state)
        })
    }

    fn matches(&self, envelope: &Envelope) -> bool {
        if let Some(t) = &self.type_name
            && &envelope.resource.kind != t
        {
            return false;
        }
        if let Some(id) = self.resource
            && envelope.resource.id != Some(id)
        {
            return false;
        }
        if let Some(k) = &self.kind
            && !envelope.kinds.iter().any(|kind| k.matches(kind.as_str()))
        {
            return false;
        }
        true
    }
}

fn contains_lowercase(haystack: &str, needle_lower: &str) -> bool {
    if haystack.is_ascii() && needle_lower.is_ascii() {
        let (h, n) = (haystack.as_bytes(), needle_lower.as_bytes());
        return n.is_empty()
            || h.windows(n.len())
                .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b));
    }
    haystack.to_lowercase().contains(needle_lower)
}

/// One event as a row: what the list shows.
pub fn row(event: &StoredEvent, envelope: &Envelope) -> Value {
    let name = serde_json::from_str::<Value>(envelope.payload.get())
        .ok()
        .and_then(|p| {
            p.get("message")
                .and_then(|m| m.get(&envelope.resource.kind))
                .and_then(|r| r.get("name"))
                .and_then(|n| n.as_str().map(str::to_owned))
        });
    json!({
        "seq": event.seq,
        "id": envelope.id,
        "received_at": envelope.received_at,
        "received_at_ms": event.received_at_ms,
        "kinds": envelope.kinds,
        "resource": envelope.resource,
        "name": name,
        "source_ip": envelope.source_ip,
        "late": envelope.late,
        "reconciled": envelope.reconciled,
    })
}

/// A turn for a heavy read (a search page, a timeline, states): at most
/// [`MAX_READS`](super::state::MAX_READS) run at once; a call that waits 10 s gets 503.
async fn turn(admin: &Admin) -> Result<tokio::sync::OwnedSemaphorePermit, Response> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        std::sync::Arc::clone(&admin.reads).acquire_owned(),
    )
    .await
    {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the journal is busy with other reads; try again",
        )),
    }
}

/// What one search call found.
struct Page {
    rows: Vec<(StoredEvent, Envelope)>,
    /// Where the next call goes on (None: the start of the journal was reached).
    next_before: Option<u64>,
    scanned: usize,
}

fn search_page(
    admin: &Admin,
    journal: &Journal,
    filter: &Filter,
    before: u64,
    limit: usize,
) -> Result<Page, JournalError> {
    let Some((sink, state)) = &filter.state else {
        return search_unfiltered(journal, filter, before, limit);
    };
    // Candidates by the other filters, then their state for the sink, page after page
    // within the scan budget.
    let mut rows: Vec<(StoredEvent, Envelope)> = Vec::new();
    let mut scanned = 0;
    let mut before = before;
    loop {
        let page = search_unfiltered(journal, filter, before, 200)?;
        scanned += page.scanned;
        let states = sink_states(admin, journal, &page.rows)?;
        for (row, st) in page.rows.into_iter().zip(states) {
            let s = st
                .get(sink)
                .and_then(|v| v["state"].as_str())
                .unwrap_or_default();
            if s == state {
                if rows.len() == limit {
                    // More matches on this page than the limit: the next call goes on right
                    // after the last row taken, not past the rest of the page.
                    let last = rows.last().map_or(1, |(e, _)| e.seq);
                    return Ok(Page {
                        rows,
                        next_before: (last > 1).then_some(last),
                        scanned,
                    });
                }
                rows.push(row);
            }
        }
        match page.next_before {
            Some(b) if rows.len() < limit && scanned < SCAN_BUDGET => before = b,
            next => {
                return Ok(Page {
                    rows,
                    next_before: next,
                    scanned,
                });
            }
        }
    }
}

fn search_unfiltered(
    journal: &Journal,
    filter: &Filter,
    before: u64,
    limit: usize,
) -> Result<Page, JournalError> {
    let mut rows = Vec::new();
    let mut scanned = 0;
    let mut cursor = before;
    while scanned < SCAN_BUDGET && rows.len() < limit {
        let chunk = journal.read_back(cursor, 1000.min(SCAN_BUDGET - scanned))?;
        if chunk.is_empty() {
            return Ok(Page {
                rows,
                next_before: None,
                scanned,
            });
        }
        for record in chunk {
            scanned += 1;
            // An unreadable record is shown nowhere here (delivery dead-letters it), but the
            // scan goes on past it.
            let event = match record {
                Ok(event) => event,
                Err(JournalError::Corrupt { seq, .. }) => {
                    cursor = seq;
                    continue;
                }
                Err(e) => return Err(e),
            };
            cursor = event.seq;
            // Receive times grow with seq: past `since`, nothing older can match.
            if filter.since_ms.is_some_and(|s| event.received_at_ms < s) {
                return Ok(Page {
                    rows,
                    next_before: None,
                    scanned,
                });
            }
            if !filter.may_match(&event) {
                continue;
            }
            let Ok(envelope) = event.envelope() else {
                continue;
            };
            if filter.matches(&envelope) {
                rows.push((event, envelope));
                if rows.len() >= limit {
                    break;
                }
            }
        }
    }
    let next_before = if cursor <= 1 { None } else { Some(cursor) };
    Ok(Page {
        rows,
        next_before,
        scanned,
    })
}

/// The state of events for each running sink: delivered, pending (with its retry), dead,
/// requeued, not routed (by the routes in force now), or journaled before the sink existed.
fn sink_states(
    admin: &Admin,
    journal: &Journal,
    rows: &[(StoredEvent, Envelope)],
) -> Result<Vec<BTreeMap<String, Value>>, JournalError> {
    let mut out = vec![BTreeMap::new(); rows.len()];
    if rows.is_empty() {
        return Ok(out);
    }
    let seqs: Vec<u64> = rows.iter().map(|(e, _)| e.seq).collect();
    let router = admin.router();
    let cursors: HashMap<String, u64> = journal.cursors()?.into_iter().collect();
    for (name, stats) in admin.intake.sinks() {
        let cursor = cursors.get(&name).copied().unwrap_or(0);
        let start = journal.sink_start(&name)?.unwrap_or(1);
        let flags = journal.letter_flags(&name, &seqs)?;
        let lasts = journal.last_attempts(&name, &seqs)?;
        let retrying = stats.activity().retrying.clone();
        let progress = stats.progress().clone();
        for ((((event, envelope), states), (dead, queued)), last) in
            rows.iter().zip(out.iter_mut()).zip(flags).zip(lasts)
        {
            let routed = router.as_ref().is_none_or(|r| {
                r.wants(
                    &name,
                    &RouteInput {
                        kinds: &envelope.kinds,
                        type_name: &envelope.resource.kind,
                        origin: envelope.origin,
                        id: envelope.resource.id,
                    },
                )
            });
            let seq = event.seq;
            let passed = seq < cursor
                || (seq < progress.next && progress.in_flight.binary_search(&seq).is_err());
            let state = if dead {
                // Why, from the dead letter itself (the attempts may not be written yet).
                let letter = journal
                    .dead_letters_between(&name, event.seq, event.seq)?
                    .into_iter()
                    .next();
                match letter {
                    Some(l) => json!({ "state": "dead", "error": l.error, "attempts": l.attempts }),
                    None => json!({ "state": "dead" }),
                }
            } else if queued {
                json!({ "state": "requeued" })
            } else if let Some(r) = retrying.get(&seq) {
                json!({ "state": "pending", "attempts": r.attempts, "next_at_ms": r.next_at_ms, "error": r.error })
            } else if last.as_ref().is_some_and(|l| l.outcome == "delivered") {
                // A delivery recorded: delivered, whatever the routes say now.
                json!({ "state": "delivered" })
            } else if !routed {
                json!({ "state": "not routed" })
            } else if seq < start {
                json!({ "state": "before the sink" })
            } else if passed {
                json!({ "state": "delivered" })
            } else {
                json!({ "state": "pending", "attempts": 0 })
            };
            let mut state = state;
            // The last attempt, for why it failed (or how long it took), inline.
            if let Some(last) = last {
                state["last"] = json!(last);
            }
            states.insert(name.clone(), state);
        }
    }
    Ok(out)
}

fn rows_json(rows: &[(StoredEvent, Envelope)], states: Vec<BTreeMap<String, Value>>) -> Vec<Value> {
    rows.iter()
        .zip(states)
        .map(|((event, envelope), states)| {
            let mut r = row(event, envelope);
            r["sinks"] = json!(states);
            r
        })
        .collect()
}

#[derive(Deserialize)]
pub(crate) struct SearchQuery {
    #[serde(flatten)]
    filter: FilterQuery,
    before: Option<u64>,
    limit: Option<usize>,
}

/// `GET /admin/events/search`: newest first, filtered, paged by `before`.
pub(crate) async fn search(State(admin): State<Admin>, Query(q): Query<SearchQuery>) -> Response {
    let filter = match Filter::new(&q.filter) {
        Ok(f) => f,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let _turn = match turn(&admin).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let journal = admin.intake.journal().clone();
    let before = q.before.unwrap_or(u64::MAX);
    let a = admin.clone();
    let result = blocking(&journal, move |j| {
        let page = search_page(&a, j, &filter, before, limit)?;
        let states = sink_states(&a, j, &page.rows)?;
        Ok((page, states))
    })
    .await;
    match result {
        Ok((page, states)) => Json(json!({
            "events": rows_json(&page.rows, states),
            "next_before": page.next_before,
            "scanned": page.scanned,
            "last_seq": journal.last_committed(),
        }))
        .into_response(),
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
pub(crate) struct StatesQuery {
    seqs: String,
}

/// `GET /admin/events/states?seqs=1,2,3`: the sink states of these events (at most 500).
pub(crate) async fn states(State(admin): State<Admin>, Query(q): Query<StatesQuery>) -> Response {
    let seqs: Result<Vec<u64>, _> = q
        .seqs
        .split(',')
        .filter(|s| !s.is_empty())
        .take(500)
        .map(str::parse)
        .collect();
    let Ok(seqs) = seqs else {
        return error(
            StatusCode::BAD_REQUEST,
            "seqs: a comma-separated list of numbers",
        );
    };
    let _turn = match turn(&admin).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let a = admin.clone();
    let result = blocking(admin.intake.journal(), move |j| {
        let mut rows = Vec::new();
        for seq in seqs {
            if let Some(event) = j.get(seq)?
                && let Ok(envelope) = event.envelope()
            {
                rows.push((event, envelope));
            }
        }
        let states = sink_states(&a, j, &rows)?;
        Ok(rows
            .iter()
            .zip(states)
            .map(|((e, _), s)| (e.seq.to_string(), json!(s)))
            .collect::<serde_json::Map<String, Value>>())
    })
    .await;
    match result {
        Ok(map) => Json(Value::Object(map)).into_response(),
        Err(resp) => resp,
    }
}

/// `GET /admin/events/{seq}`: the envelope, the body as received, how it arrived, and what
/// each sink did with it.
pub(crate) async fn event(State(admin): State<Admin>, Path(seq): Path<u64>) -> Response {
    let a = admin.clone();
    let result = blocking(admin.intake.journal(), move |j| {
        let Some(event) = j.get(seq)? else {
            return Ok(None);
        };
        let envelope = event.envelope()?;
        let received = j.received(seq)?;
        let body = event.body(&envelope);
        let rows = vec![(event, envelope)];
        let states = sink_states(&a, j, &rows)?;
        let mut sinks = Vec::new();
        for (name, stats) in a.intake.sinks() {
            // Every attempt the journal keeps (the first and the newest), and those not yet
            // written to it.
            let mut attempts = j.attempts(&name, seq)?;
            attempts.extend(
                stats
                    .unsaved
                    .lock()
                    .map(|u| {
                        u.iter()
                            .filter(|(s, _)| *s == seq)
                            .map(|(_, a)| a.clone())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default(),
            );
            let dead = j.dead_letters_between(&name, seq, seq)?.into_iter().next();
            sinks.push(json!({
                "name": name,
                "state": states[0].get(&name),
                "attempts": attempts,
                "dead_letter": dead.map(|d| json!({"error": d.error, "attempts": d.attempts, "failed_at": d.failed_at})),
            }));
        }
        let (event, envelope) = rows.into_iter().next().expect("one row");
        Ok(Some(json!({
            "row": row(&event, &envelope),
            "envelope": serde_json::from_str::<Value>(&event.json).unwrap_or(Value::Null),
            "body": body,
            "received": received,
            "sinks": sinks,
        })))
    })
    .await;
    match result {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("the journal holds no event at seq {seq} (never written, or pruned)"),
        ),
        Err(resp) => resp,
    }
}

/// `GET /admin/resources/{type}/{id}`: a resource's events, oldest first, from the newest
/// [`TIMELINE_BUDGET`] records (at most [`TIMELINE_MAX`] events).
pub(crate) async fn timeline(
    State(admin): State<Admin>,
    Path((type_name, id)): Path<(String, u64)>,
) -> Response {
    let _turn = match turn(&admin).await {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let t = type_name.clone();
    let result = blocking(admin.intake.journal(), move |j| {
        let filter = Filter {
            type_name: Some(t),
            resource: Some(id),
            ..Filter::default()
        };
        let mut found = Vec::new();
        let mut scanned = 0;
        let mut before = u64::MAX;
        let mut complete = false;
        while scanned < TIMELINE_BUDGET && found.len() < TIMELINE_MAX {
            let page = search_unfiltered(j, &filter, before, TIMELINE_MAX - found.len())?;
            scanned += page.scanned;
            found.extend(page.rows.iter().map(|(e, env)| row(e, env)));
            match page.next_before {
                Some(b) => before = b,
                None => {
                    complete = true;
                    break;
                }
            }
        }
        found.reverse();
        Ok((found, scanned, complete))
    })
    .await;
    match result {
        Ok((events, scanned, complete)) => Json(json!({
            "resource": { "type": type_name, "id": id },
            "events": events,
            "scanned": scanned,
            "complete": complete,
        }))
        .into_response(),
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
pub(crate) struct LiveQuery {
    #[serde(flatten)]
    filter: FilterQuery,
    /// Send events after this seq (default: from now on).
    after: Option<u64>,
}

/// `GET /admin/events/live`: server-sent events, one `event` message per new event that
/// matches the filter, as soon as it is committed. Ends when the server shuts down.
pub(crate) async fn live(
    State(admin): State<Admin>,
    headers: axum::http::HeaderMap,
    Query(q): Query<LiveQuery>,
) -> Response {
    let filter = match Filter::new(&q.filter) {
        Ok(f) => f,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    // Bounded: per caller and in total (a script must not fill the listener's connections,
    // which probes need). A refused stream's connection is closed.
    let session = super::auth::session(&headers, admin.auth()).map(str::to_owned);
    let caller = session.clone().unwrap_or_else(|| "token".to_owned());
    let Some(slot) = admin.stream_slot(&caller) else {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many live streams (at most {} per console session, {} in all); close one",
                super::state::MAX_STREAMS_PER_CALLER,
                super::state::MAX_STREAMS
            ),
        );
        let h = response.headers_mut();
        h.insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        h.insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
        return response;
    };
    let journal = admin.intake.journal().clone();
    let changed = journal.subscribe();
    // A reconnecting EventSource says where it stopped.
    let resumed = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let after = resumed
        .or(q.after)
        .unwrap_or_else(|| journal.last_committed());
    let stopping = admin.intake.stopping();
    struct Follow {
        admin: Admin,
        journal: Journal,
        changed: tokio::sync::watch::Receiver<u64>,
        stopping: tokio::sync::watch::Receiver<bool>,
        after: u64,
        filter: Filter,
        /// The console session it belongs to: the stream ends with it.
        session: Option<String>,
        /// Records read since the last message sent.
        scanned: usize,
        _slot: super::state::StreamSlot,
    }
    let state = Follow {
        admin,
        journal,
        changed,
        stopping,
        after,
        filter,
        session,
        scanned: 0,
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if *s.stopping.borrow() {
                return None;
            }
            if let Some(id) = &s.session
                && !s.admin.guard().valid(id)
            {
                // Logged out, or expired.
                return None;
            }
            if s.scanned >= SCAN_BUDGET {
                // A filter that matches little, far behind: say how far the scan is, and
                // let the reader's pace set the next step's.
                s.scanned = 0;
                let note = SseEvent::default()
                    .event("scanned")
                    .data(json!({ "at": s.after }).to_string());
                return Some((futures_util::stream::iter(vec![Ok(note)]), s));
            }
            let (from, filter, a) = (s.after + 1, s.filter.clone(), s.admin.clone());
            let read = blocking(&s.journal, move |j| {
                let records = j.read_records(from, 200)?;
                let last = records
                    .iter()
                    .filter_map(|r| match r {
                        Ok(e) => Some(e.seq),
                        Err(JournalError::Corrupt { seq, .. }) => Some(*seq),
                        Err(_) => None,
                    })
                    .max();
                let rows: Vec<(StoredEvent, Envelope)> = records
                    .into_iter()
                    .filter_map(Result::ok)
                    .filter(|e| filter.may_match(e))
                    .filter_map(|e| e.envelope().ok().map(|env| (e, env)))
                    .filter(|(_, env)| filter.matches(env))
                    .collect();
                let states = sink_states(&a, j, &rows)?;
                let (rows, states): (Vec<_>, Vec<_>) = rows
                    .into_iter()
                    .zip(states)
                    .filter(|(_, st)| filter.state_matches(st))
                    .unzip();
                Ok((last, rows_json(&rows, states)))
            })
            .await;
            match read {
                Ok((Some(last), rows)) => {
                    s.scanned += (last - s.after) as usize;
                    s.after = last;
                    if rows.is_empty() {
                        continue;
                    }
                    s.scanned = 0;
                    let events: Vec<Result<SseEvent, Infallible>> = rows
                        .iter()
                        .map(|r| {
                            Ok(SseEvent::default()
                                .event("event")
                                .id(r["seq"].to_string())
                                .data(r.to_string()))
                        })
                        .collect();
                    return Some((futures_util::stream::iter(events), s));
                }
                Ok((None, _)) => {}
                // A journal error: tell the page, wait, and try again.
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let note = SseEvent::default()
                        .event("problem")
                        .data("the journal cannot be read; retrying");
                    return Some((futures_util::stream::iter(vec![Ok(note)]), s));
                }
            }
            // Woken by a commit, shutdown, or now and then to see the session is still live.
            tokio::select! {
                r = s.changed.changed() => if r.is_err() { return None },
                _ = s.stopping.wait_for(|v| *v) => return None,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    });
    let stream = futures_util::StreamExt::flatten(stream);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
