//! The reconciler: reads the API, plans against the journal, journals what was missed, and
//! keeps what an operator asks of it (its state, the last run, counters for metrics).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use streamhook_core::Journal;
use streamhook_types::decode::decode_value;

use crate::api::{Api, ApiError};
use crate::config::{ApiKey, ReconcileConfig};
use crate::plan::{self, Action, Input, Known, rfc3339};

/// Below this many known resources the account checks do not apply (a new account).
const SANITY_MIN: usize = 5;

/// What the reconciler is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Waiting for its next run.
    Idle,
    /// A run is under way.
    Running,
    /// The API refused the key: runs go on at each interval (a fixed key resumes them), and
    /// nothing is emitted meanwhile. Intake is not affected.
    Paused {
        /// Why, in words (the key is never in it).
        reason: String,
    },
}

/// One event a run emitted (or, dry, would emit).
#[derive(Debug, Clone, Serialize)]
pub struct Emitted {
    /// The resource (`stream:12345`).
    pub resource: String,
    /// What the classifier calls it (`stream.stopped`).
    pub kinds: Vec<String>,
    /// Why.
    pub reason: String,
    /// When it happened, where the API says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub happened_at: Option<String>,
    /// Its journal position (absent in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Its event id (absent in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every list read and compared.
    Ok,
    /// Some lists or lookups failed (listed in `errors`); what could be compared was.
    Partial,
    /// The API refused the key.
    Unauthorized,
    /// Another receiver sharing the journal reconciles now.
    Elsewhere,
    /// The journal could not be read or written.
    Failed,
}

impl Outcome {
    /// Its name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Partial => "partial",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Elsewhere => "elsewhere",
            Outcome::Failed => "failed",
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it started (RFC 3339, UTC).
    pub started_at: String,
    /// When it ended.
    pub finished_at: String,
    /// Only planned, nothing journaled.
    pub dry_run: bool,
    /// How it ended.
    pub outcome: Outcome,
    /// Requests made to the API.
    pub requests: u64,
    /// Resources compared, by list.
    pub compared: BTreeMap<String, u64>,
    /// Resources whose state differed.
    pub differences: u64,
    /// Items the API listed that could not be compared (no id, or no state field).
    pub not_comparable: u64,
    /// Resources a webhook changed between the plan and the append (compared again next run).
    pub changed_meanwhile: u64,
    /// Differences the API dates within `settle` of its reading: left to the next run.
    pub settling: u64,
    /// The events emitted, in order.
    pub emitted: Vec<Emitted>,
    /// What went wrong (each a sentence).
    pub errors: Vec<String>,
}

/// What an operator reads ([`Reconciler::status`]).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// What it is doing.
    #[serde(flatten)]
    pub state: State,
    /// The API's base URL.
    pub api_url: String,
    /// Time between runs, in seconds.
    pub interval_s: u64,
    /// When the next scheduled run starts (absent while none is scheduled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<String>,
    /// The last run (absent before the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Report>,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Runs by outcome.
    pub runs: Mutex<BTreeMap<&'static str, u64>>,
    /// Events emitted by kind.
    pub emitted: Mutex<BTreeMap<String, u64>>,
}

/// Why a run was not started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// A run is under way.
    Busy,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a reconciliation run is under way; try again when it ends")
    }
}

impl std::error::Error for RunError {}

/// The reconciler of one receiver.
#[derive(Debug)]
pub struct Reconciler {
    journal: Journal,
    api: Api,
    config: ReconcileConfig,
    state: Mutex<(State, Option<Report>, Option<SystemTime>)>,
    run: tokio::sync::Mutex<()>,
    started: SystemTime,
    /// For metrics.
    pub counters: Counters,
}

impl Reconciler {
    /// A reconciler of `journal` against `config`'s API.
    pub fn new(journal: Journal, config: ReconcileConfig) -> Result<Arc<Reconciler>, String> {
        Ok(Arc::new(Reconciler {
            api: Api::new(&config)?,
            journal,
            config,
            state: Mutex::new((State::Idle, None, None)),
            run: tokio::sync::Mutex::new(()),
            started: SystemTime::now(),
            counters: Counters::default(),
        }))
    }

    /// The API client's counters (requests by status, malformed answers).
    pub fn api(&self) -> &crate::api::ApiCounters {
        &self.api.counters
    }

    /// What it is doing and what the last run did.
    pub fn status(&self) -> Status {
        let (state, last, next) = match self.state.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        Status {
            state,
            api_url: self.config.api_url.clone(),
            interval_s: self.config.interval.as_secs(),
            next_run_at: next.map(rfc3339),
            last_run: last,
        }
    }

