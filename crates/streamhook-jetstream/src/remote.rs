//! The connection to the shared stream and its buckets. The client connects in the background
//! (a receiver starts, and spools, with every NATS server down) and pings every
//! `ping_interval`; the stream and the `leases`, `sinks` and `mirrors` buckets are set up (or
//! checked, when they exist) once a server answers. A setting that can lose events or break
//! retries and pruning is refused, naming the setting and the command that fixes it. Also the
//! reads and conditional writes the other files share.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::kv;
use async_nats::jetstream::stream;
use async_nats::jetstream::{self as js};
use bytes::Bytes;
use futures_util::StreamExt as _;
use streamhook_core::{Cause, CauseKind, JournalError};
use streamhook_types::ResourceState;
use tokio::sync::watch;

use crate::config::{JetStreamConfig, LEASE_TTL, MIN_DUPLICATE_WINDOW, check_version};

/// What this receiver knows of a resource's last message on the stream: enough to append the
/// next event in one round trip (the compare-and-set refuses it if another receiver appended
/// since, and the resource is read again).
#[derive(Debug, Clone)]
pub(crate) struct Known {
    /// The resource's last message's stream sequence (0: none).
    pub(crate) seq: u64,
    /// The classifier state it carries.
    pub(crate) state: Option<ResourceState>,
    /// The newest receive time of the resource's events (ms since the epoch).
    pub(crate) newest_ms: u64,
}

/// The most resources [`Remote::known`] remembers (then it forgets them all; each is read
/// again at its next event).
const KNOWN_MAX: usize = 100_000;

/// Where the receiver stands with the shared stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for a server, or for the stream and buckets (events are spooled).
    Connecting(String),
    /// The stream and buckets are set up.
    Ready,
    /// The stream, a bucket or the server is refused (events are spooled; fix and it is
    /// checked again).
    Refused(String),
}

/// The stream and buckets, once set up.
pub(crate) struct Ready {
    pub(crate) context: js::Context,
    pub(crate) stream: stream::Stream,
    /// `<STREAM>_leases`: who delivers each sink (keys expire unless renewed).
    pub(crate) leases: kv::Store,
    /// `<STREAM>_sinks`: each sink's shared cursor, start record, fence and dead letters.
    pub(crate) sinks: kv::Store,
    /// `<STREAM>_mirrors`: how far each receiver's mirror has copied.
    pub(crate) mirrors: kv::Store,
    /// When the stream was created (ns since the epoch): its identity, with its name.
    pub(crate) created_ns: u64,
}

