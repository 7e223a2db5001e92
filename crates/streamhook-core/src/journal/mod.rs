//! The durable journal: an append-only log of accepted events in one redb file, with each
//! resource's classifier history, each sink's cursor, dead letters and requeued events beside
//! it.
//!
//! # On disk
//!
//! One redb file, `DATA_DIR/journal.redb`. redb is a copy-on-write B-tree store: a commit
//! writes new pages, then flips the root with a checksummed header; every commit here uses
//! `Durability::Immediate` (fsync'd before `commit` returns). All integers are big endian.
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `events` | seq (u64, from 1, never reused) | the event record: received-at ms (u64), the lengths of the body's leading and trailing whitespace (u32 each), those bytes, then the envelope JSON (its `payload` is the body without outer whitespace, byte for byte). An unreadable record copied from a shared journal holds its time, eight zero bytes and the reason |
//! | `history` | `"stream:12345"`, `"video:784280"`, ... | updated-at ms (u64), then the classifier's `ResourceState` JSON (records from before that format are bare JSON, starting with `{`; pruning stamps them) |
//! | `meta` | `"next_seq"`, `"probe"`, a backend's own keys | u64: the next seq; the time of the last health probe; e.g. the replicated journal's `mirror_of_stream_created_ns` |
//! | `cursors` | sink name | the first seq the sink has not passed |
//! | `sink_starts` | sink name | the first seq the sink was given (its cursor when created, lowered by replays) |
//! | `rewinds` | sink name | the seq a replay moved the sink back to, until its dispatcher told the sink |
//! | `dead_letters` | (sink, seq) | [`DeadLetter`] JSON: the error, attempts, time, the envelope and the body |
//! | `requeued` | (sink, seq) | a [`DeadLetter`] sent back for delivery (or an event the console sends again) |
//! | `requests` | seq | [`Received`] JSON: how the request arrived (TCP peer, client, the allowlist rule, headers); written in the event's transaction, pruned with it; never sent to sinks |
//!
//! # Appending
//!
//! [`Journal::append`] hands the event to the journal's [`crate::backend::Sequencer`].
//! On one host that is the writer thread ([`writer`]): it takes every request waiting and, in
//! one write transaction, reads each one's resource history, classifies, assigns the next seq
//! and a UUIDv7 id, writes the event and the new history, then commits (one fsync for the
//! batch: group commit). Only then are the requests answered. So the classification of an
//! event and the history it leaves are stored together, and payloads of one resource are
//! classified in journal order. The receive time is stamped by the writer, never earlier than
//! the previous event's, so `received_at` grows with `seq` even when the wall clock steps
//! back. A replicated journal's sequencer (the `streamhook-jetstream` crate) publishes to a
//! shared stream instead and its mirror [imports](Journal::import) the stream into this file.
//!
//! # Health
//!
//! The writer records whether its last commit (a batch, an import or a probe) succeeded, and
//! that it runs; [`Journal::health`] reads both without touching the database, so a readiness
//! check is cheap and sees a full disk or a dead writer at once. While unhealthy, a prober asks
//! the writer for a one-key commit every second (and a readiness check may
//! [ask](Journal::probe) at once), so health returns as soon as a commit can succeed again.
//!
//! # Files
//!
//! - [`error`]: [`JournalError`] and the [`Cause`] underneath it.
//! - [`record`]: the tables and how records are encoded.
//! - `store`: the database file, its health and its counters.
//! - [`writer`]: the writer thread and group commit.
//! - `read`: reads. `cursors`: cursors, rewinds and replays. `letters`: dead letters and
//!   requeued events. `prune`: retention. `mirror`: imports from a shared journal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use redb::Database;
use serde_json::value::RawValue;
use streamhook_types::EventId;
use tokio::sync::{oneshot, watch};

use crate::backend::{Draft, Leases, LocalLeases, Sequencer, SharedPruned, SharedRetention};
use crate::source::Verified;

mod attempts;
mod cursors;
pub mod error;
mod letters;
mod mirror;
mod prune;
mod read;
pub mod record;
mod spool;
mod store;
#[cfg(feature = "test-hooks")]
mod test_hooks;
pub mod writer;

use error::write_err;
pub use error::{Cause, CauseKind, JournalError};
pub use record::{
    ATTEMPTS_KEPT, AUDIT_KEPT, Appended, AttemptRecord, AuditEntry, DeadLetter, Parsed, Received,
    StoredEvent, one_line, one_line_owned,
};
use store::Store;
pub use store::{COMMIT_BUCKETS, Health, JournalStats};
pub use writer::WriterHandle;

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

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// From this seq on.
    Seq(u64),
    /// From the first event received at or after this time.
    Time(SystemTime),
}

