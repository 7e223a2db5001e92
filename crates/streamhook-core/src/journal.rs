//! The durable journal: an append-only log of accepted events in a redb database, with each
//! resource's history, each sink's cursor, dead letters and requeued events beside it.
//!
//! [`Journal::append`] returns only after the event and the history update it implies are
//! committed with `Durability::Immediate` (fsync'd). Appends go through one writer thread that
//! takes every request waiting in its queue and commits them in one transaction (group
//! commit): one fsync per batch, so throughput does not collapse to one fsync per request.
//! Classification happens in that transaction, so history and events never disagree, and
//! concurrent payloads of one stream are classified in the order they are journaled.
//!
//! Tables (all in `journal.redb`):
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `events` | seq (u64) | [record](encode_record): received-at, the body's outer whitespace, envelope JSON |
//! | `history` | `"stream:12345"` | updated-at in ms (u64), then [`ResourceState`] JSON |
//! | `meta` | `"next_seq"`, `"probe"` | u64 |
//! | `cursors` | sink name | next seq the sink has not passed |
//! | `dead_letters` | (sink, seq) | [`DeadLetter`] JSON |
//! | `requeued` | (sink, seq) | [`DeadLetter`] JSON |
//! | `rewinds` | sink name | the seq a replay moved the sink back to, until its dispatcher told the sink |
//!
//! Health: the writer records whether its last commit (a batch of appends, or a probe)
//! succeeded, and that it runs; [`Journal::health`] reads both without touching the database,
//! so a readiness check is cheap and sees a full disk or a dead writer at once. Only the
//! writer's commits count: a small cursor commit that squeezes onto a nearly full disk says
//! nothing about whether appends can. While unhealthy, a prober thread asks the writer for a
//! one-key commit every second (and a readiness check may [ask](Journal::probe) at once), so
//! health returns as soon as a commit can succeed again, with or without traffic.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use streamhook_types::classify::classify_with;
use streamhook_types::{Envelope, EventId, EventKind, Problem, Resource, ResourceState, Webhook};
use tokio::sync::{mpsc, oneshot, watch};

use crate::source::Verified;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("history");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
const DEAD_LETTERS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead_letters");
const REQUEUED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("requeued");
const REWINDS: TableDefinition<&str, u64> = TableDefinition::new("rewinds");
/// How each request arrived (peer, rule, headers), for the console; never sent to sinks.
const REQUESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("requests");
/// The first seq each sink was given (its cursor when created, lowered by replays).
const SINK_STARTS: TableDefinition<&str, u64> = TableDefinition::new("sink_starts");

/// How far ahead of the clock the newest event's receive time may be and still be carried
/// forward (a clock that stepped back); beyond it the stored time is taken for a corrupt
/// record or a clock that had jumped ahead, and not followed.
const MAX_CLOCK_STEP_BACK: Duration = Duration::from_secs(24 * 3600);

const NEXT_SEQ: &str = "next_seq";
const PROBE: &str = "probe";

/// The file inside the data directory.
pub const JOURNAL_FILE: &str = "journal.redb";

/// How the journal is opened.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// The data directory; created if missing.
    pub dir: PathBuf,
    /// Appends waiting for the writer beyond which [`Journal::append`] answers
    /// [`JournalError::Busy`] at once (load shedding).
    pub queue: usize,
    /// The most appends committed in one transaction.
    pub max_batch: usize,
    /// Memory redb may use to cache pages. Its own default (1 GiB) would let the process
    /// grow with the data written; recent pages stay in the OS page cache anyway.
    pub cache_bytes: usize,
}

impl JournalConfig {
    /// Defaults for a data directory: a queue of 4096 appends, batches of up to 1024, a
    /// 16 MiB page cache.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            queue: 4096,
            max_batch: 1024,
            cache_bytes: 16 * 1024 * 1024,
        }
    }
}

/// What can go wrong with the journal.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The journal could not be opened.
    #[error("cannot open the journal at {path}: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Writing failed (a full disk, an I/O error); nothing of the batch was stored.
    #[error("the journal cannot write: {0}")]
    Write(String),
    /// Reading failed.
    #[error("the journal cannot read: {0}")]
    Read(String),
    /// Too many appends are waiting; try again shortly.
    #[error("the journal is busy; try again shortly")]
    Busy,
    /// The journal was closed.
    #[error("the journal is closed")]
    Closed,
    /// A stored record could not be read back.
    #[error("corrupt record at seq {seq}: {message}")]
    Corrupt {
        /// Where.
        seq: u64,
        /// Why.
        message: String,
    },
    /// A replay asked to start after the newest event.
    #[error("cannot replay from seq {from}: the newest event is seq {last}")]
    ReplayPastEnd {
        /// The seq asked for.
        from: u64,
        /// The newest seq held.
        last: u64,
    },
    /// An event the journal does not hold (never written, or pruned).
    #[error("the journal holds no event at seq {seq}")]
    NoSuchEvent {
        /// The seq.
        seq: u64,
    },
    /// The event is already queued to be delivered again to the sink.
    #[error("event {seq} is already queued for sink {sink:?}; wait until it is delivered")]
    AlreadyQueued {
        /// The sink.
        sink: String,
        /// The seq.
        seq: u64,
    },
    /// A dead letter that does not exist.
    #[error("no dead letter for sink {sink:?} at seq {seq}")]
    NoSuchDeadLetter {
        /// The sink.
        sink: String,
        /// The seq.
        seq: u64,
    },
}

fn write_err(e: impl std::fmt::Display) -> JournalError {
    JournalError::Write(e.to_string())
}

fn read_err(e: impl std::fmt::Display) -> JournalError {
    JournalError::Read(e.to_string())
}

/// What intake hands the journal: a webhook the model understood, or JSON that does not fit
/// it (kept with the kind `invalid`, its resource as far as it can be read, and its
/// problems). An invalid event never changes a resource's history.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A webhook the typed model reads.
    Webhook(Webhook),
    /// JSON that the typed model does not read.
    Invalid {
        /// The resource, when its type and id are readable.
        resource: Resource,
        /// What does not fit, first problem first.
        problems: Vec<Problem>,
    },
}

impl From<Webhook> for Parsed {
    fn from(webhook: Webhook) -> Self {
        Parsed::Webhook(webhook)
    }
}

/// What an append stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The event's stable id.
    pub id: EventId,
    /// Its journal position.
    pub seq: u64,
    /// What it means, given the resource's history.
    pub kinds: Vec<EventKind>,
}

/// One journaled event as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its journal position.
    pub seq: u64,
    /// When it was accepted, in ms since the Unix epoch.
    pub received_at_ms: u64,
    /// The envelope as stored (its payload is the body without outer whitespace).
    pub json: String,
    /// Whitespace the request body had before its JSON.
    pub body_prefix: String,
    /// Whitespace the request body had after its JSON.
    pub body_suffix: String,
}

impl StoredEvent {
    /// The typed envelope.
    pub fn envelope(&self) -> Result<Envelope, JournalError> {
        serde_json::from_str(&self.json).map_err(|e| JournalError::Corrupt {
            seq: self.seq,
            message: e.to_string(),
        })
    }

    /// The envelope on one line (NDJSON): raw newlines can only be whitespace between JSON
    /// tokens (inside strings they are escaped), so they become spaces.
    pub fn json_line(&self) -> String {
        one_line(&self.json)
    }

    /// The request body exactly as Gcore sent it.
    pub fn body(&self, envelope: &Envelope) -> String {
        let mut body = String::with_capacity(
            self.body_prefix.len() + envelope.payload.get().len() + self.body_suffix.len(),
        );
        body.push_str(&self.body_prefix);
        body.push_str(envelope.payload.get());
        body.push_str(&self.body_suffix);
        body
    }
}

/// JSON on one line: raw CR and LF become spaces (they can only be whitespace).
pub fn one_line(json: &str) -> String {
    if memchr::memchr2(b'\n', b'\r', json.as_bytes()).is_some() {
        json.replace(['\n', '\r'], " ")
    } else {
        json.to_owned()
    }
}

/// [`one_line`], keeping the string when it already is one line (no copy).
pub fn one_line_owned(json: String) -> String {
    if memchr::memchr2(b'\n', b'\r', json.as_bytes()).is_some() {
        json.replace(['\n', '\r'], " ")
    } else {
        json
    }
}

