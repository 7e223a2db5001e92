//! Who delivers each sink on the replicated journal (the [`Leases`]): a lease per sink in the
//! `<STREAM>_leases` bucket that expires unless renewed (every second; it lapses after
//! [`LEASE_TTL`](crate::config::LEASE_TTL)). The holder resumes from the sink's cursor in the
//! `<STREAM>_cursors` bucket and the dead letters in `<STREAM>_letters`, and writes both back
//! at every renewal, so when it dies another receiver takes the lease and resumes from there:
//! at least once, the same ids.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt as _;
use streamhook_core::backend::{Lease, Leases};
use streamhook_core::journal::WeakJournal;
use streamhook_core::{CauseKind, DeadLetter, Journal, JournalError};

use crate::config::{LEASE_RENEW, LEASE_TTL, MIRROR_STALE};
use crate::remote::{Remote, kv_key, remote_err};

/// What a deliverer last shared of a sink's dead letters and requeued events: key -> value.
type LetterSnapshot = HashMap<String, Bytes>;

/// What a holder has shared of one sink, so it shares only what changed.
#[derive(Debug, Default)]
struct Shared {
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
    shared: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Shared>>>>,
}

impl std::fmt::Debug for JetStreamLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLeases")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

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
        self.remote.mirror_current(MIRROR_STALE)
    }

    async fn acquire(&self, sink: &str) -> Option<Lease> {
        let journal = self.journal.upgrade()?;
        let revision = self.remote.try_lease_key(&kv_key(sink)).await?;
        match self.adopt(&journal, sink).await {
            Ok(state) => {
                if let Ok(mut shared) = self.shared.lock() {
                    shared.insert(sink.to_owned(), Arc::new(tokio::sync::Mutex::new(state)));
                }
                tracing::info!(sink, instance = %self.remote.instance(), "delivering: this receiver holds the sink's lease");
                self.set_held(sink, true);
                Some(Lease { revision })
            }
            Err(e) => {
                tracing::warn!(sink, error = %e, "cannot adopt the shared cursor and dead letters; letting the lease go");
                self.remote.delete_lease_key(&kv_key(sink), revision).await;
                None
            }
        }
    }

    async fn renew(&self, sink: &str, lease: &mut Lease) -> bool {
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
        let journal = &journal;
        let state = match self.shared.lock() {
            Ok(shared) => shared.get(sink).cloned(),
            Err(_) => None,
        };
        let Some(state) = state else {
            return false;
        };
        let share = async {
            let mut state = state.lock().await;
            if self.push_letters(journal, sink, &mut state).await {
                self.push_cursor(journal, sink, &mut state).await;
            }
        };
        tokio::time::timeout(within, share).await.is_ok()
    }

    async fn release(&self, sink: &str, lease: Lease, within: Option<Duration>) {
        self.set_held(sink, false);
        if let Some(within) = within
            && self.share(sink, within).await
        {
            self.remote
                .delete_lease_key(&kv_key(sink), lease.revision)
                .await;
        }
        if let Ok(mut shared) = self.shared.lock() {
            shared.remove(sink);
        }
    }

    fn holds(&self, sink: &str) -> bool {
        self.held.lock().map(|h| h.contains(sink)).unwrap_or(false)
    }

    async fn holder(&self, sink: &str) -> Option<String> {
        let value = self.remote.leases.get(kv_key(sink)).await.ok()??;
        Some(String::from_utf8_lossy(&value).into_owned())
    }

    /// Sets the local cursor of each sink this receiver does not deliver to the sink's shared
    /// cursor (a standby's copy would otherwise stay where it was: its lag would grow, and
    /// pruning would keep everything after it). For a sink it delivers, only lowers it
    /// (another receiver's replay).
    async fn follow(&self, sinks: &[String]) -> Result<(), JournalError> {
        let Some(journal) = self.journal.upgrade() else {
            return Err(JournalError::Closed);
        };
        let journal = &journal;
        for sink in sinks {
            if let Some(shared) = self.shared_cursor(sink).await? {
                let held = self.holds(sink);
                let name = sink.clone();
                journal
                    .blocking(move |journal| {
                        let local = journal.cursor(&name)?;
                        if local > shared || (!held && local != shared) {
                            journal.set_cursor(&name, shared)?;
                        }
                        Ok(())
                    })
                    .await?;
            }
        }
        Ok(())
    }
}

