//! The replicated journal: events journaled in a NATS JetStream stream shared by several
//! receivers, each keeping a local redb mirror of it (feature `jetstream`).
//!
//! # How an event is journaled
//!
//! Each event is one message on its resource's subject, `<STREAM>.ev.<hex of "stream:12345">`
//! (`<STREAM>.ev._` for events without a resource). The message carries, besides the event
//! record, the resource's classifier state *after* the event. To append, a receiver reads the
//! subject's last message (from the stream's leader, never a possibly stale follower),
//! classifies against the state it carries, and publishes with
//! `Nats-Expected-Last-Subject-Sequence` set to that message's sequence (0: none). If another
//! receiver appended to the resource in between, the server refuses the publish ("wrong last
//! sequence") and the receiver reads and classifies again. Per resource this serialises writers
//! exactly as the single-file journal's write transaction does, so every receiver classifies
//! as one would. `Nats-Msg-Id` is the event id: a publish retried after a lost ack is
//! dropped by the stream's duplicate window and answered with the first one's sequence.
//!
//! An answer of 2xx follows the stream's ack: the event is stored on a quorum of the stream's
//! replicas (their disks are synced every `sync_interval` of the NATS servers; see docs/ha.md).
//! The journal's seq is the stream's sequence: one order for all receivers.
//!
//! # The local mirror
//!
//! Every receiver copies the stream, in order, into its own redb file (the same tables as a
//! single-host journal: events at the stream's seqs, the requests table, the history), so that
//! dispatchers, the admin API, the console and the CLI read locally, unchanged. A receiver
//! answers an append once the stream acknowledged it and (within 5 s) its own mirror holds it.
//!
//! # Delivery
//!
//! Each sink is delivered by one receiver at a time: the holder of the sink's lease, a key in
//! the `<STREAM>_leases` bucket that expires unless renewed (every second; it lapses after
//! [`LEASE_TTL`]). The holder resumes from the sink's cursor in the `<STREAM>_cursors` bucket
//! and writes it back every second, so when it dies another receiver takes the lease and
//! resumes from there: at least once, the same ids.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use async_nats::jetstream::{self as js};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::value::RawValue;
use streamhook_types::classify::classify_with;
use streamhook_types::{Envelope, EventKind, ResourceState};

use crate::journal::{
    Appended, Journal, JournalConfig, JournalError, Parsed, encode_record, event_id, history_key,
};

/// The oldest NATS server the replicated journal accepts: 2.9 accepted concurrent publishes
/// that expected the same last subject sequence (the compare-and-set everything rests on).
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 10, 0);

/// How long a sink's lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(6);

/// How often a lease is renewed and the sink's cursor written back.
pub const LEASE_RENEW: Duration = Duration::from_secs(1);

/// A mirror that made no progress for this long while the stream holds messages it lacks is
/// behind: its receiver neither takes nor keeps leases. (Idle, it checks every 5 s.)
pub const MIRROR_STALE: Duration = Duration::from_secs(20);

/// How many times an append reads and classifies again after losing a race.
const MAX_CONFLICTS: u32 = 1000;

/// How the replicated journal reaches JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// Server URLs; the client fails over between them.
    pub urls: Vec<String>,
    /// The stream's name (default `STREAMHOOK`); the buckets are named after it.
    pub stream: String,
    /// Replicas of the stream and buckets (default 3; 1 for a single server).
    pub replicas: usize,
    /// A credentials file (JWT and NKey seed).
    pub credentials: Option<PathBuf>,
    /// A PEM file of CA certificates for `tls://` servers.
    pub tls_ca: Option<PathBuf>,
    /// How long an append may take, retries included (default 10 s).
    pub timeout: Duration,
    /// A resource idle this long is classified as new (as the single-host journal drops its
    /// history): its last message's state is not used. `None`: kept for ever.
    pub history_max_age: Option<Duration>,
}

impl JetStreamConfig {
    /// The defaults for `urls`.
    pub fn new(urls: Vec<String>) -> Self {
        JetStreamConfig {
            urls,
            stream: "STREAMHOOK".into(),
            replicas: 3,
            credentials: None,
            tls_ca: None,
            timeout: Duration::from_secs(10),
            history_max_age: None,
        }
    }
}

/// What an append hands the stream (built by [`Journal::append`]).
pub(crate) struct Draft {
    pub(crate) parsed: Parsed,
    pub(crate) payload: Box<RawValue>,
    pub(crate) prefix: String,
    pub(crate) suffix: String,
    pub(crate) source: IpAddr,
    pub(crate) received: Option<Vec<u8>>,
}