/// How a request arrived, as [`Journal::append_received`] kept it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// The TCP peer (a trusted proxy when it differs from `client`).
    pub peer: IpAddr,
    /// The client address the source check decided on.
    pub client: IpAddr,
    /// The allowlist entry that admitted the client.
    pub rule: Option<String>,
    /// The request's headers, in order, as received (bounded by the caller).
    pub headers: Vec<(String, String)>,
}

/// An event a sink gave up on, with the last error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The sink that failed.
    pub sink: String,
    /// The event's seq.
    pub seq: u64,
    /// The event's id.
    pub id: String,
    /// The last error.
    pub error: String,
    /// How many deliveries were tried.
    pub attempts: u32,
    /// When it was dead-lettered (RFC 3339).
    pub failed_at: String,
    /// The envelope, so the event can be requeued after the journal pruned it.
    pub envelope: String,
    /// The request body exactly as received.
    pub body: String,
}

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// From this seq on.
    Seq(u64),
    /// From the first event received at or after this time.
    Time(SystemTime),
}

/// Counters the server's `/metrics` reads.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// History records that could not be read (the resource was classified as new).
    pub history_corrupt: AtomicU64,
    /// Resource histories dropped after `history_max_age` idle.
    pub history_pruned: AtomicU64,
    /// Times the stored receive time was too far ahead of the clock to carry forward.
    pub clock_reset: AtomicU64,
    /// Events appended.
    pub appended: AtomicU64,
    /// Replicated journal: messages of the shared stream the mirror could not read (kept as
    /// unreadable records, dead-lettered by each sink).
    pub import_unreadable: AtomicU64,
    /// Replicated journal: messages the shared stream holds that this receiver's mirror does
    /// not yet (as its consumer last reported).
    pub mirror_pending: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Failed commits.
    pub write_errors: AtomicU64,
    /// Appends refused because the queue was full.
    pub busy: AtomicU64,
    /// Commit latency histogram: counts per bucket of [`COMMIT_BUCKETS`], plus +Inf.
    pub commit_latency: [AtomicU64; COMMIT_BUCKETS.len() + 1],
    /// Sum of commit latencies in microseconds.
    pub commit_latency_sum_us: AtomicU64,
}

/// Upper bounds, in seconds, of the commit latency histogram's buckets.
pub const COMMIT_BUCKETS: [f64; 10] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0];

impl JournalStats {
    fn observe_commit(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = COMMIT_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(COMMIT_BUCKETS.len());
        self.commit_latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.commit_latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.commits.fetch_add(1, Ordering::Relaxed);
    }
}

struct AppendRequest {
    parsed: Parsed,
    payload: Box<RawValue>,
    prefix: String,
    suffix: String,
    source: IpAddr,
    received: Option<Vec<u8>>,
    reply: oneshot::Sender<Result<Appended, JournalError>>,
}

enum Msg {
    Append(Box<AppendRequest>),
    /// Records a replicated journal's mirror copies from the shared stream, with their seqs.
    #[cfg(feature = "jetstream")]
    Import(
        Vec<(u64, bytes::Bytes)>,
        oneshot::Sender<Result<u64, JournalError>>,
    ),
    /// A one-key commit, to learn whether the journal can write again.
    Probe,
    /// Test only: the writer panics, as a bug would make it.
    Panic,
    Close(oneshot::Sender<()>),
}

/// Whether the journal can take events now, as [`Journal::health`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The writer runs and the last commit succeeded.
    Writable,
    /// The last commit failed (a full disk, an I/O error), with its error.
    CannotWrite(String),
    /// The writer thread is gone (it panicked): nothing can be journaled until a restart.
    WriterDead,
    /// The journal was closed.
    Closed,
}

impl Health {
    /// Whether events can be journaled.
    pub fn is_writable(&self) -> bool {
        matches!(self, Health::Writable)
    }
}

/// What the writer and every committer record for [`Journal::health`].
#[derive(Debug)]
struct HealthState {
    writer_alive: AtomicBool,
    commit_failed: AtomicBool,
    last_error: Mutex<String>,
    /// Test only: the next N commits fail as an I/O error would.
    inject_failures: AtomicU64,
}

impl HealthState {
    /// Commits (failing instead when a test injected a failure). Only the writer records the
    /// outcome as health.
    fn commit(&self, txn: redb::WriteTransaction) -> Result<(), JournalError> {
        let injected = self
            .inject_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if injected {
            let _ = txn.abort();
            Err(JournalError::Write("injected I/O error (test)".into()))
        } else {
            txn.commit().map_err(write_err)
        }
    }

    fn record<T>(&self, result: &Result<T, JournalError>) {
        match result {
            Ok(_) => self.commit_failed.store(false, Ordering::SeqCst),
            Err(e) => {
                if let Ok(mut last) = self.last_error.lock() {
                    *last = e.to_string();
                }
                self.commit_failed.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// A dispatcher's registration; dropping it unregisters that dispatcher (not a newer one of
/// the same sink started meanwhile).
pub(crate) struct Registration {
    shared: Arc<Shared>,
    id: u64,
    sink: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let last = match self.shared.dispatching.lock() {
            Ok(mut d) => {
                d.retain(|(_, i)| *i != self.id);
                !d.iter().any(|(s, _)| *s == self.sink)
            }
            Err(_) => false,
        };
        // No dispatcher of this sink is left to apply a pending replay: drop it from memory
        // (its durable cursor and rewind apply at the sink's next start), so it cannot pin
        // pruning for ever.
        if last && let Ok(mut r) = self.shared.replays.lock() {
            r.remove(&self.sink);
        }
    }
}

/// Marks the writer dead when its thread ends, however it ends (a panic included).
struct WriterAlive<'a>(&'a AtomicBool);

impl Drop for WriterAlive<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The journal. Cheap to clone; all clones share one database and one writer.
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    /// Set when the journal is a replica of a JetStream stream: appends go there.
    #[cfg(feature = "jetstream")]
    remote: Option<Arc<crate::jetstream::Remote>>,
}

impl std::ops::Deref for Inner {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// What the handles and the writer thread share. The writer holds no sender, so when the last
/// [`Journal`] handle goes, its queue closes and it stops.
#[derive(Debug)]
struct Shared {
    path: PathBuf,
    cache_bytes: usize,
    closed: AtomicBool,
    db: RwLock<Option<Arc<Database>>>,
    /// The last committed seq; bumped on every commit, replay and requeue to wake dispatchers.
    changed: watch::Sender<u64>,
    stats: JournalStats,
    health: HealthState,
    /// Replays waiting for a running dispatcher to apply them, by sink.
    replays: Mutex<HashMap<String, (u64, oneshot::Sender<()>)>>,
    /// Sinks with a running dispatcher, with the registration's id.
    dispatching: Mutex<Vec<(String, u64)>>,
    next_registration: AtomicU64,
    /// Bumped by every change to dead letters or requeued events (a replicated journal's
    /// deliverer shares them when it changes).
    letters_changed: AtomicU64,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Journal {
    /// Opens (or creates) the journal in `config.dir` and starts its writer thread.
    pub fn open(config: JournalConfig) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(&config.dir).map_err(|e| JournalError::Open {
            path: config.dir.clone(),
            message: e.to_string(),
        })?;
        let path = config.dir.join(JOURNAL_FILE);
        let db = open_db(&path, config.cache_bytes)?;
        let last = last_seq_in(&db)?;
        let last_ms = last_received_ms(&db)?;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let (changed, _) = watch::channel(last);
        let shared = Arc::new(Shared {
            path,
            cache_bytes: config.cache_bytes,
            closed: AtomicBool::new(false),
            db: RwLock::new(Some(Arc::new(db))),
            changed,
            stats: JournalStats::default(),
            health: HealthState {
                writer_alive: AtomicBool::new(true),
                commit_failed: AtomicBool::new(false),
                last_error: Mutex::new(String::new()),
                inject_failures: AtomicU64::new(0),
            },
            replays: Mutex::new(HashMap::new()),
            dispatching: Mutex::new(Vec::new()),
            next_registration: AtomicU64::new(1),
            letters_changed: AtomicU64::new(0),
        });
        let writer = Arc::clone(&shared);
        let max_batch = config.max_batch.max(1);
        // While unhealthy, ask the writer for a probe every second, so health returns without
        // traffic and without anyone polling. The prober holds only a weak sender: it never
        // keeps the writer's queue open.
        let weak = tx.downgrade();
        let prober = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("streamhook-journal-probe".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let Some(tx) = weak.upgrade() else { return };
                    if prober.health.commit_failed.load(Ordering::SeqCst) {
                        let _ = tx.try_send(Msg::Probe);
                    }
                }
            });
        std::thread::Builder::new()
            .name("streamhook-journal".into())
            .spawn(move || {
                let _alive = WriterAlive(&writer.health.writer_alive);
                writer_loop(&writer, rx, max_batch, last_ms);
            })
            .map_err(|e| JournalError::Open {
                path: config.dir.clone(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Journal {
            inner: Arc::new(Inner {
                tx,
                shared,
                #[cfg(feature = "jetstream")]
                remote: None,
            }),
        })
    }

    /// The same journal, its appends going to `remote` (the local file becomes its mirror).
    #[cfg(feature = "jetstream")]
    pub(crate) fn with_remote(self, remote: Arc<crate::jetstream::Remote>) -> Journal {
        Journal {
            inner: Arc::new(Inner {
                tx: self.inner.tx.clone(),
                shared: Arc::clone(&self.inner.shared),
                remote: Some(remote),
            }),
        }
    }

    /// The shared JetStream stream this journal mirrors, when it is replicated.
    #[cfg(feature = "jetstream")]
    pub(crate) fn remote(&self) -> Option<&Arc<crate::jetstream::Remote>> {
        self.inner.remote.as_ref()
    }

    /// Whether events are journaled in a shared JetStream stream (this file is its mirror).
    pub fn is_replicated(&self) -> bool {
        #[cfg(feature = "jetstream")]
        {
            self.inner.remote.is_some()
        }
        #[cfg(not(feature = "jetstream"))]
        {
            false
        }
    }

    /// A number kept in the journal's `meta` table.
    #[cfg(feature = "jetstream")]
    pub(crate) fn meta(&self, key: &str) -> Result<Option<u64>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        Ok(table.get(key).map_err(read_err)?.map(|v| v.value()))
    }

