//! Where each sink stands: its cursor (the first seq it has not passed), where it started,
//! replays (a rewind recorded durably, then applied by the sink's running dispatcher), and the
//! registry of running dispatchers that replays and pruning consult.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use super::error::{JournalError, read_err, write_err};
use super::record::{
    CURSORS, DEAD_LETTERS, DeadLetter, REQUEUED, REWINDS, SINK_REMOVED, SINK_STARTS,
};
use super::store::last_seq_in;
use super::{
    Forgotten, Journal, PendingReplay, RemovedSink, ReplayFrom, Replayed, SinkStart, SinkState,
};

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

    /// Moves a sink's cursor (durably). Used by the sink's dispatcher. A replay recorded and
    /// not yet applied keeps the cursor at its seq: a dispatcher saving the position it had
    /// reached never carries the sink past the replay.
    pub fn set_cursor(&self, sink: &str, seq: u64) -> Result<(), JournalError> {
        #[cfg(feature = "test-hooks")]
        if self
            .inner
            .fail_cursor_saves
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(JournalError::write(
                super::CauseKind::Io,
                "injected I/O error (test)",
            ));
        }
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        write_cursor(&txn, sink, seq)?;
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

    /// Delivers to `sink` again everything from `from` on, and says what it did.
    ///
    /// A replay only ever moves a sink back: asked for a point past where the sink stands (its
    /// running dispatcher's oldest event in flight, or its cursor), it re-delivers nothing new
    /// and the sink keeps its place ([`Replayed::moved`] is false), so a sink whose
    /// destination is down never skips its backlog. A seq past the newest event is refused
    /// ([`JournalError::ReplayPastEnd`]).
    ///
    /// With the sink's dispatcher running, the dispatcher applies it (dropping what it had in
    /// flight) before this returns; a pending replay holds pruning meanwhile. Otherwise (or if
    /// the dispatcher has not applied it within 30 s) it is recorded durably: the cursor moves
    /// back, and a cursor saved later never passes the replay's point.
    pub async fn replay(&self, sink: &str, from: ReplayFrom) -> Result<Replayed, JournalError> {
        let name = sink.to_owned();
        let plan = self
            .blocking(move |j| j.plan_replay(&name, from, false))
            .await?;
        if self.dispatching(sink) {
            let (done, wait) = oneshot::channel();
            if let Ok(mut replays) = self.inner.sinks.replays.lock() {
                replays.insert(sink.to_owned(), (plan.asked_seq, done));
            }
            self.notify();
            // The dispatcher applies it as soon as it can (a lane stuck on a slow delivery does
            // not hold it); it compares with what it has in flight, further on than the
            // durable cursor.
            if let Ok(Ok((from_seq, moved))) =
                tokio::time::timeout(Duration::from_secs(30), wait).await
            {
                let events = self
                    .blocking(move |j| j.events_from(from_seq))
                    .await
                    .unwrap_or(plan.events);
                return Ok(Replayed {
                    from_seq,
                    events,
                    moved,
                    ..plan
                });
            }
            // Not applied in time: recorded durably below, so any later start applies it.
        }
        let name = sink.to_owned();
        self.blocking(move |j| j.plan_replay(&name, ReplayFrom::Seq(plan.asked_seq), true))
            .await
    }

    /// What [`Journal::replay`] would do, without doing it (from the durable cursor: a running
    /// dispatcher may be a little further on).
    pub fn replay_plan(&self, sink: &str, from: ReplayFrom) -> Result<Replayed, JournalError> {
        self.plan_replay(sink, from, false)
    }

    /// Where a replay from `from` goes on from, durably; with `record`, records it: the
    /// rewind (the lowest asked), and the cursor moved back when the replay moves the sink.
    fn plan_replay(
        &self,
        sink: &str,
        from: ReplayFrom,
        record: bool,
    ) -> Result<Replayed, JournalError> {
        let last = self.last_seq()?;
        let asked = match from {
            ReplayFrom::Seq(s) if s > last + 1 => {
                return Err(JournalError::ReplayPastEnd { from: s, last });
            }
            ReplayFrom::Seq(s) => s.max(1),
            ReplayFrom::Time(t) => self.seq_at(t)?,
        };
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        let cursor = txn
            .open_table(CURSORS)
            .map_err(write_err)?
            .get(sink)
            .map_err(write_err)?
            .map(|v| v.value());
        let rewind = txn
            .open_table(REWINDS)
            .map_err(write_err)?
            .get(sink)
            .map_err(write_err)?
            .map(|v| v.value());
        // Where the sink stands durably: its cursor, or a replay recorded and not yet applied.
        let stands = match (cursor, rewind) {
            (Some(c), Some(r)) => c.min(r),
            (Some(c), None) => c,
            (None, r) => r.unwrap_or(asked),
        };
        let from_seq = asked.min(stands);
        let moved = asked < stands;
        if record {
            if moved {
                txn.open_table(CURSORS)
                    .map_err(write_err)?
                    .insert(sink, from_seq)
                    .map_err(write_err)?;
                // A replay gives the sink what came before it too.
                let mut starts = txn.open_table(SINK_STARTS).map_err(write_err)?;
                let start = starts.get(sink).map_err(write_err)?.map(|v| v.value());
                if start.is_some_and(|s| s > from_seq) {
                    starts.insert(sink, from_seq).map_err(write_err)?;
                }
            }
            // Recorded even when the cursor stays: a dispatcher that was stopping may still
            // save a later position, which must not carry the sink past the replay.
            let rewind_to = rewind.map_or(asked, |r| r.min(asked));
            txn.open_table(REWINDS)
                .map_err(write_err)?
                .insert(sink, rewind_to)
                .map_err(write_err)?;
            self.inner.health.commit(txn)?;
        } else {
            let _ = txn.abort();
        }
        Ok(Replayed {
            from_seq,
            asked_seq: asked,
            events: self.events_from(from_seq)?,
            moved,
        })
    }

    /// Whether a dispatcher of `sink` runs now.
    fn dispatching(&self, sink: &str) -> bool {
        self.inner
            .sinks
            .dispatching
            .lock()
            .map(|d| d.iter().any(|(s, _)| s == sink))
            .unwrap_or(false)
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

    pub(crate) fn has_replay(&self, sink: &str) -> bool {
        self.inner
            .sinks
            .replays
            .lock()
            .is_ok_and(|r| r.contains_key(sink))
    }

    pub(crate) fn take_replay(&self, sink: &str) -> Option<PendingReplay> {
        self.inner.sinks.replays.lock().ok()?.remove(sink)
    }

    /// Makes the journal's sinks match the configuration: each sink in `sinks` without a
    /// cursor gets one where its [`SinkStart`] says (and is no longer counted as removed);
    /// each sink with a cursor that is not in `sinks` is recorded as removed now (its cursor
    /// keeps holding events for it for [`super::PrunePolicy::removed_sink_grace`]). Call it before
    /// any request is accepted, so no event slips between "journaled" and a new sink's start.
    /// Returns, for each configured sink, where it starts and whether it was created.
    pub fn configure_sinks(
        &self,
        sinks: &[(String, SinkStart)],
    ) -> Result<Vec<(String, u64, bool)>, JournalError> {
        // Where new sinks would start, read before the write (a time needs a search).
        let newest = self.last_seq()? + 1;
        let mut starts = Vec::with_capacity(sinks.len());
        for (name, start) in sinks {
            let seq = match start {
                SinkStart::Newest => newest,
                SinkStart::Oldest => self.first_seq()?.unwrap_or(newest),
                SinkStart::Time(t) => self.seq_at(*t)?,
            };
            starts.push((name.as_str(), seq));
        }
        let now = self.inner.journal_ms();
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        let mut out = Vec::with_capacity(sinks.len());
        {
            let mut cursors = txn.open_table(CURSORS).map_err(write_err)?;
            let mut sink_starts = txn.open_table(SINK_STARTS).map_err(write_err)?;
            let mut removed = txn.open_table(SINK_REMOVED).map_err(write_err)?;
            for (name, seq) in &starts {
                if let Some(since) = removed.remove(*name).map_err(write_err)? {
                    tracing::info!(
                        sink = name,
                        removed_at_ms = since.value(),
                        "sink back in the configuration: it resumes where it stood"
                    );
                }
                let existing = cursors.get(*name).map_err(write_err)?.map(|v| v.value());
                match existing {
                    Some(cursor) => out.push((name.to_string(), cursor, false)),
                    None => {
                        cursors.insert(*name, *seq).map_err(write_err)?;
                        sink_starts.insert(*name, *seq).map_err(write_err)?;
                        out.push((name.to_string(), *seq, true));
                    }
                }
            }
            let mut absent = Vec::new();
            for entry in cursors.iter().map_err(write_err)? {
                let (name, cursor) = entry.map_err(write_err)?;
                if !sinks.iter().any(|(s, _)| s == name.value()) {
                    absent.push((name.value().to_owned(), cursor.value()));
                }
            }
            for (name, cursor) in absent {
                if removed.get(name.as_str()).map_err(write_err)?.is_none() {
                    tracing::warn!(sink = %name, cursor, "sink no longer in the configuration: its cursor keeps holding its events for the grace period (retention.removed_sink_grace); `streamhook sinks forget` ends it");
                    removed.insert(name.as_str(), now).map_err(write_err)?;
                }
            }
        }
        self.inner.health.commit(txn)?;
        Ok(out)
    }

    /// Sinks with a cursor that the configuration no longer has, with when they went and
    /// until when their cursor holds events for them.
    pub fn removed_sinks(&self, grace: Duration) -> Result<Vec<RemovedSink>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let removed = txn.open_table(SINK_REMOVED).map_err(read_err)?;
        let cursors = txn.open_table(CURSORS).map_err(read_err)?;
        let mut out = Vec::new();
        for entry in removed.iter().map_err(read_err)? {
            let (name, at) = entry.map_err(read_err)?;
            let Some(cursor) = cursors.get(name.value()).map_err(read_err)? else {
                continue;
            };
            out.push(RemovedSink {
                name: name.value().to_owned(),
                cursor: cursor.value(),
                removed_at_ms: at.value(),
                holds_until_ms: at.value().saturating_add(grace.as_millis() as u64),
            });
        }
        Ok(out)
    }

    /// Forgets a sink: its cursor, where it started, a pending replay, its removal record,
    /// its dead letters and requeued events. Its events no longer hold retention; if it comes
    /// back it starts as a new sink. The caller makes sure it is not configured.
    pub fn forget_sink(&self, sink: &str) -> Result<Forgotten, JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        let mut forgotten = Forgotten::default();
        {
            let known = txn
                .open_table(CURSORS)
                .map_err(write_err)?
                .remove(sink)
                .map_err(write_err)?
                .is_some();
            if !known {
                return Err(JournalError::NoSuchSink {
                    sink: sink.to_owned(),
                });
            }
            txn.open_table(SINK_STARTS)
                .map_err(write_err)?
                .remove(sink)
                .map_err(write_err)?;
            txn.open_table(REWINDS)
                .map_err(write_err)?
                .remove(sink)
                .map_err(write_err)?;
            txn.open_table(SINK_REMOVED)
                .map_err(write_err)?
                .remove(sink)
                .map_err(write_err)?;
            for (table, count) in [
                (DEAD_LETTERS, &mut forgotten.dead_letters),
                (REQUEUED, &mut forgotten.requeued),
            ] {
                let mut table = txn.open_table(table).map_err(write_err)?;
                let seqs: Vec<u64> = table
                    .range((sink, 0)..=(sink, u64::MAX))
                    .map_err(write_err)?
                    .map(|e| e.map(|(k, _)| k.value().1))
                    .collect::<Result<_, _>>()
                    .map_err(write_err)?;
                for seq in seqs {
                    table.remove((sink, seq)).map_err(write_err)?;
                    *count += 1;
                }
            }
        }
        self.inner.health.commit(txn)?;
        Ok(forgotten)
    }

    /// Gives `old`'s place to `new` (cursor, start, pending replay, dead letters, requeued
    /// events), when `new` has no cursor yet and `old` has one: a sink renamed by an upgrade
    /// keeps its backlog. Returns whether it moved.
    pub fn rename_sink(&self, old: &str, new: &str) -> Result<bool, JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        {
            let mut cursors = txn.open_table(CURSORS).map_err(write_err)?;
            if cursors.get(new).map_err(write_err)?.is_some() {
                return Ok(false);
            }
            let cursor = cursors.remove(old).map_err(write_err)?.map(|v| v.value());
            let Some(cursor) = cursor else {
                return Ok(false);
            };
            cursors.insert(new, cursor).map_err(write_err)?;
            for table in [SINK_STARTS, REWINDS] {
                let mut table = txn.open_table(table).map_err(write_err)?;
                let value = table.remove(old).map_err(write_err)?.map(|v| v.value());
                if let Some(v) = value {
                    table.insert(new, v).map_err(write_err)?;
                }
            }
            txn.open_table(SINK_REMOVED)
                .map_err(write_err)?
                .remove(old)
                .map_err(write_err)?;
            for table in [DEAD_LETTERS, REQUEUED] {
                let mut table = txn.open_table(table).map_err(write_err)?;
                let moved: Vec<(u64, Vec<u8>)> = table
                    .range((old, 0)..=(old, u64::MAX))
                    .map_err(write_err)?
                    .map(|e| e.map(|(k, v)| (k.value().1, v.value().to_vec())))
                    .collect::<Result<_, _>>()
                    .map_err(write_err)?;
                for (seq, bytes) in moved {
                    table.remove((old, seq)).map_err(write_err)?;
                    let mut letter: DeadLetter =
                        serde_json::from_slice(&bytes).map_err(write_err)?;
                    letter.sink = new.to_owned();
                    let bytes = serde_json::to_vec(&letter).map_err(write_err)?;
                    table
                        .insert((new, seq), bytes.as_slice())
                        .map_err(write_err)?;
                }
            }
        }
        self.inner.health.commit(txn)?;
        self.letters_changed();
        Ok(true)
    }
}

/// Writes a sink's cursor in `txn`, never past a replay recorded and not yet applied (the one
/// place that rule lives: every cursor save goes through it).
pub(crate) fn write_cursor(
    txn: &redb::WriteTransaction,
    sink: &str,
    seq: u64,
) -> Result<(), JournalError> {
    let rewind = txn
        .open_table(REWINDS)
        .map_err(write_err)?
        .get(sink)
        .map_err(write_err)?
        .map(|v| v.value());
    let seq = rewind.map_or(seq, |r| seq.min(r));
    txn.open_table(CURSORS)
        .map_err(write_err)?
        .insert(sink, seq)
        .map_err(write_err)?;
    Ok(())
}
