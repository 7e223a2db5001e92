//! The writer thread: every append (and every copy a mirror imports) goes through it, so one
//! thread owns the order of the log. It takes every request waiting, up to a batch, and
//! commits them in one write transaction (group commit: one fsync for the batch). Every
//! commit records its outcome as the journal's health (`store.rs`); the thread marks
//! itself dead when it ends, however it ends, and a prober asks it for a one-key commit every
//! second while unhealthy, so health returns as soon as a write can succeed again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableTable};
use streamhook_types::classify::classify_with;
use streamhook_types::{Envelope, EventKind, ResourceState};
use tokio::sync::{mpsc, oneshot};

use super::error::{JournalError, write_err};
use super::record::{
    Appended, EVENTS, HISTORY, META, PROBE, Parsed, REQUESTS, SPOOL, SPOOL_NEXT, encode_history,
    encode_record, event_id, history_key, history_time, read_history,
};
use super::store::{JournalStats, MAX_CLOCK_AHEAD, MAX_CLOCK_STEP_BACK, Store, next_seq};
use crate::backend::{Draft, Imported, Sequencer};

pub(crate) struct AppendRequest {
    draft: Draft,
    reply: oneshot::Sender<Result<Appended, JournalError>>,
}

/// The answer to a spooled event: its key in the spool once synced.
pub(crate) type SpoolReply = oneshot::Sender<Result<u64, JournalError>>;

/// An event for the spool and where its answer goes.
type SpoolRequest = (Vec<u8>, SpoolReply);

pub(crate) enum Msg {
    Append(Box<AppendRequest>),
    /// Records a backend's mirror copies from its shared journal, at their seqs.
    Import(Vec<Imported>, oneshot::Sender<Result<u64, JournalError>>),
    /// An event for the spool (encoded), answered with its key once synced.
    Spool(Vec<u8>, SpoolReply),
    /// A one-key commit, to learn whether the journal can write again.
    Probe,
    /// Test only: the writer panics, as a bug would make it.
    #[cfg(feature = "test-hooks")]
    Panic,
    Close(oneshot::Sender<()>),
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

/// Marks the writer dead when its thread ends, however it ends (a panic included).
struct WriterAlive<'a>(&'a AtomicBool);

impl Drop for WriterAlive<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The way to the writer thread. The thread holds no sender: when the last handle goes, its
/// queue closes and it stops.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Store>,
}

