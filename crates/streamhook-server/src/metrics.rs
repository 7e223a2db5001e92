//! Metrics in the Prometheus text format, served at `GET /metrics`.
//!
//! Counters on the request path are fixed arrays of atomics (no locks, no allocation); the
//! journal's and sinks' own counters live in `streamhook-core` and are read at scrape time.
//! `docs/operations.md` says what each metric means.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use streamhook_core::SinkStats;
use streamhook_core::journal::{COMMIT_BUCKETS, JournalStats};
use streamhook_types::EventKind;

/// Why a request got the answer it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Reason {
    /// Stored; 200.
    Accepted,
    /// JSON that does not fit the model, stored as an `invalid` event; 200.
    AcceptedInvalid,
    /// The source address is not allowed; 403.
    Forbidden,
    /// Missing or wrong path token; 403.
    BadToken,
    /// Forwarding headers from a trusted proxy unreadable or in conflict; 403.
    BadForwarding,
    /// The body is not JSON; 400.
    NotJson,
    /// JSON that is not a webhook; 422.
    NotWebhook,
    /// Larger than the limit; 413.
    TooLarge,
    /// The body arrived too slowly; 408.
    BodyTimeout,
    /// Too many requests at once; 503.
    Overloaded,
    /// The journal's queue is full; 503.
    JournalBusy,
    /// The journal cannot write (a full disk, an I/O error); 503.
    JournalError,
    /// Not a POST; 405.
    Method,
    /// No such path; 404.
    NotFound,
}

const REASONS: [(Reason, &str, u16); 14] = [
    (Reason::Accepted, "accepted", 200),
    (Reason::AcceptedInvalid, "accepted_invalid", 200),
    (Reason::Forbidden, "source_not_allowed", 403),
    (Reason::BadToken, "bad_path_token", 403),
    (Reason::BadForwarding, "bad_forwarding_headers", 403),
    (Reason::NotJson, "not_json", 400),
    (Reason::NotWebhook, "not_a_webhook", 422),
    (Reason::TooLarge, "too_large", 413),
    (Reason::BodyTimeout, "body_timeout", 408),
    (Reason::Overloaded, "overloaded", 503),
    (Reason::JournalBusy, "journal_busy", 503),
    (Reason::JournalError, "journal_error", 503),
    (Reason::Method, "method_not_allowed", 405),
    (Reason::NotFound, "not_found", 404),
];

impl Reason {
    /// The status a request refused for this reason gets.
    pub fn status(self) -> u16 {
        REASONS[self as usize].2
    }

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        REASONS[self as usize].1
    }
}

/// The most distinct problem paths counted in `streamhook_invalid_events_total`; further
/// paths count under `path="other"`, so a sender cannot grow the metrics without bound.
pub const MAX_INVALID_PATHS: usize = 64;

/// The longest path label kept; longer ones are cut (and end in `...`).
pub const MAX_INVALID_PATH_LEN: usize = 128;

/// The server's own counters.
#[derive(Debug)]
pub struct Metrics {
    requests: [AtomicU64; REASONS.len()],
    events: Vec<AtomicU64>,
    /// Requests being handled now.
    pub in_flight: AtomicU64,
    /// `invalid` events by their first problem's path (array indices folded to `[]`).
    invalid: Mutex<BTreeMap<String, u64>>,
    /// Connections closed at accept because the peer can never be allowed.
    pub refused_source: AtomicU64,
    /// Connections closed at accept because their peer holds too many already.
    pub refused_peer_limit: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Default::default(),
            events: EventKind::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            in_flight: AtomicU64::new(0),
            invalid: Mutex::new(BTreeMap::new()),
            refused_source: AtomicU64::new(0),
            refused_peer_limit: AtomicU64::new(0),
        }
    }
}

/// A problem path with array indices folded (`$.a[3].b` -> `$.a[].b`): one series per place
/// in the schema, not per element.
fn fold_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' if in_index => {
                in_index = false;
                out.push(']');
            }
            c if in_index && c.is_ascii_digit() => {}
            c => {
                if in_index {
                    // A quoted key such as `["a b"]`, not an index: keep it.
                    in_index = false;
                }
                out.push(c);
            }
        }
    }
    out
}

/// What a replicated journal's metrics show of its connection and spool.
#[derive(Debug, Clone, Copy, Default)]
pub struct SharedSnapshot {
    /// Connected to a NATS server now.
    pub connected: bool,
    /// Something an operator must fix (a refused stream setting, a mirror that cannot follow).
    pub problem: bool,
    /// Events in the spool.
    pub spool_events: u64,
    /// How long the oldest has waited (s).
    pub spool_oldest_age_s: f64,
}

/// What a scrape shows of one sink.
#[derive(Debug)]
pub struct SinkSnapshot<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its counters.
    pub stats: &'a SinkStats,
    /// Dead letters held now.
    pub dead_letters: usize,
}