/// The connection to the shared stream and buckets.
pub(crate) struct Remote {
    client: async_nats::Client,
    context: js::Context,
    stream: stream::Stream,
    name: String,
    leases: kv::Store,
    cursors: kv::Store,
    /// Each sink's dead letters and requeued events, as its deliverer last shared them.
    letters: kv::Store,
    instance: String,
    timeout: Duration,
    history_max_age: Option<Duration>,
    /// When the stream was created (ns since the epoch): a mirror belongs to one stream.
    created_ns: u64,
    /// Sinks whose lease this receiver holds.
    held: std::sync::Mutex<std::collections::HashSet<String>>,
    /// When the mirror last recorded something, or found nothing to copy.
    mirror_progress: std::sync::Mutex<Instant>,
    /// One append at a time per resource in this receiver: concurrent appends of one resource
    /// would otherwise all race on its compare-and-set, and all but one retry. (Other
    /// receivers' appends still race, and the compare-and-set serialises them.)
    appending: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("stream", &self.name)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

fn remote_err(what: &str, e: impl std::fmt::Display) -> JournalError {
    JournalError::Write(format!("JetStream: {what}: {e}"))
}

/// Parses `2.15.1` (also `v2.10.0-beta.1`) into numbers.
pub fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next().unwrap_or(Ok(0)).ok()?,
    ))
}

/// Refuses a server older than [`MIN_SERVER_VERSION`].
pub fn check_version(version: &str) -> Result<(), String> {
    let (a, b, c) = MIN_SERVER_VERSION;
    match parse_version(version) {
        Some(v) if v >= MIN_SERVER_VERSION => Ok(()),
        Some(_) => Err(format!(
            "NATS server {version} is too old for the replicated journal: it needs {a}.{b}.{c} \
             or newer (older servers accept concurrent publishes that expect the same last \
             subject sequence, so two receivers could both extend one resource's history)"
        )),
        None => Err(format!("cannot read the NATS server's version {version:?}")),
    }
}

