//! The dispatcher: one per sink, it reads the journal from the sink's cursor and delivers every
//! event the router sends to that sink, at least once, in journal order per resource.
//!
//! - Events are read in batches and handed to lanes (as many as [`Sink::concurrency`]); all
//!   events of one resource go to the same lane, so they arrive in order even when several
//!   resources are delivered at once.
//! - A retryable failure is tried again after an exponential backoff with jitter (or the
//!   sink's `retry_after` hint), until [`RetryPolicy`]'s attempts or age run out; then, or at
//!   once for a permanent failure, the event becomes a dead letter and delivery goes on.
//! - The cursor (the first seq not yet passed) is persisted as events complete, so a restart
//!   resumes where delivery stood; anything in flight is delivered again (at least once).
//! - Memory is bounded by the in-flight window whatever the backlog: the backlog stays on disk.
//! - One slow sink slows only itself: intake and other sinks never wait for it.
//! - A dispatcher never stops on its own: a journal error (a full disk, a read during the
//!   journal's reopen) pauses delivery, counts in [`SinkStats::journal_errors`], and is retried
//!   with backoff from the persisted cursor; a record that cannot be read becomes a dead letter
//!   with the reason, never a silent skip.
//! - A sink that knows what it already holds ([`Sink::delivered_through`]) resumes after it, so
//!   a crash does not deliver twice what it wrote.
//!
//! Files: [`stats`] (what a dispatcher shows), `lane` (delivery, retries and dead letters),
//! `lease` (delivering only while this receiver holds the sink's lease), `gate` (what lanes
//! pass before every send: closed once the lease may have lapsed).