/// The most events one pruning transaction deletes: a few milliseconds of work, never a
/// whole backlog in one go (appends wait behind the transaction holding the file).
pub const PRUNE_CHUNK: usize = 1_000;

/// What [`Journal::prune`] may delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunePolicy {
    /// Events every sink passed, older than this (by the journal's clock).
    pub max_age: Option<Duration>,
    /// Events every sink passed, beyond the newest this many.
    pub max_events: Option<u64>,
    /// A resource's history, once no event came for it this long.
    pub history_max_age: Option<Duration>,
    /// How long the cursor of a sink taken out of the configuration keeps holding events
    /// for it ([`Journal::configure_sinks`] records when it went).
    pub removed_sink_grace: Duration,
}

/// Where a sink seen for the first time starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SinkStart {
    /// After the events already journaled (the default: a new sink gets what comes next).
    #[default]
    Newest,
    /// At the oldest event the journal holds.
    Oldest,
    /// At the first event received at or after this time.
    Time(SystemTime),
}

/// A sink the journal holds a cursor for that the configuration no longer has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedSink {
    /// Its name.
    pub name: String,
    /// Its cursor: the first seq it has not passed.
    pub cursor: u64,
    /// When it was first found missing from the configuration (ms since the Unix epoch, by
    /// the journal's clock).
    pub removed_at_ms: u64,
    /// Until when its cursor holds events for it (ms since the Unix epoch).
    pub holds_until_ms: u64,
}

/// What [`Journal::forget_sink`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Its dead letters.
    pub dead_letters: u64,
    /// Its requeued events.
    pub requeued: u64,
}

/// What a replay does ([`Journal::replay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// The seq delivery goes on from: the one asked for, or the sink's cursor when that is
    /// lower (a replay never moves a sink past events it has not had).
    pub from_seq: u64,
    /// The seq asked for (a time is turned into the first seq received at or after it).
    pub asked_seq: u64,
    /// How many events the journal holds from `from_seq` on (those routed to the sink are
    /// delivered).
    pub events: u64,
    /// Whether the sink was moved back (false: it had not yet had those events).
    pub moved: bool,
}

/// What [`Journal::prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events.
    pub events: u64,
    /// Resource histories.
    pub histories: u64,
}

/// What the journal keeps of a request's body: the JSON byte for byte, the whitespace around
/// it, who sent it.
pub(crate) fn draft_of(
    source: &Verified,
    payload: &[u8],
    parsed: Parsed,
    received: Option<Vec<u8>>,
) -> Result<Draft, JournalError> {
    let text = std::str::from_utf8(payload).map_err(|e| {
        JournalError::Write(Cause::with_source(
            CauseKind::Encoding,
            format!("payload is not UTF-8: {e}"),
            e,
        ))
    })?;
    let is_ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let json = text.trim_matches(is_ws);
    let start = text.len() - text.trim_start_matches(is_ws).len();
    let (prefix, suffix) = (&text[..start], &text[start + json.len()..]);
    let payload = RawValue::from_string(json.to_owned()).map_err(|e| {
        JournalError::Write(Cause::with_source(
            CauseKind::Encoding,
            format!("payload is not JSON: {e}"),
            e,
        ))
    })?;
    Ok(Draft {
        parsed,
        payload,
        prefix: prefix.to_owned(),
        suffix: suffix.to_owned(),
        source: source.client(),
        received,
        reconciled: None,
        expect: None,
    })
}

/// An event waiting in the spool.
#[derive(Debug)]
#[non_exhaustive]
pub struct Spooled {
    /// Its place in the spool (arrival order).
    pub key: u64,
    /// Its resource's history key, when it has one (events of one resource are forwarded in
    /// order).
    pub resource: Option<String>,
    /// The id it was answered with.
    pub id: EventId,
    /// When it arrived, in ms since the Unix epoch.
    pub received_at_ms: u64,
    /// What it is.
    pub draft: Draft,
}

/// How much waits in the spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Events waiting.
    pub events: u64,
    /// When the oldest arrived (ms since the Unix epoch), if any waits.
    pub oldest_ms: Option<u64>,
}

/// The journal. Cheap to clone; all clones share one database and one writer.
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

/// A journal handle that does not keep the journal open (a backend holds one: the journal
/// holds the backend).
#[derive(Debug, Clone)]
pub struct WeakJournal(Weak<Inner>);

impl WeakJournal {
    /// The journal, while any [`Journal`] handle is alive.
    pub fn upgrade(&self) -> Option<Journal> {
        self.0.upgrade().map(|inner| Journal { inner })
    }
}