    /// Sets a number in the journal's `meta` table.
    #[cfg(feature = "jetstream")]
    pub(crate) fn set_meta(&self, key: &str, value: u64) -> Result<(), JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(META)
            .map_err(write_err)?
            .insert(key, value)
            .map_err(write_err)?;
        txn.commit().map_err(write_err)
    }

    /// Hands records copied from the shared stream to the writer; returns the last seq held.
    #[cfg(feature = "jetstream")]
    pub(crate) async fn import(
        &self,
        items: Vec<(u64, bytes::Bytes)>,
    ) -> Result<u64, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Import(items, reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &JournalStats {
        &self.inner.stats
    }

    /// Appends one verified webhook (or [invalid](Parsed::Invalid) JSON) and returns once it
    /// is on disk.
    ///
    /// `payload` must be the request body the webhook was decoded from; it is stored byte for
    /// byte. The receive time is stamped by the writer, never earlier than the previous
    /// event's, so `received_at` grows with `seq` even when the wall clock steps back. Fails at
    /// once with [`JournalError::Busy`] when the queue is full.
    pub async fn append(
        &self,
        source: Verified,
        payload: &[u8],
        parsed: impl Into<Parsed>,
    ) -> Result<Appended, JournalError> {
        self.append_with(source, payload, parsed, None).await
    }

    /// [`Journal::append`], keeping also how the request arrived: its peer, the allowlist
    /// rule that admitted it and its headers (read back by [`Journal::received`], in the same
    /// transaction as the event, pruned with it).
    pub async fn append_received(
        &self,
        source: Verified,
        payload: &[u8],
        parsed: impl Into<Parsed>,
        headers: Vec<(String, String)>,
    ) -> Result<Appended, JournalError> {
        let received = Received {
            peer: source.peer(),
            client: source.client(),
            rule: source.rule().map(|r| r.to_string()),
            headers,
        };
        let bytes = serde_json::to_vec(&received).map_err(write_err)?;
        self.append_with(source, payload, parsed, Some(bytes)).await
    }

    async fn append_with(
        &self,
        source: Verified,
        payload: &[u8],
        parsed: impl Into<Parsed>,
        received: Option<Vec<u8>>,
    ) -> Result<Appended, JournalError> {
        let text = std::str::from_utf8(payload)
            .map_err(|e| JournalError::Write(format!("payload is not UTF-8: {e}")))?;
        let is_ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
        let json = text.trim_matches(is_ws);
        let start = text.len() - text.trim_start_matches(is_ws).len();
        let (prefix, suffix) = (&text[..start], &text[start + json.len()..]);
        let payload = RawValue::from_string(json.to_owned())
            .map_err(|e| JournalError::Write(format!("payload is not JSON: {e}")))?;
        #[cfg(feature = "jetstream")]
        if let Some(remote) = &self.inner.remote {
            let appended = remote
                .append(crate::jetstream::Draft {
                    parsed: parsed.into(),
                    payload,
                    prefix: prefix.to_owned(),
                    suffix: suffix.to_owned(),
                    source: source.client(),
                    received,
                })
                .await?;
            // The stream holds it (a quorum acknowledged it); wait, briefly, until this
            // receiver's mirror does too, so what it shows and delivers includes it.
            let mut changed = self.subscribe();
            let seq = appended.seq;
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                changed.wait_for(|last| *last >= seq),
            )
            .await;
            return Ok(appended);
        }
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            parsed: parsed.into(),
            payload,
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
            source: source.client(),
            received,
            reply,
        };
        match self.inner.tx.try_send(Msg::Append(Box::new(request))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inner.stats.busy.fetch_add(1, Ordering::Relaxed);
                return Err(JournalError::Busy);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(JournalError::Closed),
        }
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Stops the writer after the appends already queued, waits for it, and closes the
    /// database file (so it can be opened again at once). Every handle fails afterwards.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
        self.inner.closed.store(true, Ordering::SeqCst);
        let shared = Arc::clone(&self.inner.shared);
        let _ = tokio::task::spawn_blocking(move || shared.release()).await;
    }

    /// A receiver that changes on every commit, replay and requeue (value: last seq).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn notify(&self) {
        self.inner.changed.send_modify(|_| {});
    }

    fn db(&self) -> Result<Arc<Database>, JournalError> {
        self.inner.db()
    }

    /// Whether the journal can take events, from what the last commit and the writer thread
    /// recorded: no database access, no lock held, so readiness checks may call it often.
    pub fn health(&self) -> Health {
        let h = &self.inner.health;
        #[cfg(feature = "jetstream")]
        if let Some(remote) = &self.inner.remote
            && !remote.connected()
            && !self.inner.closed.load(Ordering::SeqCst)
        {
            return Health::CannotWrite("not connected to any NATS server".into());
        }
        if self.inner.closed.load(Ordering::SeqCst) {
            Health::Closed
        } else if !h.writer_alive.load(Ordering::SeqCst) {
            Health::WriterDead
        } else if h.commit_failed.load(Ordering::SeqCst) {
            Health::CannotWrite(h.last_error.lock().map(|e| e.clone()).unwrap_or_default())
        } else {
            Health::Writable
        }
    }

    /// Asks the writer for a one-key commit, so that [`Journal::health`] learns whether the
    /// journal can write again. Returns at once; does nothing when the queue is full.
    pub fn probe(&self) {
        let _ = self.inner.tx.try_send(Msg::Probe);
    }

    /// Test only: the next `n` commits fail as an I/O error would.
    #[doc(hidden)]
    pub fn inject_commit_failures(&self, n: u64) {
        self.inner.health.inject_failures.store(n, Ordering::SeqCst);
    }

    /// Test only: the writer thread panics, as a bug in it would make it.
    #[doc(hidden)]
    pub fn inject_writer_panic(&self) {
        let _ = self.inner.tx.try_send(Msg::Panic);
    }

    /// The last committed seq (0 when empty).
    pub fn last_seq(&self) -> Result<u64, JournalError> {
        last_seq_in(&*self.db()?)
    }

    /// The last seq the writer committed, from memory (0 when empty): no database access.
    pub fn last_committed(&self) -> u64 {
        *self.inner.changed.borrow()
    }

    /// Up to `limit` events from `from` on, in seq order. A record that cannot be read fails
    /// the call with [`JournalError::Corrupt`]; [`Journal::read_records`] reads past it.
    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<StoredEvent>, JournalError> {
        self.read_records(from, limit)?.into_iter().collect()
    }

    /// Up to `limit` records from `from` on, in seq order, each read on its own: an
    /// unreadable record is an `Err` ([`JournalError::Corrupt`], with its seq) among the
    /// others, so a reader can deal with it and go on.
    pub fn read_records(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Result<StoredEvent, JournalError>>, JournalError> {
        self.read_range(from.., limit, false)
    }

    /// Up to `limit` records in `range`, oldest or newest first, each read on its own.
    fn read_range(
        &self,
        range: impl std::ops::RangeBounds<u64> + 'static,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<Result<StoredEvent, JournalError>>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(EVENTS).map_err(read_err)?;
        let entries = table.range::<u64>(range).map_err(read_err)?;
        let decode = |entry: Result<_, redb::StorageError>| -> Result<_, JournalError> {
            let (k, v): (redb::AccessGuard<u64>, redb::AccessGuard<&[u8]>) =
                entry.map_err(read_err)?;
            Ok(decode_event(k.value(), v.value()))
        };
        if newest_first {
            entries.rev().take(limit).map(decode).collect()
        } else {
            entries.take(limit).map(decode).collect()
        }
    }

    /// Up to `limit` records before `before`, newest first (each read on its own, as in
    /// [`Journal::read_records`]): the console pages backwards with it.
    pub fn read_back(
        &self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<Result<StoredEvent, JournalError>>, JournalError> {
        self.read_range(..before, limit, true)
    }

    /// How event `seq` arrived, if it was kept ([`Journal::append_received`]).
    pub fn received(&self, seq: u64) -> Result<Option<Received>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(REQUESTS).map_err(read_err)?;
        let Some(value) = table.get(seq).map_err(read_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|e| JournalError::Corrupt {
                seq,
                message: format!("request record: {e}"),
            })
    }

    /// One event by seq.
    pub fn get(&self, seq: u64) -> Result<Option<StoredEvent>, JournalError> {
        Ok(self.read_from(seq, 1)?.into_iter().find(|e| e.seq == seq))
    }

    /// Test only: stores raw bytes as the record of `seq`, as a corrupted file would hold.
    #[doc(hidden)]
    pub fn overwrite_record(&self, seq: u64, bytes: &[u8]) -> Result<(), JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(EVENTS)
            .map_err(write_err)?
            .insert(seq, bytes)
            .map_err(write_err)?;
        self.inner.health.commit(txn)
    }

    /// The number of events held.
    pub fn len(&self) -> Result<u64, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        txn.open_table(EVENTS)
            .map_err(read_err)?
            .len()
            .map_err(read_err)
    }

    /// Whether the journal holds no events.
    pub fn is_empty(&self) -> Result<bool, JournalError> {
        Ok(self.len()? == 0)
    }

    /// The first seq received at or after `time` (or the next seq to be written).
    pub fn seq_at(&self, time: SystemTime) -> Result<u64, JournalError> {
        let want = ms_since_epoch(time);
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(EVENTS).map_err(read_err)?;
        let first = table.first().map_err(read_err)?.map(|(k, _)| k.value());
        let last = table.last().map_err(read_err)?.map(|(k, _)| k.value());
        let (Some(mut lo), Some(last)) = (first, last) else {
            return Ok(1);
        };
        let time_of = |seq: u64| -> Result<Option<u64>, JournalError> {
            let next = table.range(seq..).map_err(read_err)?.next();
            match next {
                Some(entry) => {
                    let (_, v) = entry.map_err(read_err)?;
                    Ok(Some(header_ms(v.value())))
                }
                None => Ok(None),
            }
        };
        // Received-at grows with seq (one writer stamps both), so binary search on seq.
        let mut hi = last + 1;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match time_of(mid)? {
                Some(t) if t < want => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// The sink's cursor: the first seq it has not passed. A sink seen for the first time
    /// starts after the events already journaled (use [`Journal::replay`] for history).
    pub fn cursor(&self, sink: &str) -> Result<u64, JournalError> {
        let db = self.db()?;
        {
            let txn = db.begin_read().map_err(read_err)?;
            let cursors = txn.open_table(CURSORS).map_err(read_err)?;
            if let Some(v) = cursors.get(sink).map_err(read_err)? {
                return Ok(v.value());
            }
        }
        let start = last_seq_in(&db)? + 1;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(CURSORS)
            .map_err(write_err)?
            .insert(sink, start)
            .map_err(write_err)?;
        txn.open_table(SINK_STARTS)
            .map_err(write_err)?
            .insert(sink, start)
            .map_err(write_err)?;
        self.inner.health.commit(txn)?;
        Ok(start)
    }

    /// The first seq `sink` was given: events before it were journaled before the sink
    /// existed (and not replayed to it). None for sinks created before this was recorded.
    pub fn sink_start(&self, sink: &str) -> Result<Option<u64>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(SINK_STARTS).map_err(read_err)?;
        Ok(table.get(sink).map_err(read_err)?.map(|v| v.value()))
    }

    /// For each of `seqs`: whether `sink` holds it as a dead letter, and whether it is queued
    /// to be delivered again. Point lookups in one read, keys only.
    pub fn letter_flags(
        &self,
        sink: &str,
        seqs: &[u64],
    ) -> Result<Vec<(bool, bool)>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let dead = txn.open_table(DEAD_LETTERS).map_err(read_err)?;
        let requeued = txn.open_table(REQUEUED).map_err(read_err)?;
        seqs.iter()
            .map(|&seq| {
                Ok((
                    dead.get((sink, seq)).map_err(read_err)?.is_some(),
                    requeued.get((sink, seq)).map_err(read_err)?.is_some(),
                ))
            })
            .collect()
    }

    /// Moves a sink's cursor (durably). Used by the sink's dispatcher.
    pub fn set_cursor(&self, sink: &str, seq: u64) -> Result<(), JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(CURSORS)
            .map_err(write_err)?
            .insert(sink, seq)
            .map_err(write_err)?;
        self.inner.health.commit(txn)
    }

    /// Every sink's cursor.
    pub fn cursors(&self) -> Result<Vec<(String, u64)>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(CURSORS).map_err(read_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(read_err)? {
            let (k, v) = entry.map_err(read_err)?;
            out.push((k.value().to_owned(), v.value()));
        }
        Ok(out)
    }

    /// Re-delivers to `sink` everything from `from` on. Returns the seq it restarts at.
    ///
    /// A seq past the newest event is refused ([`JournalError::ReplayPastEnd`]): it would
    /// silently skip everything up to it. The cursor is moved durably first (so pruning never
    /// deletes what the replay is about to deliver); when the sink's dispatcher runs, it then
    /// applies the replay (dropping what it had in flight) before this returns.
    pub async fn replay(&self, sink: &str, from: ReplayFrom) -> Result<u64, JournalError> {
        let journal = self.clone();
        let name = sink.to_owned();
        let seq = tokio::task::spawn_blocking(move || -> Result<u64, JournalError> {
            let last = journal.last_seq()?;
            let seq = match from {
                ReplayFrom::Seq(s) if s > last + 1 => {
                    return Err(JournalError::ReplayPastEnd { from: s, last });
                }
                ReplayFrom::Seq(s) => s.max(1),
                ReplayFrom::Time(t) => journal.seq_at(t)?,
            };
            journal.set_rewind(&name, seq)?;
            Ok(seq)
        })
        .await
        .map_err(|e| JournalError::Write(format!("replay task failed: {e}")))??;
        let running = self
            .inner
            .dispatching
            .lock()
            .map(|d| d.iter().any(|(s, _)| s == sink))
            .unwrap_or(false);
        if !running {
            return Ok(seq);
        }
        let (done, wait) = oneshot::channel();
        if let Ok(mut replays) = self.inner.replays.lock() {
            replays.insert(sink.to_owned(), (seq, done));
        }
        self.notify();
        // The dispatcher applies it as soon as it can (a lane stuck on a slow delivery does not
        // hold it); if it has not within 30 s, the request stays pending for it, and the durable
        // cursor and rewind make any later start of the sink apply it too.
        let _ = tokio::time::timeout(Duration::from_secs(30), wait).await;
        Ok(seq)
    }

    /// Registers a running dispatcher of `sink`; it stays registered until the guard is
    /// dropped (however the dispatcher ends: returned, or aborted).
    pub(crate) fn register_dispatcher(&self, sink: &str) -> Registration {
        let id = self.inner.next_registration.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut d) = self.inner.dispatching.lock() {
            d.push((sink.to_owned(), id));
        }
        Registration {
            shared: Arc::clone(&self.inner.shared),
            id,
            sink: sink.to_owned(),
        }
    }

    /// The seq a replay moved `sink` back to, if its dispatcher has not yet told the sink.
    pub fn rewind(&self, sink: &str) -> Result<Option<u64>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(REWINDS).map_err(read_err)?;
        Ok(table.get(sink).map_err(read_err)?.map(|v| v.value()))
    }

    /// Forgets `sink`'s rewind once the sink has been told (see [`crate::Sink::rewound`]).
    pub fn clear_rewind(&self, sink: &str) -> Result<(), JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(REWINDS)
            .map_err(write_err)?
            .remove(sink)
            .map_err(write_err)?;
        self.inner.health.commit(txn)
    }

    /// Moves a sink's cursor back for a replay and records the rewind, in one transaction.
    fn set_rewind(&self, sink: &str, seq: u64) -> Result<(), JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(CURSORS)
            .map_err(write_err)?
            .insert(sink, seq)
            .map_err(write_err)?;
        {
            // A replay gives the sink what came before it too.
            let mut starts = txn.open_table(SINK_STARTS).map_err(write_err)?;
            let start = starts.get(sink).map_err(write_err)?.map(|v| v.value());
            if start.is_some_and(|s| s > seq) {
                starts.insert(sink, seq).map_err(write_err)?;
            }
        }
        txn.open_table(REWINDS)
            .map_err(write_err)?
            .insert(sink, seq)
            .map_err(write_err)?;
        self.inner.health.commit(txn)
    }

    pub(crate) fn has_replay(&self, sink: &str) -> bool {
        self.inner
            .replays
            .lock()
            .is_ok_and(|r| r.contains_key(sink))
    }

    pub(crate) fn take_replay(&self, sink: &str) -> Option<(u64, oneshot::Sender<()>)> {
        self.inner.replays.lock().ok()?.remove(sink)
    }

    /// Records that `sink` gave up on `event`.
    pub fn dead_letter(&self, letter: &DeadLetter) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(letter).map_err(write_err)?;
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(DEAD_LETTERS)
            .map_err(write_err)?
            .insert((letter.sink.as_str(), letter.seq), bytes.as_slice())
            .map_err(write_err)?;
        self.inner.health.commit(txn)?;
        self.letters_changed();
        Ok(())
    }

    fn letters_changed(&self) {
        self.inner.letters_changed.fetch_add(1, Ordering::SeqCst);
    }

    /// A number that changes with every change to dead letters or requeued events.
    pub fn letters_generation(&self) -> u64 {
        self.inner.letters_changed.load(Ordering::SeqCst)
    }

    /// Replaces `sink`'s dead letters and requeued events with these, in one transaction
    /// (a replicated journal's new deliverer adopting the shared ones).
    pub fn replace_letters(
        &self,
        sink: &str,
        dead: &[DeadLetter],
        requeued: &[DeadLetter],
    ) -> Result<(), JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        for (table, letters) in [(DEAD_LETTERS, dead), (REQUEUED, requeued)] {
            let mut table = txn.open_table(table).map_err(write_err)?;
            let old: Vec<u64> = table
                .range((sink, 0)..=(sink, u64::MAX))
                .map_err(write_err)?
                .filter_map(|e| e.ok().map(|(k, _)| k.value().1))
                .collect();
            for seq in old {
                table.remove((sink, seq)).map_err(write_err)?;
            }
            for letter in letters {
                let bytes = serde_json::to_vec(letter).map_err(write_err)?;
                table
                    .insert((sink, letter.seq), bytes.as_slice())
                    .map_err(write_err)?;
            }
        }
        self.inner.health.commit(txn)?;
        self.letters_changed();
        self.notify();
        Ok(())
    }

    /// How many dead letters `sink` holds: counts keys, decodes nothing.
    pub fn dead_letter_count(&self, sink: &str) -> Result<u64, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(DEAD_LETTERS).map_err(read_err)?;
        let mut n = 0;
        for entry in table
            .range((sink, 0)..=(sink, u64::MAX))
            .map_err(read_err)?
        {
            entry.map_err(read_err)?;
            n += 1;
        }
        Ok(n)
    }

    /// Dead letters, of one sink or all, in (sink, seq) order.
    pub fn dead_letters(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(DEAD_LETTERS).map_err(read_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(read_err)? {
            let (k, v) = entry.map_err(read_err)?;
            if sink.is_some_and(|s| s != k.value().0) {
                continue;
            }
            out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }

    /// `sink`'s dead letters for events `from..=to`, by seq.
    pub fn dead_letters_between(
        &self,
        sink: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<DeadLetter>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(DEAD_LETTERS).map_err(read_err)?;
        let mut out = Vec::new();
        for entry in table.range((sink, from)..=(sink, to)).map_err(read_err)? {
            let (_, v) = entry.map_err(read_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }

    /// Queues event `seq` for `sink` once more, as a requeued dead letter is (same id, the
    /// sink's cursor does not move): the console's "send again". A dead letter is requeued;
    /// an event already queued again is refused ([`JournalError::AlreadyQueued`]); one the
    /// journal no longer holds too ([`JournalError::NoSuchEvent`]).
    pub fn resend(&self, sink: &str, seq: u64) -> Result<(), JournalError> {
        let (dead, queued) = self.letter_flags(sink, &[seq])?[0];
        if queued {
            return Err(JournalError::AlreadyQueued {
                sink: sink.to_owned(),
                seq,
            });
        }
        if dead {
            // A dead letter goes back as it is (and stops being one).
            return self.requeue(sink, seq);
        }
        let event = self.get(seq)?.ok_or(JournalError::NoSuchEvent { seq })?;
        let envelope = event.envelope()?;
        let letter = DeadLetter {
            sink: sink.to_owned(),
            seq,
            id: envelope.id.0.clone(),
            error: "sent again from the console".to_owned(),
            attempts: 0,
            failed_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            body: event.body(&envelope),
            envelope: event.json,
        };
        let bytes = serde_json::to_vec(&letter).map_err(write_err)?;
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(REQUEUED)
            .map_err(write_err)?
            .insert((sink, seq), bytes.as_slice())
            .map_err(write_err)?;
        self.inner.health.commit(txn)?;
        self.letters_changed();
        self.notify();
        Ok(())
    }

    /// Moves a dead letter back to its sink's queue; it is delivered again (same id).
    pub fn requeue(&self, sink: &str, seq: u64) -> Result<(), JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        {
            let mut dead = txn.open_table(DEAD_LETTERS).map_err(write_err)?;
            let letter: DeadLetter = match dead.remove((sink, seq)).map_err(write_err)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(read_err)?,
                None => {
                    return Err(JournalError::NoSuchDeadLetter {
                        sink: sink.to_owned(),
                        seq,
                    });
                }
            };
            let bytes = serde_json::to_vec(&letter).map_err(write_err)?;
            txn.open_table(REQUEUED)
                .map_err(write_err)?
                .insert((sink, seq), bytes.as_slice())
                .map_err(write_err)?;
        }
        self.inner.health.commit(txn)?;
        self.letters_changed();
        self.notify();
        Ok(())
    }

    /// Requeued events waiting for `sink`, oldest first.
    pub fn requeued(&self, sink: &str, limit: usize) -> Result<Vec<DeadLetter>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(REQUEUED).map_err(read_err)?;
        let mut out = Vec::new();
        for entry in table
            .range((sink, 0)..=(sink, u64::MAX))
            .map_err(read_err)?
            .take(limit)
        {
            let (_, v) = entry.map_err(read_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }

    /// Removes a requeued event once handled (delivered or dead-lettered again).
    pub fn finish_requeued(&self, sink: &str, seq: u64) -> Result<(), JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(REQUEUED)
            .map_err(write_err)?
            .remove((sink, seq))
            .map_err(write_err)?;
        self.inner.health.commit(txn)?;
        self.letters_changed();
        Ok(())
    }

    /// The history the classifier keeps for a resource (`"stream:12345"`). A record that
    /// cannot be read is `None` (and counted in [`JournalStats::history_corrupt`]).
    pub fn history(&self, resource: &str) -> Result<Option<ResourceState>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(HISTORY).map_err(read_err)?;
        match table.get(resource).map_err(read_err)? {
            Some(v) => Ok(read_history(&self.inner.stats, resource, v.value())),
            None => Ok(None),
        }
    }

    /// Test only: stores raw bytes as a resource's history, as a corrupted file would hold.
    #[doc(hidden)]
    pub fn overwrite_history(&self, resource: &str, bytes: &[u8]) -> Result<(), JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(HISTORY)
            .map_err(write_err)?
            .insert(resource, bytes)
            .map_err(write_err)?;
        self.inner.health.commit(txn)
    }

    /// Deletes what retention allows, in one write transaction:
    /// - events every sink in `sinks` has passed (cursors read inside the transaction, and
    ///   replays waiting to be applied count as cursors), that are older than `max_age` or
    ///   beyond the newest `max_events`;
    /// - the history of every resource not updated for `history_max_age`.
    ///
    /// Returns how many events and histories were deleted.
    pub fn prune(
        &self,
        sinks: &[String],
        max_age: Option<Duration>,
        max_events: Option<u64>,
        history_max_age: Option<Duration>,
    ) -> Result<Pruned, JournalError> {
        let now_ms = ms_since_epoch(SystemTime::now());
        let cutoff = |age: Duration| now_ms.saturating_sub(age.as_millis() as u64);
        let pending_replay = self
            .inner
            .replays
            .lock()
            .ok()
            .and_then(|r| r.values().map(|(seq, _)| *seq).min())
            .unwrap_or(u64::MAX);
        let mut pruned = Pruned::default();
        if max_age.is_some() || max_events.is_some() {
            let db = self.db()?;
            let txn = db.begin_write().map_err(write_err)?;
            {
                let cursors = txn.open_table(CURSORS).map_err(write_err)?;
                let mut passed = pending_replay;
                for sink in sinks {
                    // A sink without a cursor has passed nothing yet.
                    let cursor = cursors.get(sink.as_str()).map_err(write_err)?;
                    passed = passed.min(cursor.map_or(0, |c| c.value()));
                }
                let next = txn
                    .open_table(META)
                    .map_err(write_err)?
                    .get(NEXT_SEQ)
                    .map_err(write_err)?
                    .map_or(1, |v| v.value());
                let keep_from_count = max_events.map_or(0, |n| next.saturating_sub(n));
                let cutoff_ms = max_age.map_or(0, cutoff);
                let mut table = txn.open_table(EVENTS).map_err(write_err)?;
                let removed = table
                    .extract_from_if(..passed, |seq, value| {
                        seq < keep_from_count || header_ms(value) < cutoff_ms
                    })
                    .map_err(write_err)?;
                let mut gone = Vec::new();
                for entry in removed {
                    let (seq, _) = entry.map_err(write_err)?;
                    gone.push(seq.value());
                    pruned.events += 1;
                }
                drop(table);
                // What arrived with exactly those events goes too.
                let mut requests = txn.open_table(REQUESTS).map_err(write_err)?;
                for seq in gone {
                    requests.remove(seq).map_err(write_err)?;
                }
            }
            self.inner.health.commit(txn)?;
        }
        if let Some(age) = history_max_age {
            pruned.histories = self.prune_histories(cutoff(age), now_ms)?;
        }
        Ok(pruned)
    }

    /// Drops histories last written before `cutoff_ms`, in transactions of at most
    /// [`HISTORY_CHUNK`] records, so appends never wait long behind it. Records written before
    /// histories carried a time are stamped `now_ms`, so they age from today instead of going
    /// at once.
    fn prune_histories(&self, cutoff_ms: u64, now_ms: u64) -> Result<u64, JournalError> {
        let mut dropped = 0;
        // Each chunk's scan goes on from where the last one stopped.
        let mut after: Option<String> = None;
        for _ in 0..HISTORY_CHUNKS_PER_RUN {
            let db = self.db()?;
            let (stale, unstamped, last_key) = {
                let txn = db.begin_read().map_err(read_err)?;
                let table = txn.open_table(HISTORY).map_err(read_err)?;
                let (mut stale, mut unstamped) = (Vec::new(), Vec::new());
                let mut last_key = None;
                let range = match &after {
                    Some(k) => table.range(k.as_str()..),
                    None => table.range::<&str>(..),
                }
                .map_err(read_err)?;
                for entry in range {
                    let (k, v) = entry.map_err(read_err)?;
                    if after.as_deref() == Some(k.value()) {
                        continue;
                    }
                    last_key = Some(k.value().to_owned());
                    match history_time(v.value()) {
                        Some(t) if t < cutoff_ms => stale.push(k.value().to_owned()),
                        Some(_) => {}
                        None => unstamped.push((k.value().to_owned(), v.value().to_vec())),
                    }
                    if stale.len() + unstamped.len() >= HISTORY_CHUNK {
                        break;
                    }
                }
                (stale, unstamped, last_key)
            };
            if stale.is_empty() && unstamped.is_empty() {
                break;
            }
            let full = stale.len() + unstamped.len() >= HISTORY_CHUNK;
            after = last_key;
            let txn = db.begin_write().map_err(write_err)?;
            {
                let mut table = txn.open_table(HISTORY).map_err(write_err)?;
                for key in &stale {
                    // Written again since it was read? Then it stays.
                    let still_stale = table
                        .get(key.as_str())
                        .map_err(write_err)?
                        .and_then(|v| history_time(v.value()))
                        .is_some_and(|t| t < cutoff_ms);
                    if still_stale {
                        table.remove(key.as_str()).map_err(write_err)?;
                        dropped += 1;
                    }
                }
                for (key, json) in &unstamped {
                    let mut value = now_ms.to_be_bytes().to_vec();
                    value.extend_from_slice(json);
                    table
                        .insert(key.as_str(), value.as_slice())
                        .map_err(write_err)?;
                }
            }
            self.inner.health.commit(txn)?;
            if !full {
                break;
            }
        }
        self.inner
            .stats
            .history_pruned
            .fetch_add(dropped, Ordering::Relaxed);
        Ok(dropped)
    }
}