use std::collections::{BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::journal::{CauseKind, DeadLetter, Journal, JournalError, StoredEvent};
use crate::router::{RouteInput, Router};
use crate::sink::{Delivery, Sink};

mod gate;
mod lane;
mod lease;
pub mod stats;

pub use lane::RetryPolicy;
use lane::{Done, Job, lane};
pub use stats::{ATTEMPT_LOG, Activity, Attempt, Progress, Rate, Retrying, SinkStats};

/// The router, shared so a reload can swap it under running dispatchers.
pub type SharedRouter = Arc<RwLock<Arc<Router>>>;

/// Delivers the journal to one sink.
#[derive(Debug)]
pub struct Dispatcher {
    journal: Journal,
    sink: Arc<dyn Sink>,
    router: SharedRouter,
    policy: RetryPolicy,
    window: usize,
    stats: Arc<SinkStats>,
    /// What every lane passes before a send (closed when the sink's lease may have lapsed).
    gate: Arc<gate::Gate>,
    /// The lease under which this receiver delivers now (0: one host).
    epoch: Arc<std::sync::atomic::AtomicU64>,
}
impl Dispatcher {
    /// A dispatcher for `sink`, routing with `router`.
    pub fn new(
        journal: Journal,
        sink: Arc<dyn Sink>,
        router: SharedRouter,
        policy: RetryPolicy,
    ) -> Self {
        Dispatcher {
            journal,
            sink,
            router,
            policy,
            window: 1024,
            stats: Arc::new(SinkStats::default()),
            gate: Arc::new(gate::Gate::open()),
            epoch: Arc::default(),
        }
    }

    /// The most events in flight at once (default 1,024).
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    fn lease_epoch(&self) -> Option<u64> {
        match self.epoch.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// This sink's counters.
    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown` turns true (or its sender is dropped). In-flight deliveries are
    /// abandoned then (they are delivered again after a restart); the cursor of what completed
    /// is persisted. A journal error never ends it: delivery pauses and resumes from the
    /// persisted cursor after a backoff (100 ms doubling to 30 s).
    ///
    /// It delivers only while this receiver holds the sink's lease
    /// ([`crate::backend::Leases`]): on one host, always; on a
    /// [replicated](Journal::is_replicated) journal, it waits for the lease, resumes from the
    /// shared cursor, shares the cursor back at every renewal, stops delivering when the lease
    /// is lost, and lets it go on shutdown.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        self.run_leased(shutdown).await;
    }

    pub(super) async fn run_owned(&self, mut shutdown: watch::Receiver<bool>) {
        let name = self.sink.name().to_owned();
        // Unregistered when dropped: when this returns, and when its task is aborted.
        let _registration = self.journal.register_dispatcher(&name);
        let mut wait = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            // What the sink holds already, read again at every (re)start: after a journal
            // error the persisted cursor may be behind what the sink wrote since.
            let resume = if self.sink.concurrency() <= 1 {
                self.sink.delivered_through().await
            } else {
                None
            };
            match self.run_inner(&mut shutdown, resume).await {
                Ok(()) => break,
                Err(e) => {
                    if started.elapsed() > Duration::from_secs(60) {
                        wait = Duration::from_millis(100);
                    }
                    self.stats.journal_errors.fetch_add(1, Ordering::Relaxed);
                    self.journal.stats().observe_error(&e);
                    self.stats.paused.store(1, Ordering::Relaxed);
                    tracing::error!(sink = %name, error = %e, retry_in = ?wait, "delivery paused: the journal failed; retrying from the persisted cursor");
                    let stopped = tokio::select! {
                        _ = tokio::time::sleep(wait) => false,
                        _ = shutdown.wait_for(|s| *s) => true,
                    };
                    self.stats.paused.store(0, Ordering::Relaxed);
                    if stopped || shutdown.has_changed().is_err() {
                        break;
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
        if let Err(e) = self.sink.flush().await {
            tracing::warn!(sink = %name, error = %e, "flush on shutdown failed");
        }
    }

    async fn run_inner(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        resume_after: Option<crate::sink::Held>,
    ) -> Result<(), JournalError> {
        let name = self.sink.name().to_owned();
        let mut changed = self.journal.subscribe();
        let (mut start, rewind) = self
            .journal
            .blocking({
                let name = name.clone();
                move |j| Ok((j.cursor(&name)?, j.rewind(&name)?))
            })
            .await?;
        // A replay recorded while no dispatcher ran (see `Journal::replay`): the cursor goes
        // back to it if it is behind, and the sink is told before anything.
        if let Some(seq) = rewind
            && seq < start
        {
            start = seq;
            self.persist(&name, start).await?;
        }
        if let Some(held) = resume_after {
            // Trust it only if this journal holds that very event (same seq, same id).
            let seq = held.seq;
            let stored = self.journal.blocking(move |j| j.get(seq)).await?;
            let same = stored
                .and_then(|e| e.envelope().ok())
                .is_some_and(|e| e.id.0 == held.id);
            if !same {
                tracing::warn!(sink = %name, held = held.seq, id = %held.id, "the sink's recorded position names an event this journal does not hold (another data directory?); ignoring it");
            } else if held.seq >= start {
                // Skip what the sink holds, but never past a replay's point.
                let resume = rewind.map_or(held.seq + 1, |r| (held.seq + 1).min(r));
                if resume > start {
                    tracing::info!(sink = %name, cursor = start, resume, "the sink already holds what the cursor would deliver again; resuming after it");
                    start = resume;
                    self.persist(&name, start).await?;
                }
            } else if held.seq + 1 < start {
                // The cursor never passes what the sink has not made durable, so this means
                // its storage lost data it had synced (or was changed by hand).
                tracing::warn!(sink = %name, cursor = start, holds_through = held.seq, "the sink holds less than its cursor says it was given: events after its last one were delivered but are not in it (its storage lost synced data, or was changed by hand); a replay delivers them again");
            }
        }
        if let Some(seq) = rewind {
            self.apply_rewind(&name, seq).await?;
        }
        'generation: loop {
            self.stats.cursor.store(start, Ordering::Relaxed);
            let lanes_n = self.sink.concurrency().clamp(1, 64);
            let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
            let mut lanes = Vec::with_capacity(lanes_n);
            let mut tasks = JoinSet::new();
            for _ in 0..lanes_n {
                let (tx, rx) = mpsc::channel::<Job>(self.window);
                lanes.push(tx);
                tasks.spawn(lane(
                    rx,
                    done_tx.clone(),
                    Arc::clone(&self.sink),
                    self.journal.clone(),
                    self.policy,
                    Arc::clone(&self.stats),
                    Arc::clone(&self.gate),
                ));
            }
            let mut next = start;
            let mut pending: BTreeSet<u64> = BTreeSet::new();
            let mut requeued_in_flight: HashSet<u64> = HashSet::new();
            let mut persisted = start;
            let mut last_persist = Instant::now();
            let mut idle_flushed = true;
            let mut stop = false;
            let mut shown = (0, Instant::now());
            *self.stats.progress() = Progress {
                next,
                in_flight: Vec::new(),
            };
            loop {
                if stop || *shutdown.borrow() {
                    tasks.abort_all();
                    // What the lanes finished before stopping counts.
                    while let Ok(done) = done_rx.try_recv() {
                        match done {
                            Done::Event(seq) => {
                                pending.remove(&seq);
                            }
                            Done::Requeued(seq) => {
                                requeued_in_flight.remove(&seq);
                            }
                        }
                    }
                    // What the sink wrote becomes durable before the cursor passes it.
                    if let Err(e) = self.sink.flush().await {
                        tracing::warn!(sink = %name, error = %e, "flush on stop failed");
                    }
                    let cursor = self.cursor_at(&pending, next);
                    self.persist(&name, cursor).await?;
                    return Ok(());
                }
                if let Some((asked, ack)) = self.journal.take_replay(&name) {
                    // A replay only moves the sink back: past the oldest event it has in
                    // flight (or the next to read) it would skip what the sink has not had.
                    let position = pending.first().copied().unwrap_or(next);
                    if asked >= position {
                        tracing::info!(sink = %name, asked, position, "replay asked from a point the sink has not reached: it keeps its place, nothing is skipped");
                        let _ = ack.send((position, false));
                    } else {
                        tasks.abort_all();
                        self.persist(&name, asked).await?;
                        self.apply_rewind(&name, asked).await?;
                        tracing::info!(sink = %name, from = asked, "replay");
                        let _ = ack.send((asked, true));
                        start = asked;
                        continue 'generation;
                    }
                }

                // Fill the window from the journal.
                'fill: while pending.len() + requeued_in_flight.len() < self.window {
                    let want = (self.window - pending.len() - requeued_in_flight.len()).min(256);
                    let records = self
                        .journal
                        .blocking(move |j| j.read_records(next, want))
                        .await?;
                    if records.is_empty() {
                        break;
                    }
                    for record in records {
                        let at = match &record {
                            Ok(event) => event.seq,
                            Err(JournalError::Corrupt { seq, .. }) => *seq,
                            Err(_) => next,
                        };
                        if at > next {
                            self.skipped_pruned(next, at);
                        }
                        let event = match record {
                            Ok(event) => event,
                            Err(JournalError::Corrupt { seq, message }) => {
                                next = seq + 1;
                                self.dead_letter_unreadable(seq, &message, String::new())
                                    .await?;
                                continue;
                            }
                            Err(e) => return Err(e),
                        };
                        let seq = event.seq;
                        next = seq + 1;
                        let delivery = match self.routed(event) {
                            Routed::Skip => continue,
                            Routed::Deliver(delivery) => *delivery,
                            Routed::Unreadable(message, json) => {
                                self.dead_letter_unreadable(seq, &message, json).await?;
                                continue;
                            }
                        };
                        idle_flushed = false;
                        pending.insert(seq);
                        let lane = lane_of(&delivery, lanes.len());
                        let job = Job {
                            seq,
                            requeued: false,
                            delivery,
                        };
                        match hand_over(&lanes[lane], job, shutdown, &self.journal, &name).await? {
                            Handed::Sent => {}
                            Handed::Stopping => {
                                stop = true;
                                break 'fill;
                            }
                            Handed::Replay => break 'fill,
                        }
                    }
                }
                // Requeued dead letters.
                let letters = {
                    let name = name.clone();
                    self.journal
                        .blocking(move |j| j.requeued(&name, 64))
                        .await?
                };
                for letter in letters {
                    if requeued_in_flight.contains(&letter.seq) {
                        continue;
                    }
                    match delivery_of_letter(&letter, self.lease_epoch()) {
                        Some(delivery) => {
                            requeued_in_flight.insert(letter.seq);
                            let lane = lane_of(&delivery, lanes.len());
                            let job = Job {
                                seq: letter.seq,
                                requeued: true,
                                delivery,
                            };
                            match hand_over(&lanes[lane], job, shutdown, &self.journal, &name)
                                .await?
                            {
                                Handed::Sent => {}
                                Handed::Stopping => {
                                    stop = true;
                                    break;
                                }
                                Handed::Replay => break,
                            }
                        }
                        None => {
                            let (name, seq) = (name.clone(), letter.seq);
                            self.journal
                                .blocking(move |j| j.finish_requeued(&name, seq))
                                .await?;
                        }
                    }
                }

                // Idle: what the sink wrote is made durable (then the cursor may pass it).
                if pending.is_empty() && requeued_in_flight.is_empty() && !idle_flushed {
                    idle_flushed = true;
                    if let Err(e) = self.sink.flush().await {
                        tracing::warn!(sink = %name, error = %e, "flush failed");
                    }
                }
                // Persist the cursor at most every 200 ms (busy or idle: a commit per event
                // at low rates would double the fsyncs and hold the journal's writer), and on
                // stop. A crash repeats at most those 200 ms of deliveries (at least once; the
                // file sink's position skips what it holds). It never passes what the sink has
                // not made durable yet ([`Sink::not_durable_from`]).
                let cursor = self.cursor_at(&pending, next);
                let persist_due = last_persist + PERSIST_EVERY;
                if Instant::now() >= persist_due {
                    if cursor != persisted {
                        self.persist(&name, cursor).await?;
                        persisted = cursor;
                        last_persist = Instant::now();
                    } else if !self
                        .stats
                        .unsaved
                        .lock()
                        .map(|u| u.is_empty())
                        .unwrap_or(true)
                    {
                        // Attempts of events still in flight (retries): saved on their own.
                        self.save(&name, None).await?;
                        last_persist = Instant::now();
                    }
                }
                // Show the progress: at once when idle, at most every 200 ms while busy.
                if (pending.is_empty() && shown.0 != next)
                    || shown.1.elapsed() > Duration::from_millis(200)
                {
                    *self.stats.progress() = Progress {
                        next,
                        in_flight: pending.iter().copied().collect(),
                    };
                    shown = (next, Instant::now());
                }

                if stop {
                    continue;
                }
                tokio::select! {
                    r = shutdown.changed() => stop = r.is_err(),
                    _ = changed.changed() => {}
                    Some(done) = done_rx.recv() => {
                        let mut handle = |d: Done| match d {
                            Done::Event(seq) => { pending.remove(&seq); }
                            Done::Requeued(seq) => { requeued_in_flight.remove(&seq); }
                        };
                        handle(done);
                        while let Ok(d) = done_rx.try_recv() {
                            handle(d);
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(500)), if !pending.is_empty() => {}
                    _ = tokio::time::sleep_until(persist_due.into()), if self.cursor_at(&pending, next) != persisted => {}
                }
            }
        }
    }

    /// Tells the sink it was moved back to `seq`, then forgets the journal's rewind record.
    /// A sink that cannot forget its position yet (an I/O error) is retried like a journal
    /// error: resuming after a stale position would skip the replay.
    async fn apply_rewind(&self, name: &str, seq: u64) -> Result<(), JournalError> {
        self.sink.rewound(seq).await.map_err(|e| {
            JournalError::Write(crate::journal::Cause::with_source(
                CauseKind::Other,
                format!("sink {name:?} cannot rewind: {e}"),
                e,
            ))
        })?;
        let name = name.to_owned();
        self.journal.blocking(move |j| j.clear_rewind(&name)).await
    }

    /// The cursor now: the oldest event in flight (or the next to read), but never past what
    /// the sink has not made durable.
    fn cursor_at(&self, pending: &BTreeSet<u64>, next: u64) -> u64 {
        let cursor = pending.first().copied().unwrap_or(next);
        match self.sink.not_durable_from() {
            Some(seq) => cursor.min(seq),
            None => cursor,
        }
    }

    /// Events `from..to` were pruned before this sink had them: never silent.
    fn skipped_pruned(&self, from: u64, to: u64) {
        let n = to - from;
        self.stats.skipped.fetch_add(n, Ordering::Relaxed);
        tracing::error!(sink = %self.sink.name(), from, to = to - 1, events = n, "events were pruned before this sink had them (it was out of the configuration past retention.removed_sink_grace, or forgotten): they are not delivered to it");
    }

    async fn persist(&self, name: &str, cursor: u64) -> Result<(), JournalError> {
        self.save(name, Some(cursor)).await
    }

    /// Saves the cursor (when given) and the attempts made since the last save, in one
    /// commit; attempts whose write failed wait for the next.
    async fn save(&self, name: &str, cursor: Option<u64>) -> Result<(), JournalError> {
        let name = name.to_owned();
        let attempts = self.stats.take_unsaved();
        let stats = Arc::clone(&self.stats);
        let saved = self
            .journal
            .blocking(move |j| match j.save_progress(&name, cursor, &attempts) {
                Ok(()) => Ok(Ok(())),
                Err(e) => Ok(Err((e, attempts))),
            })
            .await?;
        if let Err((e, attempts)) = saved {
            stats.put_back(attempts);
            return Err(e);
        }
        if let Some(cursor) = cursor {
            self.stats.cursor.store(cursor, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Stores a dead letter for a journal record that cannot be read (retrying until it is
    /// stored), so the sink's operator sees it instead of a silent gap.
    async fn dead_letter_unreadable(
        &self,
        seq: u64,
        message: &str,
        envelope: String,
    ) -> Result<(), JournalError> {
        tracing::error!(sink = %self.sink.name(), seq, error = %message, "unreadable journal record: dead-lettered");
        let letter = DeadLetter {
            sink: self.sink.name().to_owned(),
            seq,
            id: String::new(),
            error: format!("unreadable journal record: {message}"),
            attempts: 0,
            failed_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            envelope,
            body: String::new(),
        };
        self.journal
            .blocking(move |j| j.dead_letter(&letter))
            .await?;
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The delivery for `event` if the router sends it to this sink.
    fn routed(&self, event: StoredEvent) -> Routed {
        let envelope = match event.envelope() {
            Ok(e) => e,
            Err(e) => return Routed::Unreadable(e.to_string(), event.json),
        };
        // The payload's `type` (`video_delete` is a `video` resource: the resource's type
        // would not do).
        let type_name = payload_type(&envelope);
        let input = RouteInput {
            kinds: &envelope.kinds,
            type_name: &type_name,
            origin: envelope.origin,
            id: envelope.resource.id,
        };
        let wanted = self
            .router
            .read()
            .map(|r| r.wants(self.sink.name(), &input))
            .unwrap_or(true);
        if !wanted {
            return Routed::Skip;
        }
        let body = event.body(&envelope);
        Routed::Deliver(Box::new(Delivery {
            json: crate::journal::one_line_owned(event.json),
            body,
            envelope,
            attempt: 1,
            requeued: false,
            lease: self.lease_epoch(),
        }))
    }
}

/// What the router makes of one journal record for this sink.
enum Routed {
    /// Not for this sink.
    Skip,
    Deliver(Box<Delivery>),
    /// The record's envelope cannot be read (why, and the record's text).
    Unreadable(String, String),
}

/// What happened to a job handed to a lane.
enum Handed {
    Sent,
    /// Shutdown came first.
    Stopping,
    /// A replay was asked for first (it drops what was in flight anyway).
    Replay,
}

/// Hands a job to its lane, unless shutdown or a replay comes first: a lane stuck on a slow
/// delivery must hold neither a stopping dispatcher nor a replay.
async fn hand_over(
    lane: &mpsc::Sender<Job>,
    job: Job,
    shutdown: &mut watch::Receiver<bool>,
    journal: &Journal,
    name: &str,
) -> Result<Handed, JournalError> {
    // Room in the lane (the usual case): no waiting, nothing to watch.
    let job = match lane.try_send(job) {
        Ok(()) => return Ok(Handed::Sent),
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(JournalError::Closed),
        Err(mpsc::error::TrySendError::Full(job)) => job,
    };
    let mut changed = journal.subscribe();
    let replay = async {
        loop {
            if journal.has_replay(name) {
                return;
            }
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        sent = lane.send(job) => sent.map(|()| Handed::Sent).map_err(|_| JournalError::Closed),
        _ = shutdown.wait_for(|s| *s) => Ok(Handed::Stopping),
        _ = replay => Ok(Handed::Replay),
    }
}

/// The webhook `type` of an envelope's payload (read without decoding the whole payload).
pub fn payload_type(envelope: &streamhook_types::Envelope) -> String {
    #[derive(serde::Deserialize)]
    struct TypeOnly {
        #[serde(rename = "type")]
        type_name: Option<String>,
    }
    serde_json::from_str::<TypeOnly>(envelope.payload.get())
        .ok()
        .and_then(|t| t.type_name)
        .unwrap_or_default()
}

fn delivery_of_letter(letter: &DeadLetter, lease: Option<u64>) -> Option<Delivery> {
    let envelope = serde_json::from_str(&letter.envelope).ok()?;
    Some(Delivery {
        json: crate::journal::one_line(&letter.envelope),
        body: letter.body.clone(),
        envelope,
        attempt: 1,
        requeued: true,
        lease,
    })
}

fn lane_of(delivery: &Delivery, lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let mut h = DefaultHasher::new();
    delivery.envelope.resource.hash(&mut h);
    (h.finish() % lanes as u64) as usize
}

/// How often a dispatcher persists its cursor (at most).
const PERSIST_EVERY: Duration = Duration::from_millis(200);
