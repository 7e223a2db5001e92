//! Where an event gets its place on the replicated journal (the [`Sequencer`]), and the spool
//! that keeps it when the stream cannot take it now.
//!
//! Each event is one message on its resource's subject, carrying the resource's classifier
//! state after it. The receiver classifies against the resource's last message (known from
//! its own previous append or its mirror; read from the stream's leader otherwise) and
//! publishes with `Nats-Expected-Last-Subject-Sequence` (reading and classifying again when
//! another receiver appended in between) and `Nats-Msg-Id` = the event id: one round trip in
//! the common case. The answer follows the stream's ack (a quorum of replicas); it does not
//! wait for this receiver's mirror.
//!
//! **The spool.** When no server is connected, the stream and buckets are not set up (or are
//! refused), events wait in the spool already, or the stream does not acknowledge within
//! `spool_after`, the event is kept in the local file's spool (synced, as on one host) with
//! the id and receive time it was given, and the request is answered. A forwarder publishes
//! spooled events to the stream in arrival order (per resource; the same `Nats-Msg-Id`, so a
//! publish that did land meanwhile is stored once) as soon as it takes events.
//!
//! **Late events.** A resource's history follows receive time: every message carries the
//! newest receive time of its resource's events (a header). An event received before that
//! (spooled, retried, resent by a balancer to another receiver) is stored after it, kept and
//! delivered, flagged `late`, classified on its own; the resource's state is left as it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self as js};
use async_trait::async_trait;
use streamhook_core::backend::{Draft, Sequencer, SharedPruned, SharedRetention, SharedStatus};
use streamhook_core::journal::WeakJournal;
use streamhook_core::journal::record::{decode_event, event_id, history_key};
use streamhook_core::{Appended, CauseKind, Journal, JournalError, Parsed, Spooled};
use streamhook_types::classify::classify_with;
use streamhook_types::{Envelope, EventId, EventKind};
use tokio::sync::Notify;

use crate::config::MAX_CONFLICTS;
use crate::message::{NEWEST_HEADER, decode_message, encode_message, newest_ms};
use crate::remote::{Known, Phase, Remote, remote_err, remote_msg};

/// How many spooled events the forwarder takes at once.
const FORWARD_BATCH: usize = 256;

/// How long writing an event to the spool may take (on top of `spool_after`) before the
/// request is answered 503.
const SPOOL_WRITE_LIMIT: Duration = Duration::from_secs(10);

/// The replicated journal's appends.
pub(crate) struct JetStreamSequencer {
    pub(crate) remote: Arc<Remote>,
    /// The local journal (the spool, pruning's cursors, the history for a spooled answer).
    journal: WeakJournal,
    /// One append at a time per resource in this receiver: concurrent appends of one resource
    /// would otherwise all race on its compare-and-set, and all but one retry. (Other
    /// receivers' appends still race, and the compare-and-set serialises them.)
    appending: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Wakes the forwarder when an event is spooled.
    pub(crate) wake: Notify,
    /// How many events of each resource wait in the spool: a resource's next event waits
    /// behind them (in the spool), other resources' go straight to the stream.
    waiting: Mutex<HashMap<String, u64>>,
    /// The newest receive time stamped here: this receiver's stamps never go back (a clock
    /// stepped back would make its own events late).
    last_stamp: std::sync::atomic::AtomicU64,
    /// When the spool's fallbacks were last logged.
    logged: Mutex<Instant>,
}

