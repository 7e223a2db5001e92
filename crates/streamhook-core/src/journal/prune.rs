//! Retention: events every sink has passed, older than `max_age` or beyond `max_events`, and
//! the histories of resources idle longer than `history_max_age`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable};

use super::error::{JournalError, read_err, write_err};
use super::record::{
    CURSORS, EVENTS, HISTORY, META, NEXT_SEQ, REQUESTS, REWINDS, SINK_REMOVED, header_ms,
    history_time,
};
use super::{Journal, PRUNE_CHUNK, PrunePolicy, Pruned};

impl Journal {
    /// Deletes what `policy` allows:
    /// - events every sink has passed (each of `sinks`, the configured ones, even one without
    ///   a cursor yet; and each cursor in the journal, but a sink's taken
    ///   out of the configuration for longer than `removed_sink_grace`; pending replays count
    ///   as cursors, those waiting for a dispatcher and those recorded durably), that are older
    ///   than `max_age` or beyond the newest `max_events`, in transactions of at most
    ///   [`PRUNE_CHUNK`] events that never wait for a disk sync, so appends wait behind one
    ///   chunk at a time, never behind a whole backlog;
    /// - the history of every resource not updated for `history_max_age`.
    ///
    /// Ages are measured by the journal's clock (the newest receive time it holds), not the
    /// wall clock: a clock that jumps ahead ages nothing until events arrive. Returns how many
    /// events and histories were deleted.
    pub fn prune(&self, sinks: &[String], policy: &PrunePolicy) -> Result<Pruned, JournalError> {
        let now_ms = self.inner.journal_ms();
        let cutoff = |age: Duration| now_ms.saturating_sub(age.as_millis() as u64);
        let mut pruned = Pruned::default();
        if policy.max_age.is_some() || policy.max_events.is_some() {
            loop {
                let (events, full) = self.prune_chunk(sinks, policy, now_ms)?;
                pruned.events += events;
                if !full {
                    break;
                }
                #[cfg(feature = "test-hooks")]
                if let Ok(hook) = self.inner.prune_pause.lock()
                    && let Some((paused, go)) = hook.as_ref()
                {
                    let _ = paused.send(());
                    let _ = go.recv();
                }
            }
        }
        if let Some(age) = policy.history_max_age {
            pruned.histories = self.prune_histories(cutoff(age), now_ms)?;
        }
        Ok(pruned)
    }

    /// The seq below which every sink has passed every event (`u64::MAX`: no sink), read in
    /// `txn`: cursors, but a removed sink's past its grace; pending replays, in memory and
    /// recorded.
    fn passed_by_all(
        &self,
        txn: &redb::WriteTransaction,
        sinks: &[String],
        grace: Duration,
        now_ms: u64,
    ) -> Result<u64, JournalError> {
        let mut passed = self
            .inner
            .sinks
            .replays
            .lock()
            .ok()
            .and_then(|r| r.values().map(|(seq, _)| *seq).min())
            .unwrap_or(u64::MAX);
        let removed = txn.open_table(SINK_REMOVED).map_err(write_err)?;
        let cursors = txn.open_table(CURSORS).map_err(write_err)?;
        for sink in sinks {
            // A configured sink without a cursor yet has passed nothing.
            if cursors.get(sink.as_str()).map_err(write_err)?.is_none() {
                return Ok(0);
            }
        }
        for entry in cursors.iter().map_err(write_err)? {
            let (name, cursor) = entry.map_err(write_err)?;
            let gone_since = removed
                .get(name.value())
                .map_err(write_err)?
                .map(|v| v.value());
            let expired =
                gone_since.is_some_and(|t| t.saturating_add(grace.as_millis() as u64) <= now_ms);
            if !expired {
                passed = passed.min(cursor.value());
            }
        }
        let rewinds = txn.open_table(REWINDS).map_err(write_err)?;
        for entry in rewinds.iter().map_err(write_err)? {
            let (_, seq) = entry.map_err(write_err)?;
            passed = passed.min(seq.value());
        }
        Ok(passed)
    }

    /// Deletes up to [`PRUNE_CHUNK`] events in one transaction; returns how many, and whether
    /// the chunk was full (more may follow).
    fn prune_chunk(
        &self,
        sinks: &[String],
        policy: &PrunePolicy,
        now_ms: u64,
    ) -> Result<(u64, bool), JournalError> {
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(write_err)?;
        // A prune lost to a crash is done again; the next append's commit makes it durable.
        txn.set_durability(redb::Durability::None)
            .map_err(write_err)?;
        let passed = self.passed_by_all(&txn, sinks, policy.removed_sink_grace, now_ms)?;
        let next = {
            let meta = txn.open_table(META).map_err(write_err)?;
            let events = txn.open_table(EVENTS).map_err(write_err)?;
            super::store::next_seq(&meta, &events).map_err(write_err)?
        };
        let keep_from_count = policy.max_events.map_or(0, |n| next.saturating_sub(n));
        let cutoff_ms = policy
            .max_age
            .map_or(0, |age| now_ms.saturating_sub(age.as_millis() as u64));
        let mut gone = Vec::new();
        {
            let mut events = txn.open_table(EVENTS).map_err(write_err)?;
            // Receive times grow with seq, so what may go is a run from the oldest event.
            for entry in events.range(..passed).map_err(write_err)? {
                let (seq, value) = entry.map_err(write_err)?;
                let seq = seq.value();
                if seq >= keep_from_count && header_ms(value.value()) >= cutoff_ms {
                    break;
                }
                gone.push(seq);
                if gone.len() >= PRUNE_CHUNK {
                    break;
                }
            }
            if !gone.is_empty() {
                // Appends take the next seq from the newest event: recorded here before the
                // newest may go, so a seq is never given twice.
                txn.open_table(META)
                    .map_err(write_err)?
                    .insert(NEXT_SEQ, next)
                    .map_err(write_err)?;
            }
            for seq in &gone {
                events.remove(*seq).map_err(write_err)?;
            }
            // What arrived with exactly those events goes too.
            let mut requests = txn.open_table(REQUESTS).map_err(write_err)?;
            for seq in &gone {
                requests.remove(*seq).map_err(write_err)?;
            }
        }
        // And each sink's attempts of them.
        if let Some(last) = gone.last() {
            Journal::prune_attempts(&txn, last + 1)?;
        }
        self.inner.health.commit(txn)?;
        self.inner
            .stats
            .prune_commits
            .fetch_add(1, Ordering::Relaxed);
        Ok((gone.len() as u64, gone.len() >= PRUNE_CHUNK))
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