#[derive(Debug)]
struct Inner {
    writer: WriterHandle,
    store: Arc<Store>,
    sinks: Arc<SinkState>,
    /// Where appends get their place: the writer, or a shared journal.
    sequencer: Arc<dyn Sequencer>,
    /// Who delivers each sink: always this receiver, or the holder of a shared lease.
    leases: Arc<dyn Leases>,
}

impl std::ops::Deref for Inner {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

/// A replay waiting for a running dispatcher: the seq asked for, and where to say what the
/// dispatcher did (where it goes on from, and whether it moved back).
pub(crate) type PendingReplay = (u64, oneshot::Sender<(u64, bool)>);

/// What the handles know of the sinks' dispatchers: running ones, replays waiting for them,
/// changes to dead letters.
#[derive(Debug, Default)]
struct SinkState {
    /// Replays waiting for a running dispatcher to apply them, by sink.
    /// The answer is where the dispatcher goes on from, and whether it moved back.
    replays: Mutex<HashMap<String, PendingReplay>>,
    /// Sinks with a running dispatcher, with the registration's id.
    dispatching: Mutex<Vec<(String, u64)>>,
    next_registration: AtomicU64,
    /// Bumped by every change to dead letters or requeued events (a replicated journal's
    /// deliverer shares them when it changes).
    letters_changed: AtomicU64,
}

impl Journal {
    /// Opens (or creates) the journal in `config.dir` and starts its writer thread. Appends
    /// go to that writer, and this receiver delivers every sink.
    pub fn open(config: JournalConfig) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(&config.dir).map_err(|e| JournalError::Open {
            path: config.dir.clone(),
            source: error::IntoCause::into_cause(e),
        })?;
        let (store, last_ms) = Store::open(config.dir.join(JOURNAL_FILE), config.cache_bytes)?;
        let store = Arc::new(store);
        let writer =
            WriterHandle::start(Arc::clone(&store), config.queue, config.max_batch, last_ms)
                .map_err(|e| JournalError::Open {
                    path: config.dir.clone(),
                    source: Cause::with_source(
                        CauseKind::Other,
                        format!("cannot start the writer thread: {e}"),
                        e,
                    ),
                })?;
        Ok(Journal {
            inner: Arc::new(Inner {
                sequencer: Arc::new(writer.clone()),
                writer,
                store,
                sinks: Arc::default(),
                leases: Arc::new(LocalLeases),
            }),
        })
    }

    /// The same journal with its appends going to a backend's [`Sequencer`] and its sinks'
    /// delivery decided by the backend's [`Leases`] (the local file then holds what the
    /// backend [imports](Journal::import)). `backend` is given this journal's writer, for
    /// what it keeps locally, and a weak handle to the new journal.
    pub fn with_backend(
        self,
        backend: impl FnOnce(&WriterHandle, WeakJournal) -> (Arc<dyn Sequencer>, Arc<dyn Leases>),
    ) -> Journal {
        let inner = Arc::new_cyclic(|weak| {
            let (sequencer, leases) = backend(&self.inner.writer, WeakJournal(weak.clone()));
            Inner {
                writer: self.inner.writer.clone(),
                store: Arc::clone(&self.inner.store),
                sinks: Arc::clone(&self.inner.sinks),
                sequencer,
                leases,
            }
        });
        Journal { inner }
    }

    /// A handle that does not keep the journal open.
    pub fn downgrade(&self) -> WeakJournal {
        WeakJournal(Arc::downgrade(&self.inner))
    }