impl Metrics {
    /// Counts one answered request.
    pub fn request(&self, reason: Reason) {
        self.requests[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the kinds of one stored event.
    pub fn event(&self, kinds: &[EventKind]) {
        for kind in kinds {
            if let Some(i) = EventKind::ALL.iter().position(|k| k == kind) {
                self.events[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts one `invalid` event by its first problem's path.
    pub fn invalid(&self, path: &str) {
        let mut path = fold_indices(path);
        if path.len() > MAX_INVALID_PATH_LEN {
            let mut cut = MAX_INVALID_PATH_LEN;
            while !path.is_char_boundary(cut) {
                cut -= 1;
            }
            path.truncate(cut);
            path.push_str("...");
        }
        if let Ok(mut map) = self.invalid.lock() {
            if map.len() >= MAX_INVALID_PATHS && !map.contains_key(&path) {
                *map.entry("other".to_owned()).or_default() += 1;
            } else {
                *map.entry(path).or_default() += 1;
            }
        }
    }

    /// Requests counted for `reason`.
    pub fn requests(&self, reason: Reason) -> u64 {
        self.requests[reason as usize].load(Ordering::Relaxed)
    }

    /// The exposition text.
    pub fn render(
        &self,
        journal: &JournalStats,
        last_seq: u64,
        writable: bool,
        shared: Option<&SharedSnapshot>,
        sinks: &[SinkSnapshot<'_>],
    ) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        header(
            &mut out,
            "streamhook_requests_total",
            "counter",
            "Webhook requests answered, by status and reason.",
        );
        for (reason, label, status) in REASONS {
            let _ = writeln!(
                out,
                "streamhook_requests_total{{status=\"{status}\",reason=\"{label}\"}} {}",
                self.requests(reason)
            );
        }
        header(
            &mut out,
            "streamhook_requests_in_flight",
            "gauge",
            "Webhook requests being handled now.",
        );
        let _ = writeln!(
            out,
            "streamhook_requests_in_flight {}",
            load(&self.in_flight)
        );
        header(
            &mut out,
            "streamhook_events_total",
            "counter",
            "Events stored, by kind (one event may have several kinds).",
        );
        for (kind, n) in EventKind::ALL.iter().zip(&self.events) {
            let _ = writeln!(
                out,
                "streamhook_events_total{{kind=\"{kind}\"}} {}",
                load(n)
            );
        }
        header(
            &mut out,
            "streamhook_invalid_events_total",
            "counter",
            "Payloads kept as `invalid` events (they do not fit the model), by the JSON path of their first problem.",
        );
        if let Ok(map) = self.invalid.lock() {
            for (path, n) in map.iter() {
                let _ = writeln!(
                    out,
                    "streamhook_invalid_events_total{{path=\"{}\"}} {n}",
                    escape(path)
                );
            }
        }
        header(
            &mut out,
            "streamhook_connections_refused_total",
            "counter",
            "Connections closed at accept, before reading: the peer can never be allowed, or it holds too many connections already.",
        );
        let _ = writeln!(
            out,
            "streamhook_connections_refused_total{{reason=\"source_not_allowed\"}} {}",
            load(&self.refused_source)
        );
        let _ = writeln!(
            out,
            "streamhook_connections_refused_total{{reason=\"peer_limit\"}} {}",
            load(&self.refused_peer_limit)
        );
        header(
            &mut out,
            "streamhook_journal_writable",
            "gauge",
            "1 when the last journal commit succeeded and its writer runs, else 0 (as /readyz).",
        );
        let _ = writeln!(out, "streamhook_journal_writable {}", u8::from(writable));
        header(
            &mut out,
            "streamhook_journal_history_corrupt_total",
            "counter",
            "Classifier history records that could not be read (the resource was classified as new).",
        );
        let _ = writeln!(
            out,
            "streamhook_journal_history_corrupt_total {}",
            load(&journal.history_corrupt)
        );
        header(
            &mut out,
            "streamhook_journal_histories_pruned_total",
            "counter",
            "Resource histories dropped after retention.history_max_age without an event.",
        );
        let _ = writeln!(
            out,
            "streamhook_journal_histories_pruned_total {}",
            load(&journal.history_pruned)
        );
        header(
            &mut out,
            "streamhook_journal_appends_total",
            "counter",
            "Events appended to the journal.",
        );
        let _ = writeln!(
            out,
            "streamhook_journal_appends_total {}",
            load(&journal.appended)
        );
        header(
            &mut out,
            "streamhook_journal_write_errors_total",
            "counter",
            "Journal commits that failed (nothing of them was stored).",
        );
        let _ = writeln!(
            out,
            "streamhook_journal_write_errors_total {}",
            load(&journal.write_errors)
        );
        header(
            &mut out,
            "streamhook_journal_errors_total",
            "counter",
            "Journal operations that failed (appends refused, mirror imports, delivery's reads and writes), by what lay underneath: storage (redb), io (the disk), shared (the JetStream stream), encoding, other.",
        );
        for kind in streamhook_core::CauseKind::ALL {
            let _ = writeln!(
                out,
                "streamhook_journal_errors_total{{cause=\"{kind}\"}} {}",
                load(&journal.errors_by_cause[kind.index()])
            );
        }
        header(
            &mut out,
            "streamhook_journal_busy_total",
            "counter",
            "Appends refused because the journal queue was full.",
        );
        let _ = writeln!(out, "streamhook_journal_busy_total {}", load(&journal.busy));
        header(
            &mut out,
            "streamhook_journal_mirror_pending",
            "gauge",
            "JetStream journal: events the shared stream holds that this receiver's mirror does not yet.",
        );
        let _ = writeln!(
            out,
            "streamhook_journal_mirror_pending {}",
            load(&journal.mirror_pending)
        );
        if let Some(shared) = shared {
            header(
                &mut out,
                "streamhook_nats_connected",
                "gauge",
                "JetStream journal: 1 while connected to a NATS server, else 0 (events are spooled meanwhile).",
            );
            let _ = writeln!(
                out,
                "streamhook_nats_connected {}",
                u8::from(shared.connected)
            );
            header(
                &mut out,
                "streamhook_nats_problem",
                "gauge",
                "JetStream journal: 1 while something needs an operator (a refused stream or bucket setting, a mirror of an earlier stream); /readyz says what. Events are still accepted.",
            );
            let _ = writeln!(out, "streamhook_nats_problem {}", u8::from(shared.problem));
            header(
                &mut out,
                "streamhook_spool_events",
                "gauge",
                "JetStream journal: events accepted and kept in this receiver's spool, not yet in the shared stream.",
            );
            let _ = writeln!(out, "streamhook_spool_events {}", shared.spool_events);
            header(
                &mut out,
                "streamhook_spool_oldest_age_seconds",
                "gauge",
                "JetStream journal: how long the oldest spooled event has waited (0 when none).",
            );
            let _ = writeln!(
                out,
                "streamhook_spool_oldest_age_seconds {:.3}",
                shared.spool_oldest_age_s
            );
            header(
                &mut out,
                "streamhook_spooled_total",
                "counter",
                "JetStream journal: events kept in the spool since start (the stream did not take them within spool_after, or no server was connected).",
            );
            let _ = writeln!(out, "streamhook_spooled_total {}", load(&journal.spooled));
        }
        header(
            &mut out,
            "streamhook_journal_mirror_unreadable_total",
            "counter",
            "JetStream journal: stream messages the mirror could not read (kept as unreadable records, dead-lettered by each sink).",
        );
        let _ = writeln!(
            out,
            "streamhook_journal_mirror_unreadable_total {}",
            load(&journal.import_unreadable)
        );
        header(
            &mut out,
            "streamhook_journal_last_seq",
            "gauge",
            "The last committed journal position.",
        );
        let _ = writeln!(out, "streamhook_journal_last_seq {last_seq}");
        header(
            &mut out,
            "streamhook_journal_commit_seconds",
            "histogram",
            "Time of one group commit (write and fsync of a batch).",
        );
        let mut cumulative = 0;
        for (bound, n) in COMMIT_BUCKETS.iter().zip(&journal.commit_latency) {
            cumulative += load(n);
            let _ = writeln!(
                out,
                "streamhook_journal_commit_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += load(&journal.commit_latency[COMMIT_BUCKETS.len()]);
        let _ = writeln!(
            out,
            "streamhook_journal_commit_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "streamhook_journal_commit_seconds_sum {}",
            load(&journal.commit_latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(out, "streamhook_journal_commit_seconds_count {cumulative}");

        let sink_metrics: [SinkMetric; 10] = [
            (
                "streamhook_sink_journal_errors_total",
                "counter",
                "Journal errors that paused delivery (retried with backoff), by sink.",
                |s, _| s.stats.journal_errors.load(Ordering::Relaxed),
            ),
            (
                "streamhook_sink_paused",
                "gauge",
                "1 while delivery waits to retry after a journal error, by sink.",
                |s, _| s.stats.paused.load(Ordering::Relaxed),
            ),
            (
                "streamhook_sink_leased",
                "gauge",
                "On a JetStream journal, 1 while this receiver holds the sink's lease (delivers it), by sink.",
                |s, _| s.stats.leased.load(Ordering::Relaxed),
            ),
            (
                "streamhook_sink_skipped_total",
                "counter",
                "Events pruned before the sink had them (it was out of the configuration past retention.removed_sink_grace, or forgotten), by sink: logged as errors.",
                |s, _| s.stats.skipped.load(Ordering::Relaxed),
            ),
            (
                "streamhook_sink_delivered_total",
                "counter",
                "Events delivered, by sink.",
                |s, _| s.stats.delivered.load(Ordering::Relaxed),
            ),
            (
                "streamhook_sink_failed_attempts_total",
                "counter",
                "Failed delivery attempts (each retry counts), by sink.",
                |s, _| s.stats.failed_attempts.load(Ordering::Relaxed),
            ),
            (
                "streamhook_sink_retrying",
                "gauge",
                "Events waiting for a retry now, by sink.",
                |s, _| s.stats.retrying.load(Ordering::Relaxed),
            ),
            (
                "streamhook_sink_dead_lettered_total",
                "counter",
                "Events dead-lettered since start, by sink.",
                |s, _| s.stats.dead_lettered.load(Ordering::Relaxed),
            ),
            (
                "streamhook_sink_dead_letters",
                "gauge",
                "Dead letters held now, by sink.",
                |s, _| s.dead_letters as u64,
            ),
            (
                "streamhook_sink_lag_events",
                "gauge",
                "Journal events the sink has not passed yet.",
                |s, last| (last + 1).saturating_sub(s.stats.cursor.load(Ordering::Relaxed)),
            ),
        ];
        for (name, kind, help, value) in sink_metrics {
            header(&mut out, name, kind, help);
            for s in sinks {
                let _ = writeln!(
                    out,
                    "{name}{{sink=\"{}\"}} {}",
                    escape(s.name),
                    value(s, last_seq)
                );
            }
        }
        out
    }
}

/// A per-sink metric: name, type, help, and how to read it (given the last seq).
type SinkMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&SinkSnapshot<'_>, u64) -> u64,
);

/// Reconciliation's metrics: runs by outcome, events emitted by kind, API requests by status,
/// malformed answers, and whether it is paused (the API refused the key).
pub fn render_reconcile(out: &mut String, reconciler: &streamhook_reconcile::Reconciler) {
    header(
        out,
        "streamhook_reconcile_runs_total",
        "counter",
        "Reconciliation runs, by outcome (ok, partial, unauthorized, elsewhere: another receiver ran it, failed).",
    );
    let runs = reconciler
        .counters
        .runs
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    for outcome in ["ok", "partial", "unauthorized", "elsewhere", "failed"] {
        let _ = writeln!(
            out,
            "streamhook_reconcile_runs_total{{outcome=\"{outcome}\"}} {}",
            runs.get(outcome).copied().unwrap_or(0)
        );
    }
    header(
        out,
        "streamhook_reconcile_emitted_total",
        "counter",
        "Events journaled by reconciliation (transitions Gcore never sent), by kind.",
    );
    let emitted = reconciler
        .counters
        .emitted
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    for (kind, n) in &emitted {
        let _ = writeln!(
            out,
            "streamhook_reconcile_emitted_total{{kind=\"{}\"}} {n}",
            escape(kind)
        );
    }
    header(
        out,
        "streamhook_reconcile_api_requests_total",
        "counter",
        "Requests to Gcore's API, by status (0: no answer: a timeout or a refused connection).",
    );
    let by_status = reconciler
        .api()
        .by_status
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default();
    for (status, n) in &by_status {
        let _ = writeln!(
            out,
            "streamhook_reconcile_api_requests_total{{status=\"{status}\"}} {n}"
        );
    }
    header(
        out,
        "streamhook_reconcile_api_malformed_total",
        "counter",
        "Answers from Gcore's API that were not the documented JSON.",
    );
    let _ = writeln!(
        out,
        "streamhook_reconcile_api_malformed_total {}",
        reconciler.api().malformed.load(Ordering::Relaxed)
    );
    header(
        out,
        "streamhook_reconcile_paused",
        "gauge",
        "1 while Gcore's API refuses the key (reconciliation does nothing; intake goes on).",
    );
    let paused = matches!(
        reconciler.status().state,
        streamhook_reconcile::State::Paused { .. }
    );
    let _ = writeln!(out, "streamhook_reconcile_paused {}", u8::from(paused));
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_paths_are_folded_cut_and_bounded() {
        let m = Metrics::default();
        m.invalid("$.message.video.converted_videos[3].status");
        m.invalid("$.message.video.converted_videos[12].status");
        m.invalid(&format!("$.{}", "a".repeat(10_000)));
        for i in 0..200 {
            m.invalid(&format!("$.x{i}"));
        }
        let map = m.invalid.lock().unwrap();
        assert_eq!(map["$.message.video.converted_videos[].status"], 2);
        assert!(map.len() <= MAX_INVALID_PATHS + 1, "{} series", map.len());
        assert!(map.keys().all(|k| k.len() <= MAX_INVALID_PATH_LEN + 3));
        assert!(map["other"] > 0);
    }
}