impl std::fmt::Debug for JetStreamSequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSequencer")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[async_trait]
impl Sequencer for JetStreamSequencer {
    fn backend(&self) -> &'static str {
        "jetstream"
    }

    async fn append(&self, draft: Draft) -> Result<Appended, JournalError> {
        let journal = self.journal.upgrade().ok_or(JournalError::Closed)?;
        // Bounded whatever happens below (a stalled disk under the spool): the request is
        // answered, with 503 at worst, never held for ever.
        let limit = self.remote.config.spool_after + SPOOL_WRITE_LIMIT;
        match tokio::time::timeout(limit, self.append_inner(&journal, draft)).await {
            Ok(result) => result,
            Err(_) => Err(JournalError::write(
                CauseKind::Io,
                format!(
                    "neither the stream nor the spool took the event within {} (the local disk stalls?); it was not accepted",
                    humantime::format_duration(limit)
                ),
            )),
        }
    }

    // No `unavailable`: while the spool can be written, events are accepted whatever the
    // stream's state (a refused configuration, a mirror that cannot follow): `/readyz` stays
    // 200 and `shared_status` says what is wrong.

    fn shared_status(&self) -> Option<SharedStatus> {
        let remote = &*self.remote;
        let connected = remote.connected();
        let (state, problem) = match remote.phase() {
            Phase::Refused(why) => (format!("refused: {why}"), Some(why)),
            _ if !connected => (
                "not connected to any NATS server (events are spooled)".to_owned(),
                None,
            ),
            Phase::Connecting(why) => (format!("setting up: {why}"), None),
            Phase::Ready => match remote.mirror_refused() {
                Some(why) => (
                    format!("mirror refused (this receiver delivers nothing): {why}"),
                    Some(why),
                ),
                None => ("connected".to_owned(), None),
            },
        };
        Some(SharedStatus::new(connected, state).with_problem(problem))
    }

    async fn exclusive(&self, name: &str) -> Option<Box<dyn streamhook_core::backend::Exclusive>> {
        // `=` then a name that is not two hex digits: no sink's lease key is this.
        let key = format!("=x{name}");
        let revision = self.remote.try_lease_key(&key).await?;
        Some(Box::new(SharedExclusive::hold(
            Arc::clone(&self.remote),
            key,
            revision,
        )))
    }

    async fn caught_up(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let Ok(Ok((last, _))) = tokio::time::timeout_at(deadline, self.remote.stream_state()).await
        else {
            return false;
        };
        loop {
            let Some(journal) = self.journal.upgrade() else {
                return false;
            };
            if journal.last_committed() >= last {
                return true;
            }
            drop(journal);
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn drain(&self, within: Duration) -> u64 {
        let Some(journal) = self.journal.upgrade() else {
            return 0;
        };
        let deadline = Instant::now() + within;
        while journal.spool_len() > 0 && Instant::now() < deadline && self.remote.takes_events() {
            self.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        journal.spool_len()
    }

    async fn prune_shared(
        &self,
        retention: &SharedRetention,
    ) -> Result<Option<SharedPruned>, JournalError> {
        let Some(journal) = self.journal.upgrade() else {
            return Err(JournalError::Closed);
        };
        // A receiver whose mirror cannot follow the stream (it was created again) knows
        // nothing of the new one's cursors: it never prunes it.
        if !self.remote.takes_events() || self.remote.mirror_refused().is_some() {
            return Ok(None);
        }
        crate::prune::prune_shared(&self.remote, &journal, retention).await
    }
}

impl JetStreamSequencer {
    pub(crate) fn new(remote: Arc<Remote>, journal: WeakJournal) -> Self {
        JetStreamSequencer {
            remote,
            journal,
            appending: Mutex::default(),
            wake: Notify::new(),
            waiting: Mutex::default(),
            last_stamp: std::sync::atomic::AtomicU64::new(0),
            logged: Mutex::new(Instant::now() - Duration::from_secs(3600)),
        }
    }

    async fn append_inner(
        &self,
        journal: &Journal,
        draft: Draft,
    ) -> Result<Appended, JournalError> {
        let key = match &draft.parsed {
            Parsed::Webhook(webhook) => history_key(webhook),
            Parsed::Invalid { .. } => None,
        };
        let remote = &*self.remote;
        let spool_after = remote.config.spool_after;
        // One event of a resource at a time, stamped in its turn: this receiver's events of
        // a resource are received, spooled and stored in one order (none is late here).
        let turn = key.as_ref().map(|k| self.turn_for(k));
        let _turn = match &turn {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let received_at_ms = self.stamp();
        let id = event_id(received_at_ms);
        if draft.expect.is_some() {
            // A conditional append (a reconciled event) is compared with the stream's own
            // last message of its resource, never spooled: kept here, it would be placed
            // after whatever the stream takes meanwhile, unchecked.
            if !remote.takes_events() || key.as_ref().is_some_and(|k| self.waits(k)) {
                return Err(JournalError::Busy);
            }
            return match tokio::time::timeout(
                remote.config.timeout,
                self.place(&id, received_at_ms, &draft, key.as_deref()),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => {
                    if let Some(k) = &key {
                        remote.forget(k);
                    }
                    Err(JournalError::Busy)
                }
            };
        }
        if !remote.takes_events() {
            return self
                .spool(
                    journal,
                    id,
                    received_at_ms,
                    draft,
                    key,
                    "the stream cannot take events now",
                )
                .await;
        }
        if key.as_ref().is_some_and(|k| self.waits(k)) {
            // Earlier events of this resource wait in the spool: it must not overtake them.
            return self
                .spool(
                    journal,
                    id,
                    received_at_ms,
                    draft,
                    key,
                    "earlier events of its resource are spooled",
                )
                .await;
        }
        let placed = tokio::time::timeout(
            spool_after,
            self.place(&id, received_at_ms, &draft, key.as_deref()),
        )
        .await;
        match placed {
            Ok(Ok(appended)) => Ok(appended),
            Ok(Err(e)) => {
                let why = format!("the stream did not take it: {e}");
                self.spool(journal, id, received_at_ms, draft, key, &why)
                    .await
            }
            Err(_) => {
                // It may still land: the forwarder publishes it again with the same id,
                // which the stream's duplicate window stores once.
                if let Some(k) = &key {
                    remote.forget(k);
                }
                let why = format!(
                    "no acknowledgement within spool_after ({})",
                    humantime::format_duration(spool_after)
                );
                self.spool(journal, id, received_at_ms, draft, key, &why)
                    .await
            }
        }
    }

    /// A receive time: the wall clock, never before the last one stamped here.
    fn stamp(&self) -> u64 {
        let now = now_ms();
        let last = self
            .last_stamp
            .fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        now.max(last)
    }

    /// Whether events of resource `key` wait in the spool.
    fn waits(&self, key: &str) -> bool {
        self.waiting
            .lock()
            .map(|w| w.get(key).is_some_and(|n| *n > 0))
            .unwrap_or(true)
    }

    /// Counts spooled events of a resource in (`+1`) or out (`-n`).
    fn count_waiting(&self, key: &str, delta: i64) {
        if let Ok(mut w) = self.waiting.lock() {
            let n = w.entry(key.to_owned()).or_default();
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                w.remove(key);
            }
        }
    }

    /// Counts what the spool holds (at open).
    pub(crate) fn set_waiting(&self, counts: HashMap<String, u64>) {
        if let Ok(mut w) = self.waiting.lock() {
            *w = counts;
        }
    }

    /// The lock that serialises this receiver's appends of one resource. Entries nobody
    /// holds are dropped as others are taken, so the map stays as small as what is in flight.
    fn turn_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.appending.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() > 1024 {
            map.retain(|_, lock| Arc::strong_count(lock) > 1);
        }
        Arc::clone(map.entry(key.to_owned()).or_default())
    }

    /// Keeps the event in the spool and answers it: its kinds as this receiver's copy of the
    /// resource's history reads them (the stream classifies again when it takes it).
    async fn spool(
        &self,
        journal: &Journal,
        id: EventId,
        received_at_ms: u64,
        draft: Draft,
        key: Option<String>,
        why: &str,
    ) -> Result<Appended, JournalError> {
        let kinds = match &draft.parsed {
            Parsed::Webhook(webhook) => {
                // What this receiver knows of the resource's last message (its own last
                // append, or its mirror's copy), else the mirror's history.
                let prior = match &key {
                    Some(k) => match self.remote.known(k) {
                        Some(known) => known.state,
                        None => {
                            let k = k.clone();
                            journal
                                .blocking(move |j| j.history(&k))
                                .await
                                .ok()
                                .flatten()
                        }
                    },
                    None => None,
                };
                classify_with(webhook, prior.as_ref()).0.kinds
            }
            Parsed::Invalid { .. } => vec![EventKind::Invalid],
        };
        journal.spool(id.clone(), received_at_ms, draft).await?;
        if let Some(k) = &key {
            self.count_waiting(k, 1);
        }
        self.wake.notify_one();
        if let Ok(mut logged) = self.logged.lock()
            && logged.elapsed() > Duration::from_secs(10)
        {
            *logged = Instant::now();
            tracing::warn!(reason = %why, spooled = journal.spool_len(), "keeping events in the spool (answered, forwarded to the stream when it takes them)");
        }
        Ok(Appended {
            id,
            seq: 0,
            kinds,
            spooled: true,
        })
    }

    /// The resource's last message, read from the stream's leader.
    async fn read_last(&self, subject: &str) -> Result<Known, JournalError> {
        let ready = self.remote.need()?;
        match ready.stream.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => {
                // An unreadable last message (another publisher, a newer format) must not
                // block the resource for ever: classify as new, as an unreadable redb
                // history record is, and say so.
                let (state, newest) = match decode_message(&msg.payload) {
                    Ok(decoded) => {
                        let newest = newest_ms(Some(&msg.headers), decoded.record);
                        let state = match decoded.state.map(serde_json::from_slice) {
                            Some(Ok(state)) => Some(state),
                            Some(Err(e)) => {
                                tracing::error!(seq = msg.sequence, error = %e, "unreadable classifier state in the shared stream; classifying the resource as new");
                                None
                            }
                            None => None,
                        };
                        (state, newest)
                    }
                    Err(e) => {
                        tracing::error!(seq = msg.sequence, error = %e, "unreadable message on a resource's subject; classifying the resource as new");
                        (None, 0)
                    }
                };
                Ok(Known {
                    seq: msg.sequence,
                    state,
                    newest_ms: newest,
                })
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(Known {
                seq: 0,
                state: None,
                newest_ms: 0,
            }),
            Err(e) => Err(remote_err("reading the resource's last event", e)),
        }
    }

    /// What a resource's last message is: known, or read from the stream's leader.
    async fn known_or_read(&self, key: Option<&str>) -> Result<Known, JournalError> {
        match key {
            Some(k) => match self.remote.known(k) {
                Some(known) => Ok(known),
                None => self.read_last(&self.remote.subject(key)).await,
            },
            None => Ok(Known {
                seq: 0,
                state: None,
                newest_ms: 0,
            }),
        }
    }

    /// Classifies an event against its resource's last message and builds its publish.
    fn prepare(
        &self,
        id: &EventId,
        received_at_ms: u64,
        draft: &Draft,
        key: Option<&str>,
        known: &Known,
    ) -> Result<Prepared, JournalError> {
        let received_at =
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(received_at_ms))
                .to_string();
        // Received before the resource's newest event: kept, flagged, and the resource's
        // state left as it is (never rolled back).
        let late = key.is_some() && received_at_ms < known.newest_ms;
        let (envelope, state, newest) = match &draft.parsed {
            Parsed::Webhook(webhook) => {
                // A resource idle longer than history_max_age is new, as on one host.
                let expired =
                    self.remote.config.history_max_age.is_some_and(|age| {
                        known.newest_ms + (age.as_millis() as u64) < received_at_ms
                    });
                let prior = if expired { None } else { known.state.clone() };
                if let Some(expected) = &draft.expect
                    && *expected != prior
                {
                    return Err(JournalError::NotAsExpected {
                        resource: key.unwrap_or_default().to_owned(),
                    });
                }
                let (meaning, state) = if late {
                    (classify_with(webhook, None).0, known.state.clone())
                } else {
                    let (meaning, state) = classify_with(webhook, prior.as_ref());
                    // A resource's newest message always carries its state: an event that
                    // changes nothing carries the previous one forward.
                    (meaning, state.or(prior))
                };
                let envelope = Envelope {
                    id: id.clone(),
                    seq: 0,
                    received_at,
                    source_ip: draft.source,
                    kinds: meaning.kinds,
                    origin: meaning.origin,
                    resource: meaning.resource,
                    problems: Vec::new(),
                    late,
                    reconciled: draft.reconciled.clone(),
                    payload: draft.payload.clone(),
                };
                (envelope, state, known.newest_ms.max(received_at_ms))
            }
            Parsed::Invalid { resource, problems } => (
                Envelope {
                    id: id.clone(),
                    seq: 0,
                    received_at,
                    source_ip: draft.source,
                    kinds: vec![EventKind::Invalid],
                    origin: None,
                    resource: resource.clone(),
                    problems: problems.clone(),
                    late: false,
                    reconciled: draft.reconciled.clone(),
                    payload: draft.payload.clone(),
                },
                None,
                received_at_ms,
            ),
        };
        let kinds = envelope.kinds.clone();
        let payload = encode_message(
            key,
            state.as_ref(),
            draft.received.as_deref(),
            received_at_ms,
            &draft.prefix,
            &draft.suffix,
            &envelope,
        )?;
        let mut publish = js::message::PublishMessage::build()
            .payload(payload)
            .message_id(&id.0)
            .header(NEWEST_HEADER, newest.to_string().as_str());
        if key.is_some() {
            publish = publish.expected_last_subject_sequence(known.seq);
        }
        Ok(Prepared {
            publish,
            kinds,
            after: Known {
                seq: 0,
                state,
                newest_ms: newest,
            },
        })
    }

    /// What the stream answered a publish with, as an append's answer (`Ok(None)`: refused
    /// because another receiver appended to the resource since it was read).
    async fn settle(
        &self,
        id: &EventId,
        key: Option<&str>,
        prepared: Prepared,
        result: Result<js::publish::PublishAck, js::context::PublishError>,
    ) -> Result<Option<Appended>, JournalError> {
        let remote = &*self.remote;
        match result {
            Ok(ack) if ack.duplicate => {
                // A retry of a publish that was stored: answer with what was stored.
                if let Some(k) = key {
                    remote.forget(k);
                }
                let msg = remote
                    .need()?
                    .stream
                    .get_raw_message(ack.sequence)
                    .await
                    .map_err(|e| remote_err("reading a duplicate back", e))?;
                let decoded = decode_message(&msg.payload).map_err(|m| JournalError::Corrupt {
                    seq: ack.sequence,
                    message: m,
                })?;
                let stored = decode_event(ack.sequence, decoded.record)?;
                Ok(Some(Appended {
                    id: id.clone(),
                    seq: ack.sequence,
                    kinds: stored.envelope()?.kinds,
                    spooled: false,
                }))
            }
            Ok(ack) => {
                if let Some(k) = key {
                    let mut after = prepared.after;
                    after.seq = ack.sequence;
                    remote.learn(k, after);
                }
                Ok(Some(Appended {
                    id: id.clone(),
                    seq: ack.sequence,
                    kinds: prepared.kinds,
                    spooled: false,
                }))
            }
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                // Another receiver appended to the resource: read it again.
                if let Some(k) = key {
                    remote.forget(k);
                }
                Ok(None)
            }
            Err(e) => {
                if let Some(k) = key {
                    remote.forget(k);
                }
                Err(remote_err(
                    "no acknowledgement (the event may have been stored; it is published again with the same id)",
                    e,
                ))
            }
        }
    }

    /// Publishes one event to its resource's subject (see the module's docs), classifying it
    /// against the resource's last message; returns once the stream acknowledged it.
    pub(crate) async fn place(
        &self,
        id: &EventId,
        received_at_ms: u64,
        draft: &Draft,
        key: Option<&str>,
    ) -> Result<Appended, JournalError> {
        let ready = self.remote.need()?;
        let subject = self.remote.subject(key);
        let mut conflicts = 0;
        loop {
            let known = self.known_or_read(key).await?;
            let mut prepared = self.prepare(id, received_at_ms, draft, key, &known)?;
            let publish = std::mem::take(&mut prepared.publish);
            let result = match ready.context.send_publish(subject.clone(), publish).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            if let Some(appended) = self.settle(id, key, prepared, result).await? {
                return Ok(appended);
            }
            conflicts += 1;
            if conflicts >= MAX_CONFLICTS {
                return Err(remote_msg(
                    "append",
                    format!("{conflicts} conflicting writers on one resource"),
                ));
            }
        }
    }

    /// Forwards a wave of spooled events, no two of one resource, in arrival order: their
    /// publishes are sent one after another on the one connection (so the stream stores them
    /// in that order), then their acks awaited. Returns the spool keys (and resources) of
    /// those stored.
    #[allow(clippy::type_complexity)]
    async fn forward_wave(
        &self,
        wave: &[(Option<String>, &Spooled)],
    ) -> (Vec<(u64, Option<String>)>, Option<JournalError>) {
        let ready = match self.remote.need() {
            Ok(ready) => ready,
            Err(e) => return (Vec::new(), Some(e)),
        };
        // The resources not known yet are read side by side first.
        let reads = futures_util::future::join_all(
            wave.iter()
                .map(|(key, _)| self.known_or_read(key.as_deref())),
        )
        .await;
        let mut sent = Vec::with_capacity(wave.len());
        let mut failure = None;
        for ((key, spooled), known) in wave.iter().zip(reads) {
            let known = match known {
                Ok(known) => known,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let mut prepared = match self.prepare(
                &spooled.id,
                spooled.received_at_ms,
                &spooled.draft,
                key.as_deref(),
                &known,
            ) {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let publish = std::mem::take(&mut prepared.publish);
            match ready
                .context
                .send_publish(self.remote.subject(key.as_deref()), publish)
                .await
            {
                Ok(ack) => sent.push((key, spooled, prepared, ack)),
                Err(e) => {
                    failure = Some(remote_err("forwarding a spooled event", e));
                    break;
                }
            }
        }
        // The acknowledgements, side by side, under one deadline.
        let timeout = self.remote.config.timeout;
        let acks = futures_util::future::join_all(sent.into_iter().map(
            |(key, spooled, prepared, ack)| async move {
                (
                    key,
                    spooled,
                    prepared,
                    tokio::time::timeout(timeout, ack).await,
                )
            },
        ))
        .await;
        let mut done = Vec::new();
        for (key, spooled, prepared, result) in acks {
            let result = match result {
                Ok(result) => result,
                Err(_) => {
                    if let Some(k) = key {
                        self.remote.forget(k);
                    }
                    failure = Some(remote_msg(
                        "forwarding a spooled event",
                        "no acknowledgement in time",
                    ));
                    continue;
                }
            };
            match self
                .settle(&spooled.id, key.as_deref(), prepared, result)
                .await
            {
                Ok(Some(_)) => done.push((spooled.key, key.clone())),
                // Another receiver appended to the resource: forwarded again (read first).
                Ok(None) => {}
                Err(e) => failure = Some(e),
            }
        }
        (done, failure)
    }
}

/// An event ready to publish.
struct Prepared {
    publish: js::message::PublishMessage,
    kinds: Vec<EventKind>,
    /// What the resource's last message is once it is stored (its seq set then).
    after: Known,
}

/// Forwards spooled events to the stream, in arrival order, for as long as the journal is
/// open: each is taken out of the spool once the stream acknowledged it. One the stream
/// stored but that could not be taken out (the disk) is remembered, never published again
/// by this process, and taken out later.
pub(crate) async fn run_forwarder(sequencer: Arc<JetStreamSequencer>) {
    let mut wait = Duration::from_millis(100);
    let mut logged = Instant::now() - Duration::from_secs(60);
    // Stored in the stream, still in the spool: key -> resource.
    let mut stored: HashMap<u64, Option<String>> = HashMap::new();
    // Records that cannot be read: kept in the spool (never dropped), skipped, told.
    let mut unreadable: std::collections::HashSet<u64> = Default::default();
    loop {
        let Some(journal) = sequencer.journal.upgrade() else {
            return;
        };
        if journal.is_closed() {
            return;
        }
        if journal.spool_len() == 0 {
            drop(journal);
            let _ = tokio::time::timeout(Duration::from_secs(1), sequencer.wake.notified()).await;
            continue;
        }
        // Take out what was stored first.
        if !stored.is_empty() {
            let keys: Vec<u64> = stored.keys().copied().collect();
            match journal.blocking(move |j| j.unspool(&keys)).await {
                Ok(()) => {
                    for (_, resource) in stored.drain() {
                        if let Some(r) = resource {
                            sequencer.count_waiting(&r, -1);
                        }
                    }
                    wait = Duration::from_millis(100);
                }
                Err(e) => {
                    if logged.elapsed() > Duration::from_secs(10) {
                        tracing::error!(error = %e, events = stored.len(), "cannot take forwarded events out of the spool (they are in the stream; retried)");
                        logged = Instant::now();
                    }
                    drop(journal);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        if !sequencer.remote.takes_events() {
            if logged.elapsed() > Duration::from_secs(30) {
                tracing::warn!(
                    spooled = journal.spool_len(),
                    state = %sequencer.shared_status().map(|s| s.state).unwrap_or_default(),
                    "events wait in the spool: the shared stream cannot take them yet"
                );
                logged = Instant::now();
            }
            drop(journal);
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let limit = FORWARD_BATCH + unreadable.len();
        let batch = match journal.blocking(move |j| j.spooled(limit)).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // In arrival order, in waves in which no resource comes twice (a resource's next
        // event is classified against the one before it, once that one is stored).
        let mut entries = Vec::with_capacity(batch.len());
        for (key, entry) in batch {
            match entry {
                Ok(spooled) => entries.push(spooled),
                Err(e) => {
                    if unreadable.insert(key) {
                        journal.stats().errors_by_cause[CauseKind::Storage.index()]
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!(key, error = %e, "a spooled event cannot be read (its record is damaged); it stays in the spool, skipped; `/readyz` shows it as spooling");
                    }
                }
            }
        }
        if entries.is_empty() {
            drop(journal);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let mut failure = None;
        let mut at = 0;
        while at < entries.len() && failure.is_none() {
            let mut seen = std::collections::HashSet::new();
            let mut wave = Vec::new();
            while at < entries.len() {
                let spooled = &entries[at];
                if let Some(r) = &spooled.resource
                    && !seen.insert(r.clone())
                {
                    break;
                }
                wave.push((spooled.resource.clone(), spooled));
                at += 1;
            }
            let (done, error) = sequencer.forward_wave(&wave).await;
            let all = done.len() == wave.len();
            stored.extend(done);
            if let Some(e) = error {
                failure = Some(e);
            } else if !all {
                // A conflict: what was not stored goes again first, next round.
                break;
            }
        }
        match failure {
            Some(e) => {
                if logged.elapsed() > Duration::from_secs(10) {
                    tracing::warn!(error = %e, spooled = journal.spool_len(), "cannot forward spooled events to the stream yet; retrying");
                    logged = Instant::now();
                }
                drop(journal);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            None => {
                wait = Duration::from_millis(100);
                if journal.spool_len() <= stored.len() as u64 + unreadable.len() as u64 {
                    tracing::info!(
                        forwarded = stored.len(),
                        "the spool is forwarded: its events are in the shared journal"
                    );
                }
            }
        }
    }
}

/// A lease taken in the leases bucket for something one receiver does at a time, renewed in
/// the background while held, deleted when dropped.
#[derive(Debug)]
struct SharedExclusive {
    held: Arc<std::sync::atomic::AtomicBool>,
    revision: Arc<std::sync::atomic::AtomicU64>,
    key: String,
    remote: Arc<Remote>,
    renew: tokio::task::JoinHandle<()>,
}

impl SharedExclusive {
    fn hold(remote: Arc<Remote>, key: String, revision: u64) -> SharedExclusive {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let held = Arc::new(AtomicBool::new(true));
        let rev = Arc::new(AtomicU64::new(revision));
        let renew = tokio::spawn({
            let (remote, key, held, rev) = (
                Arc::clone(&remote),
                key.clone(),
                Arc::clone(&held),
                Arc::clone(&rev),
            );
            async move {
                loop {
                    tokio::time::sleep(crate::config::LEASE_RENEW).await;
                    match remote
                        .renew_lease_key(&key, rev.load(Ordering::SeqCst))
                        .await
                    {
                        Some(r) => rev.store(r, Ordering::SeqCst),
                        None => {
                            held.store(false, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            }
        });
        SharedExclusive {
            held,
            revision: rev,
            key,
            remote,
            renew,
        }
    }
}

impl streamhook_core::backend::Exclusive for SharedExclusive {
    fn held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SharedExclusive {
    fn drop(&mut self) {
        self.renew.abort();
        if self.held.load(std::sync::atomic::Ordering::SeqCst) {
            let (remote, key, revision) = (
                Arc::clone(&self.remote),
                self.key.clone(),
                self.revision.load(std::sync::atomic::Ordering::SeqCst),
            );
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move { remote.delete_lease_key(&key, revision).await });
            }
        }
    }
}
