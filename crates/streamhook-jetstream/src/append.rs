//! Where an event gets its place on the replicated journal (the [`Sequencer`]): each event is
//! one message on its resource's subject, carrying the resource's classifier state after it.
//! The receiver reads the subject's last message from the stream's leader, classifies against
//! the state it carries, and publishes with `Nats-Expected-Last-Subject-Sequence` (re-reading
//! and classifying again when another receiver appended in between) and `Nats-Msg-Id` = the
//! event id. The append is answered once the stream acknowledged it (a quorum of replicas)
//! and, within 5 s, this receiver's mirror holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self as js};
use async_trait::async_trait;
use streamhook_core::backend::{Draft, Sequencer, SharedPruned, SharedRetention};
use streamhook_core::journal::WeakJournal;
use streamhook_core::journal::record::{decode_event, event_id, history_key};
use streamhook_core::{Appended, CauseKind, JournalError, Parsed};
use streamhook_types::classify::classify_with;
use streamhook_types::{Envelope, EventKind, ResourceState};
use tokio::sync::watch;

use crate::config::MAX_CONFLICTS;
use crate::message::{decode_message, encode_message};
use crate::remote::{Remote, remote_err, remote_msg};

/// The replicated journal's appends.
pub(crate) struct JetStreamSequencer {
    pub(crate) remote: Arc<Remote>,
    /// The local mirror's last seq, to wait for an appended event to arrive there.
    pub(crate) mirrored: watch::Receiver<u64>,
    /// The local journal (pruning reads its cursors).
    journal: WeakJournal,
    /// One append at a time per resource in this receiver: concurrent appends of one resource
    /// would otherwise all race on its compare-and-set, and all but one retry. (Other
    /// receivers' appends still race, and the compare-and-set serialises them.)
    appending: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for JetStreamSequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamSequencer")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Sequencer for JetStreamSequencer {
    fn backend(&self) -> &'static str {
        "jetstream"
    }

    async fn append(&self, draft: Draft) -> Result<Appended, JournalError> {
        let appended = self.publish(draft).await?;
        // The stream holds it (a quorum acknowledged it); wait, briefly, until this
        // receiver's mirror does too, so what it shows and delivers includes it.
        let mut mirrored = self.mirrored.clone();
        let seq = appended.seq;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            mirrored.wait_for(|last| *last >= seq),
        )
        .await;
        Ok(appended)
    }

    fn unavailable(&self) -> Option<String> {
        (!self.remote.connected()).then(|| "not connected to any NATS server".to_owned())
    }

    async fn prune_shared(
        &self,
        retention: &SharedRetention,
    ) -> Result<Option<SharedPruned>, JournalError> {
        let Some(journal) = self.journal.upgrade() else {
            return Err(JournalError::Closed);
        };
        crate::prune::prune_shared(&self.remote, &journal, retention).await
    }
}

