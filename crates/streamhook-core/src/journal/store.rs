//! The database file and its health: opening `journal.redb` (creating the tables up front),
//! reopening it after an I/O error, the counters metrics read, and what every commit records
//! so that [`super::Journal::health`] can answer without touching the database.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::watch;

use super::error::{CauseKind, JournalError, read_err, write_err};
use super::record::{
    ATTEMPTS, AUDIT, CURSORS, DEAD_LETTERS, EVENTS, HISTORY, META, NEXT_SEQ, REQUESTS, REQUEUED,
    REWINDS, SINK_REMOVED, SINK_STARTS, SPOOL, header_ms,
};

/// How often a mirror's imports are synced: between, they are committed without a sync (the
/// shared journal holds them; a power cut loses only what is copied again).
pub(crate) const IMPORT_SYNC: std::time::Duration = std::time::Duration::from_millis(200);

/// How far ahead of this clock another receiver's receive time may be and still be followed
/// by a mirror; beyond it, its clock had jumped, and this one stamps the event.
pub(crate) const MAX_CLOCK_STEP_BACK: Duration = Duration::from_secs(24 * 3600);

/// How far ahead of the clock the newest stored receive time may be and still be carried
/// forward (this clock was set back: receive times never go backwards); beyond it the stored
/// time is taken for a corrupt record, and the clock is followed again.
pub(crate) const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(366 * 24 * 3600);

/// Counters the server's `/metrics` reads.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// History records that could not be read (the resource was classified as new).
    pub history_corrupt: AtomicU64,
    /// Resource histories dropped after `history_max_age` idle.
    pub history_pruned: AtomicU64,
    /// Events stamped with the newest stored receive time because the clock was behind it
    /// (it was set back): receive times never go backwards.
    pub clock_behind: AtomicU64,
    /// Times the stored receive time was too far ahead of the clock to carry forward (more
    /// than a year: a corrupt record).
    pub clock_reset: AtomicU64,
    /// Events appended.
    pub appended: AtomicU64,
    /// Replicated journal: messages of the shared stream the mirror could not read (kept as
    /// unreadable records, dead-lettered by each sink).
    pub import_unreadable: AtomicU64,
    /// Replicated journal: messages the shared stream holds that this receiver's mirror does
    /// not yet (as its consumer last reported).
    pub mirror_pending: AtomicU64,
    /// Replicated journal: events kept in the spool (the shared stream could not take them
    /// in time), since start.
    pub spooled: AtomicU64,
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
    /// Pruning transactions committed (each at most [`super::PRUNE_CHUNK`] events).
    pub prune_commits: AtomicU64,
    /// Failed reads and writes, by what lay underneath ([`CauseKind::ALL`]'s order).
    pub errors_by_cause: [AtomicU64; CauseKind::ALL.len()],
}

/// Upper bounds, in seconds, of the commit latency histogram's buckets.
pub const COMMIT_BUCKETS: [f64; 10] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0];

