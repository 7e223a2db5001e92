//! Who delivers each sink on the replicated journal (the [`Leases`]), and what a deliverer
//! shares so that the next one neither skips nor repeats more than it must.
//!
//! - **The lease**: a key per sink in `<STREAM>_leases` that expires unless renewed (every
//!   [`LEASE_RENEW`]; it lapses after [`LEASE_TTL`]).
//! - **The sink's shared state**, in `<STREAM>_sinks` under the sink's key: `cursor` (the
//!   first seq not yet passed), `start` (where the sink's delivery began, recorded before its
//!   first delivery), `fence` (who holds it), and `d.<seq>` / `q.<seq>` (dead letters and
//!   requeued events). Each record carries the stream's identity (its creation time): a
//!   record of another incarnation of the stream (deleted and created again) is ignored,
//!   with a log line.
//! - **Fenced writes**: a holder taking a sink over first writes its `fence`, conditional on
//!   the last write under the sink's key; every later write of the holder is conditional on
//!   its own previous one (`Nats-Expected-Last-Subject-Sequence` with
//!   `Nats-Expected-Last-Subject-Sequence-Subject: <sink>.>`). A stale holder (paused, cut
//!   off) that comes back finds its writes refused, and stops.
//! - **Takeover** reads the sink's state from the bucket's leader and resumes from the
//!   cursor; without one, from the start record; without either (for this stream), from the
//!   stream's first event. Never from its own mirror's end, unless the sink is new: then that
//!   point is recorded as its start before anything is delivered.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use streamhook_core::backend::{Lease, Leases};
use streamhook_core::journal::WeakJournal;
use streamhook_core::{CauseKind, DeadLetter, Journal, JournalError};

use crate::config::{LEASE_RENEW, LEASE_TTL, MIRROR_STALE};
use crate::remote::{FencedWrite, Remote, kv_key};

/// What a holder last shared of a sink's dead letters and requeued events: key -> value.
type LetterSnapshot = HashMap<String, Bytes>;

/// A record of a sink's shared state, tied to one incarnation of the stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Tied<T> {
    /// The stream's creation time (ns since the epoch).
    pub(crate) stream: u64,
    #[serde(flatten)]
    pub(crate) value: T,
}

/// A position in the stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Position {
    pub(crate) seq: u64,
}

/// Who holds a sink.
#[derive(Debug, Serialize, Deserialize)]
struct Fence {
    holder: String,
    lease: u64,
}

/// A shared dead letter or requeued event.
#[derive(Debug, Serialize, Deserialize)]
struct Letter {
    letter: DeadLetter,
}

/// What a holder has shared of one sink.
#[derive(Debug, Default)]
struct Holding {
    /// The lease revision this holder took the sink with (its fence names it).
    lease: u64,
    /// The sequence of this holder's last write under the sink's key: what its next write
    /// expects.
    tree_seq: u64,
    /// A write failed or timed out (it may have landed): read the sink's state again before
    /// the next one.
    resync: bool,
    letters: LetterSnapshot,
    /// The journal's letters generation when they were last shared.
    letters_shared: u64,
    /// The cursor last written.
    pushed: Option<u64>,
}

/// The replicated journal's delivery leases.
pub(crate) struct JetStreamLeases {
    remote: Arc<Remote>,
    /// The local journal: the shared state is adopted into it, and shared from it.
    journal: WeakJournal,
    /// Sinks whose lease this receiver holds.
    held: Mutex<HashSet<String>>,
    /// Per held sink, what was shared.
    holding: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Holding>>>>,
}

impl std::fmt::Debug for JetStreamLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLeases")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

fn encoding_err(e: serde_json::Error) -> JournalError {
    JournalError::Write(streamhook_core::Cause::of(CauseKind::Encoding, e))
}

#[async_trait]
impl Leases for JetStreamLeases {
    fn is_shared(&self) -> bool {
        true
    }

    fn renew_every(&self) -> Option<Duration> {
        Some(LEASE_RENEW)
    }

    fn hold_for(&self) -> Duration {
        LEASE_TTL.saturating_sub(LEASE_RENEW * 3)
    }

