//! The operator's calls: each sink's status, dead letters and their requeue, replay, sending
//! one event again, the events tail (`GET /admin/events`) and reload. Every call here that
//! changes a sink's delivery is refused (`409`) on a receiver that does not deliver the sink.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use streamhook_core::{JournalError, ReplayFrom, SinkStats};
use tokio::sync::oneshot;

use super::reply::{blocking, error, journal_error, parse_since};
use super::state::{Admin, Who};

/// `GET /admin/status`: each sink's cursor, lag, counters and dead letters.
pub(crate) async fn status(State(admin): State<Admin>) -> Response {
    let journal = admin.intake.journal().clone();
    let grace = admin.intake.sink_grace();
    let result = blocking(&journal, move |j| {
        let cursors = j.cursors()?;
        // Counted by key: nothing decoded.
        let mut dead = HashMap::new();
        for (name, _) in &cursors {
            dead.insert(name.clone(), j.dead_letter_count(name)?);
        }
        Ok((
            j.last_seq()?,
            j.len()?,
            cursors,
            dead,
            j.removed_sinks(grace)?,
        ))
    })
    .await;
    let (last_seq, events, cursors, dead, removed) = match result {
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
                "dead_letters": dead.get(name).copied().unwrap_or(0),
                "running": false,
            });
            if let Some(r) = removed.iter().find(|r| &r.name == name) {
                // Out of the configuration: its cursor holds its events until then.
                sink["removed_at"] = json!(rfc3339(r.removed_at_ms));
                sink["holds_events_until"] = json!(rfc3339(r.holds_until_ms));
            }
            if let Some((_, stats)) = running.iter().find(|(n, _)| n == name) {
                sink["running"] = json!(true);
                sink["activity"] = sink_activity(stats);
                sink["skipped"] = json!(stats.skipped.load(Ordering::Relaxed));
                if journal.is_replicated() {
                    // Only the lease holder delivers; the others' cursors are copies.
                    sink["delivering_here"] =
                        json!(stats.leased.load(std::sync::atomic::Ordering::Relaxed) == 1);
                }
            }
            sink
        })
        .collect();
    let mut body = json!({
        "backend": journal.backend(),
        "last_seq": last_seq,
        "events": events,
        "sinks": sinks,
    });
    if let Some(reconciler) = admin.intake.reconciler() {
        body["reconcile"] = json!(reconciler.status());
    }
    Json(body).into_response()
}

/// Reconciliation is off: the answer that says how to turn it on.
fn reconcile_off() -> Response {
    error(
        StatusCode::CONFLICT,
        "reconciliation is off: give the server a Gcore API key ([gcore] api_key_file, \
         --gcore-api-key-file or STREAMHOOK_GCORE_API_KEY); see docs/reconciliation.md",
    )
}