    fn set(&self, f: impl FnOnce(&mut (State, Option<Report>, Option<SystemTime>))) {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut guard);
    }

    /// Runs at start (if `on_start`) and every `interval`, until the task is dropped.
    pub async fn run_loop(self: Arc<Self>) {
        let mut first = true;
        loop {
            if !(first && self.config.on_start) {
                let next = SystemTime::now() + self.config.interval;
                self.set(|s| s.2 = Some(next));
                tokio::time::sleep(self.config.interval).await;
            }
            first = false;
            self.set(|s| s.2 = None);
            match self.run_once(false).await {
                Ok(report) => log(&report),
                Err(RunError::Busy) => {
                    tracing::debug!("reconcile: a run asked for by an operator is under way")
                }
            }
        }
    }

    /// One run now (`dry_run`: plan and report, journal nothing).
    pub async fn run_once(&self, dry_run: bool) -> Result<Report, RunError> {
        let Ok(_running) = self.run.try_lock() else {
            return Err(RunError::Busy);
        };
        if dry_run {
            // A dry run says nothing of the schedule's runs: the state, the last run and the
            // counters stay as they are (its requests are counted: they were made).
            return Ok(self.run_locked(true).await);
        }
        let previous = self.status().state;
        self.set(|s| s.0 = State::Running);
        // Back to what it was if this future is dropped mid-run (an operator's request cut
        // short): a run is never shown as running when none is.
        let guard = RunningGuard(self, previous.clone());
        let report = self.run_locked(dry_run).await;
        std::mem::forget(guard);
        let state = match report.outcome {
            Outcome::Unauthorized => State::Paused {
                reason: report.errors.first().cloned().unwrap_or_default(),
            },
            // A dry run or a run left to another receiver says nothing of the key.
            Outcome::Elsewhere if matches!(previous, State::Paused { .. }) => previous,
            _ => State::Idle,
        };
        if let Ok(mut runs) = self.counters.runs.lock() {
            *runs.entry(report.outcome.as_str()).or_default() += 1;
        }
        if let Ok(mut emitted) = self.counters.emitted.lock() {
            for e in &report.emitted {
                for k in &e.kinds {
                    *emitted.entry(k.clone()).or_default() += 1;
                }
            }
        }
        let keep = report.clone();
        self.set(|s| {
            s.0 = state;
            s.1 = Some(keep);
        });
        Ok(report)
    }

    async fn run_locked(&self, dry_run: bool) -> Report {
        let started = SystemTime::now();
        let requests_before = self.api.counters.requests.load(Ordering::Relaxed);
        let mut report = Report {
            started_at: rfc3339(started),
            finished_at: String::new(),
            dry_run,
            outcome: Outcome::Ok,
            requests: 0,
            compared: BTreeMap::new(),
            differences: 0,
            not_comparable: 0,
            changed_meanwhile: 0,
            settling: 0,
            emitted: Vec::new(),
            errors: Vec::new(),
        };
        let finish = |mut report: Report, api: &Api| {
            report.finished_at = rfc3339(SystemTime::now());
            report.requests = api.counters.requests.load(Ordering::Relaxed) - requests_before;
            report
        };
        if let Some(file) = &self.config.api_key_file {
            // Read again each run: a key rotated in the file is used without a restart.
            match std::fs::read_to_string(file) {
                Ok(text) if !text.trim().is_empty() => self.api.set_key(ApiKey::new(&text)),
                _ => {
                    report.outcome = Outcome::Failed;
                    report.errors.push(format!(
                        "the key file {} cannot be read or is empty",
                        file.display()
                    ));
                    return finish(report, &self.api);
                }
            }
        }
        // One receiver at a time (on one host, always this one). A dry run changes nothing.
        let lease = if dry_run {
            None
        } else {
            match self.journal.exclusive("reconciler").await {
                Some(lease) => Some(lease),
                None if self.journal.shared_status().is_some_and(|s| !s.connected) => {
                    report.outcome = Outcome::Failed;
                    report.errors.push(
                        "NATS is away: the reconciler's lease cannot be taken; the next run tries again"
                            .to_owned(),
                    );
                    return finish(report, &self.api);
                }
                None => {
                    report.outcome = Outcome::Elsewhere;
                    return finish(report, &self.api);
                }
            }
        };

        if self.journal.spool_len() > 0 {
            // Webhooks this receiver took while NATS was away are not in the stream yet: a
            // difference found now may be one of them, and would be journaled twice.
            report.outcome = Outcome::Failed;
            report.errors.push(
                "this receiver's spool holds webhooks not yet in the shared stream; nothing compared, the next run tries again"
                    .to_owned(),
            );
            return finish(report, &self.api);
        }
        // On a replicated journal, this receiver's copy must hold what another receiver (or
        // its last run) journaled, or the comparison would find those differences again.
        if !self
            .journal
            .caught_up(std::time::Duration::from_secs(30))
            .await
        {
            report.outcome = Outcome::Failed;
            report.errors.push(
                "this receiver's copy of the journal is behind the shared stream (or NATS is away); nothing compared, the next run tries again"
                    .to_owned(),
            );
            return finish(report, &self.api);
        }
        // The API first: the journal's state is read after it, so a webhook that arrives
        // while the lists are read is already in what they are compared with.
        let listed_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut lists: BTreeMap<&str, Option<Vec<Value>>> = BTreeMap::new();
        for what in ["streams", "videos", "restreams", "broadcasts"] {
            match self.api.list(what).await {
                Ok(items) => {
                    lists.insert(what, Some(items));
                }
                Err(e @ ApiError::Unauthorized { .. }) => {
                    report.outcome = Outcome::Unauthorized;
                    report.errors.push(e.to_string());
                    return finish(report, &self.api);
                }
                Err(e) => {
                    report.outcome = Outcome::Partial;
                    report
                        .errors
                        .push(format!("{e} (the {what} were not compared)"));
                    lists.insert(what, None);
                }
            }
        }
        let observed = SystemTime::now();
        let known = match self.known().await {
            Ok(k) => k,
            Err(e) => {
                report.outcome = Outcome::Failed;
                report.errors.push(format!("the journal: {e}"));
                return finish(report, &self.api);
            }
        };
        let baseline_ms = self.baseline_ms().await;
        let get = |what: &str| lists.get(what).and_then(|l| l.as_deref());
        let planned = plan::plan(&Input {
            streams: get("streams"),
            videos: get("videos"),
            restreams: get("restreams"),
            broadcasts: get("broadcasts"),
            known: &known,
            baseline_ms,
            observed_at: observed,
            skew: self.config.clock_skew,
            listed_at_ms,
            settle: self.config.settle,
        });
        report.changed_meanwhile += planned.newer_in_journal;
        report.settling = planned.settling;
        report.not_comparable = planned.not_comparable;
        report.compared = planned
            .compared
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect();
        // The API and the journal must describe one account: a key of another account (or
        // an API that shows nothing) would make every known video a deletion and every
        // listed resource new.
        let known_live = known
            .iter()
            .filter(|(k, (s, _))| {
                k.starts_with("stream:")
                    || matches!(
                        s,
                        streamhook_types::ResourceState::Video { deleted: false, .. }
                    )
            })
            .count();
        let listed_known = ["streams", "videos"]
            .iter()
            .filter_map(|w| get(w))
            .flatten()
            .filter(|item| {
                let id = item.get("id").and_then(Value::as_u64);
                id.is_some_and(|id| {
                    known.contains_key(&format!("stream:{id}"))
                        || known.contains_key(&format!("video:{id}"))
                })
            })
            .count();
        let read_any = get("streams").is_some() || get("videos").is_some();
        if read_any && known_live >= SANITY_MIN && listed_known == 0 {
            report.outcome = Outcome::Failed;
            report.errors.push(format!(
                "none of the {known_live} streams and videos the journal knows is in the API's lists: is the key of another account? Nothing was journaled"
            ));
            return finish(report, &self.api);
        }
        let mut actions = planned.actions;
        let mut missing = planned.missing_videos;
        let known_videos = known
            .values()
            .filter(|(s, _)| {
                matches!(
                    s,
                    streamhook_types::ResourceState::Video { deleted: false, .. }
                )
            })
            .count();
        if missing.len() >= SANITY_MIN && missing.len() * 2 > known_videos {
            report.outcome = Outcome::Partial;
            report.errors.push(format!(
                "{} of the {known_videos} videos the journal knows are missing from the API's list: too many to be deletions (a key of another account, or a partial list?); no deletion journaled",
                missing.len()
            ));
            missing.clear();
        }
        // A video the list lacks is deleted only if the API says so for that id.
        for id in missing {
            let Some(prior) = known.get(&format!("video:{id}")) else {
                continue;
            };
            match self.api.video(id).await {
                Ok(None) => actions.push(plan::video_deleted(id, prior, SystemTime::now())),
                Ok(Some(item)) => {
                    if let Some(a) = plan::video_found(&item, prior, SystemTime::now()) {
                        actions.push(a);
                    }
                }
                Err(ApiError::Unauthorized {
                    status: 401,
                    message,
                }) => {
                    report.outcome = Outcome::Unauthorized;
                    report.errors.push(
                        ApiError::Unauthorized {
                            status: 401,
                            message,
                        }
                        .to_string(),
                    );
                    return finish(report, &self.api);
                }
                Err(e) => {
                    // A 403 for one video (a sub-account's, say) is that video's problem,
                    // not the key's: the lists were read with it.
                    report.outcome = Outcome::Partial;
                    report.errors.push(format!("video {id}: {e}"));
                }
            }
        }
        report.differences = actions.len() as u64;

        for action in actions {
            if dry_run {
                for step in &action.steps {
                    report.emitted.push(emitted(&action, step, None));
                }
                continue;
            }
            if lease.as_ref().is_some_and(|l| !l.held()) {
                report.outcome = Outcome::Partial;
                report.errors.push(
                    "the reconciler's lease was lost (NATS away?); the rest is left to the next run"
                        .to_owned(),
                );
                break;
            }
            match self.apply(&action, &mut report).await {
                Ok(()) => {}
                Err(e) => {
                    report.outcome = Outcome::Failed;
                    report.errors.push(format!(
                        "{}: could not be journaled ({e}); the next run tries again",
                        action.resource
                    ));
                    break;
                }
            }
        }
        drop(lease);
        finish(report, &self.api)
    }

    /// Journals one action's steps, if the resource is still as planned.
    async fn apply(
        &self,
        action: &Action,
        report: &mut Report,
    ) -> Result<(), streamhook_core::JournalError> {
        let key = action.resource.clone();
        let now = self
            .journal
            .blocking(move |j| j.history_with_time(&key))
            .await?;
        if now != action.prior {
            // A webhook came meanwhile: it told what the API would have.
            report.changed_meanwhile += 1;
            return Ok(());
        }
        for step in &action.steps {
            let bytes = serde_json::to_vec(&step.payload).unwrap_or_default();
            let Ok(decoded) = decode_value(&step.payload) else {
                continue;
            };
            let appended = match self
                .journal
                .append_reconciled(
                    &bytes,
                    decoded.webhook,
                    step.reconciled.clone(),
                    step.before.clone(),
                )
                .await
            {
                Ok(a) => a,
                Err(streamhook_core::JournalError::NotAsExpected { .. }) => {
                    // A webhook came between the plan and the write (on the replicated
                    // journal, maybe to the other receiver): it is newer than the API's
                    // reading; the rest of this resource is left to the next run.
                    report.changed_meanwhile += 1;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let mut e = emitted(action, step, Some(appended.seq));
            e.kinds = appended
                .kinds
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect();
            e.id = Some(appended.id.to_string());
            report.emitted.push(e);
        }
        Ok(())
    }

    async fn known(&self) -> Result<Known, streamhook_core::JournalError> {
        self.journal
            .blocking(|j| {
                let mut known = Known::new();
                for prefix in ["stream:", "video:", "restream:", "broadcast:"] {
                    for (key, state, at) in j.histories(prefix)? {
                        known.insert(key, (state, at));
                    }
                }
                Ok(known)
            })
            .await
    }

    /// Resources the journal never heard of are emitted only if they changed after this: the
    /// journal's oldest event (what it covers), or, for an empty journal, when this process
    /// started.
    async fn baseline_ms(&self) -> u64 {
        let started = self
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let oldest = self
            .journal
            .blocking(|j| {
                Ok(match j.first_seq()? {
                    Some(seq) => j.get(seq)?.map(|e| e.received_at_ms),
                    None => None,
                })
            })
            .await
            .ok()
            .flatten();
        oldest.map_or(started, |o| o.min(started))
    }
}

/// Puts the state back if a run is dropped before it ends.
struct RunningGuard<'a>(&'a Reconciler, State);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        let state = self.1.clone();
        self.0.set(|s| s.0 = state);
    }
}

