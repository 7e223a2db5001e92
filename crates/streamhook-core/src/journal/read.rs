//! Reads: events by seq (forwards and backwards, each record on its own so one unreadable
//! record does not hide the others), one event, how it arrived, how many are held, the first
//! event at a time, and a resource's classifier history.

use std::time::SystemTime;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use streamhook_types::ResourceState;

use super::Journal;
use super::error::{JournalError, read_err};
use super::record::{
    EVENTS, HISTORY, REQUESTS, Received, StoredEvent, decode_event, header_ms, ms_since_epoch,
    read_history,
};
use super::store::last_seq_in;

impl Journal {
    /// The last committed seq (0 when empty).
    pub fn last_seq(&self) -> Result<u64, JournalError> {
        last_seq_in(&*self.db()?)
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

    /// The oldest seq the journal holds (`None`: it holds no event).
    pub fn first_seq(&self) -> Result<Option<u64>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(EVENTS).map_err(read_err)?;
        Ok(table.first().map_err(read_err)?.map(|(k, _)| k.value()))
    }

    /// How many events the journal holds from `from` on.
    pub fn events_from(&self, from: u64) -> Result<u64, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(EVENTS).map_err(read_err)?;
        let first = table.first().map_err(read_err)?.map(|(k, _)| k.value());
        let last = table.last().map_err(read_err)?.map(|(k, _)| k.value());
        let (Some(first), Some(last)) = (first, last) else {
            return Ok(0);
        };
        if from > last {
            return Ok(0);
        }
        // Seqs are contiguous unless a shared journal's pruning left holes: count then.
        if table.len().map_err(read_err)? == last - first + 1 {
            return Ok(last - from.max(first) + 1);
        }
        let mut n = 0;
        for entry in table.range(from..).map_err(read_err)? {
            entry.map_err(read_err)?;
            n += 1;
        }
        Ok(n)
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

    /// The history of a resource with when it was last written (ms since the Unix epoch; 0
    /// for a record from before histories carried a time).
    pub fn history_with_time(
        &self,
        resource: &str,
    ) -> Result<Option<(ResourceState, u64)>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(HISTORY).map_err(read_err)?;
        match table.get(resource).map_err(read_err)? {
            Some(v) => Ok(
                read_history(&self.inner.stats.history_corrupt, resource, v.value())
                    .map(|state| (state, super::record::history_time(v.value()).unwrap_or(0))),
            ),
            None => Ok(None),
        }
    }

    /// Every resource whose history key starts with `prefix` (`"video:"`), with its state and
    /// when it was last written.
    pub fn histories(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, ResourceState, u64)>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(HISTORY).map_err(read_err)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(read_err)? {
            let (k, v) = entry.map_err(read_err)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if let Some(state) = read_history(&self.inner.stats.history_corrupt, key, v.value()) {
                out.push((
                    key.to_owned(),
                    state,
                    super::record::history_time(v.value()).unwrap_or(0),
                ));
            }
        }
        Ok(out)
    }

    /// The history the classifier keeps for a resource (`"stream:12345"`). A record that
    /// cannot be read is `None` (and counted in [`super::JournalStats::history_corrupt`]).
    pub fn history(&self, resource: &str) -> Result<Option<ResourceState>, JournalError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(HISTORY).map_err(read_err)?;
        match table.get(resource).map_err(read_err)? {
            Some(v) => Ok(read_history(
                &self.inner.stats.history_corrupt,
                resource,
                v.value(),
            )),
            None => Ok(None),
        }
    }
}