/// The most histories one pruning transaction touches.
const HISTORY_CHUNK: usize = 5_000;

/// The most chunks one pruning run handles (the next run, an hour later, goes on), so a huge
/// history table never holds a shutdown for long.
const HISTORY_CHUNKS_PER_RUN: usize = 20;

/// What [`Journal::prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events.
    pub events: u64,
    /// Resource histories.
    pub histories: u64,
}

/// A history record: the time it was written (ms, big endian), then the state's JSON.
/// Records from before that format are bare JSON (they start with `{`; a time never does).
fn history_time(value: &[u8]) -> Option<u64> {
    if value.first() == Some(&b'{') {
        return None;
    }
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

fn read_history(stats: &JournalStats, key: &str, value: &[u8]) -> Option<ResourceState> {
    let json = if history_time(value).is_some() {
        &value[8..]
    } else {
        value
    };
    match serde_json::from_slice(json) {
        Ok(state) => Some(state),
        Err(e) => {
            stats.history_corrupt.fetch_add(1, Ordering::Relaxed);
            tracing::error!(resource = %key, error = %e, "unreadable classifier history; classifying the resource as new");
            None
        }
    }
}

fn encode_history(at_ms: u64, state: &ResourceState) -> Result<Vec<u8>, JournalError> {
    let mut out = at_ms.to_be_bytes().to_vec();
    serde_json::to_writer(&mut out, state).map_err(write_err)?;
    Ok(out)
}

impl Shared {
    fn db(&self) -> Result<Arc<Database>, JournalError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(JournalError::Closed);
        }
        self.db.read().ok().and_then(|g| g.clone()).ok_or_else(|| {
            JournalError::Write("the journal is reopening after an I/O error".into())
        })
    }

    /// Takes the database out, then (without holding the lock, so readers fail fast instead
    /// of waiting) waits a bounded time for readers to let go of it.
    fn release(&self) {
        let old = match self.db.write() {
            Ok(mut slot) => slot.take(),
            Err(_) => return,
        };
        if let Some(old) = old {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// After an I/O error redb refuses further writes until reopened: drop every handle and
    /// open the file again (recovering from the last committed transaction).
    fn reopen(&self) -> Result<(), JournalError> {
        self.release();
        let db = open_db(&self.path, self.cache_bytes)?;
        match self.db.write() {
            Ok(mut slot) => *slot = Some(Arc::new(db)),
            Err(_) => return Err(JournalError::Write("journal lock poisoned".into())),
        }
        Ok(())
    }
}

fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, JournalError> {
    let db = Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| JournalError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    // Create the tables up front, so readers never race their creation.
    let txn = db.begin_write().map_err(write_err)?;
    {
        txn.open_table(EVENTS).map_err(write_err)?;
        txn.open_table(HISTORY).map_err(write_err)?;
        txn.open_table(META).map_err(write_err)?;
        txn.open_table(CURSORS).map_err(write_err)?;
        txn.open_table(DEAD_LETTERS).map_err(write_err)?;
        txn.open_table(REQUEUED).map_err(write_err)?;
        txn.open_table(REWINDS).map_err(write_err)?;
        txn.open_table(REQUESTS).map_err(write_err)?;
        txn.open_table(SINK_STARTS).map_err(write_err)?;
    }
    txn.commit().map_err(write_err)?;
    Ok(db)
}

fn last_seq_in(db: &Database) -> Result<u64, JournalError> {
    let txn = db.begin_read().map_err(read_err)?;
    let next = txn
        .open_table(META)
        .map_err(read_err)?
        .get(NEXT_SEQ)
        .map_err(read_err)?
        .map_or(1, |v| v.value());
    Ok(next - 1)
}

/// The receive time of the newest event (0 when empty).
fn last_received_ms(db: &Database) -> Result<u64, JournalError> {
    let txn = db.begin_read().map_err(read_err)?;
    let table = txn.open_table(EVENTS).map_err(read_err)?;
    Ok(table
        .last()
        .map_err(read_err)?
        .map_or(0, |(_, v)| header_ms(v.value())))
}

fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn header_ms(value: &[u8]) -> u64 {
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// An event record: received-at in ms (u64), the lengths of the body's leading and trailing
/// whitespace (u32 each), those bytes, then the envelope JSON. All integers big endian.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    received_at_ms: u64,
    prefix: &str,
    suffix: &str,
    envelope: &Envelope,
) -> Result<(), JournalError> {
    out.clear();
    out.extend_from_slice(&received_at_ms.to_be_bytes());
    out.extend_from_slice(&(prefix.len() as u32).to_be_bytes());
    out.extend_from_slice(&(suffix.len() as u32).to_be_bytes());
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    serde_json::to_writer(out, envelope).map_err(write_err)
}

pub(crate) fn decode_event(seq: u64, value: &[u8]) -> Result<StoredEvent, JournalError> {
    let corrupt = |message: &str| JournalError::Corrupt {
        seq,
        message: message.to_owned(),
    };
    let len_at = |at: usize| -> Result<usize, JournalError> {
        let bytes: [u8; 4] = value
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("record too short"))?;
        Ok(u32::from_be_bytes(bytes) as usize)
    };
    let (pre, suf) = (len_at(8)?, len_at(12)?);
    let text = |from: usize, to: usize| -> Result<String, JournalError> {
        let bytes = value
            .get(from..to)
            .ok_or_else(|| corrupt("record too short"))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("record is not UTF-8"))
    };
    let body_start = 16;
    Ok(StoredEvent {
        seq,
        received_at_ms: header_ms(value),
        body_prefix: text(body_start, body_start + pre)?,
        body_suffix: text(body_start + pre, body_start + pre + suf)?,
        json: text(body_start + pre + suf, value.len())?,
    })
}