/// The connection to the shared stream and buckets.
pub(crate) struct Remote {
    pub(crate) client: async_nats::Client,
    pub(crate) name: String,
    pub(crate) config: JetStreamConfig,
    pub(crate) instance: String,
    ready: OnceLock<Ready>,
    phase: watch::Sender<Phase>,
    /// Why this folder's mirror cannot follow the stream (it was recreated while running).
    mirror_refused: Mutex<Option<String>>,
    /// When the mirror last recorded something, or found nothing to copy.
    mirror_progress: Mutex<Instant>,
    /// What this receiver knows of each resource's last message (see [`Known`]).
    known: Mutex<HashMap<String, Known>>,
    /// This receiver's key in `<STREAM>_mirrors`, once known.
    pub(crate) mirror_key: OnceLock<String>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("stream", &self.name)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// A failure of the shared stream, with the error underneath as its source.
pub(crate) fn remote_err<E>(what: &str, e: E) -> JournalError
where
    E: std::error::Error + Send + Sync + 'static,
{
    JournalError::Write(Cause::with_source(
        CauseKind::Shared,
        format!("JetStream: {what}: {e}"),
        e,
    ))
}

/// A failure of the shared stream described by a message alone.
pub(crate) fn remote_msg(what: &str, message: impl std::fmt::Display) -> JournalError {
    JournalError::write(CauseKind::Shared, format!("JetStream: {what}: {message}"))
}

/// A failed read of the shared stream or buckets.
pub(crate) fn read_err<E>(e: E) -> JournalError
where
    E: std::error::Error + Send + Sync + 'static,
{
    JournalError::Read(Cause::with_source(
        CauseKind::Shared,
        format!("JetStream: {e}"),
        e,
    ))
}

/// Why setting up failed: try again later, or refused until the operator changes something.
#[derive(Debug)]
pub(crate) enum SetupError {
    Wait(String),
    Refuse(String),
}

/// A write of a sink's shared state that was refused because another receiver wrote there
/// since (the sink has a newer holder), or that failed.
#[derive(Debug)]
pub(crate) enum FencedWrite {
    /// Another receiver wrote the sink's state since this one's last write.
    Fenced,
    /// The write failed (it may be tried again).
    Failed(JournalError),
}

/// A value read from a bucket's leader.
#[derive(Debug)]
pub(crate) struct LeaderValue {
    pub(crate) key: String,
    pub(crate) value: Bytes,
}

impl Remote {
    /// Creates the client: it connects in the background, and reconnects for ever.
    pub(crate) async fn new(config: &JetStreamConfig) -> Result<Remote, JournalError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("streamhook journal")
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(config.ping_interval)
            .retry_on_initial_connect()
            .max_reconnects(None);
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
            return Err(remote_msg("configuration", "no server URL given"));
        }
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| remote_err("cannot connect", e))?;
        let instance = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            fastrand::u32(..)
        );
        let (phase, _) = watch::channel(Phase::Connecting("connecting".into()));
        Ok(Remote {
            client,
            name: config.stream.clone(),
            config: config.clone(),
            instance,
            ready: OnceLock::new(),
            phase,
            mirror_refused: Mutex::new(None),
            mirror_progress: Mutex::new(Instant::now()),
            known: Mutex::new(HashMap::new()),
            mirror_key: OnceLock::new(),
        })
    }

    /// The stream and buckets, once set up.
    pub(crate) fn ready(&self) -> Option<&Ready> {
        self.ready.get()
    }

    /// Where the receiver stands with the stream.
    pub(crate) fn phase(&self) -> Phase {
        self.phase.borrow().clone()
    }

    /// Waits for the phase to change.
    pub(crate) fn watch_phase(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.send_if_modified(|p| {
            let changed = *p != phase;
            *p = phase;
            changed
        });
    }

    /// Records the stream and buckets (once).
    pub(crate) fn set_ready(&self, ready: Ready) {
        let _ = self.ready.set(ready);
        self.set_phase(Phase::Ready);
    }

    /// Why this folder's mirror cannot follow the stream, if so.
    pub(crate) fn mirror_refused(&self) -> Option<String> {
        self.mirror_refused.lock().ok().and_then(|m| m.clone())
    }

    pub(crate) fn refuse_mirror(&self, why: String) {
        if let Ok(mut m) = self.mirror_refused.lock() {
            *m = Some(why);
        }
    }

    /// Whether events can go to the stream now: set up, connected, nothing refused.
    pub(crate) fn takes_events(&self) -> bool {
        self.ready.get().is_some() && self.connected() && self.phase() == Phase::Ready
    }

    /// What this receiver knows of a resource's last message.
    pub(crate) fn known(&self, key: &str) -> Option<Known> {
        self.known.lock().ok()?.get(key).cloned()
    }

    /// The seq of a resource's last message, as far as this receiver knows (0: unknown).
    pub(crate) fn known_seq(&self, key: &str) -> u64 {
        self.known
            .lock()
            .ok()
            .and_then(|m| m.get(key).map(|k| k.seq))
            .unwrap_or(0)
    }

    /// Records what a resource's last message is now (kept only if it is newer than what was
    /// known).
    pub(crate) fn learn(&self, key: &str, known: Known) {
        if let Ok(mut map) = self.known.lock() {
            if map.len() >= KNOWN_MAX && !map.contains_key(key) {
                map.clear();
            }
            match map.get_mut(key) {
                Some(k) if k.seq >= known.seq => {}
                Some(k) => *k = known,
                None => {
                    map.insert(key.to_owned(), known);
                }
            }
        }
    }

    /// Forgets what was known of every resource.
    pub(crate) fn forget_all(&self) {
        if let Ok(mut map) = self.known.lock() {
            map.clear();
        }
    }

    /// Forgets what was known of a resource (read it again before the next append).
    pub(crate) fn forget(&self, key: &str) {
        if let Ok(mut map) = self.known.lock() {
            map.remove(key);
        }
    }

    /// Sets the stream and buckets up (creates them when missing, checks them when not).
    pub(crate) async fn setup(&self) -> Result<Ready, SetupError> {
        if !self.connected() {
            return Err(SetupError::Wait("not connected to any NATS server".into()));
        }
        let info = self.client.server_info();
        check_version(&info.version).map_err(SetupError::Refuse)?;
        let context = js::ContextBuilder::new()
            .timeout(self.config.timeout)
            .build(self.client.clone());
        let name = &self.name;
        let replicas = self.config.replicas.max(1);
        let wanted = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.ev.>")],
            num_replicas: replicas,
            storage: stream::StorageType::File,
            duplicate_window: MIN_DUPLICATE_WINDOW,
            description: Some("streamhook: the shared journal".into()),
            ..Default::default()
        };
        let mut stream = match context.get_stream(name).await {
            Ok(stream) => stream,
            Err(e) if is_not_found(&e) => {
                context.get_or_create_stream(wanted).await.map_err(|e| {
                    SetupError::Wait(setup_hint(format!("stream {name}: {e}"), replicas))
                })?
            }
            Err(e) => return Err(SetupError::Wait(format!("stream {name}: {e}"))),
        };
        let stream_info = stream
            .info()
            .await
            .map_err(|e| SetupError::Wait(format!("stream {name}: {e}")))?
            .clone();
        let problems = check_stream(name, &stream_info.config, replicas);
        if !problems.is_empty() {
            return Err(SetupError::Refuse(problems.join("; ")));
        }
        let created_ns = stream_info.created.unix_timestamp_nanos().max(0) as u64;
        let leases = self.bucket(&context, "leases", LEASE_TTL, replicas).await?;
        let sinks = self
            .bucket(&context, "sinks", Duration::ZERO, replicas)
            .await?;
        let mirrors = self
            .bucket(&context, "mirrors", self.config.mirror_grace, replicas)
            .await?;
        // More servers than replicas: a node's loss can cost the stream its quorum sooner
        // than it needs to (not wrong, but worth a word).
        let servers = info.connect_urls.len().max(1);
        if replicas < servers {
            tracing::warn!(
                stream = %name,
                replicas,
                servers,
                "the stream has fewer replicas than the cluster has servers: losing the servers that hold it loses its events (set [journal] replicas = {} and `nats stream edit {name} --replicas {}`)",
                servers.min(5),
                servers.min(5),
            );
        }
        Ok(Ready {
            context,
            stream,
            leases,
            sinks,
            mirrors,
            created_ns,
        })
    }

    /// A bucket: created when missing; checked when it exists.
    async fn bucket(
        &self,
        context: &js::Context,
        suffix: &str,
        max_age: Duration,
        replicas: usize,
    ) -> Result<kv::Store, SetupError> {
        let bucket = format!("{}_{suffix}", self.name);
        match context.get_stream(format!("KV_{bucket}")).await {
            Ok(mut stream) => {
                let info = stream
                    .info()
                    .await
                    .map_err(|e| SetupError::Wait(format!("bucket {bucket}: {e}")))?;
                let mut problems = check_bucket(&bucket, &info.config, max_age, replicas);
                if suffix == "mirrors" {
                    // Its entries' life is the grace pruning waits for a silent receiver: a
                    // different one changes how long, never what is kept for a live one.
                    problems.retain(|p| {
                        let ttl = p.contains(": ttl = ");
                        if ttl {
                            tracing::warn!(problem = %p, "[journal] mirror_grace differs from the bucket's; the bucket's applies");
                        }
                        !ttl
                    });
                }
                if !problems.is_empty() {
                    return Err(SetupError::Refuse(problems.join("; ")));
                }
                context
                    .get_key_value(&bucket)
                    .await
                    .map_err(|e| SetupError::Wait(format!("bucket {bucket}: {e}")))
            }
            Err(e) if is_not_found(&e) => context
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    max_age,
                    num_replicas: replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    SetupError::Wait(setup_hint(format!("bucket {bucket}: {e}"), replicas))
                }),
            Err(e) => Err(SetupError::Wait(format!("bucket {bucket}: {e}"))),
        }
    }

    /// Whether the mirror made progress (or had nothing to copy) in the last `within`.
    pub(crate) fn mirror_current(&self, within: Duration) -> bool {
        self.mirror_progress
            .lock()
            .map(|t| t.elapsed() < within)
            .unwrap_or(true)
    }

    pub(crate) fn mirror_progressed(&self) {
        if let Ok(mut t) = self.mirror_progress.lock() {
            *t = Instant::now();
        }
    }

    pub(crate) fn subject(&self, key: Option<&str>) -> String {
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

    /// Whether the client is connected to a NATS server now (it reconnects by itself).
    pub(crate) fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The stream and buckets, or an error saying why they are not there.
    pub(crate) fn need(&self) -> Result<&Ready, JournalError> {
        self.ready.get().ok_or_else(|| {
            remote_msg(
                "not set up",
                "no NATS server has answered since this receiver started",
            )
        })
    }

    /// The seq of the first message the stream holds at or after `from` (`None`: none; purged
    /// messages leave gaps, so the stream's last sequence may be one it no longer holds).
    pub(crate) async fn next_seq_from(&self, from: u64) -> Result<Option<u64>, JournalError> {
        let ready = self.need()?;
        let found = ready
            .stream
            .raw_message_builder()
            .sequence(from.max(1))
            .next_by_subject(format!("{}.ev.>", self.name))
            .send()
            .await;
        match found {
            Ok(msg) => Ok(Some(msg.sequence)),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(read_err(e)),
        }
    }

    /// The stream's last sequence and creation time now.
    pub(crate) async fn stream_state(&self) -> Result<(u64, u64), JournalError> {
        let mut stream = self.need()?.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|e| remote_err("stream info", e))?;
        Ok((
            info.state.last_sequence,
            info.created.unix_timestamp_nanos().max(0) as u64,
        ))
    }

    /// This receiver's name in leases.
    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    /// Takes a lease key if nobody holds it; returns its revision.
    pub(crate) async fn try_lease_key(&self, key: &str) -> Option<u64> {
        let sink = key;
        let ready = self.ready.get()?;
        match ready
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

    /// Renews a held lease key; `None` when it was lost.
    pub(crate) async fn renew_lease_key(&self, key: &str, revision: u64) -> Option<u64> {
        let sink = key;
        let ready = self.ready.get()?;
        let renew = ready
            .leases
            .update(key, Bytes::from(self.instance.clone()), revision);
        match tokio::time::timeout(Duration::from_secs(1), renew).await {
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

    /// Deletes a lease key if it is still at `revision` (ours).
    pub(crate) async fn delete_lease_key(&self, key: &str, revision: u64) {
        if let Some(ready) = self.ready.get() {
            let _ = ready
                .leases
                .delete_expect_revision(key, Some(revision))
                .await;
        }
    }

    /// Every live key under `prefix` (`<sink>.`) in the `sinks` bucket, read from its stream's
    /// leader (never a replica that may lag), and the sequence of the last message under it
    /// (what a conditional write expects; 0: none).
    pub(crate) async fn read_tree(
        &self,
        prefix: &str,
    ) -> Result<(Vec<LeaderValue>, u64), JournalError> {
        let ready = self.need()?;
        read_bucket(&ready.sinks, &format!("{prefix}>")).await
    }

    /// Writes (or, with `None`, deletes) a key under a sink's prefix in the `sinks` bucket,
    /// only if the last message under `<sink>.` is still `expect` (this holder's last write):
    /// a stale holder's write is refused once a newer holder wrote its fence. Returns the
    /// write's sequence, what the next write expects.
    pub(crate) async fn write_fenced(
        &self,
        sink_key: &str,
        key: &str,
        value: Option<Bytes>,
        expect: u64,
    ) -> Result<u64, FencedWrite> {
        let ready = self.need().map_err(FencedWrite::Failed)?;
        let bucket = &ready.sinks;
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence-Subject",
            format!("{}{sink_key}.>", bucket.prefix).as_str(),
        );
        let payload = match value {
            Some(v) => v,
            None => {
                headers.insert("KV-Operation", "DEL");
                Bytes::new()
            }
        };
        let publish = js::message::PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .expected_last_subject_sequence(expect);
        let subject = format!("{}{key}", bucket.prefix);
        let sent = async {
            match ready.context.send_publish(subject, publish).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), sent).await {
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(e)) if e.kind() == PublishErrorKind::WrongLastSequence => {
                Err(FencedWrite::Fenced)
            }
            Ok(Err(e)) => Err(FencedWrite::Failed(remote_err("sink state", e))),
            Err(_) => Err(FencedWrite::Failed(remote_msg("sink state", "timed out"))),
        }
    }
}