impl WriterHandle {
    /// Starts the writer thread (and its prober) on `shared`'s database.
    pub(crate) fn start(
        shared: Arc<Store>,
        queue: usize,
        max_batch: usize,
        last_ms: u64,
    ) -> std::io::Result<WriterHandle> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        shared.health.writer_alive.store(true, Ordering::SeqCst);
        // While unhealthy, ask the writer for a probe every second, so health returns without
        // traffic and without anyone polling. The prober holds only a weak sender: it never
        // keeps the writer's queue open.
        let weak = tx.downgrade();
        let prober = Arc::clone(&shared);
        let _ = std::thread::Builder::new()
            .name("streamhook-journal-probe".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let Some(tx) = weak.upgrade() else { return };
                    if prober.health.commit_failed.load(Ordering::SeqCst) {
                        let _ = tx.try_send(Msg::Probe);
                    }
                }
            });
        let writer = Arc::clone(&shared);
        let max_batch = max_batch.max(1);
        let spawned = std::thread::Builder::new()
            .name("streamhook-journal".into())
            .spawn(move || {
                let _alive = WriterAlive(&writer.health.writer_alive);
                writer_loop(&writer, rx, max_batch, last_ms);
            });
        if let Err(e) = spawned {
            shared.health.writer_alive.store(false, Ordering::SeqCst);
            return Err(e);
        }
        Ok(WriterHandle { tx, shared })
    }

    /// Queues an append and waits until it is committed; [`JournalError::Busy`] at once when
    /// the queue is full.
    pub(crate) async fn append(&self, draft: Draft) -> Result<Appended, JournalError> {
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest { draft, reply };
        match self.tx.try_send(Msg::Append(Box::new(request))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.stats.busy.fetch_add(1, Ordering::Relaxed);
                return Err(JournalError::Busy);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(JournalError::Closed),
        }
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Hands records copied from a shared journal to the writer; returns the last seq held.
    pub(crate) async fn import(&self, items: Vec<Imported>) -> Result<u64, JournalError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Import(items, reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// A receiver that changes on every commit (value: the last seq committed).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Queues an event for the spool and waits until it is synced; [`JournalError::Busy`] at
    /// once when the queue is full.
    pub(crate) async fn spool(&self, bytes: Vec<u8>) -> Result<u64, JournalError> {
        let (reply, answer) = oneshot::channel();
        match self.tx.try_send(Msg::Spool(bytes, reply)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.stats.busy.fetch_add(1, Ordering::Relaxed);
                return Err(JournalError::Busy);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(JournalError::Closed),
        }
        answer.await.map_err(|_| JournalError::Closed)?
    }

    /// Asks for a one-key commit; does nothing when the queue is full.
    pub(crate) fn probe(&self) {
        let _ = self.tx.try_send(Msg::Probe);
    }

    /// Stops the writer after what is queued, and waits for it.
    pub(crate) async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Close(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    #[cfg(feature = "test-hooks")]
    pub(crate) fn panic(&self) {
        let _ = self.tx.try_send(Msg::Panic);
    }
}

/// One host: appends go to the writer thread (one redb file, group commit).
#[async_trait]
impl Sequencer for WriterHandle {
    fn backend(&self) -> &'static str {
        "redb"
    }

    async fn append(&self, draft: Draft) -> Result<Appended, JournalError> {
        WriterHandle::append(self, draft).await
    }
}

/// The receive time to stamp now: the clock, or the previous event's time if the clock is
/// behind it (it was set back). Receive times never go backwards (the binary search behind
/// `replay --since` relies on it, and ages are measured by them): events keep the newest time
/// until the clock catches up, counted in `clock_behind` and logged. Only a stored time more
/// than a year ahead (a corrupt record) is not followed: then the clock, counted in
/// `clock_reset` and logged.
pub(crate) fn stamp(stats: &JournalStats, last_ms: u64, now: u64) -> u64 {
    if last_ms > now + MAX_CLOCK_AHEAD.as_millis() as u64 {
        stats.clock_reset.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            stored_ms = last_ms,
            now_ms = now,
            "the newest event's receive time is more than a year ahead of the clock (a corrupt record?); stamping by the clock"
        );
        return now;
    }
    if last_ms > now {
        let seen = stats.clock_behind.fetch_add(1, Ordering::Relaxed);
        if seen % 10_000 == 0 && last_ms > now + MAX_CLOCK_STEP_BACK.as_millis() as u64 {
            tracing::warn!(
                stored_ms = last_ms,
                now_ms = now,
                "the newest event's receive time is more than a day ahead of the clock (was the clock set back?); receive times never go backwards, so new events get that time until the clock catches up"
            );
        }
    }
    now.max(last_ms)
}