    fn may_hold(&self) -> bool {
        self.remote.ready().is_some()
            && self.remote.mirror_refused().is_none()
            && self.remote.mirror_current(MIRROR_STALE)
    }

    async fn acquire(&self, sink: &str) -> Option<Lease> {
        let journal = self.journal.upgrade()?;
        let key = kv_key(sink);
        let revision = self.remote.try_lease_key(&key).await?;
        match self.take_over(&journal, sink, &key, revision).await {
            Ok(holding) => {
                if let Ok(mut map) = self.holding.lock() {
                    map.insert(sink.to_owned(), Arc::new(tokio::sync::Mutex::new(holding)));
                }
                tracing::info!(sink, instance = %self.remote.instance(), "delivering: this receiver holds the sink's lease");
                self.set_held(sink, true);
                Some(Lease { revision })
            }
            Err(e) => {
                tracing::warn!(sink, error = %e, "cannot take the sink over (its shared cursor and dead letters); letting the lease go");
                self.remote.delete_lease_key(&key, revision).await;
                None
            }
        }
    }

    async fn renew(&self, sink: &str, lease: &mut Lease) -> bool {
        if !self.holds(sink) {
            return false;
        }
        match self
            .remote
            .renew_lease_key(&kv_key(sink), lease.revision)
            .await
        {
            Some(revision) => {
                lease.revision = revision;
                true
            }
            None => false,
        }
    }

    async fn share(&self, sink: &str, within: Duration) -> bool {
        let Some(journal) = self.journal.upgrade() else {
            return false;
        };
        let state = match self.holding.lock() {
            Ok(map) => map.get(sink).cloned(),
            Err(_) => None,
        };
        let Some(state) = state else {
            return false;
        };
        let share = async {
            let mut state = state.lock().await;
            if state.resync {
                self.resync(sink, &mut state).await?;
            }
            match self.push_letters(&journal, sink, &mut state).await {
                Ok(true) => self.push_cursor(&journal, sink, &mut state).await,
                Ok(false) => Ok(()),
                Err(e) => Err(e),
            }
        };
        match tokio::time::timeout(within, share).await {
            Ok(Ok(())) => true,
            Ok(Err(Fenced)) => {
                tracing::warn!(
                    sink,
                    "the sink's shared state was written by another receiver since this one's last write: it holds the sink now"
                );
                self.set_held(sink, false);
                false
            }
            Err(_) => false,
        }
    }

    async fn release(&self, sink: &str, lease: Lease, within: Option<Duration>) {
        let shared = match within {
            Some(within) if self.holds(sink) => self.share(sink, within).await,
            _ => false,
        };
        self.set_held(sink, false);
        if shared {
            self.remote
                .delete_lease_key(&kv_key(sink), lease.revision)
                .await;
        }
        if let Ok(mut map) = self.holding.lock() {
            map.remove(sink);
        }
    }

    fn holds(&self, sink: &str) -> bool {
        self.held.lock().map(|h| h.contains(sink)).unwrap_or(false)
    }

    async fn holder(&self, sink: &str) -> Option<String> {
        let value = self.remote.ready()?.leases.get(kv_key(sink)).await.ok()??;
        Some(String::from_utf8_lossy(&value).into_owned())
    }