/// A UUIDv7: the receive time in ms, then 74 random bits. fastrand (seeded from the OS) is
/// enough for uniqueness and costs no system call, unlike the uuid crate's default generator.
pub(crate) fn event_id(received_at_ms: u64) -> EventId {
    let random = fastrand::u128(..).to_le_bytes();
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&random[..10]);
    EventId(
        uuid::Builder::from_unix_timestamp_millis(received_at_ms, &bytes)
            .into_uuid()
            .to_string(),
    )
}

/// The key under which a resource's history is kept (`"stream:12345"`).
pub fn history_key(webhook: &Webhook) -> Option<String> {
    let resource = streamhook_types::classify::resource_of(&webhook.payload);
    resource.id.map(|id| format!("{}:{id}", resource.kind))
}

/// The receive time to stamp now: the clock, or the previous event's time if the clock is
/// behind it (it stepped back), unless that time is implausibly far ahead (a corrupt record, or
/// a clock that had jumped ahead): then the clock, counted and logged.
fn stamp(stats: &JournalStats, last_ms: u64) -> u64 {
    let now = ms_since_epoch(SystemTime::now());
    if last_ms > now + MAX_CLOCK_STEP_BACK.as_millis() as u64 {
        stats.clock_reset.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            stored_ms = last_ms,
            now_ms = now,
            "the newest event's receive time is more than a day ahead of the clock; stamping by the clock"
        );
        return now;
    }
    now.max(last_ms)
}