impl Remote {
    /// Connects, checks the server's version, creates the stream and buckets if missing.
    pub(crate) async fn connect(config: &JetStreamConfig) -> Result<Remote, JournalError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("streamhook journal")
            .connection_timeout(Duration::from_secs(5));
        if let Some(creds) = &config.credentials {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| remote_err(&format!("credentials {}", creds.display()), e))?;
        }
        if let Some(ca) = &config.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        let addrs: Vec<async_nats::ServerAddr> = config
            .urls
            .iter()
            .map(|u| u.parse().map_err(|e| remote_err(&format!("URL {u:?}"), e)))
            .collect::<Result<_, _>>()?;
        if addrs.is_empty() {
            return Err(remote_err("configuration", "no server URL given"));
        }
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| remote_err("cannot connect", e))?;
        let version = client.server_info().version;
        check_version(&version).map_err(JournalError::Write)?;
        let context = js::ContextBuilder::new()
            .timeout(config.timeout.min(Duration::from_secs(5)))
            .build(client.clone());
        let name = config.stream.clone();
        let replicas = config.replicas.max(1);
        let mut stream = retry_setup(|| {
            context.get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{name}.ev.>")],
                num_replicas: replicas,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                description: Some("streamhook: the shared journal".into()),
                ..Default::default()
            })
        })
        .await
        .map_err(|e| remote_err(&format!("stream {name}"), setup_hint(e, replicas)))?;
        let info = stream
            .info()
            .await
            .map_err(|e| remote_err(&format!("stream {name}"), e))?
            .clone();
        if info.config.num_replicas != replicas {
            return Err(remote_err(
                &format!("stream {name}"),
                format!(
                    "it has {} replicas, the configuration says {replicas}: change `replicas`, \
                     or the stream (`nats stream edit {name} --replicas {replicas}`)",
                    info.config.num_replicas
                ),
            ));
        }
        let created_ns = info.created.unix_timestamp_nanos().max(0) as u64;
        let bucket = |suffix: &str, max_age: Duration| kv::Config {
            bucket: format!("{name}_{suffix}"),
            history: 1,
            max_age,
            num_replicas: replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let leases = retry_setup(|| context.create_key_value(bucket("leases", LEASE_TTL)))
            .await
            .map_err(|e| remote_err("bucket leases", setup_hint(e, replicas)))?;
        let cursors = retry_setup(|| context.create_key_value(bucket("cursors", Duration::ZERO)))
            .await
            .map_err(|e| remote_err("bucket cursors", setup_hint(e, replicas)))?;
        let letters = retry_setup(|| context.create_key_value(bucket("letters", Duration::ZERO)))
            .await
            .map_err(|e| remote_err("bucket letters", setup_hint(e, replicas)))?;
        let instance = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            fastrand::u32(..)
        );
        Ok(Remote {
            client,
            context,
            stream,
            name,
            leases,
            cursors,
            letters,
            instance,
            timeout: config.timeout,
            history_max_age: config.history_max_age,
            created_ns,
            held: std::sync::Mutex::default(),
            mirror_progress: std::sync::Mutex::new(Instant::now()),
            appending: std::sync::Mutex::default(),
        })
    }

    /// Whether the mirror made progress (or had nothing to copy) in the last `within`.
    pub(crate) fn mirror_current(&self, within: Duration) -> bool {
        self.mirror_progress
            .lock()
            .map(|t| t.elapsed() < within)
            .unwrap_or(true)
    }

    fn mirror_progressed(&self) {
        if let Ok(mut t) = self.mirror_progress.lock() {
            *t = Instant::now();
        }
    }

    /// Whether this receiver holds the sink's lease.
    pub(crate) fn holds(&self, sink: &str) -> bool {
        self.held.lock().map(|h| h.contains(sink)).unwrap_or(false)
    }

    pub(crate) fn set_held(&self, sink: &str, held: bool) {
        if let Ok(mut h) = self.held.lock() {
            if held {
                h.insert(sink.to_owned());
            } else {
                h.remove(sink);
            }
        }
    }

    fn subject(&self, key: Option<&str>) -> String {
        match key {
            Some(key) => {
                let mut subject = format!("{}.ev.", self.name);
                for b in key.as_bytes() {
                    subject.push_str(&format!("{b:02x}"));
                }
                subject
            }
            None => format!("{}.ev._", self.name),
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
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(msg) => {
                // A resource idle longer than history_max_age is new, as on one host.
                if let Some(age) = self.history_max_age
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
    pub(crate) async fn append(&self, draft: Draft) -> Result<Appended, JournalError> {
        if !self.connected() {
            return Err(JournalError::Write(
                "not connected to any NATS server; the event was not stored".into(),
            ));
        }
        let deadline = Instant::now() + self.timeout;
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
        let subject = self.subject(key.as_deref());
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
                    return Err(remote_err(
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
                match self.context.send_publish(subject.clone(), publish).await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                }
            };
            let result = match tokio::time::timeout(left, attempt).await {
                Ok(result) => result,
                Err(_) => {
                    return Err(remote_err(
                        "append",
                        format!(
                            "no acknowledgement within {} (the event may have been stored; it was not answered as accepted)",
                            humantime::format_duration(self.timeout)
                        ),
                    ));
                }
            };
            match result {
                Ok(ack) if ack.duplicate => {
                    // A retry of a publish that was stored: answer with what was stored.
                    let msg = self
                        .stream
                        .get_raw_message(ack.sequence)
                        .await
                        .map_err(|e| remote_err("reading a duplicate back", e))?;
                    let decoded =
                        decode_message(&msg.payload).map_err(|m| JournalError::Corrupt {
                            seq: ack.sequence,
                            message: m,
                        })?;
                    let stored = crate::journal::decode_event(ack.sequence, decoded.record)?;
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
                        return Err(remote_err(
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

    /// Whether the client is connected to a NATS server now (it reconnects by itself).
    pub(crate) fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The seq of the first message the stream holds at or after `from` (`None`: none; purged
    /// messages leave gaps, so the stream's last sequence may be one it no longer holds).
    pub(crate) async fn next_seq_from(&self, from: u64) -> Result<Option<u64>, JournalError> {
        let found = self
            .stream
            .raw_message_builder()
            .sequence(from.max(1))
            .next_by_subject(format!("{}.ev.>", self.name))
            .send()
            .await;
        match found {
            Ok(msg) => Ok(Some(msg.sequence)),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(JournalError::Read(format!("JetStream: {e}"))),
        }
    }

    /// The event id of the message at `seq`, when the stream holds a readable one there.
    async fn event_id_at(&self, seq: u64) -> Option<String> {
        let msg = self.stream.get_raw_message(seq).await.ok()?;
        let decoded = decode_message(&msg.payload).ok()?;
        let stored = crate::journal::decode_event(seq, decoded.record).ok()?;
        Some(stored.envelope().ok()?.id.0)
    }

    /// The stream's last sequence now.
    pub(crate) async fn last_seq(&self) -> Result<u64, JournalError> {
        let mut stream = self.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| remote_err("stream info", e))?;
        Ok(info.state.last_sequence)
    }

    /// This receiver's name in leases.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// Takes the sink's lease if nobody holds it; returns its revision.
    pub(crate) async fn try_lease(&self, sink: &str) -> Option<u64> {
        self.try_lease_key(&kv_key(sink)).await
    }

    async fn try_lease_key(&self, key: &str) -> Option<u64> {
        let sink = key;
        match self
            .leases
            .create(key, Bytes::from(self.instance.clone()))
            .await
        {
            Ok(revision) => Some(revision),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => None,
            Err(e) => {
                tracing::warn!(sink, error = %e, "cannot take the sink's lease");
                None
            }
        }
    }

    /// Renews a held lease; `None` when it was lost.
    pub(crate) async fn renew_lease(&self, sink: &str, revision: u64) -> Option<u64> {
        self.renew_lease_key(&kv_key(sink), revision).await
    }

    async fn renew_lease_key(&self, key: &str, revision: u64) -> Option<u64> {
        let sink = key;
        let renew = self
            .leases
            .update(key, Bytes::from(self.instance.clone()), revision);
        match tokio::time::timeout(LEASE_RENEW, renew).await {
            Ok(Ok(revision)) => Some(revision),
            Ok(Err(e)) => {
                tracing::warn!(sink, error = %e, "cannot renew the sink's lease");
                None
            }
            Err(_) => {
                tracing::warn!(sink, "renewing the sink's lease timed out");
                None
            }
        }
    }

    /// Lets a held lease go at once (on a clean stop), so another receiver takes over now.
    pub(crate) async fn release_lease(&self, sink: &str, revision: u64) {
        let _ = self
            .leases
            .delete_expect_revision(kv_key(sink), Some(revision))
            .await;
    }

    /// Who holds the sink's lease.
    pub(crate) async fn lease_holder(&self, sink: &str) -> Option<String> {
        let value = self.leases.get(kv_key(sink)).await.ok()??;
        Some(String::from_utf8_lossy(&value).into_owned())
    }

    /// The sink's shared cursor.
    pub(crate) async fn shared_cursor(&self, sink: &str) -> Result<Option<u64>, JournalError> {
        let value = self
            .cursors
            .get(kv_key(sink))
            .await
            .map_err(|e| JournalError::Read(format!("JetStream cursor: {e}")))?;
        Ok(value.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()))
    }

    /// Writes the sink's shared cursor.
    pub(crate) async fn put_cursor(&self, sink: &str, seq: u64) -> Result<(), JournalError> {
        self.cursors
            .put(kv_key(sink), Bytes::from(seq.to_string()))
            .await
            .map(drop)
            .map_err(|e| remote_err("cursor", e))
    }
}

/// What a deliverer last shared of a sink's dead letters and requeued events: key -> value.
pub(crate) type LetterSnapshot = std::collections::HashMap<String, Bytes>;

impl Remote {
    /// Adopts the sink's shared dead letters and requeued events into the local mirror
    /// (replacing what it held for the sink), when this receiver takes the sink's lease.
    pub(crate) async fn pull_letters(
        &self,
        journal: &Journal,
        sink: &str,
    ) -> Result<LetterSnapshot, JournalError> {
        let read =
            |e: &dyn std::fmt::Display| JournalError::Read(format!("JetStream letters: {e}"));
        let prefix = format!("{}.", kv_key(sink));
        let mut snapshot = LetterSnapshot::new();
        let mut keys = self.letters.keys().await.map_err(|e| read(&e))?;
        let mut wanted = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| read(&e))?;
            if key.starts_with(&prefix) {
                wanted.push(key);
            }
        }
        let (mut dead, mut requeued) = (Vec::new(), Vec::new());
        for key in wanted {
            let Some(value) = self.letters.get(&key).await.map_err(|e| read(&e))? else {
                continue;
            };
            match serde_json::from_slice::<crate::journal::DeadLetter>(&value) {
                Ok(letter) if key[prefix.len()..].starts_with("d.") => dead.push(letter),
                Ok(letter) => requeued.push(letter),
                Err(e) => {
                    tracing::warn!(sink, key, error = %e, "unreadable shared dead letter; skipped");
                    continue;
                }
            }
            snapshot.insert(key, value);
        }
        let (j, name) = (journal.clone(), sink.to_owned());
        tokio::task::spawn_blocking(move || j.replace_letters(&name, &dead, &requeued))
            .await
            .map_err(|e| JournalError::Write(e.to_string()))??;
        Ok(snapshot)
    }

    /// Shares the sink's dead letters and requeued events as the local mirror holds them:
    /// puts what is new or changed since `snapshot`, deletes what is gone.
    pub(crate) async fn push_letters(
        &self,
        journal: &Journal,
        sink: &str,
        snapshot: &mut LetterSnapshot,
    ) -> Result<(), JournalError> {
        let (j, name) = (journal.clone(), sink.to_owned());
        let (dead, requeued) = tokio::task::spawn_blocking(move || {
            Ok::<_, JournalError>((j.dead_letters(Some(&name))?, j.requeued(&name, usize::MAX)?))
        })
        .await
        .map_err(|e| JournalError::Write(e.to_string()))??;
        let base = kv_key(sink);
        let mut now = LetterSnapshot::new();
        for (tag, letters) in [("d", dead), ("q", requeued)] {
            for letter in letters {
                let bytes =
                    serde_json::to_vec(&letter).map_err(|e| JournalError::Write(e.to_string()))?;
                now.insert(format!("{base}.{tag}.{}", letter.seq), Bytes::from(bytes));
            }
        }
        let write = |e: &dyn std::fmt::Display| remote_err("sharing dead letters", e);
        for (key, value) in &now {
            if snapshot.get(key) != Some(value) {
                self.letters
                    .put(key, value.clone())
                    .await
                    .map_err(|e| write(&e))?;
                snapshot.insert(key.clone(), value.clone());
            }
        }
        let gone: Vec<String> = snapshot
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.letters.purge(&key).await.map_err(|e| write(&e))?;
            snapshot.remove(&key);
        }
        Ok(())
    }
}

/// A sink name as a key (keys allow `A-Z a-z 0-9 - _ = .`; anything else is hex-escaped).
fn kv_key(sink: &str) -> String {
    let mut key = String::with_capacity(sink.len());
    for c in sink.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            key.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                key.push_str(&format!("={b:02x}"));
            }
        }
    }
    key
}