impl JournalStats {
    pub(crate) fn observe_commit(&self, took: Duration) {
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

    /// Counts a failed read or write by its cause.
    pub(crate) fn observe_error(&self, e: &JournalError) {
        if let Some(cause) = e.cause() {
            self.errors_by_cause[cause.kind().index()].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Whether the journal can take events now, as [`super::Journal::health`] reports it.
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

/// What the writer and every committer record for [`super::Journal::health`].
#[derive(Debug, Default)]
pub(crate) struct HealthState {
    pub(crate) writer_alive: AtomicBool,
    pub(crate) commit_failed: AtomicBool,
    pub(crate) last_error: Mutex<String>,
    /// Test only: the next N commits fail as an I/O error would.
    #[cfg(feature = "test-hooks")]
    pub(crate) inject_failures: AtomicU64,
}

impl HealthState {
    /// Commits (failing instead when a test injected a failure). Only the writer records the
    /// outcome as health.
    pub(crate) fn commit(&self, txn: redb::WriteTransaction) -> Result<(), JournalError> {
        #[cfg(feature = "test-hooks")]
        {
            let injected = self
                .inject_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if injected {
                let _ = txn.abort();
                return Err(JournalError::write(
                    CauseKind::Io,
                    "injected I/O error (test)",
                ));
            }
        }
        txn.commit().map_err(write_err)
    }

    pub(crate) fn record<T>(&self, result: &Result<T, JournalError>) {
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

/// The database file and what the writer thread and every handle share about it. The writer
/// holds no sender, so when the last handle goes, its queue closes and it stops.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) path: PathBuf,
    cache_bytes: usize,
    pub(crate) closed: AtomicBool,
    db: RwLock<Option<Arc<Database>>>,
    /// The last committed seq; bumped on every commit, replay and requeue to wake dispatchers.
    pub(crate) changed: watch::Sender<u64>,
    pub(crate) stats: JournalStats,
    pub(crate) health: HealthState,
    /// Events waiting in the spool.
    pub(crate) spool_count: AtomicU64,
    /// A mirror's imports: when the last synced one was committed, and the last seq it
    /// held (what the mirror may say it holds).
    pub(crate) import_synced: std::sync::Mutex<Option<std::time::Instant>>,
    pub(crate) durable_imported: AtomicU64,
    /// The journal's clock: the newest receive time stored (ms since the Unix epoch). Ages
    /// (idle histories, `max_age`, a removed sink's grace) are measured by it, not by the
    /// wall clock, so a clock that jumps ahead cannot age everything at once.
    pub(crate) clock: AtomicU64,
    /// Test only: added to the wall clock, as a clock that jumped would.
    #[cfg(feature = "test-hooks")]
    pub(crate) clock_offset_ms: std::sync::atomic::AtomicI64,
    /// Test only: the next N cursor saves fail as an I/O error would.
    #[cfg(feature = "test-hooks")]
    pub(crate) fail_cursor_saves: AtomicU64,
    /// Test only: where pruning says it paused between chunks, and waits to go on.
    #[cfg(feature = "test-hooks")]
    #[allow(clippy::type_complexity)]
    pub(crate) prune_pause:
        Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>,
}

impl Store {
    /// Opens (or creates) the file; returns the store and the newest event's receive time.
    pub(crate) fn open(path: PathBuf, cache_bytes: usize) -> Result<(Store, u64), JournalError> {
        let db = open_db(&path, cache_bytes)?;
        let last = last_seq_in(&db)?;
        let last_ms = last_received_ms(&db)?;
        let spooled = {
            use redb::ReadableTableMetadata;
            let txn = db.begin_read().map_err(read_err)?;
            let table = txn.open_table(SPOOL).map_err(read_err)?;
            table.len().map_err(read_err)?
        };
        let (changed, _) = watch::channel(last);
        let store = Store {
            path,
            cache_bytes,
            closed: AtomicBool::new(false),
            db: RwLock::new(Some(Arc::new(db))),
            changed,
            stats: JournalStats::default(),
            health: HealthState::default(),
            clock: AtomicU64::new(last_ms),
            spool_count: AtomicU64::new(spooled),
            import_synced: std::sync::Mutex::new(None),
            durable_imported: AtomicU64::new(last),
            #[cfg(feature = "test-hooks")]
            clock_offset_ms: std::sync::atomic::AtomicI64::new(0),
            #[cfg(feature = "test-hooks")]
            prune_pause: Mutex::new(None),
            #[cfg(feature = "test-hooks")]
            fail_cursor_saves: AtomicU64::new(0),
        };
        Ok((store, last_ms))
    }

    /// The wall clock, in ms since the Unix epoch.
    pub(crate) fn wall_ms(&self) -> u64 {
        let now = super::record::ms_since_epoch(std::time::SystemTime::now());
        #[cfg(feature = "test-hooks")]
        let now = now.saturating_add_signed(self.clock_offset_ms.load(Ordering::Relaxed));
        now
    }

    /// The journal's clock (see [`Store::clock`]); the wall clock while the journal is empty.
    pub(crate) fn journal_ms(&self) -> u64 {
        match self.clock.load(Ordering::SeqCst) {
            0 => self.wall_ms(),
            ms => ms,
        }
    }

    /// Moves the journal's clock to `ms` if it is newer.
    /// Whether a mirror's next import commit is synced (at most every [`IMPORT_SYNC`]).
    pub(crate) fn import_sync_due(&self) -> bool {
        match self.import_synced.lock() {
            Ok(mut last) => {
                let due = last.is_none_or(|t| t.elapsed() >= IMPORT_SYNC);
                if due {
                    *last = Some(std::time::Instant::now());
                }
                due
            }
            Err(_) => true,
        }
    }

    /// A synced import commit held everything up to `seq`.
    pub(crate) fn imported_durably(&self, seq: u64) {
        self.durable_imported.fetch_max(seq, Ordering::SeqCst);
    }

    pub(crate) fn advance_clock(&self, ms: u64) {
        self.clock.fetch_max(ms, Ordering::SeqCst);
    }

    pub(crate) fn db(&self) -> Result<Arc<Database>, JournalError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(JournalError::Closed);
        }
        self.db.read().ok().and_then(|g| g.clone()).ok_or_else(|| {
            JournalError::write(
                CauseKind::Storage,
                "the journal is reopening after an I/O error",
            )
        })
    }

    /// Takes the database out, then (without holding the lock, so readers fail fast instead
    /// of waiting) waits a bounded time for readers to let go of it.
    pub(crate) fn release(&self) {
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
    pub(crate) fn reopen(&self) -> Result<(), JournalError> {
        self.release();
        let db = open_db(&self.path, self.cache_bytes)?;
        match self.db.write() {
            Ok(mut slot) => *slot = Some(Arc::new(db)),
            Err(_) => {
                return Err(JournalError::write(
                    CauseKind::Other,
                    "journal lock poisoned",
                ));
            }
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
            source: super::error::IntoCause::into_cause(e),
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
        txn.open_table(SINK_REMOVED).map_err(write_err)?;
        txn.open_table(SPOOL).map_err(write_err)?;
        txn.open_table(ATTEMPTS).map_err(write_err)?;
        txn.open_table(AUDIT).map_err(write_err)?;
    }
    txn.commit().map_err(write_err)?;
    Ok(db)
}

/// The seq after the newest event, or after what pruning recorded (whichever is greater),
/// read from the meta and events tables of any transaction.
pub(crate) fn next_seq(
    meta: &impl redb::ReadableTable<&'static str, u64>,
    events: &impl redb::ReadableTable<u64, &'static [u8]>,
) -> Result<u64, redb::StorageError> {
    let recorded = meta.get(NEXT_SEQ)?.map(|v| v.value());
    let newest = events.last()?.map(|(k, _)| k.value());
    Ok(recorded.unwrap_or(1).max(newest.map_or(1, |n| n + 1)))
}

pub(crate) fn last_seq_in(db: &Database) -> Result<u64, JournalError> {
    let txn = db.begin_read().map_err(read_err)?;
    let meta = txn.open_table(META).map_err(read_err)?;
    let events = txn.open_table(EVENTS).map_err(read_err)?;
    Ok(next_seq(&meta, &events).map_err(read_err)? - 1)
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