fn writer_loop(inner: &Shared, mut rx: mpsc::Receiver<Msg>, max_batch: usize, mut last_ms: u64) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut closing = None;
    let mut probe = false;
    let mut last_reopen: Option<Instant> = None;
    loop {
        match rx.blocking_recv() {
            Some(Msg::Append(r)) => batch.push(*r),
            #[cfg(feature = "jetstream")]
            Some(Msg::Import(items, reply)) => {
                let started = Instant::now();
                let result = inner
                    .db()
                    .and_then(|db| commit_import(inner, &db, &items, &mut last_ms));
                inner.health.record(&result);
                if let Ok(last) = &result {
                    inner.stats.observe_commit(started.elapsed());
                    inner
                        .stats
                        .appended
                        .fetch_add(items.len() as u64, Ordering::Relaxed);
                    inner.changed.send_replace(*last);
                } else if let Err(e) = inner.reopen() {
                    tracing::error!(error = %e, "journal reopen failed; will retry");
                }
                let _ = reply.send(result);
                continue;
            }
            Some(Msg::Probe) => probe = true,
            Some(Msg::Panic) => panic!("journal writer: panic injected by a test"),
            Some(Msg::Close(done)) => closing = Some(done),
            None => return,
        }
        while closing.is_none() && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Append(r)) => batch.push(*r),
                #[cfg(feature = "jetstream")]
                Ok(Msg::Import(_, reply)) => {
                    // Imports and local appends never mix: a replicated journal has no
                    // local appends.
                    let _ = reply.send(Err(JournalError::Busy));
                }
                Ok(Msg::Probe) => probe = true,
                Ok(Msg::Panic) => panic!("journal writer: panic injected by a test"),
                Ok(Msg::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if probe && batch.is_empty() {
            probe = false;
            let result = inner.db().and_then(|db| {
                let txn = db.begin_write().map_err(write_err)?;
                txn.open_table(META)
                    .map_err(write_err)?
                    .insert(PROBE, ms_since_epoch(SystemTime::now()))
                    .map_err(write_err)?;
                inner.health.commit(txn)
            });
            inner.health.record(&result);
            if let Err(e) = result {
                tracing::warn!(error = %e, "journal probe: still cannot write");
                // Reopening drops every reader's handle: not more than every 10 s.
                if last_reopen.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(10)) {
                    last_reopen = Some(Instant::now());
                    if let Err(e) = inner.reopen() {
                        tracing::error!(error = %e, "journal reopen failed; will retry");
                    }
                }
            }
        }
        if !batch.is_empty() {
            probe = false;
            let started = Instant::now();
            // Stamped here, in journal order, never earlier than the previous event: a wall
            // clock that steps back cannot make `replay --since` miss an event.
            last_ms = stamp(&inner.stats, last_ms);
            let result = inner
                .db()
                .and_then(|db| commit_batch(inner, &db, &batch, last_ms));
            inner.health.record(&result);
            match result {
                Ok(appended) => {
                    inner.stats.observe_commit(started.elapsed());
                    inner
                        .stats
                        .appended
                        .fetch_add(appended.len() as u64, Ordering::Relaxed);
                    let last = appended.last().map_or(0, |a| a.seq);
                    for (request, done) in batch.drain(..).zip(appended) {
                        let _ = request.reply.send(Ok(done));
                    }
                    inner.changed.send_replace(last);
                }
                Err(e) => {
                    inner.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, events = batch.len(), "journal commit failed; nothing of the batch was stored");
                    for request in batch.drain(..) {
                        let _ = request.reply.send(Err(e.clone()));
                    }
                    if let Err(e) = inner.reopen() {
                        tracing::error!(error = %e, "journal reopen failed; will retry on the next append");
                    }
                }
            }
        }
        if let Some(done) = closing.take() {
            let _ = done.send(());
            return;
        }
    }
}