async fn retry_setup<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    // A cluster that just started may not have elected its meta leader yet.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "JetStream not ready; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Adds what to do to a setup error that usually means too few servers for the replicas.
fn setup_hint(e: impl std::fmt::Display, replicas: usize) -> String {
    let text = e.to_string();
    if replicas > 1
        && (text.contains("insufficient resources") || text.contains("no suitable peers"))
    {
        format!(
            "{text} (replicas = {replicas} needs {replicas} JetStream servers in the cluster; \
             with one server set replicas = 1)"
        )
    } else {
        text
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// A stream message's parts (see [`encode_message`]).
pub(crate) struct Message<'a> {
    pub(crate) key: Option<&'a str>,
    pub(crate) state: Option<&'a [u8]>,
    pub(crate) received: Option<&'a [u8]>,
    pub(crate) record: &'a [u8],
}

/// A message: version 1 (u8), then three length-prefixed parts (u32 big endian, `u32::MAX`
/// for none): the resource's history key, its classifier state after the event (JSON), how
/// the request arrived (JSON); then the event record as the redb journal stores it (its
/// envelope's seq is 0: the stream's sequence is the seq).
fn encode_message(
    key: Option<&str>,
    state: Option<&ResourceState>,
    received: Option<&[u8]>,
    received_at_ms: u64,
    prefix: &str,
    suffix: &str,
    envelope: &Envelope,
) -> Result<Bytes, JournalError> {
    let state = state
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| JournalError::Write(e.to_string()))?;
    let mut out = vec![1u8];
    for part in [key.map(str::as_bytes), state.as_deref(), received] {
        match part {
            Some(bytes) => {
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
    }
    let mut record = Vec::new();
    encode_record(&mut record, received_at_ms, prefix, suffix, envelope)?;
    out.extend_from_slice(&record);
    Ok(Bytes::from(out))
}

/// Reads a message [`encode_message`] wrote.
pub(crate) fn decode_message(bytes: &[u8]) -> Result<Message<'_>, String> {
    if bytes.first() != Some(&1) {
        return Err("not a streamhook journal message (version byte)".into());
    }
    let mut at = 1;
    let mut parts: [Option<&[u8]>; 3] = [None; 3];
    for part in &mut parts {
        let len = bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or("message too short")?;
        at += 4;
        if len != u32::MAX {
            let len = len as usize;
            *part = Some(bytes.get(at..at + len).ok_or("message too short")?);
            at += len;
        }
    }
    let key = parts[0]
        .map(std::str::from_utf8)
        .transpose()
        .map_err(|_| "history key is not UTF-8")?;
    Ok(Message {
        key,
        state: parts[1],
        received: parts[2],
        record: &bytes[at..],
    })
}

/// The lease key of the receiver pruning the shared stream (`=` then not two hex digits: no
/// sink name maps to it).
const PRUNER_KEY: &str = "=pruner";

/// What one pass over the shared stream removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedPruned {
    /// Messages purged.
    pub events: u64,
    /// Resources whose last message went too (idle longer than `history_max_age`).
    pub histories: u64,
    /// The seq below which events were removed (a resource's last message stays).
    pub below: u64,
}

