//! What the console shows of delivery and of the operator: each sink's attempts of each event
//! (the successful first one too: when, how long, what came back), kept in the journal so a
//! restart does not erase them, written with the sink's cursor (one commit for a batch) and
//! pruned with the events; and the operator's actions (who, what, when), the newest
//! [`AUDIT_KEPT`] of them.

use redb::{ReadableDatabase, ReadableTable};

use super::Journal;
use super::error::{JournalError, read_err, write_err};
use super::record::{
    ATTEMPTS, ATTEMPTS_KEPT, AUDIT, AUDIT_KEPT, AttemptRecord, AuditEntry, CURSORS,
};

impl Journal {
    /// Saves `sink`'s cursor (when given; never past a recorded replay, as
    /// [`Journal::set_cursor`]) and its new attempts, in one commit.
    pub fn save_progress(
        &self,
        sink: &str,
        cursor: Option<u64>,
        attempts: &[(u64, AttemptRecord)],
    ) -> Result<(), JournalError> {
        if attempts.is_empty() {
            return match cursor {
                Some(seq) => self.set_cursor(sink, seq),
                None => Ok(()),
            };
        }
        #[cfg(feature = "test-hooks")]
        if cursor.is_some()
            && self
                .inner
                .fail_cursor_saves
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok()
        {
            return Err(JournalError::write(
                super::CauseKind::Io,
                "injected I/O error (test)",
            ));
        }
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        {
            if let Some(seq) = cursor {
                super::cursors::write_cursor(&txn, sink, seq)?;
            }
            let mut table = txn.open_table(ATTEMPTS).map_err(write_err)?;
            for (seq, attempt) in attempts {
                let mut list: Vec<AttemptRecord> =
                    match table.get((sink, *seq)).map_err(write_err)? {
                        Some(v) => serde_json::from_slice(v.value()).unwrap_or_default(),
                        None => Vec::new(),
                    };
                list.push(attempt.clone());
                if list.len() > ATTEMPTS_KEPT {
                    // The first and the newest: how it began, and how it ends.
                    list.remove(1);
                }
                let bytes = serde_json::to_vec(&list).map_err(write_err)?;
                table
                    .insert((sink, *seq), bytes.as_slice())
                    .map_err(write_err)?;
            }
        }
        self.inner.health.commit(txn)
    }

    /// `sink`'s attempts of event `seq`, oldest first (the first and the newest
    /// [`ATTEMPTS_KEPT`]).
    pub fn attempts(&self, sink: &str, seq: u64) -> Result<Vec<AttemptRecord>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(ATTEMPTS).map_err(read_err)?;
        Ok(match table.get((sink, seq)).map_err(read_err)? {
            Some(v) => serde_json::from_slice(v.value()).unwrap_or_default(),
            None => Vec::new(),
        })
    }

    /// The last attempt of each of `seqs` by `sink` (`None` where there is none).
    pub fn last_attempts(
        &self,
        sink: &str,
        seqs: &[u64],
    ) -> Result<Vec<Option<AttemptRecord>>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(ATTEMPTS).map_err(read_err)?;
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            out.push(match table.get((sink, *seq)).map_err(read_err)? {
                Some(v) => serde_json::from_slice::<Vec<AttemptRecord>>(v.value())
                    .ok()
                    .and_then(|mut l| l.pop()),
                None => None,
            });
        }
        Ok(out)
    }

    /// Drops the attempts of events below `below` (pruned), for every sink with a cursor (a
    /// forgotten sink's attempts go when it is forgotten).
    pub(crate) fn prune_attempts(
        txn: &redb::WriteTransaction,
        below: u64,
    ) -> Result<u64, JournalError> {
        let sinks: Vec<String> = {
            let cursors = txn.open_table(CURSORS).map_err(write_err)?;
            let mut names = Vec::new();
            for entry in cursors.iter().map_err(write_err)? {
                let (k, _) = entry.map_err(write_err)?;
                names.push(k.value().to_owned());
            }
            names
        };
        let mut table = txn.open_table(ATTEMPTS).map_err(write_err)?;
        let mut removed = 0;
        for sink in &sinks {
            let gone = table
                .extract_from_if((sink.as_str(), 0)..(sink.as_str(), below), |_, _| true)
                .map_err(write_err)?
                .count();
            removed += gone as u64;
        }
        Ok(removed)
    }

    /// Records an operator's action (the oldest go past [`AUDIT_KEPT`]).
    pub fn audit(&self, entry: &AuditEntry) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(entry).map_err(write_err)?;
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        {
            let mut table = txn.open_table(AUDIT).map_err(write_err)?;
            let next = table
                .last()
                .map_err(write_err)?
                .map_or(1, |(k, _)| k.value() + 1);
            table.insert(next, bytes.as_slice()).map_err(write_err)?;
            if next > AUDIT_KEPT {
                let below = next - AUDIT_KEPT + 1;
                let _ = table
                    .extract_from_if(..below, |_, _| true)
                    .map_err(write_err)?
                    .count();
            }
        }
        self.inner.health.commit(txn)
    }

    /// The newest `limit` operator actions, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(AUDIT).map_err(read_err)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(read_err)?.rev().take(limit) {
            let (_, v) = entry.map_err(read_err)?;
            if let Ok(e) = serde_json::from_slice(v.value()) {
                out.push(e);
            }
        }
        Ok(out)
    }
}