/// Classifies and stores a batch in one transaction; all or nothing.
fn commit_batch(
    inner: &Shared,
    db: &Database,
    batch: &[AppendRequest],
    received_at_ms: u64,
) -> Result<Vec<Appended>, JournalError> {
    let received_at =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(received_at_ms))
            .to_string();
    let txn = db.begin_write().map_err(write_err)?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let mut events = txn.open_table(EVENTS).map_err(write_err)?;
        let mut requests = txn.open_table(REQUESTS).map_err(write_err)?;
        let mut history = txn.open_table(HISTORY).map_err(write_err)?;
        let mut meta = txn.open_table(META).map_err(write_err)?;
        let mut next = meta
            .get(NEXT_SEQ)
            .map_err(write_err)?
            .map_or(1, |v| v.value());
        let mut record = Vec::new();
        for request in batch {
            let (envelope, key, state) = match &request.parsed {
                Parsed::Webhook(webhook) => {
                    let key = history_key(webhook);
                    let prior: Option<ResourceState> = match &key {
                        Some(k) => history
                            .get(k.as_str())
                            .map_err(write_err)?
                            .and_then(|v| read_history(&inner.stats, k, v.value())),
                        None => None,
                    };
                    let (meaning, state) = classify_with(webhook, prior.as_ref());
                    let envelope = Envelope {
                        id: event_id(received_at_ms),
                        seq: next,
                        received_at: received_at.clone(),
                        source_ip: request.source,
                        kinds: meaning.kinds,
                        origin: meaning.origin,
                        resource: meaning.resource,
                        problems: Vec::new(),
                        payload: request.payload.clone(),
                    };
                    (envelope, key, state)
                }
                // Kept as sent, flagged, and never part of a resource's history.
                Parsed::Invalid { resource, problems } => {
                    let envelope = Envelope {
                        id: event_id(received_at_ms),
                        seq: next,
                        received_at: received_at.clone(),
                        source_ip: request.source,
                        kinds: vec![EventKind::Invalid],
                        origin: None,
                        resource: resource.clone(),
                        problems: problems.clone(),
                        payload: request.payload.clone(),
                    };
                    (envelope, None, None)
                }
            };
            encode_record(
                &mut record,
                received_at_ms,
                &request.prefix,
                &request.suffix,
                &envelope,
            )?;
            events.insert(next, record.as_slice()).map_err(write_err)?;
            if let Some(received) = &request.received {
                requests
                    .insert(next, received.as_slice())
                    .map_err(write_err)?;
            }
            if let (Some(k), Some(state)) = (&key, state) {
                let bytes = encode_history(received_at_ms, &state)?;
                history
                    .insert(k.as_str(), bytes.as_slice())
                    .map_err(write_err)?;
            }
            out.push(Appended {
                id: envelope.id,
                seq: next,
                kinds: envelope.kinds,
            });
            next += 1;
        }
        meta.insert(NEXT_SEQ, next).map_err(write_err)?;
    }
    inner.health.commit(txn)?;
    Ok(out)
}