    /// Sets the local cursor of each sink this receiver does not deliver to the sink's shared
    /// cursor (a standby's copy would otherwise stay where it was: its lag would grow, and
    /// pruning would keep everything after it).
    async fn follow(&self, sinks: &[String]) -> Result<(), JournalError> {
        let Some(journal) = self.journal.upgrade() else {
            return Err(JournalError::Closed);
        };
        let Some(ready) = self.remote.ready() else {
            return Ok(());
        };
        for sink in sinks {
            if self.holds(sink) {
                continue;
            }
            let value = ready
                .sinks
                .get(format!("{}.cursor", kv_key(sink)))
                .await
                .map_err(|e| shared_read("JetStream cursor", e))?;
            let Some(value) = value else {
                continue;
            };
            let Ok(cursor) = serde_json::from_slice::<Tied<Position>>(&value) else {
                continue;
            };
            if cursor.stream != ready.created_ns {
                continue;
            }
            let (name, shared) = (sink.clone(), cursor.value.seq);
            journal
                .blocking(move |journal| {
                    if journal.cursor(&name)? != shared {
                        journal.set_cursor(&name, shared)?;
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(())
    }
}

/// A write refused because another receiver holds the sink now.
#[derive(Debug)]
struct Fenced;

/// A failed read of a bucket, its message prefixed with what was read.
fn shared_read<E>(what: &str, e: E) -> JournalError
where
    E: std::error::Error + Send + Sync + 'static,
{
    JournalError::Read(streamhook_core::Cause::with_source(
        CauseKind::Shared,
        format!("{what}: {e}"),
        e,
    ))
}

/// What a takeover read of a sink's shared state.
#[derive(Debug, Default)]
struct Found {
    cursor: Option<Tied<Position>>,
    start: Option<Tied<Position>>,
    letters: Vec<(String, Bytes, Tied<Letter>)>,
    /// Records of another incarnation of the stream, ignored.
    foreign: usize,
}

impl JetStreamLeases {
    pub(crate) fn new(remote: Arc<Remote>, journal: WeakJournal) -> Self {
        JetStreamLeases {
            remote,
            journal,
            held: Mutex::default(),
            holding: Mutex::default(),
        }
    }

    fn set_held(&self, sink: &str, held: bool) {
        if let Ok(mut h) = self.held.lock() {
            if held {
                h.insert(sink.to_owned());
            } else {
                h.remove(sink);
            }
        }
    }

    /// Takes a sink over (see the module's docs): fences it, reads its shared state from the
    /// bucket's leader, decides where delivery resumes (recording the start of a new sink),
    /// and adopts cursor and dead letters into the local journal.
    async fn take_over(
        &self,
        journal: &Journal,
        sink: &str,
        key: &str,
        lease: u64,
    ) -> Result<Holding, JournalError> {
        let ready = self.remote.need()?;
        let created = ready.created_ns;
        let prefix = format!("{key}.");
        let fence_key = format!("{key}.fence");
        let fence = serde_json::to_vec(&Tied {
            stream: created,
            value: Fence {
                holder: self.remote.instance().to_owned(),
                lease,
            },
        })
        .map_err(encoding_err)?;
        let mut attempt = 0;
        let (found, mut tree_seq) = loop {
            attempt += 1;
            let (values, last) = self.remote.read_tree(&prefix).await?;
            // The fence first: from here on, a previous holder's writes are refused.
            match self
                .remote
                .write_fenced(key, &fence_key, Some(Bytes::from(fence.clone())), last)
                .await
            {
                Ok(seq) => break (parse_tree(sink, key, created, values), seq),
                // Written between the read and the fence (a previous holder's last write):
                // read again.
                Err(FencedWrite::Fenced) if attempt < 5 => continue,
                Err(FencedWrite::Fenced) => {
                    return Err(JournalError::write(
                        CauseKind::Shared,
                        "the sink's shared state kept changing during the takeover",
                    ));
                }
                Err(FencedWrite::Failed(e)) => return Err(e),
            }
        };
        if found.foreign > 0 {
            tracing::warn!(
                sink,
                records = found.foreign,
                "the sink's shared records belong to another incarnation of the stream (it was deleted and created again); ignored"
            );
        }
        let name = sink.to_owned();
        let position = match (&found.cursor, &found.start) {
            (Some(cursor), _) => cursor.value.seq,
            (None, Some(start)) => {
                tracing::info!(
                    sink,
                    from = start.value.seq,
                    "no shared cursor: delivery resumes from where the sink started"
                );
                start.value.seq
            }
            (None, None) if found.foreign > 0 => {
                let first = self.first_event().await?;
                tree_seq = self.record_start(key, created, first, tree_seq).await?;
                tracing::info!(
                    sink,
                    from = first,
                    "no shared cursor or start for this stream: delivery starts from the stream's first event"
                );
                first
            }
            (None, None) => match self.legacy_cursor(sink, key, created).await {
                Some(seq) => {
                    tracing::info!(
                        sink,
                        from = seq,
                        "adopted the sink's cursor from the earlier format's bucket"
                    );
                    seq
                }
                None => {
                    // A new sink: where this receiver's configuration starts it (its
                    // `start`), recorded before anything is delivered, so that a holder
                    // after this one starts there too.
                    let n = name.clone();
                    let seq = journal.blocking(move |j| j.cursor(&n)).await?;
                    tree_seq = self.record_start(key, created, seq, tree_seq).await?;
                    tracing::info!(
                        sink,
                        from = seq,
                        "a new sink: its start is recorded for every receiver"
                    );
                    seq
                }
            },
        };
        let mut snapshot = LetterSnapshot::new();
        let (mut dead, mut requeued) = (Vec::new(), Vec::new());
        for (k, bytes, letter) in found.letters {
            if k[prefix.len()..].starts_with("d.") {
                dead.push(letter.value.letter);
            } else {
                requeued.push(letter.value.letter);
            }
            snapshot.insert(k, bytes);
        }
        if found.cursor.is_none() && found.start.is_none() && found.foreign == 0 {
            self.legacy_letters(sink, key, created, &mut dead, &mut requeued)
                .await;
        }
        // Resume from the shared position; a rewind left in this mirror by an earlier replay
        // asked of this receiver no longer applies.
        // A sink with no shared records at all keeps the dead letters this receiver holds
        // (the bucket may have been deleted: they may be the only copy); they are shared at
        // the first renewal.
        let adopt_letters = found.cursor.is_some()
            || found.start.is_some()
            || !dead.is_empty()
            || !requeued.is_empty();
        let generation = journal
            .blocking(move |j| {
                j.set_cursor(&name, position)?;
                j.clear_rewind(&name)?;
                if adopt_letters {
                    j.replace_letters(&name, &dead, &requeued)?;
                }
                Ok(j.letters_generation())
            })
            .await?;
        Ok(Holding {
            lease,
            tree_seq,
            resync: false,
            letters: snapshot,
            // Letters adopted from the earlier format are shared at the first renewal.
            letters_shared: if found.cursor.is_none() && found.start.is_none() {
                generation.wrapping_sub(1)
            } else {
                generation
            },
            pushed: found.cursor.map(|c| c.value.seq),
        })
    }

    /// Records where a sink's delivery starts (before its first delivery); returns the
    /// write's sequence.
    async fn record_start(
        &self,
        key: &str,
        created: u64,
        seq: u64,
        tree_seq: u64,
    ) -> Result<u64, JournalError> {
        let start = serde_json::to_vec(&Tied {
            stream: created,
            value: Position { seq },
        })
        .map_err(encoding_err)?;
        match self
            .remote
            .write_fenced(
                key,
                &format!("{key}.start"),
                Some(Bytes::from(start)),
                tree_seq,
            )
            .await
        {
            Ok(seq) => Ok(seq),
            Err(FencedWrite::Fenced) => Err(JournalError::write(
                CauseKind::Shared,
                "another receiver took the sink over during the takeover",
            )),
            Err(FencedWrite::Failed(e)) => Err(e),
        }
    }

    /// The stream's first event (its first held seq; after its last when it holds none).
    async fn first_event(&self) -> Result<u64, JournalError> {
        match self.remote.next_seq_from(1).await? {
            Some(seq) => Ok(seq),
            None => Ok(self.remote.stream_state().await?.0 + 1),
        }
    }

    /// A sink's cursor in the earlier format's `<STREAM>_cursors` bucket, when that bucket
    /// was made for this incarnation of the stream (created after it).
    async fn legacy_cursor(&self, sink: &str, key: &str, created: u64) -> Option<u64> {
        let ready = self.remote.ready()?;
        let bucket = ready
            .context
            .get_key_value(format!("{}_cursors", self.remote.name))
            .await
            .ok()?;
        let bucket_created = bucket.stream.cached_info().created.unix_timestamp_nanos();
        if bucket_created < created as i128 {
            tracing::warn!(
                sink,
                "the earlier format's cursors bucket is older than the stream (made for an earlier incarnation); not used"
            );
            return None;
        }
        let value = bucket.get(key).await.ok()??;
        std::str::from_utf8(&value).ok()?.parse().ok()
    }

    /// A sink's dead letters in the earlier format's `<STREAM>_letters` bucket (same rule).
    async fn legacy_letters(
        &self,
        sink: &str,
        key: &str,
        created: u64,
        dead: &mut Vec<DeadLetter>,
        requeued: &mut Vec<DeadLetter>,
    ) {
        let Some(ready) = self.remote.ready() else {
            return;
        };
        let Ok(bucket) = ready
            .context
            .get_key_value(format!("{}_letters", self.remote.name))
            .await
        else {
            return;
        };
        if bucket.stream.cached_info().created.unix_timestamp_nanos() < created as i128 {
            return;
        }
        let prefix = format!("{key}.");
        let Ok(mut keys) = bucket.keys().await else {
            return;
        };
        let mut wanted = Vec::new();
        while let Some(Ok(k)) = keys.next().await {
            if k.starts_with(&prefix) {
                wanted.push(k);
            }
        }
        for k in wanted {
            let Ok(Some(value)) = bucket.get(&k).await else {
                continue;
            };
            match serde_json::from_slice::<DeadLetter>(&value) {
                Ok(letter) if k[prefix.len()..].starts_with("d.") => dead.push(letter),
                Ok(letter) => requeued.push(letter),
                Err(e) => {
                    tracing::warn!(sink, key = k, error = %e, "unreadable dead letter in the earlier format's bucket; skipped")
                }
            }
        }
    }

    /// After a write that failed or timed out (it may have landed, moving the sink's last
    /// sequence): reads the sink's state from the leader and, if its fence is still this
    /// holder's, adopts the last sequence; `Err(Fenced)` when another holder fenced it.
    async fn resync(&self, sink: &str, state: &mut Holding) -> Result<(), Fenced> {
        let key = kv_key(sink);
        let (values, last) = match self.remote.read_tree(&format!("{key}.")).await {
            Ok(found) => found,
            // Still unreadable: try again at the next share.
            Err(_) => return Ok(()),
        };
        let fence_key = format!("{key}.fence");
        let ours = values
            .iter()
            .find(|v| v.key == fence_key)
            .and_then(|v| serde_json::from_slice::<Tied<Fence>>(&v.value).ok())
            .is_some_and(|f| {
                f.value.holder == self.remote.instance() && f.value.lease == state.lease
            });
        if !ours {
            return Err(Fenced);
        }
        state.tree_seq = last;
        state.resync = false;
        Ok(())
    }

    /// One fenced write of the sink's state: `Err(Fenced)` when another holder wrote its
    /// fence since (checked against the leader, so a write of this holder's that landed
    /// though its answer was lost does not count); `Ok(false)` when it failed (tried again
    /// at the next share, after reading the state again).
    async fn write(
        &self,
        sink: &str,
        key: &str,
        value: Option<Bytes>,
        state: &mut Holding,
    ) -> Result<bool, Fenced> {
        let sink_key = kv_key(sink);
        for attempt in 0..2 {
            // Cleared once answered: a write cut off mid-way (a timeout) may have landed.
            state.resync = true;
            match self
                .remote
                .write_fenced(&sink_key, key, value.clone(), state.tree_seq)
                .await
            {
                Ok(seq) => {
                    state.tree_seq = seq;
                    state.resync = false;
                    return Ok(true);
                }
                Err(FencedWrite::Fenced) if attempt == 0 => {
                    // Perhaps an earlier write of ours landed unseen: check the fence.
                    state.resync = true;
                    self.resync(sink, state).await?;
                    if state.resync {
                        return Ok(false);
                    }
                }
                Err(FencedWrite::Fenced) => return Err(Fenced),
                Err(FencedWrite::Failed(e)) => {
                    tracing::warn!(sink, error = %e, "cannot write the sink's shared state (retried)");
                    state.resync = true;
                    return Ok(false);
                }
            }
        }
        Ok(false)
    }

    /// Shares the sink's dead letters and requeued events as the local mirror holds them:
    /// writes what is new or changed since the last share, deletes what is gone. `Ok(false)`:
    /// they could not be shared now (the cursor then waits: a cursor shared past an event
    /// whose dead letter was not would lose it for the next holder).
    async fn push_letters(
        &self,
        journal: &Journal,
        sink: &str,
        state: &mut Holding,
    ) -> Result<bool, Fenced> {
        let generation = journal.letters_generation();
        if generation == state.letters_shared {
            return Ok(true);
        }
        let Some(ready) = self.remote.ready() else {
            return Ok(false);
        };
        let name = sink.to_owned();
        let letters = journal
            .blocking(move |j| Ok((j.dead_letters(Some(&name))?, j.requeued(&name, usize::MAX)?)))
            .await;
        let (dead, requeued) = match letters {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(sink, error = %e, "cannot read the dead letters to share them");
                return Ok(false);
            }
        };
        let key = kv_key(sink);
        let mut now = LetterSnapshot::new();
        for (tag, letters) in [("d", dead), ("q", requeued)] {
            for letter in letters {
                let seq = letter.seq;
                let Ok(bytes) = serde_json::to_vec(&Tied {
                    stream: ready.created_ns,
                    value: Letter { letter },
                }) else {
                    continue;
                };
                now.insert(format!("{key}.{tag}.{seq}"), Bytes::from(bytes));
            }
        }
        let changed: Vec<(String, Option<Bytes>)> = now
            .iter()
            .filter(|(k, v)| state.letters.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .chain(
                state
                    .letters
                    .keys()
                    .filter(|k| !now.contains_key(*k))
                    .map(|k| (k.clone(), None)),
            )
            .collect();
        for (k, value) in changed {
            if !self.write(sink, &k, value.clone(), state).await? {
                return Ok(false);
            }
            match value {
                Some(v) => state.letters.insert(k, v),
                None => state.letters.remove(&k),
            };
        }
        state.letters_shared = generation;
        Ok(true)
    }

    async fn push_cursor(
        &self,
        journal: &Journal,
        sink: &str,
        state: &mut Holding,
    ) -> Result<(), Fenced> {
        let Some(ready) = self.remote.ready() else {
            return Ok(());
        };
        let name = sink.to_owned();
        let seq = match journal.blocking(move |j| j.cursor(&name)).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::warn!(sink, error = %e, "cannot read the local cursor");
                return Ok(());
            }
        };
        if state.pushed == Some(seq) {
            return Ok(());
        }
        let Ok(bytes) = serde_json::to_vec(&Tied {
            stream: ready.created_ns,
            value: Position { seq },
        }) else {
            return Ok(());
        };
        let key = kv_key(sink);
        if self
            .write(
                sink,
                &format!("{key}.cursor"),
                Some(Bytes::from(bytes)),
                state,
            )
            .await?
        {
            state.pushed = Some(seq);
        }
        Ok(())
    }
}

/// Sorts what a takeover read under a sink's key.
fn parse_tree(
    sink: &str,
    key: &str,
    created: u64,
    values: Vec<crate::remote::LeaderValue>,
) -> Found {
    let mut found = Found::default();
    for v in values {
        let Some(rest) = v.key.strip_prefix(key).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        let stream_of = |bytes: &[u8]| {
            serde_json::from_slice::<Tied<serde_json::Value>>(bytes)
                .ok()
                .map(|t| t.stream)
        };
        if rest == "fence" {
            continue;
        }
        match stream_of(&v.value) {
            Some(s) if s == created => {}
            Some(_) => {
                found.foreign += 1;
                continue;
            }
            None => {
                tracing::warn!(sink, key = %v.key, "unreadable shared record of the sink; ignored");
                continue;
            }
        }
        match rest {
            "cursor" => found.cursor = serde_json::from_slice(&v.value).ok(),
            "start" => found.start = serde_json::from_slice(&v.value).ok(),
            r if r.starts_with("d.") || r.starts_with("q.") => {
                match serde_json::from_slice::<Tied<Letter>>(&v.value) {
                    Ok(letter) => found.letters.push((v.key.clone(), v.value.clone(), letter)),
                    Err(e) => {
                        tracing::warn!(sink, key = %v.key, error = %e, "unreadable shared dead letter; ignored")
                    }
                }
            }
            _ => {}
        }
    }
    found
}