impl JetStreamLeases {
    pub(crate) fn new(remote: Arc<Remote>, journal: WeakJournal) -> Self {
        JetStreamLeases {
            remote,
            journal,
            held: Mutex::default(),
            shared: Mutex::default(),
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

    /// On taking a sink's lease: its shared cursor, then the dead letters and requeued events
    /// the previous deliverer shared, adopted into the local journal.
    async fn adopt(&self, journal: &Journal, sink: &str) -> Result<Shared, JournalError> {
        let cursor = self.shared_cursor(sink).await?;
        let name = sink.to_owned();
        // Resume from the shared cursor; a rewind left in this mirror by an earlier replay
        // asked of this receiver no longer applies.
        journal
            .blocking(move |j| {
                if let Some(seq) = cursor {
                    j.set_cursor(&name, seq)?;
                }
                j.clear_rewind(&name)
            })
            .await?;
        let letters = self.pull_letters(journal, sink).await?;
        Ok(Shared {
            letters,
            letters_shared: journal.letters_generation(),
            pushed: None,
        })
    }

    /// The sink's shared cursor.
    pub(crate) async fn shared_cursor(&self, sink: &str) -> Result<Option<u64>, JournalError> {
        let value = self
            .remote
            .cursors
            .get(kv_key(sink))
            .await
            .map_err(|e| shared_read("JetStream cursor", e))?;
        Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    /// Writes the sink's shared cursor.
    pub(crate) async fn put_cursor(&self, sink: &str, seq: u64) -> Result<(), JournalError> {
        self.remote
            .cursors
            .put(kv_key(sink), Bytes::from(seq.to_string()))
            .await
            .map(drop)
            .map_err(|e| remote_err("cursor", e))
    }

    /// Adopts the sink's shared dead letters and requeued events into the local mirror
    /// (replacing what it held for the sink), when this receiver takes the sink's lease.
    pub(crate) async fn pull_letters(
        &self,
        journal: &Journal,
        sink: &str,
    ) -> Result<LetterSnapshot, JournalError> {
        let prefix = format!("{}.", kv_key(sink));
        let mut snapshot = LetterSnapshot::new();
        let mut keys = self
            .remote
            .letters
            .keys()
            .await
            .map_err(|e| shared_read("JetStream letters", e))?;
        let mut wanted = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| shared_read("JetStream letters", e))?;
            if key.starts_with(&prefix) {
                wanted.push(key);
            }
        }
        let (mut dead, mut requeued) = (Vec::new(), Vec::new());
        for key in wanted {
            let value = self
                .remote
                .letters
                .get(&key)
                .await
                .map_err(|e| shared_read("JetStream letters", e))?;
            let Some(value) = value else {
                continue;
            };
            match serde_json::from_slice::<DeadLetter>(&value) {
                Ok(letter) if key[prefix.len()..].starts_with("d.") => dead.push(letter),
                Ok(letter) => requeued.push(letter),
                Err(e) => {
                    tracing::warn!(sink, key, error = %e, "unreadable shared dead letter; skipped");
                    continue;
                }
            }
            snapshot.insert(key, value);
        }
        let name = sink.to_owned();
        journal
            .blocking(move |j| j.replace_letters(&name, &dead, &requeued))
            .await?;
        Ok(snapshot)
    }

    /// Shares the sink's dead letters and requeued events as the local mirror holds them:
    /// puts what is new or changed since `snapshot`, deletes what is gone.
    async fn share_letters(
        &self,
        journal: &Journal,
        sink: &str,
        snapshot: &mut LetterSnapshot,
    ) -> Result<(), JournalError> {
        let name = sink.to_owned();
        let (dead, requeued) = journal
            .blocking(move |j| Ok((j.dead_letters(Some(&name))?, j.requeued(&name, usize::MAX)?)))
            .await?;
        let base = kv_key(sink);
        let mut now = LetterSnapshot::new();
        for (tag, letters) in [("d", dead), ("q", requeued)] {
            for letter in letters {
                let bytes = serde_json::to_vec(&letter).map_err(|e| {
                    JournalError::Write(streamhook_core::Cause::of(CauseKind::Encoding, e))
                })?;
                now.insert(format!("{base}.{tag}.{}", letter.seq), Bytes::from(bytes));
            }
        }
        for (key, value) in &now {
            if snapshot.get(key) != Some(value) {
                self.remote
                    .letters
                    .put(key, value.clone())
                    .await
                    .map_err(|e| remote_err("sharing dead letters", e))?;
                snapshot.insert(key.clone(), value.clone());
            }
        }
        let gone: Vec<String> = snapshot
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remote
                .letters
                .purge(&key)
                .await
                .map_err(|e| remote_err("sharing dead letters", e))?;
            snapshot.remove(&key);
        }
        Ok(())
    }

    /// Shares the sink's dead letters and requeued events when they changed (any change in
    /// the journal bumps the generation; an unchanged one costs nothing). False when they
    /// could not be shared: the cursor is then not shared either (a cursor shared past an
    /// event whose dead letter was not would lose it for the next deliverer).
    async fn push_letters(&self, journal: &Journal, sink: &str, state: &mut Shared) -> bool {
        let generation = journal.letters_generation();
        if generation == state.letters_shared {
            return true;
        }
        match self.share_letters(journal, sink, &mut state.letters).await {
            Ok(()) => {
                state.letters_shared = generation;
                true
            }
            Err(e) => {
                tracing::warn!(sink, error = %e, "cannot share the dead letters (retried; the cursor waits)");
                false
            }
        }
    }

    async fn push_cursor(&self, journal: &Journal, sink: &str, state: &mut Shared) {
        let name = sink.to_owned();
        match journal.blocking(move |j| j.cursor(&name)).await {
            Ok(seq) if state.pushed != Some(seq) => match self.put_cursor(sink, seq).await {
                Ok(()) => state.pushed = Some(seq),
                Err(e) => tracing::warn!(sink, error = %e, "cannot write the shared cursor"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(sink, error = %e, "cannot read the local cursor"),
        }
    }
}