/// Records what a replicated journal's mirror copied from the shared stream, each at the
/// stream's seq, in one transaction. Records it holds already are skipped, so a mirror that
/// restarts may copy again from any point. The receive time never goes back (as for local
/// appends): a record stamped earlier than the one before it by another receiver's clock is
/// given the previous time.
#[cfg(feature = "jetstream")]
fn commit_import(
    inner: &Shared,
    db: &Database,
    items: &[(u64, bytes::Bytes)],
    last_ms: &mut u64,
) -> Result<u64, JournalError> {
    let txn = db.begin_write().map_err(write_err)?;
    let last;
    {
        let mut events = txn.open_table(EVENTS).map_err(write_err)?;
        let mut requests = txn.open_table(REQUESTS).map_err(write_err)?;
        let mut history = txn.open_table(HISTORY).map_err(write_err)?;
        let mut meta = txn.open_table(META).map_err(write_err)?;
        let mut next = meta
            .get(NEXT_SEQ)
            .map_err(write_err)?
            .map_or(1, |v| v.value());
        let mut record = Vec::new();
        for (seq, payload) in items {
            if *seq < next {
                continue;
            }
            // Never stop the mirror over one message: whatever cannot be read (another
            // publisher on the journal's subjects, a newer format) is kept as an unreadable
            // record, which readers skip and each sink's dispatcher dead-letters.
            let imported = (|| {
                let message = crate::jetstream::decode_message(payload)?;
                let stored = decode_event(*seq, message.record).map_err(|e| e.to_string())?;
                let mut envelope = stored.envelope().map_err(|e| e.to_string())?;
                Ok::<_, String>((message, stored, {
                    envelope.seq = *seq;
                    envelope
                }))
            })();
            let (message, stored, mut envelope) = match imported {
                Ok(parts) => parts,
                Err(why) => {
                    inner
                        .stats
                        .import_unreadable
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(seq, error = %why, "journal mirror: unreadable message in the shared stream; kept as an unreadable record (dead-lettered by each sink)");
                    // Stamped with the previous event's time: mirrors agree, and later
                    // events' times are not pulled forward to this import.
                    let now = *last_ms;
                    record.clear();
                    record.extend_from_slice(&now.to_be_bytes());
                    record.extend_from_slice(&[0; 8]);
                    record
                        .extend_from_slice(format!("unreadable stream message: {why}").as_bytes());
                    events.insert(*seq, record.as_slice()).map_err(write_err)?;
                    *last_ms = now;
                    next = seq + 1;
                    continue;
                }
            };
            // The receive time never goes back, and a time implausibly far ahead (a receiver
            // whose clock jumped) is not followed: as for local appends.
            let mut ms = stored.received_at_ms;
            let now = ms_since_epoch(SystemTime::now());
            let ahead = now + MAX_CLOCK_STEP_BACK.as_millis() as u64;
            if *last_ms > ahead {
                *last_ms = now;
            }
            if ms > ahead {
                inner.stats.clock_reset.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    seq,
                    stored_ms = ms,
                    now_ms = now,
                    "journal mirror: an event's receive time is more than a day ahead of this clock; stamping by the clock"
                );
                ms = now.max(*last_ms);
            } else if ms < *last_ms {
                ms = *last_ms;
            }
            if ms != stored.received_at_ms {
                envelope.received_at =
                    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms))
                        .to_string();
            }
            *last_ms = ms;
            encode_record(
                &mut record,
                ms,
                &stored.body_prefix,
                &stored.body_suffix,
                &envelope,
            )?;
            events.insert(*seq, record.as_slice()).map_err(write_err)?;
            if let Some(received) = message.received {
                requests.insert(*seq, received).map_err(write_err)?;
            }
            if let (Some(key), Some(state)) = (message.key, message.state) {
                let mut bytes = ms.to_be_bytes().to_vec();
                bytes.extend_from_slice(state);
                history.insert(key, bytes.as_slice()).map_err(write_err)?;
            }
            next = seq + 1;
        }
        meta.insert(NEXT_SEQ, next).map_err(write_err)?;
        last = next - 1;
    }
    inner.health.commit(txn)?;
    Ok(last)
}