/// The `meta` key holding the creation time of the stream a mirror copies.
const MIRROR_OF: &str = "mirror_of_stream_created_ns";

impl Journal {
    /// Opens a replicated journal: `config.dir` holds this receiver's mirror of the shared
    /// stream `remote.stream`. Connects (refusing a server older than
    /// [`MIN_SERVER_VERSION`]), creates the stream and buckets when missing, refuses a data
    /// folder that mirrors another stream (or holds a single-host journal), copies what the
    /// mirror lacks, and keeps copying in the background until the journal is closed.
    pub async fn open_replicated(
        config: JournalConfig,
        remote: &JetStreamConfig,
    ) -> Result<Journal, JournalError> {
        let local = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || Journal::open(config))
                .await
                .map_err(|e| JournalError::Write(e.to_string()))??
        };
        let remote = Arc::new(Remote::connect(remote).await?);
        let journal = local.with_remote(Arc::clone(&remote));
        let target = remote.last_seq().await?;
        // A mirror belongs to one stream: a folder that holds a single-host journal, or the
        // mirror of a stream since deleted and created again, would skip the new stream's
        // first seqs (it holds those seqs already) and answer 2xx for events it never holds.
        let (mirror_of, local_last, local_id) = {
            let j = journal.clone();
            tokio::task::spawn_blocking(move || {
                let last = j.last_seq()?;
                let id = match j.get(last) {
                    Ok(Some(event)) => event.envelope().ok().map(|e| e.id.0),
                    _ => None,
                };
                Ok::<_, JournalError>((j.meta(MIRROR_OF)?, last, id))
            })
            .await
            .map_err(|e| JournalError::Write(e.to_string()))??
        };
        let refuse = |why: String| {
            Err(JournalError::Open {
                path: config.dir.clone(),
                message: format!(
                    "{why}; give this receiver an empty data folder (it copies the shared journal at start)"
                ),
            })
        };
        if mirror_of.is_none() && local_last > 0 {
            return refuse(format!(
                "this data folder holds a single-host journal ({local_last} events), not a mirror of stream {}",
                remote.name
            ));
        }
        if local_last > target {
            return refuse(format!(
                "this mirror holds events up to seq {local_last} but stream {} ends at {target} \
                 (it mirrors an earlier stream of that name)",
                remote.name
            ));
        }
        // The same seq must hold the same event (when the stream still holds it).
        if let Some(local_id) = &local_id
            && let Some(stream_id) = remote.event_id_at(local_last).await
            && &stream_id != local_id
        {
            return refuse(format!(
                "this mirror's seq {local_last} holds another event than stream {}'s \
                 (it mirrors an earlier stream of that name)",
                remote.name
            ));
        }
        if mirror_of.is_none() {
            let (j, created) = (journal.clone(), remote.created_ns);
            tokio::task::spawn_blocking(move || j.set_meta(MIRROR_OF, created.max(1)))
                .await
                .map_err(|e| JournalError::Write(e.to_string()))??;
        }
        let from = local_last + 1;
        let mirror = journal.clone();
        let stream = remote.stream.clone();
        let task = tokio::spawn(run_mirror(mirror, Arc::clone(&remote), stream, from));
        if target >= from {
            tracing::info!(
                from,
                to = target,
                "copying the shared journal into the local mirror"
            );
        }
        // Wait until the mirror holds what the stream held at connect, saying how far it is;
        // give up when it makes no progress for a minute.
        let mut changed = journal.subscribe();
        let mut last_seen = journal.last_committed();
        let mut stalled_since = Instant::now();
        while journal.last_committed() < target {
            // The stream's last messages may have been purged (pruning): done when it holds
            // nothing more up to the target.
            let next = remote.next_seq_from(journal.last_committed() + 1).await?;
            if next.is_none_or(|seq| seq > target) {
                break;
            }
            if task.is_finished() {
                return Err(JournalError::Write(
                    "the local mirror stopped copying the shared journal".into(),
                ));
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), changed.changed()).await;
            let now = journal.last_committed();
            if now > last_seen {
                tracing::info!(at = now, to = target, "copying the shared journal");
                last_seen = now;
                stalled_since = Instant::now();
            } else if stalled_since.elapsed() > Duration::from_secs(60) {
                task.abort();
                return Err(JournalError::Write(format!(
                    "the local mirror made no progress for a minute at seq {now} of {target}"
                )));
            }
        }
        Ok(journal)
    }

    /// On a replicated journal, sets the local cursor of each sink this receiver does not
    /// deliver to the sink's shared cursor (a standby's copy would otherwise stay where it was:
    /// its lag would grow, and pruning would keep everything after it). For a sink it
    /// delivers, only lowers it (another receiver's replay). Does nothing on a single-host
    /// journal.
    pub async fn follow_shared_cursors(&self, sinks: &[String]) -> Result<(), JournalError> {
        let Some(remote) = self.remote() else {
            return Ok(());
        };
        for sink in sinks {
            if let Some(shared) = remote.shared_cursor(sink).await? {
                let held = remote.holds(sink);
                let (journal, name) = (self.clone(), sink.clone());
                tokio::task::spawn_blocking(move || {
                    let local = journal.cursor(&name)?;
                    if local > shared || (!held && local != shared) {
                        journal.set_cursor(&name, shared)?;
                    }
                    Ok::<_, JournalError>(())
                })
                .await
                .map_err(|e| JournalError::Write(e.to_string()))??;
            }
        }
        Ok(())
    }

    /// On a replicated journal, prunes the shared stream as [`Journal::prune`] prunes a file:
    /// events every sink has passed (by the shared cursors of every sink that ever had one,
    /// and the local cursors of `sinks`) and older than `max_age` or beyond the newest
    /// `max_events`. Each resource's last message is kept (it carries the resource's
    /// classifier state) unless the resource has been idle longer than `history_max_age`.
    /// One receiver prunes at a time (a lease); `None` when another is pruning now or the
    /// journal is single-host.
    pub async fn prune_shared(
        &self,
        sinks: &[String],
        max_age: Option<Duration>,
        max_events: Option<u64>,
        history_max_age: Option<Duration>,
    ) -> Result<Option<SharedPruned>, JournalError> {
        let Some(remote) = self.remote().cloned() else {
            return Ok(None);
        };
        if max_age.is_none() && max_events.is_none() && history_max_age.is_none() {
            return Ok(None);
        }
        let Some(mut revision) = remote.try_lease_key(PRUNER_KEY).await else {
            return Ok(None);
        };
        let result = self
            .prune_shared_held(
                &remote,
                &mut revision,
                sinks,
                max_age,
                max_events,
                history_max_age,
            )
            .await;
        let _ = remote
            .leases
            .delete_expect_revision(PRUNER_KEY, Some(revision))
            .await;
        result.map(Some)
    }

    async fn prune_shared_held(
        &self,
        remote: &Remote,
        lease: &mut u64,
        sinks: &[String],
        max_age: Option<Duration>,
        max_events: Option<u64>,
        history_max_age: Option<Duration>,
    ) -> Result<SharedPruned, JournalError> {
        let read = |e: &dyn std::fmt::Display| JournalError::Read(format!("JetStream: {e}"));
        // What every sink has passed: the lowest shared cursor of any sink, and the local
        // cursors of this receiver's sinks (one that never delivered has no shared cursor).
        let mut floor = u64::MAX;
        let mut keys = remote.cursors.keys().await.map_err(|e| read(&e))?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| read(&e))?;
            if let Some(value) = remote.cursors.get(&key).await.map_err(|e| read(&e))? {
                let seq = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                floor = floor.min(seq);
            }
        }
        let (journal, names) = (self.clone(), sinks.to_vec());
        let (local_floor, last, by_age) = tokio::task::spawn_blocking(move || {
            // Read without creating: a configured sink without a cursor yet has passed
            // nothing.
            let cursors = journal.cursors()?;
            let mut floor = u64::MAX;
            for name in &names {
                let cursor = cursors.iter().find(|(n, _)| n == name).map_or(0, |c| c.1);
                floor = floor.min(cursor);
            }
            let by_age = match max_age {
                Some(age) => Some(journal.seq_at(SystemTime::now() - age)?),
                None => None,
            };
            Ok::<_, JournalError>((floor, journal.last_seq()?, by_age))
        })
        .await
        .map_err(|e| JournalError::Write(e.to_string()))??;
        floor = floor.min(local_floor);
        let by_count = max_events.map(|keep| (last + 1).saturating_sub(keep));
        let wanted = match (by_age, by_count) {
            (Some(a), Some(c)) => a.max(c),
            (Some(a), None) => a,
            (None, Some(c)) => c,
            (None, None) => 0,
        };
        let below = wanted.min(floor);
        let idle_before = history_max_age.map(|age| SystemTime::now() - age);
        let mut pruned = SharedPruned {
            below,
            ..SharedPruned::default()
        };
        let events_subject = format!("{}.ev.>", remote.name);
        let none_subject = format!("{}.ev._", remote.name);
        let mut n_subjects = 0u64;
        let mut subjects = Vec::new();
        let mut listed = remote
            .stream
            .info_with_subjects(&events_subject)
            .await
            .map_err(|e| read(&e))?;
        while let Some(entry) = listed.next().await {
            subjects.push(entry.map_err(|e| read(&e))?);
        }
        for (subject, count) in subjects {
            let purge = remote.stream.purge().filter(subject.clone());
            let purged = if subject == none_subject {
                // Invalid events carry no state: cut like any event.
                if below <= 1 {
                    continue;
                }
                purge.sequence(below).await
            } else {
                if count <= 1 && idle_before.is_none() {
                    continue; // only its last message: nothing to purge
                }
                if (n_subjects % 100) == 99 {
                    // A long pass keeps the pruner's lease (else another receiver starts one).
                    match remote.renew_lease_key(PRUNER_KEY, *lease).await {
                        Some(r) => *lease = r,
                        None => {
                            return Err(JournalError::Write(
                                "lost the pruner's lease during a pass; stopped".into(),
                            ));
                        }
                    }
                }
                n_subjects += 1;
                let last = match remote
                    .stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                {
                    Ok(msg) => msg,
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
                    Err(e) => return Err(read(&e)),
                };
                if last.sequence < below {
                    let idle = idle_before.is_some_and(|t| SystemTime::from(last.time) < t);
                    if idle {
                        // The resource's history goes too: its next event is new, as when
                        // a single-host journal drops an idle resource's history.
                        pruned.histories += 1;
                        // Up to and including that message, not "the subject": an event
                        // appended meanwhile stays.
                        purge.sequence(last.sequence + 1).await
                    } else if count > 1 {
                        // Everything before that message (never one appended meanwhile).
                        purge.sequence(last.sequence).await
                    } else {
                        continue;
                    }
                } else if count > 1 && below > 1 {
                    purge.sequence(below).await
                } else {
                    continue;
                }
            };
            pruned.events += purged
                .map_err(|e| JournalError::Write(format!("JetStream purge: {e}")))?
                .purged;
        }
        Ok(pruned)
    }

    /// Who holds a sink's delivery lease, on a replicated journal.
    pub async fn lease_holder(&self, sink: &str) -> Option<String> {
        self.remote()?.lease_holder(sink).await
    }

    /// On a replicated journal, whether this receiver delivers `sink` now (holds its lease).
    /// Always true on a single-host journal.
    pub fn delivers_here(&self, sink: &str) -> bool {
        self.remote().is_none_or(|r| r.holds(sink))
    }
}