fn emitted(action: &Action, step: &plan::Step, seq: Option<u64>) -> Emitted {
    Emitted {
        resource: action.resource.clone(),
        kinds: step.kinds.iter().map(|k| k.as_str().to_owned()).collect(),
        reason: step.reconciled.reason.clone(),
        happened_at: step.reconciled.happened_at.clone(),
        seq,
        id: None,
    }
}

fn log(report: &Report) {
    match report.outcome {
        Outcome::Ok | Outcome::Partial => {
            let kinds: Vec<String> = report
                .emitted
                .iter()
                .map(|e| format!("{} {}", e.resource, e.kinds.join("+")))
                .collect();
            if report.emitted.is_empty() {
                tracing::info!(
                    requests = report.requests,
                    "reconcile: the journal agrees with Gcore's API"
                );
            } else {
                tracing::warn!(
                    requests = report.requests,
                    emitted = report.emitted.len(),
                    events = %kinds.join(", "),
                    "reconcile: journaled transitions Gcore never sent"
                );
            }
            for e in &report.errors {
                tracing::warn!(error = %e, "reconcile: part of the run failed");
            }
        }
        Outcome::Unauthorized => tracing::error!(
            error = %report.errors.join("; "),
            "reconcile: paused, Gcore's API refused the key (intake goes on)"
        ),
        Outcome::Elsewhere => {
            tracing::debug!("reconcile: another receiver reconciles now")
        }
        Outcome::Failed => tracing::error!(
            error = %report.errors.join("; "),
            "reconcile: the run failed"
        ),
    }
}
