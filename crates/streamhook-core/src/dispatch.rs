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

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::journal::{DeadLetter, Journal, JournalError, StoredEvent};
use crate::router::{RouteInput, Router};
use crate::sink::{Delivery, Sink, SinkError};

/// When to give up on an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff.
    pub initial_backoff: Duration,
    /// The longest backoff (and the longest `retry_after` honoured).
    pub max_backoff: Duration,
    /// The most deliveries tried before dead-lettering.
    pub max_attempts: u32,
    /// The longest time spent retrying one event before dead-lettering.
    pub max_age: Duration,
    /// How long one `send` may take before it counts as a (retryable) timeout.
    pub send_timeout: Duration,
}

impl Default for RetryPolicy {
    /// 1 s doubling to 5 min, up to 30 attempts or 24 hours; 30 s per send.
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_attempts: 30,
            max_age: Duration::from_secs(24 * 3600),
            send_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: `initial * 2^(attempt-1)`, capped, with jitter
    /// (a random point in its upper half), or the sink's hint when it gave one.
    pub fn backoff(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        if let Some(hint) = hint {
            return hint.min(self.max_backoff);
        }
        let exp = self
            .initial_backoff
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1).min(31))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_backoff);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

/// Counters and gauges of one sink, for metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events delivered.
    pub delivered: AtomicU64,
    /// Failed attempts (each retry counts).
    pub failed_attempts: AtomicU64,
    /// Events waiting for a retry now.
    pub retrying: AtomicU64,
    /// Events dead-lettered.
    pub dead_lettered: AtomicU64,
    /// The persisted cursor: the first seq not yet passed.
    pub cursor: AtomicU64,
    /// Journal errors that paused delivery (each is retried with backoff).
    pub journal_errors: AtomicU64,
    /// 1 while delivery is paused by a journal error, else 0.
    pub paused: AtomicU64,
    /// On a replicated journal: 1 while this receiver holds the sink's lease (delivers it).
    pub leased: AtomicU64,
    /// Recent attempts, events waiting for a retry, the last error: what the console shows.
    pub activity: Mutex<Activity>,
    /// Deliveries per minute over the last hour.
    pub rate: Rate,
    /// What the dispatcher has read and still has in flight (refreshed at most every
    /// 200 ms while busy): events below `next` and not in flight have been passed, even
    /// while the persisted cursor waits behind one slow event.
    pub progress: Mutex<Progress>,
}

/// A dispatcher's progress, as [`SinkStats::progress`] shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The next seq it will read (0: not started).
    pub next: u64,
    /// Seqs handed to the sink and not yet done (delivered or dead-lettered), in order.
    pub in_flight: Vec<u64>,
}

impl SinkStats {
    /// The progress, even if a panicking holder poisoned its lock.
    pub fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The activity, even if a panicking holder poisoned its lock.
    pub fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How many attempts [`Activity::attempts`] keeps.
pub const ATTEMPT_LOG: usize = 2048;

/// A sink's recent history, in memory (bounded; lost on restart, unlike dead letters).
#[derive(Debug, Default)]
pub struct Activity {
    /// The latest failed attempts, and deliveries and dead letters that followed a failure,
    /// oldest first; at most [`ATTEMPT_LOG`].
    pub attempts: VecDeque<Attempt>,
    /// Events waiting for their next attempt, by seq.
    pub retrying: BTreeMap<u64, Retrying>,
    /// The last failed attempt.
    pub last_error: Option<Attempt>,
}

impl Activity {
    fn record(&mut self, attempt: Attempt) {
        if attempt.error.is_some() {
            self.last_error = Some(attempt.clone());
        }
        if self.attempts.len() >= ATTEMPT_LOG {
            self.attempts.pop_front();
        }
        self.attempts.push_back(attempt);
    }
}

/// One delivery attempt worth remembering.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attempt {
    /// The event.
    pub seq: u64,
    /// Which attempt, from 1.
    pub attempt: u32,
    /// When it ended, in ms since the Unix epoch.
    pub at_ms: u64,
    /// `failed`, `delivered` or `dead`.
    pub outcome: &'static str,
    /// The sink's error (with the status code, for HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An event waiting for its next attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Retrying {
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next one starts, in ms since the Unix epoch.
    pub next_at_ms: u64,
    /// The last error.
    pub error: String,
}

