//! Importing a shared journal's records into the local file: a backend that sequences events
//! elsewhere (the replicated journal) copies them here, in the shared order and at the shared
//! seqs, as neutral [`Imported`] records, so everything that reads the journal (dispatchers,
//! the admin API, the console, pruning) reads locally and never names the backend. Also the
//! numbers a backend keeps beside the journal (`meta`).

use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable};

use super::Journal;
use super::error::{JournalError, read_err, write_err};
use super::record::{EVENTS, HISTORY, META, NEXT_SEQ, PROBE, REQUESTS, encode_record};
use super::store::Store;
use super::store::{MAX_CLOCK_AHEAD, MAX_CLOCK_STEP_BACK};
use crate::backend::Imported;

impl Journal {
    /// A number a backend keeps in the journal's `meta` table (the journal's own keys,
    /// `next_seq` and `probe`, read as well).
    pub fn meta(&self, key: &str) -> Result<Option<u64>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        Ok(table.get(key).map_err(read_err)?.map(|v| v.value()))
    }

    /// Sets a number a backend keeps in the journal's `meta` table. The journal's own keys
    /// (`next_seq`, `probe`) are refused.
    pub fn set_meta(&self, key: &str, value: u64) -> Result<(), JournalError> {
        if key == NEXT_SEQ || key == PROBE {
            return Err(JournalError::write(
                super::CauseKind::Other,
                format!("meta key {key:?} belongs to the journal"),
            ));
        }
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(META)
            .map_err(write_err)?
            .insert(key, value)
            .map_err(write_err)?;
        txn.commit().map_err(write_err)
    }

    /// Records copied from a shared journal, in its order, each at its seq (see
    /// [`Imported`]); returns the last seq the file holds. Records held already are skipped,
    /// so a copy may start again from any point.
    pub async fn import(&self, items: Vec<Imported>) -> Result<u64, JournalError> {
        self.inner.writer.import(items).await
    }
}

/// Records what a mirror copied from the shared journal, each at its seq, in one
/// transaction. Records it holds already are skipped, so a mirror that restarts may copy again
/// from any point. The journal's clock never goes back (as for local appends): a record
/// stamped earlier than the one before it (another receiver's clock, or an event it spooled)
/// is filed at the previous time; its envelope keeps its own.
pub(crate) fn commit_import(
    inner: &Store,
    db: &Database,
    items: &[Imported],
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
        for item in items {
            let seq = item.seq;
            if seq < next {
                continue;
            }
            // Never stop the mirror over one record: whatever cannot be read (another
            // publisher on the journal's subjects, a newer format) is kept as an unreadable
            // record, which readers skip and each sink's dispatcher dead-letters.
            let readable = item.event.as_ref().map_err(Clone::clone).and_then(|event| {
                let mut envelope = event.stored.envelope().map_err(|e| e.to_string())?;
                envelope.seq = seq;
                Ok((event, envelope))
            });
            let (event, mut envelope) = match readable {
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
                    events.insert(seq, record.as_slice()).map_err(write_err)?;
                    *last_ms = now;
                    next = seq + 1;
                    continue;
                }
            };
            let stored = &event.stored;
            // The journal's clock never goes back, and a time implausibly far ahead of this
            // clock (a receiver whose clock jumped) is not followed: as for local appends.
            // The envelope keeps the time the event was received (an event spooled by a
            // receiver while NATS was away, or flagged `late`, arrives here after newer
            // ones): only the record's clock, which ages and finds events by time, is kept
            // in order.
            let mut ms = stored.received_at_ms;
            let now = inner.wall_ms();
            if ms > now + MAX_CLOCK_STEP_BACK.as_millis() as u64 {
                inner.stats.clock_reset.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    seq,
                    stored_ms = ms,
                    now_ms = now,
                    "journal mirror: an event's receive time is more than a day ahead of this clock; stamping by the clock"
                );
                ms = now;
                envelope.received_at =
                    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms))
                        .to_string();
            }
            // Never back, but a stored time more than a year ahead was a corrupt record.
            if *last_ms > now + MAX_CLOCK_AHEAD.as_millis() as u64 {
                *last_ms = now;
            }
            ms = ms.max(*last_ms);
            *last_ms = ms;
            encode_record(
                &mut record,
                ms,
                &stored.body_prefix,
                &stored.body_suffix,
                &envelope,
            )?;
            events.insert(seq, record.as_slice()).map_err(write_err)?;
            if let Some(received) = &event.received {
                requests
                    .insert(seq, received.as_slice())
                    .map_err(write_err)?;
            }
            if let Some((key, state)) = &event.history {
                let mut bytes = ms.to_be_bytes().to_vec();
                bytes.extend_from_slice(state);
                history
                    .insert(key.as_str(), bytes.as_slice())
                    .map_err(write_err)?;
            }
            next = seq + 1;
        }
        meta.insert(NEXT_SEQ, next).map_err(write_err)?;
        last = next - 1;
    }
    inner.health.commit(txn)?;
    inner.advance_clock(*last_ms);
    Ok(last)
}
