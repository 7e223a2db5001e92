//! Where each sink stands: its cursor (the first seq it has not passed), where it started,
//! replays (a rewind recorded durably, then applied by the sink's running dispatcher), and the
//! registry of running dispatchers that replays and pruning consult.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use super::error::{JournalError, read_err, write_err};
use super::record::{CURSORS, REWINDS, SINK_STARTS};
use super::store::last_seq_in;
use super::{Journal, ReplayFrom, SinkState};

/// A dispatcher's registration; dropping it unregisters that dispatcher (not a newer one of
/// the same sink started meanwhile).
pub(crate) struct Registration {
    sinks: Arc<SinkState>,
    id: u64,
    sink: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let last = match self.sinks.dispatching.lock() {
            Ok(mut d) => {
                d.retain(|(_, i)| *i != self.id);
                !d.iter().any(|(s, _)| *s == self.sink)
            }
            Err(_) => false,
        };
        // No dispatcher of this sink is left to apply a pending replay: drop it from memory
        // (its durable cursor and rewind apply at the sink's next start), so it cannot pin
        // pruning for ever.
        if last && let Ok(mut r) = self.sinks.replays.lock() {
            r.remove(&self.sink);
        }
    }
}

impl Journal {
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
        .map_err(|e| {
            JournalError::Write(super::Cause::with_source(
                super::CauseKind::Other,
                format!("replay task failed: {e}"),
                e,
            ))
        })??;
        let running = self
            .inner
            .sinks
            .dispatching
            .lock()
            .map(|d| d.iter().any(|(s, _)| s == sink))
            .unwrap_or(false);
        if !running {
            return Ok(seq);
        }
        let (done, wait) = oneshot::channel();
        if let Ok(mut replays) = self.inner.sinks.replays.lock() {
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
        let id = self
            .inner
            .sinks
            .next_registration
            .fetch_add(1, Ordering::Relaxed);
        if let Ok(mut d) = self.inner.sinks.dispatching.lock() {
            d.push((sink.to_owned(), id));
        }
        Registration {
            sinks: Arc::clone(&self.inner.sinks),
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
            .sinks
            .replays
            .lock()
            .is_ok_and(|r| r.contains_key(sink))
    }

    pub(crate) fn take_replay(&self, sink: &str) -> Option<(u64, oneshot::Sender<()>)> {
        self.inner.sinks.replays.lock().ok()?.remove(sink)
    }
}