pub(crate) fn writer_loop(
    inner: &Store,
    mut rx: mpsc::Receiver<Msg>,
    max_batch: usize,
    mut last_ms: u64,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut spools: Vec<SpoolRequest> = Vec::new();
    let mut closing = None;
    let mut probe = false;
    let mut last_reopen: Option<Instant> = None;
    loop {
        match rx.blocking_recv() {
            Some(Msg::Append(r)) => batch.push(*r),
            Some(Msg::Import(items, reply)) => {
                import(inner, &items, reply, &mut last_ms);
                continue;
            }
            Some(Msg::Spool(bytes, reply)) => spools.push((bytes, reply)),
            Some(Msg::Probe) => probe = true,
            #[cfg(feature = "test-hooks")]
            Some(Msg::Panic) => panic!("journal writer: panic injected by a test"),
            Some(Msg::Close(done)) => closing = Some(done),
            None => return,
        }
        // An import that comes while a group is gathered runs after it (a replicated journal
        // spools and imports side by side).
        let mut deferred = None;
        while closing.is_none() && batch.len() + spools.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Append(r)) => batch.push(*r),
                Ok(Msg::Spool(bytes, reply)) => spools.push((bytes, reply)),
                Ok(Msg::Import(items, reply)) => {
                    deferred = Some((items, reply));
                    break;
                }
                Ok(Msg::Probe) => probe = true,
                #[cfg(feature = "test-hooks")]
                Ok(Msg::Panic) => panic!("journal writer: panic injected by a test"),
                Ok(Msg::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if !spools.is_empty() {
            probe = false;
            let started = Instant::now();
            let result = inner.db().and_then(|db| commit_spools(inner, &db, &spools));
            inner.health.record(&result);
            match result {
                Ok(first) => {
                    inner.stats.observe_commit(started.elapsed());
                    inner
                        .spool_count
                        .fetch_add(spools.len() as u64, Ordering::SeqCst);
                    inner
                        .stats
                        .spooled
                        .fetch_add(spools.len() as u64, Ordering::Relaxed);
                    for (i, (_, reply)) in spools.drain(..).enumerate() {
                        let _ = reply.send(Ok(first + i as u64));
                    }
                }
                Err(e) => {
                    inner.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, events = spools.len(), "spool commit failed; nothing of it was stored");
                    for (_, reply) in spools.drain(..) {
                        let _ = reply.send(Err(e.clone()));
                    }
                    if let Err(e) = inner.reopen() {
                        tracing::error!(error = %e, "journal reopen failed; will retry");
                    }
                }
            }
        }
        if let Some((items, reply)) = deferred.take() {
            import(inner, &items, reply, &mut last_ms);
        }
        if probe && batch.is_empty() {
            probe = false;
            let result = inner.db().and_then(|db| {
                let txn = db.begin_write().map_err(write_err)?;
                txn.open_table(META)
                    .map_err(write_err)?
                    .insert(PROBE, inner.wall_ms())
                    .map_err(write_err)?;
                inner.health.commit(txn)
            });
            inner.health.record(&result);
            if let Err(e) = result {
                tracing::warn!(error = %e, "journal probe: still cannot write");
                // Reopening drops every reader's handle: not more than every 10 s.
                if last_reopen.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(10)) {
                    last_reopen = Some(Instant::now());
                    if let Err(e) = inner.reopen() {
                        tracing::error!(error = %e, "journal reopen failed; will retry");
                    }
                }
            }
        }
        if !batch.is_empty() {
            probe = false;
            let started = Instant::now();
            // Stamped here, in journal order, never earlier than the previous event: a wall
            // clock that steps back cannot make `replay --since` miss an event.
            last_ms = stamp(&inner.stats, last_ms, inner.wall_ms());
            let result = inner
                .db()
                .and_then(|db| commit_batch(inner, &db, &batch, last_ms));
            inner.health.record(&result);
            match result {
                Ok(appended) => {
                    inner.stats.observe_commit(started.elapsed());
                    let stored = appended.iter().filter(|a| a.is_ok()).count();
                    inner
                        .stats
                        .appended
                        .fetch_add(stored as u64, Ordering::Relaxed);
                    let last = appended
                        .iter()
                        .rev()
                        .find_map(|a| a.as_ref().ok().map(|a| a.seq))
                        .unwrap_or(0);
                    inner.advance_clock(last_ms);
                    for (request, done) in batch.drain(..).zip(appended) {
                        let _ = request.reply.send(done);
                    }
                    if last > 0 {
                        inner.changed.send_replace(last);
                    }
                }
                Err(e) => {
                    inner.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, events = batch.len(), "journal commit failed; nothing of the batch was stored");
                    for request in batch.drain(..) {
                        let _ = request.reply.send(Err(e.clone()));
                    }
                    if let Err(e) = inner.reopen() {
                        tracing::error!(error = %e, "journal reopen failed; will retry on the next append");
                    }
                }
            }
        }
        if let Some(done) = closing.take() {
            let _ = done.send(());
            return;
        }
    }
}

/// How stale a resource's history time may be when its state did not change: the same state
/// again within this is not written (one table fewer in most commits of a busy resource).
const HISTORY_REFRESH_MS: u64 = 60_000;

