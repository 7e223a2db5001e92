//! Dead letters (events a sink gave up on, with the last error and a copy of the event) and
//! requeued events (dead letters sent back, or events the console sends again), per sink.
//! Every change bumps a generation, so a replicated journal's deliverer shares them only when
//! they changed.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use redb::{ReadableDatabase, ReadableTable};

use super::Journal;
use super::error::{JournalError, read_err, write_err};
use super::record::{DEAD_LETTERS, DeadLetter, REQUEUED};

impl Journal {
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

    pub(crate) fn letters_changed(&self) {
        self.inner
            .sinks
            .letters_changed
            .fetch_add(1, Ordering::SeqCst);
    }

    /// A number that changes with every change to dead letters or requeued events.
    pub fn letters_generation(&self) -> u64 {
        self.inner.sinks.letters_changed.load(Ordering::SeqCst)
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
        self.dead_letters_limited(sink, usize::MAX)
    }

    /// The first `limit` dead letters, of one sink or all, in (sink, seq) order: only those
    /// are decoded.
    pub fn dead_letters_limited(
        &self,
        sink: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(DEAD_LETTERS).map_err(read_err)?;
        let mut out = Vec::new();
        let entries = match sink {
            Some(s) => table.range((s, 0)..=(s, u64::MAX)).map_err(read_err)?,
            None => table.iter().map_err(read_err)?,
        };
        for entry in entries.take(limit) {
            let (_, v) = entry.map_err(read_err)?;
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
}