/// `GET /admin/reconcile`: reconciliation's state and its last run.
pub(crate) async fn reconcile_status(State(admin): State<Admin>) -> Response {
    match admin.intake.reconciler() {
        Some(r) => Json(json!(r.status())).into_response(),
        None => reconcile_off(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReconcileBody {
    #[serde(default)]
    dry_run: bool,
}

/// `POST /admin/reconcile` `{"dry_run"}`: one run now; its report (a dry run journals
/// nothing and says what a run would emit).
pub(crate) async fn reconcile(
    State(admin): State<Admin>,
    who: Who,
    Json(body): Json<ReconcileBody>,
) -> Response {
    let Some(reconciler) = admin.intake.reconciler().cloned() else {
        return reconcile_off();
    };
    let dry_run = body.dry_run;
    match reconciler.run_once(dry_run).await {
        Ok(report) => {
            if !dry_run {
                admin
                    .record(
                        &who,
                        "reconcile",
                        format!(
                            "{} events journaled ({})",
                            report.emitted.len(),
                            report.outcome.as_str()
                        ),
                    )
                    .await;
            }
            Json(json!(report)).into_response()
        }
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

#[derive(Deserialize)]
pub(crate) struct SinkQuery {
    sink: Option<String>,
    limit: Option<usize>,
}

/// `GET /admin/dead-letters[?sink=NAME]`: dead letters with their last error.
pub(crate) async fn dead_letters(
    State(admin): State<Admin>,
    Query(q): Query<SinkQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(usize::MAX);
    match blocking(admin.intake.journal(), move |j| {
        j.dead_letters_limited(q.sink.as_deref(), limit)
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
pub(crate) struct RequeueBody {
    sink: String,
    seq: Option<u64>,
    seqs: Option<Vec<u64>>,
    #[serde(default)]
    all: bool,
    /// With `all`: only dead letters with a kind matching this glob.
    kind: Option<String>,
    /// With `all`: only dead letters whose envelope holds this text (case-insensitive).
    q: Option<String>,
    /// Say how many would be requeued, without doing it.
    #[serde(default)]
    dry_run: bool,
}

/// On a replicated journal, a change to a sink's delivery (replay, requeue, send again) is
/// made where the sink is delivered: elsewhere it would be recorded in a mirror nobody
/// delivers from. `409` naming the receiver that delivers it; `None` here.
async fn not_delivered_here(admin: &Admin, sink: &str) -> Option<Response> {
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

/// `POST /admin/dead-letters/requeue`: deliver dead letters again.
pub(crate) async fn requeue(
    State(admin): State<Admin>,
    who: Who,
    Json(body): Json<RequeueBody>,
) -> Response {
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
    if !body.all && (body.kind.is_some() || body.q.is_some()) {
        return error(
            StatusCode::BAD_REQUEST,
            "`kind` and `q` choose among all dead letters: give them with `\"all\": true`",
        );
    }
    let kind = match body
        .kind
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        Some(k) => match streamhook_core::KindPattern::new(k) {
            Ok(p) => Some(p),
            Err(m) => return error(StatusCode::BAD_REQUEST, m),
        },
        None => None,
    };
    let text = body
        .q
        .as_deref()
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_lowercase);
    let single = body.seq.is_some();
    let (dry_run, sink) = (body.dry_run, body.sink.clone());
    let result = blocking(admin.intake.journal(), move |j| {
        let seqs: Vec<u64> = match (body.seq, body.seqs) {
            (Some(seq), _) => vec![seq],
            (None, Some(seqs)) => seqs,
            // Every match, however many: not a page of them.
            (None, None) => j
                .dead_letters(Some(&body.sink))?
                .iter()
                .filter(|d| {
                    let envelope: Value = serde_json::from_str(&d.envelope).unwrap_or_default();
                    let kinds_ok = kind.as_ref().is_none_or(|k| {
                        envelope["kinds"].as_array().is_some_and(|ks| {
                            ks.iter().any(|x| x.as_str().is_some_and(|x| k.matches(x)))
                        })
                    });
                    let text_ok = text.as_ref().is_none_or(|t| {
                        d.envelope.to_lowercase().contains(t) || d.error.to_lowercase().contains(t)
                    });
                    kinds_ok && text_ok
                })
                .map(|d| d.seq)
                .collect(),
        };
        if dry_run {
            return Ok(seqs);
        }
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
        Ok(seqs) if dry_run => {
            Json(json!({ "would_requeue": seqs.len(), "dry_run": true })).into_response()
        }
        Ok(seqs) => {
            admin
                .record(
                    &who,
                    "requeue",
                    format!("{} dead letters of sink {sink}", seqs.len()),
                )
                .await;
            Json(json!({ "requeued": seqs })).into_response()
        }
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayBody {
    sink: String,
    from_seq: Option<u64>,
    since: Option<String>,
    /// Say what the replay would do, without doing it.
    #[serde(default)]
    dry_run: bool,
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `POST /admin/replay`: a sink delivers again from a seq or a time.
pub(crate) async fn replay(
    State(admin): State<Admin>,
    who: Who,
    Json(body): Json<ReplayBody>,
) -> Response {
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
    let replayed = if body.dry_run {
        let sink = body.sink.clone();
        blocking(journal, move |j| j.replay_plan(&sink, from)).await
    } else {
        journal
            .replay(&body.sink, from)
            .await
            .map_err(journal_error)
    };
    match replayed {
        // The sink's lease may have moved while the replay was handed over: then the replay
        // was recorded in a mirror nobody delivers from. Say so rather than 200.
        Ok(_) if !journal.delivers_here(&body.sink) => error(
            StatusCode::CONFLICT,
            format!(
                "sink {:?} moved to another receiver during the replay; ask the receiver that delivers it",
                body.sink
            ),
        ),
        Ok(r) => {
            let message = if r.moved || r.from_seq == r.asked_seq {
                format!(
                    "sink {:?} {} {} journaled events from seq {} (those routed to it)",
                    body.sink,
                    if body.dry_run {
                        "would get again"
                    } else {
                        "gets again"
                    },
                    r.events,
                    r.from_seq
                )
            } else {
                format!(
                    "sink {:?} has not yet had the events from seq {} on (asked: {}): nothing is skipped, it goes on from seq {} ({} journaled events)",
                    body.sink, r.from_seq, r.asked_seq, r.from_seq, r.events
                )
            };
            if !body.dry_run {
                admin.record(&who, "replay", message.clone()).await;
            }
            Json(json!({
                "sink": body.sink,
                "from_seq": r.from_seq,
                "asked_from_seq": r.asked_seq,
                "events": r.events,
                "moved": r.moved,
                "dry_run": body.dry_run,
                "message": message,
            }))
            .into_response()
        }
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForgetBody {
    sink: String,
}

/// `POST /admin/sinks/forget`: a sink taken out of the configuration stops holding events
/// (its cursor, dead letters and requeued events go). A configured sink is refused.
pub(crate) async fn forget(
    State(admin): State<Admin>,
    who: Who,
    Json(body): Json<ForgetBody>,
) -> Response {
    if admin.intake.sink_names().iter().any(|s| s == &body.sink) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "sink {:?} is in the configuration: remove it from the configuration (and reload) first",
                body.sink
            ),
        );
    }
    let sink = body.sink.clone();
    match blocking(admin.intake.journal(), move |j| j.forget_sink(&sink)).await {
        Ok(f) => {
            admin
                .record(&who, "forget", format!("sink {}", body.sink))
                .await;
            Json(json!({
            "sink": body.sink,
            "forgotten": true,
            "dead_letters": f.dead_letters,
            "requeued": f.requeued,
            }))
            .into_response()
        }
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
pub(crate) struct EventsQuery {
    from: Option<u64>,
    limit: Option<usize>,
    wait: Option<u64>,
}

/// `GET /admin/events`: envelopes from a seq on, as NDJSON, waiting a while for new ones.
pub(crate) async fn events(State(admin): State<Admin>, Query(q): Query<EventsQuery>) -> Response {
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

/// `POST /admin/reload`: re-reads the config, as SIGHUP does.
pub(crate) async fn reload(State(admin): State<Admin>, who: Who) -> Response {
    let Some(tx) = admin.reloads() else {
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
        Ok(Ok(summary)) => {
            admin.record(&who, "reload", summary.clone()).await;
            Json(json!({ "reloaded": true, "summary": summary })).into_response()
        }
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

/// `POST /admin/events/{seq}/resend` `{"sink"}`: deliver this one event to the sink again.
pub(crate) async fn resend(
    State(admin): State<Admin>,
    who: Who,
    Path(seq): Path<u64>,
    Json(body): Json<SinkBody>,
) -> Response {
    if !admin.intake.sink_names().contains(&body.sink) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no sink named {:?}", body.sink),
        );
    }
    if let Some(refused) = not_delivered_here(&admin, &body.sink).await {
        return refused;
    }
    let sink = body.sink.clone();
    match blocking(admin.intake.journal(), move |j| j.resend(&sink, seq)).await {
        Ok(()) => {
            admin
                .record(&who, "resend", format!("event {seq} to sink {}", body.sink))
                .await;
            Json(json!({ "sink": body.sink, "resent": seq })).into_response()
        }
        Err(resp) => resp,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SinkBody {
    sink: String,
}

/// Per-sink figures beyond the status: rate over the last hour, waiting retries, last error.
fn sink_activity(stats: &SinkStats) -> Value {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let activity = stats.activity();
    let retrying: HashMap<String, _> = activity
        .retrying
        .iter()
        .take(100)
        .map(|(seq, r)| (seq.to_string(), r.clone()))
        .collect();
    json!({
        "delivered": load(&stats.delivered),
        "failed_attempts": load(&stats.failed_attempts),
        "retrying": load(&stats.retrying),
        "paused": load(&stats.paused) == 1,
        "per_minute": stats.rate.last_hour(),
        "last_error": activity.last_error,
        "waiting": retrying,
    })
}

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<usize>,
}

/// `GET /admin/audit?limit=N`: the operator's actions (who, what, when), newest first.
pub(crate) async fn audit(State(admin): State<Admin>, Query(q): Query<AuditQuery>) -> Response {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    match blocking(admin.intake.journal(), move |j| j.audit_log(limit)).await {
        Ok(entries) => Json(json!({ "actions": entries.iter().map(|e| json!({
            "at": rfc3339(e.at_ms),
            "at_ms": e.at_ms,
            "who": e.who,
            "action": e.action,
            "detail": e.detail,
        })).collect::<Vec<_>>() }))
        .into_response(),
        Err(resp) => resp,
    }
}