/// Classifies and stores a batch in one transaction; all or nothing (but a conditional
/// append whose resource is not as expected is left out, with its own error).
fn commit_batch(
    inner: &Store,
    db: &Database,
    batch: &[AppendRequest],
    received_at_ms: u64,
) -> Result<Vec<Result<Appended, JournalError>>, JournalError> {
    let received_at =
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(received_at_ms))
            .to_string();
    let txn = db.begin_write().map_err(write_err)?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let mut events = txn.open_table(EVENTS).map_err(write_err)?;
        let mut requests = txn.open_table(REQUESTS).map_err(write_err)?;
        let mut history = txn.open_table(HISTORY).map_err(write_err)?;
        // The next seq follows the newest event; `next_seq` in meta is written only by pruning
        // (which may delete the newest), never by an append: one table fewer per commit.
        let meta = txn.open_table(META).map_err(write_err)?;
        let mut next = next_seq(&meta, &events).map_err(write_err)?;
        drop(meta);
        let mut record = Vec::new();
        for request in batch {
            let draft = &request.draft;
            let (envelope, key, state) = match &draft.parsed {
                Parsed::Webhook(webhook) => {
                    let key = history_key(webhook);
                    let (prior, prior_ms): (Option<ResourceState>, u64) = match &key {
                        Some(k) => match history.get(k.as_str()).map_err(write_err)? {
                            Some(v) => (
                                read_history(&inner.stats.history_corrupt, k, v.value()),
                                history_time(v.value()).unwrap_or(0),
                            ),
                            None => (None, 0),
                        },
                        None => (None, 0),
                    };
                    if let Some(expected) = &draft.expect
                        && *expected != prior
                    {
                        out.push(Err(JournalError::NotAsExpected {
                            resource: key.clone().unwrap_or_default(),
                        }));
                        continue;
                    }
                    let (meaning, state) = classify_with(webhook, prior.as_ref());
                    let envelope = Envelope {
                        id: event_id(received_at_ms),
                        seq: next,
                        received_at: received_at.clone(),
                        source_ip: draft.source,
                        kinds: meaning.kinds,
                        origin: meaning.origin,
                        resource: meaning.resource,
                        problems: Vec::new(),
                        late: false,
                        reconciled: draft.reconciled.clone(),
                        payload: draft.payload.clone(),
                    };
                    // The same state again, written less than a minute ago: the history stays
                    // as it is (its time is when the resource was last heard of, to a minute).
                    let state = state.filter(|s| {
                        prior.as_ref() != Some(s)
                            || received_at_ms.saturating_sub(prior_ms) >= HISTORY_REFRESH_MS
                    });
                    (envelope, key, state)
                }
                // Kept as sent, flagged, and never part of a resource's history.
                Parsed::Invalid { resource, problems } => {
                    let envelope = Envelope {
                        id: event_id(received_at_ms),
                        seq: next,
                        received_at: received_at.clone(),
                        source_ip: draft.source,
                        kinds: vec![EventKind::Invalid],
                        origin: None,
                        resource: resource.clone(),
                        problems: problems.clone(),
                        late: false,
                        reconciled: draft.reconciled.clone(),
                        payload: draft.payload.clone(),
                    };
                    (envelope, None, None)
                }
            };
            encode_record(
                &mut record,
                received_at_ms,
                &draft.prefix,
                &draft.suffix,
                &envelope,
            )?;
            events.insert(next, record.as_slice()).map_err(write_err)?;
            if let Some(received) = &draft.received {
                requests
                    .insert(next, received.as_slice())
                    .map_err(write_err)?;
            }
            if let (Some(k), Some(state)) = (&key, state) {
                let bytes = encode_history(received_at_ms, &state)?;
                history
                    .insert(k.as_str(), bytes.as_slice())
                    .map_err(write_err)?;
            }
            out.push(Ok(Appended {
                id: envelope.id,
                seq: next,
                kinds: envelope.kinds,
                spooled: false,
            }));
            next += 1;
        }
    }
    inner.health.commit(txn)?;
    Ok(out)
}

/// Records a mirror's copies (see [`super::mirror::commit_import`]) and answers.
fn import(
    inner: &Store,
    items: &[Imported],
    reply: oneshot::Sender<Result<u64, JournalError>>,
    last_ms: &mut u64,
) {
    let started = Instant::now();
    let result = inner
        .db()
        .and_then(|db| super::mirror::commit_import(inner, &db, items, last_ms));
    inner.health.record(&result);
    if let Ok(last) = &result {
        inner.stats.observe_commit(started.elapsed());
        inner
            .stats
            .appended
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        inner.changed.send_replace(*last);
    } else {
        if let Err(e) = &result {
            inner.stats.observe_error(e);
        }
        if let Err(e) = inner.reopen() {
            tracing::error!(error = %e, "journal reopen failed; will retry");
        }
    }
    let _ = reply.send(result);
}

/// Stores spooled events in one transaction, each at the next key; returns the first key.
fn commit_spools(
    inner: &Store,
    db: &Database,
    spools: &[SpoolRequest],
) -> Result<u64, JournalError> {
    let txn = db.begin_write().map_err(write_err)?;
    let first;
    {
        let mut meta = txn.open_table(META).map_err(write_err)?;
        let mut table = txn.open_table(SPOOL).map_err(write_err)?;
        let mut next = meta
            .get(SPOOL_NEXT)
            .map_err(write_err)?
            .map_or(1, |v| v.value());
        first = next;
        for (bytes, _) in spools {
            table.insert(next, bytes.as_slice()).map_err(write_err)?;
            next += 1;
        }
        meta.insert(SPOOL_NEXT, next).map_err(write_err)?;
    }
    inner.health.commit(txn)?;
    Ok(first)
}
