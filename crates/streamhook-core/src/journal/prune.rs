//! Retention: events every sink has passed, older than `max_age` or beyond `max_events`, and
//! the histories of resources idle longer than `history_max_age`.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use redb::{ReadableDatabase, ReadableTable};

use super::error::{JournalError, read_err, write_err};
use super::record::{
    CURSORS, EVENTS, HISTORY, META, NEXT_SEQ, REQUESTS, header_ms, history_time, ms_since_epoch,
};
use super::{Journal, Pruned};

impl Journal {
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
            .sinks
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