    /// Runs `f` on a blocking thread (the journal's calls touch the disk) and waits for it.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let journal = self.clone();
        tokio::task::spawn_blocking(move || f(&journal))
            .await
            .map_err(|e| {
                JournalError::Read(Cause::with_source(
                    CauseKind::Other,
                    format!("journal task failed: {e}"),
                    e,
                ))
            })?
    }

    /// The name of the backend that sequences events (`redb`, `jetstream`).
    pub fn backend(&self) -> &'static str {
        self.inner.sequencer.backend()
    }

    /// Before closing: lets a backend forward what it keeps locally for its shared journal
    /// (events it spooled), for up to `within`; returns how many are left (kept in the file,
    /// forwarded at the next start).
    pub async fn drain(&self, within: Duration) -> u64 {
        self.inner.sequencer.drain(within).await
    }

    /// How the connection to a shared journal stands (`None`: one host).
    pub fn shared_status(&self) -> Option<crate::backend::SharedStatus> {
        self.inner.sequencer.shared_status()
    }

    /// Whether several receivers share this journal (its sinks' delivery is leased).
    pub fn is_replicated(&self) -> bool {
        self.inner.leases.is_shared()
    }

    /// Who delivers each sink.
    pub fn leases(&self) -> &Arc<dyn Leases> {
        &self.inner.leases
    }

    /// Whether this receiver delivers `sink` now (always, on one host).
    pub fn delivers_here(&self, sink: &str) -> bool {
        self.inner.leases.holds(sink)
    }

    /// Who delivers `sink` now, when receivers share the journal.
    pub async fn lease_holder(&self, sink: &str) -> Option<String> {
        self.inner.leases.holder(sink).await
    }

    /// When receivers share the journal, sets the local cursor of each sink another receiver
    /// delivers to the sink's shared cursor (so its lag and pruning here follow the
    /// deliverer). Does nothing on one host.
    pub async fn follow_shared_cursors(&self, sinks: &[String]) -> Result<(), JournalError> {
        self.inner.leases.follow(sinks).await
    }

    /// Prunes what receivers share, as [`Journal::prune`] prunes the file (see
    /// [`Sequencer::prune_shared`]); `None` on one host or when another receiver prunes now.
    pub async fn prune_shared(
        &self,
        sinks: &[String],
        max_age: Option<Duration>,
        max_events: Option<u64>,
        history_max_age: Option<Duration>,
    ) -> Result<Option<SharedPruned>, JournalError> {
        let retention = SharedRetention {
            sinks: sinks.to_vec(),
            max_age,
            max_events,
            history_max_age,
        };
        self.inner.sequencer.prune_shared(&retention).await
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

    /// Journals an event recovered from the provider's API (not sent by it): `payload` in the
    /// webhook's shape, `webhook` what it decodes to, `reconciled` how it was found. It goes
    /// through the same append as a webhook (on a replicated journal, the same
    /// compare-and-set), so it never conflicts with a webhook arriving meanwhile.
    ///
    /// It is journaled only if its resource's state at the write is `expect` (the state the
    /// comparison was made against; `None`: unknown), else [`JournalError::NotAsExpected`]: a
    /// webhook that changed the resource meanwhile is newer than what the API showed.
    pub async fn append_reconciled(
        &self,
        payload: &[u8],
        webhook: streamhook_types::Webhook,
        reconciled: streamhook_types::Reconciled,
        expect: Option<streamhook_types::ResourceState>,
    ) -> Result<Appended, JournalError> {
        let source = Verified::trusted_local(std::net::IpAddr::from([0, 0, 0, 0]));
        let mut draft = draft_of(&source, payload, Parsed::Webhook(webhook), None)?;
        draft.reconciled = Some(reconciled);
        draft.expect = Some(expect);
        let result = self.inner.sequencer.append(draft).await;
        if let Err(e) = &result {
            self.inner.stats.observe_error(e);
        }
        result
    }

    /// Waits, up to `within`, until this journal holds every event the shared journal held when
    /// called (on one host, at once); false if it did not. Read histories after it to compare
    /// them with the world.
    pub async fn caught_up(&self, within: Duration) -> bool {
        self.inner.sequencer.caught_up(within).await
    }

    /// Something only one receiver may do at a time (reconciling with the provider's API):
    /// held while the guard lives (`None`: another receiver does it now). On one host, always.
    pub async fn exclusive(&self, name: &str) -> Option<Box<dyn crate::backend::Exclusive>> {
        self.inner.sequencer.exclusive(name).await
    }

    async fn append_with(
        &self,
        source: Verified,
        payload: &[u8],
        parsed: impl Into<Parsed>,
        received: Option<Vec<u8>>,
    ) -> Result<Appended, JournalError> {
        let draft = draft_of(&source, payload, parsed.into(), received)?;
        let result = self.inner.sequencer.append(draft).await;
        if let Err(e) = &result {
            self.inner.stats.observe_error(e);
        }
        result
    }

    /// Stops the writer after the appends already queued, waits for it, and closes the
    /// database file (so it can be opened again at once). Every handle fails afterwards.
    pub async fn close(&self) {
        self.inner.writer.close().await;
        self.inner.closed.store(true, Ordering::SeqCst);
        let store = Arc::clone(&self.inner.store);
        let _ = tokio::task::spawn_blocking(move || store.release()).await;
    }

    /// Whether [`Journal::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
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
    /// recorded (and, for a backend, what it reports): no database access, no lock held, so
    /// readiness checks may call it often.
    pub fn health(&self) -> Health {
        let h = &self.inner.health;
        if let Some(why) = self.inner.sequencer.unavailable()
            && !self.inner.closed.load(Ordering::SeqCst)
        {
            return Health::CannotWrite(why);
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
        self.inner.writer.probe();
    }

    /// The last seq the writer committed, from memory (0 when empty): no database access.
    pub fn last_committed(&self) -> u64 {
        *self.inner.changed.borrow()
    }
}