/// The live keys of `bucket` matching `filter` (`>` for all) with their values, and the
/// sequence of the last message among them (delete markers included; 0: none). Read through
/// one ordered consumer delivering the last message of each key: served by the bucket's
/// stream leader, one round trip for any number of keys.
pub(crate) async fn read_bucket(
    bucket: &kv::Store,
    filter: &str,
) -> Result<(Vec<LeaderValue>, u64), JournalError> {
    let read = async {
        let consumer = bucket
            .stream
            .create_consumer(js::consumer::pull::OrderedConfig {
                filter_subject: format!("{}{filter}", bucket.prefix),
                deliver_policy: js::consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(read_err)?;
        let mut out = Vec::new();
        let mut last = 0;
        if consumer.cached_info().num_pending == 0 {
            return Ok((out, last));
        }
        let mut messages = consumer.messages().await.map_err(read_err)?;
        while let Some(msg) = messages.next().await {
            let msg = msg.map_err(read_err)?;
            let info = msg.info().map_err(|e| remote_msg("reading a bucket", e))?;
            last = last.max(info.stream_sequence);
            let pending = info.pending;
            let deleted = msg.headers.as_ref().is_some_and(|h| {
                h.get("KV-Operation")
                    .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE")
            });
            if !deleted {
                out.push(LeaderValue {
                    key: msg.subject[bucket.prefix.len()..].to_owned(),
                    value: msg.payload.clone(),
                });
            }
            if pending == 0 {
                break;
            }
        }
        Ok::<_, JournalError>((out, last))
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| remote_msg("reading a bucket", "timed out"))?
}

fn is_not_found(e: &js::context::GetStreamError) -> bool {
    match e.kind() {
        GetStreamErrorKind::JetStream(inner) => {
            inner.error_code() == js::ErrorCode::STREAM_NOT_FOUND
        }
        _ => false,
    }
}

/// The smallest `max_msg_size` a stream may have: a webhook body up to 1 MiB, with its
/// envelope and how it arrived.
const MIN_MESSAGE_SIZE: u64 = 4 << 20;

/// What is wrong with an existing stream, each with the command that fixes it.
pub(crate) fn check_stream(name: &str, config: &stream::Config, replicas: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut refuse = |setting: &str, why: &str, fix: String| {
        problems.push(format!(
            "stream {name}: {setting} {why} (fix: `nats stream edit {name} {fix}`, or give \
             streamhook a stream of its own with [journal] stream)"
        ));
    };
    let subject = format!("{name}.ev.>");
    if !config
        .subjects
        .iter()
        .any(|s| s == &subject || s == ">" || s == &format!("{name}.>"))
    {
        refuse(
            &format!("subjects = {:?}", config.subjects),
            &format!("do not take {subject}, where events are published"),
            format!("--subjects '{subject}'"),
        );
    }
    if config.storage != stream::StorageType::File {
        refuse(
            "storage = memory",
            "loses every event when the servers restart",
            "(a stream's storage cannot change: copy it to a new file-backed stream)".into(),
        );
    }
    if config.num_replicas != replicas {
        refuse(
            &format!("replicas = {}", config.num_replicas),
            &format!("differs from [journal] replicas = {replicas}"),
            format!("--replicas {replicas}` or change [journal] replicas`"),
        );
    }
    if config.max_age != Duration::ZERO {
        refuse(
            &format!("max_age = {}", humantime::format_duration(config.max_age)),
            "deletes events whatever the sinks have had (streamhook prunes the stream itself, by [retention])",
            "--max-age 0".into(),
        );
    }
    if config.max_messages > 0 {
        refuse(
            &format!("max_msgs = {}", config.max_messages),
            "deletes (or refuses) events whatever the sinks have had",
            "--max-msgs -1".into(),
        );
    }
    if config.max_bytes > 0 {
        refuse(
            &format!("max_bytes = {}", config.max_bytes),
            "deletes (or refuses) events whatever the sinks have had",
            "--max-bytes -1".into(),
        );
    }
    if config.max_messages_per_subject > 0 {
        refuse(
            &format!("max_msgs_per_subject = {}", config.max_messages_per_subject),
            "deletes a resource's older events whatever the sinks have had",
            "--max-msgs-per-subject -1".into(),
        );
    }
    if config.duplicate_window < MIN_DUPLICATE_WINDOW {
        refuse(
            &format!(
                "duplicate_window = {}",
                humantime::format_duration(config.duplicate_window)
            ),
            "is shorter than 2 minutes: a publish retried (or forwarded from a spool) after it would store an event twice",
            "--dupe-window 2m".into(),
        );
    }
    if config.deny_purge {
        refuse(
            "deny_purge = true",
            "stops streamhook pruning the stream (it grows without end)",
            "--no-deny-purge".into(),
        );
    }
    if config.retention != stream::RetentionPolicy::Limits {
        refuse(
            &format!("retention = {:?}", config.retention),
            "deletes events once consumed or without interest, whatever the sinks have had",
            "(a stream's retention cannot change: copy it to a new stream with retention limits)"
                .into(),
        );
    }
    if config.max_message_size > 0 && (config.max_message_size as u64) < MIN_MESSAGE_SIZE {
        refuse(
            &format!("max_msg_size = {}", config.max_message_size),
            "refuses events larger than that (they would wait in a spool for ever)",
            "--max-msg-size -1".into(),
        );
    }
    if config.no_ack {
        refuse(
            "no_ack = true",
            "acknowledges nothing: a publish cannot tell it was stored",
            "(no_ack cannot change: copy it to a new stream)".into(),
        );
    }
    if config.sealed {
        refuse(
            "sealed = true",
            "takes no events",
            "(a sealed stream cannot be unsealed: create a new one)".into(),
        );
    }
    if config.mirror.is_some() {
        refuse(
            "mirror",
            "is set: a mirror takes no published events",
            "(use the stream it mirrors)".into(),
        );
    }
    problems
}

/// What is wrong with an existing bucket's stream.
pub(crate) fn check_bucket(
    bucket: &str,
    config: &stream::Config,
    max_age: Duration,
    replicas: usize,
) -> Vec<String> {
    let mut problems = Vec::new();
    // The sinks' bucket holds their cursors, start records and dead letters: never suggest
    // deleting it. The others hold what is rebuilt in seconds.
    let or_else = if bucket.ends_with("_sinks") {
        " (do not delete this bucket: it holds every sink's cursor and dead letters)".to_owned()
    } else {
        format!(", or delete the bucket and let streamhook create it again: `nats kv del {bucket}`")
    };
    let mut refuse = |setting: String, why: &str, fix: String| {
        problems.push(format!(
            "bucket {bucket}: {setting} {why} (fix: `nats kv edit {bucket} {fix}`{or_else})"
        ));
    };
    if config.storage != stream::StorageType::File {
        refuse(
            "storage = memory".into(),
            "loses the sinks' cursors and dead letters when the servers restart",
            "(storage cannot change)".into(),
        );
    }
    if config.num_replicas != replicas {
        refuse(
            format!("replicas = {}", config.num_replicas),
            &format!("differs from [journal] replicas = {replicas}"),
            format!("--replicas {replicas}"),
        );
    }
    if config.max_age != max_age {
        refuse(
            format!("ttl = {}", humantime::format_duration(config.max_age)),
            &if max_age.is_zero() {
                "deletes cursors and dead letters as they age".to_owned()
            } else {
                format!(
                    "differs from {} (what streamhook times by)",
                    humantime::format_duration(max_age)
                )
            },
            format!("--ttl {}", humantime::format_duration(max_age)),
        );
    }
    if config.max_messages > 0 || config.max_bytes > 0 {
        refuse(
            "a size limit".into(),
            "drops or refuses the sinks' shared state",
            "--max-bytes -1".into(),
        );
    }
    if config.retention != stream::RetentionPolicy::Limits {
        refuse(
            format!("retention = {:?}", config.retention),
            "is not a key-value bucket's",
            "(recreate it)".into(),
        );
    }
    if config.max_messages_per_subject < 1 {
        refuse(
            format!("history = {}", config.max_messages_per_subject),
            "is not a key-value bucket's",
            "--history 1".into(),
        );
    }
    problems
}

/// A sink name as a key (keys allow `A-Z a-z 0-9 - _ = .`; anything else is hex-escaped).
pub(crate) fn kv_key(sink: &str) -> String {
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

/// Adds what to do to a setup error that usually means too few servers for the replicas.
fn setup_hint(text: String, replicas: usize) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn good(name: &str) -> stream::Config {
        stream::Config {
            name: name.into(),
            subjects: vec![format!("{name}.ev.>")],
            num_replicas: 3,
            storage: stream::StorageType::File,
            duplicate_window: MIN_DUPLICATE_WINDOW,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            ..Default::default()
        }
    }

    #[test]
    fn each_setting_that_loses_events_is_named_with_its_fix() {
        assert!(check_stream("S", &good("S"), 3).is_empty());
        let cases: Vec<(stream::Config, &str, &str)> = vec![
            (
                stream::Config {
                    max_age: Duration::from_secs(3600),
                    ..good("S")
                },
                "max_age = 1h",
                "--max-age 0",
            ),
            (
                stream::Config {
                    max_messages: 10,
                    ..good("S")
                },
                "max_msgs = 10",
                "--max-msgs -1",
            ),
            (
                stream::Config {
                    max_bytes: 1 << 20,
                    ..good("S")
                },
                "max_bytes",
                "--max-bytes -1",
            ),
            (
                stream::Config {
                    max_messages_per_subject: 1,
                    ..good("S")
                },
                "max_msgs_per_subject = 1",
                "--max-msgs-per-subject -1",
            ),
            (
                stream::Config {
                    storage: stream::StorageType::Memory,
                    ..good("S")
                },
                "storage = memory",
                "file-backed",
            ),
            (
                stream::Config {
                    duplicate_window: Duration::from_secs(10),
                    ..good("S")
                },
                "duplicate_window = 10s",
                "--dupe-window 2m",
            ),
            (
                stream::Config {
                    deny_purge: true,
                    ..good("S")
                },
                "deny_purge",
                "--no-deny-purge",
            ),
            (
                stream::Config {
                    num_replicas: 1,
                    ..good("S")
                },
                "replicas = 1",
                "--replicas 3",
            ),
            (
                stream::Config {
                    subjects: vec!["other.>".into()],
                    ..good("S")
                },
                "subjects",
                "--subjects 'S.ev.>'",
            ),
            (
                stream::Config {
                    retention: stream::RetentionPolicy::Interest,
                    ..good("S")
                },
                "retention = Interest",
                "retention limits",
            ),
            (
                stream::Config {
                    max_message_size: 1024,
                    ..good("S")
                },
                "max_msg_size = 1024",
                "--max-msg-size -1",
            ),
        ];
        for (config, setting, fix) in cases {
            let problems = check_stream("S", &config, 3);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains(setting), "{setting}: {}", problems[0]);
            assert!(problems[0].contains(fix), "{fix}: {}", problems[0]);
            assert!(
                problems[0].contains("nats stream edit S"),
                "{}",
                problems[0]
            );
        }
    }

    #[test]
    fn buckets_are_checked_too() {
        let mut config = stream::Config {
            name: "KV_S_sinks".into(),
            num_replicas: 3,
            storage: stream::StorageType::File,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: 1,
            ..Default::default()
        };
        assert!(check_bucket("S_sinks", &config, Duration::ZERO, 3).is_empty());
        config.max_age = Duration::from_secs(60);
        let problems = check_bucket("S_sinks", &config, Duration::ZERO, 3);
        assert!(
            problems[0].contains("ttl = 1m")
                && problems[0].contains("nats kv edit S_sinks --ttl 0s"),
            "{problems:?}"
        );
        assert!(
            problems[0].contains("do not delete this bucket"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("kv del"), "{problems:?}");
        config.max_age = Duration::ZERO;
        config.num_replicas = 1;
        assert!(check_bucket("S_sinks", &config, Duration::ZERO, 3)[0].contains("--replicas 3"));
    }
}