/// Events per minute over the last hour, lock-free: slot `minute % 60` holds, in one word,
/// the minute it counts (high 32 bits) and its count (low 32 bits), updated by compare-and-swap
/// so a count is never lost to a concurrent new minute.
#[derive(Debug)]
pub struct Rate {
    slots: [AtomicU64; 60],
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Rate {
    /// Counts one event now.
    pub fn add(&self) {
        self.add_at(now_ms() / 60_000);
    }

    /// Counts one event in `minute` (minutes since the Unix epoch).
    pub fn add_at(&self, minute: u64) {
        let slot = &self.slots[(minute % 60) as usize];
        let stamp = (minute & 0xffff_ffff) << 32;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if current & !0xffff_ffff == stamp {
                current.saturating_add(1).min(stamp | 0xffff_ffff)
            } else {
                stamp | 1
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// The last 60 minutes' counts, oldest first, the current minute last.
    pub fn last_hour(&self) -> Vec<u64> {
        self.hour_before(now_ms() / 60_000)
    }

    /// The 60 minutes up to `now` (minutes since the Unix epoch), oldest first.
    pub fn hour_before(&self, now: u64) -> Vec<u64> {
        (0..60u64)
            .rev()
            .map(|back| {
                let minute = now.saturating_sub(back);
                let word = self.slots[(minute % 60) as usize].load(Ordering::Relaxed);
                if word >> 32 == minute & 0xffff_ffff {
                    word & 0xffff_ffff
                } else {
                    0
                }
            })
            .collect()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

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
}

enum Done {
    Event(u64),
    Requeued(u64),
}

struct Job {
    seq: u64,
    requeued: bool,
    delivery: Delivery,
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
        }
    }

    /// The most events in flight at once (default 1,024).
    pub fn with_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
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
    /// On a [replicated](Journal::is_replicated) journal, it delivers only while this
    /// receiver holds the sink's lease (see [`crate::jetstream`]): it waits for the lease,
    /// resumes from the shared cursor, writes the cursor back every second, stops delivering
    /// when the lease is lost, and lets it go on shutdown.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        #[cfg(feature = "jetstream")]
        if let Some(remote) = self.journal.remote().cloned() {
            return self.run_leased(remote, shutdown).await;
        }
        self.run_owned(shutdown).await;
    }

    #[cfg(feature = "jetstream")]
    async fn run_leased(
        self,
        remote: Arc<crate::jetstream::Remote>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        use crate::jetstream::{LEASE_RENEW, LEASE_TTL, MIRROR_STALE};
        // Stop delivering well before the lease can lapse on the server: a receiver that
        // cannot renew (cut off from NATS, or slow) stops before another can take over.
        let margin = LEASE_TTL.saturating_sub(LEASE_RENEW * 3);
        let name = self.sink.name().to_owned();
        loop {
            let (mut revision, mut renewed) = loop {
                if *shutdown.borrow() {
                    return;
                }
                // A receiver whose mirror is behind does not take the lease: it would
                // deliver nothing new while another could.
                if remote.mirror_current(MIRROR_STALE)
                    && let Some(revision) = remote.try_lease(&name).await
                {
                    break (revision, Instant::now());
                }
                tokio::select! {
                    _ = tokio::time::sleep(LEASE_RENEW) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            };
            let adopted = match remote.shared_cursor(&name).await {
                Ok(shared) => {
                    let sink = name.clone();
                    // Resume from the shared cursor; a rewind left in this mirror by an
                    // earlier replay asked of this receiver no longer applies.
                    blocking(&self.journal, move |j| {
                        if let Some(seq) = shared {
                            j.set_cursor(&sink, seq)?;
                        }
                        j.clear_rewind(&sink)
                    })
                    .await
                }
                Err(e) => Err(e),
            };
            // The dead letters and requeued events the previous deliverer shared.
            let adopted = match adopted {
                Ok(()) => remote.pull_letters(&self.journal, &name).await,
                Err(e) => Err(e),
            };
            let mut letters = match adopted {
                Ok(snapshot) => snapshot,
                Err(e) => {
                    tracing::warn!(sink = %name, error = %e, "cannot adopt the shared cursor and dead letters; letting the lease go");
                    remote.release_lease(&name, revision).await;
                    tokio::time::sleep(LEASE_RENEW).await;
                    continue;
                }
            };
            let mut letters_shared = self.journal.letters_generation();
            tracing::info!(sink = %name, instance = %remote.instance(), "delivering: this receiver holds the sink's lease");
            remote.set_held(&name, true);
            self.stats.leased.store(1, Ordering::Relaxed);
            let (stop_tx, stop_rx) = watch::channel(false);
            let dispatch = self.run_owned(stop_rx);
            tokio::pin!(dispatch);
            let mut pushed = None;
            let stopping = loop {
                let must_stop = tokio::time::Instant::from_std(renewed + margin);
                tokio::select! {
                    _ = &mut dispatch => break false,
                    _ = shutdown.wait_for(|s| *s) => break true,
                    _ = tokio::time::sleep_until(must_stop) => {
                        tracing::warn!(sink = %name, "could not renew the sink's lease in time; delivery stops here (another receiver may take it)");
                        break false;
                    }
                    _ = tokio::time::sleep(LEASE_RENEW) => {}
                }
                if !remote.mirror_current(MIRROR_STALE) {
                    tracing::warn!(sink = %name, "this receiver's mirror is behind the shared journal; letting the sink's lease go");
                    break false;
                }
                // Renew first; the cursor is written back only while the lease is ours. While
                // this body runs the dispatcher's lanes keep delivering, so each step is bounded
                // by the time left before delivery must stop.
                let left = must_stop.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, remote.renew_lease(&name, revision)).await {
                    Ok(Some(r)) => {
                        revision = r;
                        renewed = Instant::now();
                    }
                    _ => {
                        tracing::warn!(sink = %name, "lost the sink's lease (another receiver may hold it now); delivery stops here");
                        break false;
                    }
                }
                let left = (renewed + margin).saturating_duration_since(Instant::now());
                let shared = self
                    .share_state(
                        &remote,
                        &name,
                        &mut letters,
                        &mut letters_shared,
                        &mut pushed,
                        left,
                    )
                    .await;
                if !shared {
                    tracing::warn!(sink = %name, "sharing the cursor and dead letters timed out (retried)");
                }
            };
            let _ = stop_tx.send(true);
            dispatch.await;
            remote.set_held(&name, false);
            self.stats.leased.store(0, Ordering::Relaxed);
            if renewed.elapsed() < margin {
                // Still ours: write the final cursor, then let the next receiver take over at
                // once instead of after the lease's expiry.
                let left = (renewed + margin).saturating_duration_since(Instant::now());
                if self
                    .share_state(
                        &remote,
                        &name,
                        &mut letters,
                        &mut letters_shared,
                        &mut pushed,
                        left,
                    )
                    .await
                {
                    remote.release_lease(&name, revision).await;
                }
            }
            if stopping || shutdown.has_changed().is_err() {
                return;
            }
        }
    }

    /// Shares the sink's dead letters, then (only if they were shared) its cursor, within
    /// `within`: a cursor shared past an event whose dead letter was not would lose it for the
    /// next deliverer. False when it did not finish in time.
    #[cfg(feature = "jetstream")]
    async fn share_state(
        &self,
        remote: &crate::jetstream::Remote,
        name: &str,
        letters: &mut crate::jetstream::LetterSnapshot,
        letters_shared: &mut u64,
        pushed: &mut Option<u64>,
        within: Duration,
    ) -> bool {
        let share = async {
            if self
                .push_letters(remote, name, letters, letters_shared)
                .await
            {
                self.push_cursor(remote, name, pushed).await;
            }
        };
        tokio::time::timeout(within, share).await.is_ok()
    }

    /// Shares the sink's dead letters and requeued events when they changed (any change in
    /// this journal bumps the generation; an unchanged one costs nothing). False when they
    /// could not be shared: the cursor is then not shared either.
    #[cfg(feature = "jetstream")]
    async fn push_letters(
        &self,
        remote: &crate::jetstream::Remote,
        name: &str,
        snapshot: &mut crate::jetstream::LetterSnapshot,
        shared: &mut u64,
    ) -> bool {
        let generation = self.journal.letters_generation();
        if generation == *shared {
            return true;
        }
        match remote.push_letters(&self.journal, name, snapshot).await {
            Ok(()) => {
                *shared = generation;
                true
            }
            Err(e) => {
                tracing::warn!(sink = %name, error = %e, "cannot share the dead letters (retried; the cursor waits)");
                false
            }
        }
    }

    #[cfg(feature = "jetstream")]
    async fn push_cursor(
        &self,
        remote: &crate::jetstream::Remote,
        name: &str,
        pushed: &mut Option<u64>,
    ) {
        let sink = name.to_owned();
        match blocking(&self.journal, move |j| j.cursor(&sink)).await {
            Ok(seq) if *pushed != Some(seq) => match remote.put_cursor(name, seq).await {
                Ok(()) => *pushed = Some(seq),
                Err(e) => {
                    tracing::warn!(sink = %name, error = %e, "cannot write the shared cursor")
                }
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(sink = %name, error = %e, "cannot read the local cursor"),
        }
    }

    async fn run_owned(&self, mut shutdown: watch::Receiver<bool>) {
        let name = self.sink.name().to_owned();
        // Unregistered when dropped: when this returns, and when its task is aborted.
        let _registration = self.journal.register_dispatcher(&name);
        let mut resume = if self.sink.concurrency() <= 1 {
            self.sink.delivered_through().await
        } else {
            None
        };
        let mut wait = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            match self.run_inner(&mut shutdown, resume.take()).await {
                Ok(()) => break,
                Err(e) => {
                    if started.elapsed() > Duration::from_secs(60) {
                        wait = Duration::from_millis(100);
                    }
                    self.stats.journal_errors.fetch_add(1, Ordering::Relaxed);
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
        let (mut start, rewind) = blocking(&self.journal, {
            let name = name.clone();
            move |j| Ok((j.cursor(&name)?, j.rewind(&name)?))
        })
        .await?;
        // A replay moved the cursor back while no dispatcher ran: tell the sink before
        // anything, and do not resume after what it held.
        let resume_after = match rewind {
            Some(seq) => {
                // The replay stands even if a running dispatcher saved a later cursor since.
                if seq < start {
                    start = seq;
                    self.persist(&name, start).await?;
                }
                self.apply_rewind(&name, seq).await?;
                None
            }
            None => resume_after,
        };
        if let Some(held) = resume_after
            && held.seq >= start
        {
            // Trust it only if this journal holds that very event (same seq, same id).
            let seq = held.seq;
            let stored = blocking(&self.journal, move |j| j.get(seq)).await?;
            let same = stored
                .and_then(|e| e.envelope().ok())
                .is_some_and(|e| e.id.0 == held.id);
            if same {
                tracing::info!(sink = %name, cursor = start, resume = held.seq + 1, "the sink already holds what the cursor would deliver again; resuming after it");
                start = held.seq + 1;
                self.persist(&name, start).await?;
            } else {
                tracing::warn!(sink = %name, held = held.seq, id = %held.id, "the sink's recorded position names an event this journal does not hold (another data directory?); ignoring it");
            }
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
                    let cursor = pending.first().copied().unwrap_or(next);
                    self.persist(&name, cursor).await?;
                    return Ok(());
                }
                if let Some((seq, ack)) = self.journal.take_replay(&name) {
                    tasks.abort_all();
                    self.persist(&name, seq).await?;
                    self.apply_rewind(&name, seq).await?;
                    tracing::info!(sink = %name, from = seq, "replay");
                    let _ = ack.send(());
                    start = seq;
                    continue 'generation;
                }

                // Fill the window from the journal.
                'fill: while pending.len() + requeued_in_flight.len() < self.window {
                    let want = (self.window - pending.len() - requeued_in_flight.len()).min(256);
                    let records =
                        blocking(&self.journal, move |j| j.read_records(next, want)).await?;
                    if records.is_empty() {
                        break;
                    }
                    for record in records {
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
                    blocking(&self.journal, move |j| j.requeued(&name, 64)).await?
                };
                for letter in letters {
                    if requeued_in_flight.contains(&letter.seq) {
                        continue;
                    }
                    match delivery_of_letter(&letter) {
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
                            blocking(&self.journal, move |j| j.finish_requeued(&name, seq)).await?;
                        }
                    }
                }

                // Persist the cursor at most every 200 ms (busy or idle: a commit per event
                // at low rates would double the fsyncs and hold the journal's writer), and on
                // stop. A crash repeats at most those 200 ms of deliveries (at least once; the
                // file sink's position skips what it holds).
                let cursor = pending.first().copied().unwrap_or(next);
                let persist_due = last_persist + PERSIST_EVERY;
                if cursor != persisted && Instant::now() >= persist_due {
                    self.persist(&name, cursor).await?;
                    persisted = cursor;
                    last_persist = Instant::now();
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
                if pending.is_empty() && requeued_in_flight.is_empty() && !idle_flushed {
                    idle_flushed = true;
                    if let Err(e) = self.sink.flush().await {
                        tracing::warn!(sink = %name, error = %e, "flush failed");
                    }
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
                    _ = tokio::time::sleep_until(persist_due.into()), if pending.first().copied().unwrap_or(next) != persisted => {}
                }
            }
        }
    }

    /// Tells the sink it was moved back to `seq`, then forgets the journal's rewind record.
    /// A sink that cannot forget its position yet (an I/O error) is retried like a journal
    /// error: resuming after a stale position would skip the replay.
    async fn apply_rewind(&self, name: &str, seq: u64) -> Result<(), JournalError> {
        self.sink
            .rewound(seq)
            .await
            .map_err(|e| JournalError::Write(format!("sink {name:?} cannot rewind: {e}")))?;
        let name = name.to_owned();
        blocking(&self.journal, move |j| j.clear_rewind(&name)).await
    }

    async fn persist(&self, name: &str, cursor: u64) -> Result<(), JournalError> {
        let name = name.to_owned();
        blocking(&self.journal, move |j| j.set_cursor(&name, cursor)).await?;
        self.stats.cursor.store(cursor, Ordering::Relaxed);
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
        blocking(&self.journal, move |j| j.dead_letter(&letter)).await?;
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

fn delivery_of_letter(letter: &DeadLetter) -> Option<Delivery> {
    let envelope = serde_json::from_str(&letter.envelope).ok()?;
    Some(Delivery {
        json: crate::journal::one_line(&letter.envelope),
        body: letter.body.clone(),
        envelope,
        attempt: 1,
        requeued: true,
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

async fn blocking<T: Send + 'static>(
    journal: &Journal,
    f: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || f(&journal))
        .await
        .map_err(|e| JournalError::Read(format!("journal task failed: {e}")))?
}

/// How often a dispatcher persists its cursor (at most).
const PERSIST_EVERY: Duration = Duration::from_millis(200);

/// The most jobs a lane hands its sink in one [`Sink::send_batch`].
const LANE_BATCH: usize = 256;

async fn lane(
    mut rx: mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Done>,
    sink: Arc<dyn Sink>,
    journal: Journal,
    policy: RetryPolicy,
    stats: Arc<SinkStats>,
) {
    let finish = |job: &Job| {
        let (done, journal, name, seq, requeued) = (
            done.clone(),
            journal.clone(),
            sink.name().to_owned(),
            job.seq,
            job.requeued,
        );
        async move {
            if requeued {
                // If this fails the letter is delivered again later: at least once.
                let _ = blocking(&journal, move |j| j.finish_requeued(&name, seq)).await;
                let _ = done.send(Done::Requeued(seq));
            } else {
                let _ = done.send(Done::Event(seq));
            }
        }
    };
    while let Some(first) = rx.recv().await {
        // What is already waiting goes as one batch: one hand-off to the sink for many events.
        let mut jobs = vec![first];
        while jobs.len() < LANE_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Only a sink that writes a batch at once gets one (each of its sends would be as
        // quick as the batch); others get each event on its own, under its own time limit.
        // A batching sink bounds its own time (a local write: a timeout could not say which
        // lines were written, and sending them again would write them twice).
        let (delivered, failure) = if jobs.len() == 1 || !sink.batches() {
            (0, None)
        } else {
            let batch: Vec<&Delivery> = jobs.iter().map(|j| &j.delivery).collect();
            match sink.send_batch(&batch).await {
                Ok(()) => (jobs.len(), None),
                Err((n, e)) => (n.min(jobs.len()), Some(e)),
            }
        };
        for job in &jobs[..delivered] {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            stats.rate.add();
            finish(job).await;
        }
        let mut failure = failure;
        for job in &mut jobs[delivered..] {
            deliver(job, &*sink, &journal, &policy, &stats, failure.take()).await;
            finish(job).await;
        }
    }
}

/// Delivers one job, retrying with backoff; `first` is the error of a first attempt already
/// made (in a batch), if any.
async fn deliver(
    job: &mut Job,
    sink: &dyn Sink,
    journal: &Journal,
    policy: &RetryPolicy,
    stats: &SinkStats,
    mut first_error: Option<SinkError>,
) {
    let first = Instant::now();
    let mut attempt = 1;
    loop {
        job.delivery.attempt = attempt;
        let result = match first_error.take() {
            Some(e) => Err(e),
            None => {
                match tokio::time::timeout(policy.send_timeout, sink.send(&job.delivery)).await {
                    Ok(r) => r,
                    Err(_) => Err(SinkError::retryable(format!(
                        "timed out after {:?}",
                        policy.send_timeout
                    ))),
                }
            }
        };
        let error = match result {
            Ok(()) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                stats.rate.add();
                if attempt > 1 {
                    stats.activity().record(Attempt {
                        seq: job.seq,
                        attempt,
                        at_ms: now_ms(),
                        outcome: "delivered",
                        error: None,
                    });
                }
                return;
            }
            Err(e) => e,
        };
        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let give_up = !error.is_retryable()
            || attempt >= policy.max_attempts
            || first.elapsed() >= policy.max_age;
        stats.activity().record(Attempt {
            seq: job.seq,
            attempt,
            at_ms: now_ms(),
            outcome: if give_up { "dead" } else { "failed" },
            error: Some(error.to_string()),
        });
        if give_up {
            tracing::warn!(sink = %sink.name(), seq = job.seq, id = %job.delivery.envelope.id, attempts = attempt, error = %error, "dead-lettered");
            let letter = DeadLetter {
                sink: sink.name().to_owned(),
                seq: job.seq,
                id: job.delivery.envelope.id.0.clone(),
                error: error.to_string(),
                attempts: attempt,
                failed_at: humantime::format_rfc3339_millis(std::time::SystemTime::now())
                    .to_string(),
                envelope: serde_json::to_string(&job.delivery.envelope).unwrap_or_default(),
                body: job.delivery.body.clone(),
            };
            // The dead letter must be stored before the event counts as passed.
            let mut wait = policy.initial_backoff;
            loop {
                let l = letter.clone();
                match blocking(journal, move |j| j.dead_letter(&l)).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(sink = %sink.name(), seq = job.seq, error = %e, "cannot store a dead letter; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(policy.max_backoff);
                    }
                }
            }
            stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let hint = match &error {
            SinkError::Retryable { retry_after, .. } => *retry_after,
            _ => None,
        };
        let wait = policy.backoff(attempt, hint);
        tracing::debug!(sink = %sink.name(), seq = job.seq, attempt, error = %error, retry_in = ?wait, "delivery failed; will retry");
        {
            let _retrying = Gauge::up(&stats.retrying);
            let _shown = Waiting::new(
                stats,
                job.seq,
                Retrying {
                    attempts: attempt,
                    next_at_ms: now_ms() + wait.as_millis() as u64,
                    error: error.to_string(),
                },
            );
            tokio::time::sleep(wait).await;
        }
        attempt += 1;
    }
}

/// Shows an event as waiting for a retry while alive (so a cancelled wait leaves nothing).
struct Waiting<'a> {
    stats: &'a SinkStats,
    seq: u64,
}

impl<'a> Waiting<'a> {
    fn new(stats: &'a SinkStats, seq: u64, retrying: Retrying) -> Self {
        stats.activity().retrying.insert(seq, retrying);
        Waiting { stats, seq }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.stats.activity().retrying.remove(&self.seq);
    }
}

/// Holds a gauge up while alive, so a cancelled wait cannot leave it counted.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