impl JetStreamSequencer {
    pub(crate) fn new(
        remote: Arc<Remote>,
        mirrored: watch::Receiver<u64>,
        journal: WeakJournal,
    ) -> Self {
        JetStreamSequencer {
            remote,
            mirrored,
            journal,
            appending: Mutex::default(),
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

    /// The resource's last message: its sequence and the state it carries.
    async fn last_state(
        &self,
        subject: &str,
    ) -> Result<(u64, Option<ResourceState>), JournalError> {
        match self
            .remote
            .stream
            .get_last_raw_message_by_subject(subject)
            .await
        {
            Ok(msg) => {
                // A resource idle longer than history_max_age is new, as on one host.
                if let Some(age) = self.remote.history_max_age
                    && SystemTime::from(msg.time) + age < SystemTime::now()
                {
                    return Ok((msg.sequence, None));
                }
                // An unreadable last message (another publisher, a newer format) must not
                // block the resource for ever: classify as new, as an unreadable redb
                // history record is, and say so.
                let state = match decode_message(&msg.payload) {
                    Ok(decoded) => match decoded.state.map(serde_json::from_slice) {
                        Some(Ok(state)) => Some(state),
                        Some(Err(e)) => {
                            tracing::error!(seq = msg.sequence, error = %e, "unreadable classifier state in the shared stream; classifying the resource as new");
                            None
                        }
                        None => None,
                    },
                    Err(e) => {
                        tracing::error!(seq = msg.sequence, error = %e, "unreadable message on a resource's subject; classifying the resource as new");
                        None
                    }
                };
                Ok((msg.sequence, state))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok((0, None)),
            Err(e) => Err(remote_err("reading the resource's last event", e)),
        }
    }

    /// Journals one event in the stream (see the module's docs).
    async fn publish(&self, draft: Draft) -> Result<Appended, JournalError> {
        let remote = &*self.remote;
        if !remote.connected() {
            return Err(JournalError::write(
                CauseKind::Shared,
                "not connected to any NATS server; the event was not stored",
            ));
        }
        let deadline = Instant::now() + remote.timeout;
        let received_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let received_at =
            humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(received_at_ms))
                .to_string();
        let id = event_id(received_at_ms);
        let key = match &draft.parsed {
            Parsed::Webhook(webhook) => history_key(webhook),
            Parsed::Invalid { .. } => None,
        };
        let subject = remote.subject(key.as_deref());
        let turn = key.as_ref().map(|k| self.turn_for(k));
        let _turn = match &turn {
            Some(lock) => match tokio::time::timeout(
                deadline.saturating_duration_since(Instant::now()),
                lock.lock(),
            )
            .await
            {
                Ok(guard) => Some(guard),
                Err(_) => {
                    return Err(remote_msg(
                        "append",
                        "timed out waiting behind earlier events of the same resource; the event was not stored",
                    ));
                }
            },
            None => None,
        };
        let mut conflicts = 0;
        loop {
            let (last, prior) = match &key {
                Some(_) => match self.last_state(&subject).await {
                    Ok(found) => found,
                    // A leader election (a node died) stalls reads for a few seconds.
                    Err(JournalError::Write(e)) if Instant::now() < deadline => {
                        tracing::debug!(error = %e, "reading a resource's last event; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                None => (0, None),
            };
            let (envelope, state) = match &draft.parsed {
                Parsed::Webhook(webhook) => {
                    let (meaning, state) = classify_with(webhook, prior.as_ref());
                    let envelope = Envelope {
                        id: id.clone(),
                        seq: 0,
                        received_at: received_at.clone(),
                        source_ip: draft.source,
                        kinds: meaning.kinds,
                        origin: meaning.origin,
                        resource: meaning.resource,
                        problems: Vec::new(),
                        late: false,
                        payload: draft.payload.clone(),
                    };
                    // A resource's newest message always carries its state: an event that
                    // changes nothing carries the previous one forward.
                    (envelope, state.or(prior))
                }
                Parsed::Invalid { resource, problems } => (
                    Envelope {
                        id: id.clone(),
                        seq: 0,
                        received_at: received_at.clone(),
                        source_ip: draft.source,
                        kinds: vec![EventKind::Invalid],
                        origin: None,
                        resource: resource.clone(),
                        problems: problems.clone(),
                        late: false,
                        payload: draft.payload.clone(),
                    },
                    None,
                ),
            };
            let kinds = envelope.kinds.clone();
            let payload = encode_message(
                key.as_deref(),
                state.as_ref(),
                draft.received.as_deref(),
                received_at_ms,
                &draft.prefix,
                &draft.suffix,
                &envelope,
            )?;
            let mut publish = js::message::PublishMessage::build()
                .payload(payload)
                .message_id(&id.0);
            if key.is_some() {
                publish = publish.expected_last_subject_sequence(last);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = async {
                match remote.context.send_publish(subject.clone(), publish).await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                }
            };
            let result = match tokio::time::timeout(left, attempt).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(remote_msg(
                        "append",
                        format!(
                            "no acknowledgement within {} (the event may have been stored; it was not answered as accepted)",
                            humantime::format_duration(remote.timeout)
                        ),
                    ));
                }
            };
            match result {
                Ok(ack) if ack.duplicate => {
                    // A retry of a publish that was stored: answer with what was stored.
                    let msg = remote
                        .stream
                        .get_raw_message(ack.sequence)
                        .await
                        .map_err(|e| remote_err("reading a duplicate back", e))?;
                    let decoded =
                        decode_message(&msg.payload).map_err(|m| JournalError::Corrupt {
                            seq: ack.sequence,
                            message: m,
                        })?;
                    let stored = decode_event(ack.sequence, decoded.record)?;
                    return Ok(Appended {
                        id,
                        seq: ack.sequence,
                        kinds: stored.envelope()?.kinds,
                    });
                }
                Ok(ack) => {
                    return Ok(Appended {
                        id,
                        seq: ack.sequence,
                        kinds,
                    });
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    conflicts += 1;
                    if conflicts >= MAX_CONFLICTS || Instant::now() > deadline {
                        return Err(remote_msg(
                            "append",
                            format!("{conflicts} conflicting writers on one resource"),
                        ));
                    }
                }
                Err(e) => {
                    // A timeout or a lost connection: the publish may have been stored. Try
                    // again with the same id until the deadline; the duplicate window
                    // answers with the stored one.
                    if Instant::now() > deadline {
                        return Err(remote_err(
                            "no acknowledgement (the event may have been stored; it was not answered as accepted)",
                            e,
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
