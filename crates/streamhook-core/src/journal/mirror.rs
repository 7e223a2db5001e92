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
use super::record::{EVENTS, HISTORY, META, NEXT_SEQ, PROBE, REQUESTS, encode_raw_record};
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

    /// The last seq a synced import commit held (imports between syncs are committed without
    /// one: a power cut may lose them, and the mirror copies them again). What a mirror may
    /// tell others it holds.
    pub fn durable_imported(&self) -> u64 {
        self.inner.durable_imported.load(Ordering::SeqCst)
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
    let mut txn = db.begin_write().map_err(write_err)?;
    // The shared journal holds these: a commit lost to a power cut is copied again. Synced
    // at most every IMPORT_SYNC (and by any synced commit after it); what has been synced
    // is what the mirror may say it holds (`durable_imported`).
    let durable = inner.import_sync_due();
    if !durable {
        txn.set_durability(redb::Durability::None)
            .map_err(write_err)?;
    }
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
            let event = match &item.event {
                Ok(event) => event,
                Err(why) => {
                    unreadable(inner, seq, why, *last_ms, &mut record);
                    events.insert(seq, record.as_slice()).map_err(write_err)?;
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
            let reset = ms > now + MAX_CLOCK_STEP_BACK.as_millis() as u64;
            if reset {
                inner.stats.clock_reset.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    seq,
                    stored_ms = ms,
                    now_ms = now,
                    "journal mirror: an event's receive time is more than a day ahead of this clock; stamping by the clock"
                );
                ms = now;
            }
            // Never back, but a stored time more than a year ahead was a corrupt record.
            if *last_ms > now + MAX_CLOCK_AHEAD.as_millis() as u64 {
                *last_ms = now;
            }
            ms = ms.max(*last_ms);
            // The record as the shared journal holds it, its seq (0 there) set: spliced into
            // the JSON where the writer put it, or, for anything else, decoded and encoded.
            let spliced = if reset {
                None
            } else {
                splice_seq(&stored.json, seq)
            };
            let json = match spliced {
                Some(json) => json,
                None => {
                    let readable = stored.envelope().map_err(|e| e.to_string());
                    let mut envelope = match readable {
                        Ok(envelope) => envelope,
                        Err(why) => {
                            unreadable(inner, seq, &why, *last_ms, &mut record);
                            events.insert(seq, record.as_slice()).map_err(write_err)?;
                            next = seq + 1;
                            continue;
                        }
                    };
                    envelope.seq = seq;
                    if reset {
                        envelope.received_at = humantime::format_rfc3339_millis(
                            UNIX_EPOCH + Duration::from_millis(ms),
                        )
                        .to_string();
                    }
                    serde_json::to_string(&envelope).map_err(write_err)?
                }
            };
            *last_ms = ms;
            encode_raw_record(
                &mut record,
                ms,
                &stored.body_prefix,
                &stored.body_suffix,
                &json,
            );
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
    if durable {
        inner.imported_durably(last);
    }
    Ok(last)
}

/// An unreadable record, kept at its seq with why (stamped with the previous event's time:
/// mirrors agree, and later events' times are not pulled forward to this import).
fn unreadable(inner: &Store, seq: u64, why: &str, last_ms: u64, record: &mut Vec<u8>) {
    inner
        .stats
        .import_unreadable
        .fetch_add(1, Ordering::Relaxed);
    tracing::error!(seq, error = %why, "journal mirror: unreadable message in the shared stream; kept as an unreadable record (dead-lettered by each sink)");
    record.clear();
    record.extend_from_slice(&last_ms.to_be_bytes());
    record.extend_from_slice(&[0; 8]);
    record.extend_from_slice(format!("unreadable stream message: {why}").as_bytes());
}

/// The envelope JSON a writer encoded (`{"id":"...","seq":0,...}`, seq right after the id)
/// with its seq set; `None` when it is not in that form.
fn splice_seq(json: &str, seq: u64) -> Option<String> {
    let rest = json.strip_prefix("{\"id\":\"")?;
    let end = rest.find('"')?;
    let id = &rest[..end];
    if id.contains('\\') {
        return None;
    }
    let after = rest[end..].strip_prefix("\",\"seq\":0,")?;
    // A whole envelope (the rest is parsed by readers; an unreadable one is dead-lettered).
    if !after.ends_with('}') {
        return None;
    }
    let mut out = String::with_capacity(json.len() + 20);
    out.push_str("{\"id\":\"");
    out.push_str(id);
    out.push_str("\",\"seq\":");
    out.push_str(&seq.to_string());
    out.push(',');
    out.push_str(after);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seq_is_spliced_where_the_writer_put_it() {
        assert_eq!(
            splice_seq(r#"{"id":"a-1","seq":0,"kinds":[]}"#, 42).as_deref(),
            Some(r#"{"id":"a-1","seq":42,"kinds":[]}"#)
        );
        assert_eq!(splice_seq(r#"{"seq":0,"id":"x"}"#, 1), None);
        assert_eq!(splice_seq(r#"{"id":"x","seq":7,"k":1}"#, 1), None);
        assert_eq!(splice_seq(r#"{"id":"x\"","seq":0,"k":1}"#, 1), None);
        assert_eq!(splice_seq(r#"{"id":"x","seq":0,"k":1"#, 1), None);
    }
}