/// Copies the stream into the local mirror, in order, for as long as the journal is open.
async fn run_mirror(journal: Journal, remote: Arc<Remote>, stream: stream::Stream, mut from: u64) {
    let closed = |j: &Journal| j.health() == crate::journal::Health::Closed;
    let mut wait = Duration::from_millis(100);
    loop {
        let consumer = stream
            .create_consumer(js::consumer::pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(c) => c.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m.ready_chunks(512),
            Err(e) => {
                if closed(&journal) {
                    return;
                }
                tracing::warn!(error = %e, retry_in = ?wait, "journal mirror: cannot read the shared stream");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // Nothing to copy is progress too: the mirror is current.
        if remote
            .next_seq_from(from)
            .await
            .is_ok_and(|next| next.is_none())
        {
            remote.mirror_progressed();
        }
        loop {
            // Wake up now and then to notice an idle, current mirror (and a closed journal).
            let chunk = match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => {
                    if closed(&journal) {
                        return;
                    }
                    match remote.next_seq_from(from).await {
                        Ok(None) => {
                            remote.mirror_progressed();
                            journal
                                .stats()
                                .mirror_pending
                                .store(0, std::sync::atomic::Ordering::Relaxed);
                        }
                        // Messages wait and the consumer delivers none: recreate it.
                        Ok(Some(_)) if !remote.mirror_current(MIRROR_STALE / 2) => break,
                        _ => {}
                    }
                    continue;
                }
            };
            let mut items = Vec::with_capacity(chunk.len());
            let mut restart = false;
            for msg in chunk {
                match msg {
                    Ok(msg) => match msg.info() {
                        Ok(info) if info.stream_sequence < from => {
                            // An ordered consumer recreated from the stream's start (after
                            // a blip before it delivered anything): start again from here.
                            restart = true;
                            break;
                        }
                        Ok(info) => {
                            journal
                                .stats()
                                .mirror_pending
                                .store(info.pending, std::sync::atomic::Ordering::Relaxed);
                            items.push((info.stream_sequence, msg.payload.clone()));
                        }
                        Err(_) => restart = true,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "journal mirror: stream read failed; resuming");
                        restart = true;
                    }
                }
            }
            if !items.is_empty() {
                match journal.import(items).await {
                    Ok(last) => {
                        from = last + 1;
                        wait = Duration::from_millis(100);
                        remote.mirror_progressed();
                    }
                    Err(JournalError::Closed) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "journal mirror: cannot record; retrying");
                        restart = true;
                    }
                }
            }
            if restart {
                break;
            }
        }
        if closed(&journal) {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_below_2_10_are_refused() {
        assert!(check_version("2.15.1").is_ok());
        assert!(check_version("v2.10.0").is_ok());
        assert!(check_version("2.11.0-beta.2").is_ok());
        assert!(check_version("3.0").is_ok());
        let err = check_version("2.9.10").unwrap_err();
        assert!(err.contains("2.10.0 or newer"), "{err}");
        assert!(check_version("banana").is_err());
    }

    #[test]
    fn sink_names_become_valid_keys() {
        assert_eq!(kv_key("app-1_x"), "app-1_x");
        assert_eq!(kv_key("a b.c"), "a=20b=2ec");
    }

    #[test]
    fn messages_round_trip() {
        let envelope: Envelope = serde_json::from_str(
            r#"{"id":"x","seq":0,"received_at":"2026-11-28T00:00:00.000Z","source_ip":"127.0.0.1","kinds":["video.ready"],"resource":{"type":"video","id":5},"payload":{"type":"video"}}"#,
        )
        .unwrap();
        let bytes =
            encode_message(Some("video:5"), None, Some(b"{}"), 7, " ", "\n", &envelope).unwrap();
        let m = decode_message(&bytes).unwrap();
        assert_eq!(m.key, Some("video:5"));
        assert_eq!(m.state, None);
        assert_eq!(m.received, Some(&b"{}"[..]));
        let stored = crate::journal::decode_event(1, m.record).unwrap();
        assert_eq!(stored.body_suffix, "\n");
        assert!(decode_message(&bytes[..5]).is_err());
        assert!(decode_message(b"").is_err());
    }
}
