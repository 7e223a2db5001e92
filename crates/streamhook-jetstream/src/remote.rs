//! The connection to the shared stream and its buckets: connecting (the server's version
//! checked), creating the stream and the `leases`, `cursors` and `letters` buckets when
//! missing, the stream's subjects, and the small reads and lease-key operations the other
//! files share.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use async_nats::jetstream::stream;
use async_nats::jetstream::{self as js};
use bytes::Bytes;
use streamhook_core::{Cause, CauseKind, JournalError};

use crate::config::{JetStreamConfig, LEASE_RENEW, LEASE_TTL, check_version};
use crate::message::decode_message;

/// The connection to the shared stream and buckets.
pub(crate) struct Remote {
    pub(crate) client: async_nats::Client,
    pub(crate) context: js::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) name: String,
    pub(crate) leases: kv::Store,
    pub(crate) cursors: kv::Store,
    /// Each sink's dead letters and requeued events, as its deliverer last shared them.
    pub(crate) letters: kv::Store,
    pub(crate) instance: String,
    pub(crate) timeout: Duration,
    pub(crate) history_max_age: Option<Duration>,
    /// When the stream was created (ns since the epoch): a mirror belongs to one stream.
    pub(crate) created_ns: u64,
    /// When the mirror last recorded something, or found nothing to copy.
    mirror_progress: std::sync::Mutex<Instant>,
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
            return Err(remote_msg("configuration", "no server URL given"));
        }
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| remote_err("cannot connect", e))?;
        let version = client.server_info().version;
        check_version(&version)
            .map_err(|message| JournalError::write(CauseKind::Shared, message))?;
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
        .map_err(|e| remote_msg(&format!("stream {name}"), setup_hint(e, replicas)))?;
        let info = stream
            .info()
            .await
            .map_err(|e| remote_err(&format!("stream {name}"), e))?
            .clone();
        if info.config.num_replicas != replicas {
            return Err(remote_msg(
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
            .map_err(|e| remote_msg("bucket leases", setup_hint(e, replicas)))?;
        let cursors = retry_setup(|| context.create_key_value(bucket("cursors", Duration::ZERO)))
            .await
            .map_err(|e| remote_msg("bucket cursors", setup_hint(e, replicas)))?;
        let letters = retry_setup(|| context.create_key_value(bucket("letters", Duration::ZERO)))
            .await
            .map_err(|e| remote_msg("bucket letters", setup_hint(e, replicas)))?;
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
            mirror_progress: std::sync::Mutex::new(Instant::now()),
        })
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
            Err(e) => Err(read_err(e)),
        }
    }

    /// The event id of the message at `seq`, when the stream holds a readable one there.
    pub(crate) async fn event_id_at(&self, seq: u64) -> Option<String> {
        let msg = self.stream.get_raw_message(seq).await.ok()?;
        let decoded = decode_message(&msg.payload).ok()?;
        let stored = streamhook_core::journal::record::decode_event(seq, decoded.record).ok()?;
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

    /// Takes a lease key if nobody holds it; returns its revision.
    pub(crate) async fn try_lease_key(&self, key: &str) -> Option<u64> {
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

    /// Renews a held lease key; `None` when it was lost.
    pub(crate) async fn renew_lease_key(&self, key: &str, revision: u64) -> Option<u64> {
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

    /// Deletes a lease key if it is still at `revision` (ours).
    pub(crate) async fn delete_lease_key(&self, key: &str, revision: u64) {
        let _ = self
            .leases
            .delete_expect_revision(key, Some(revision))
            .await;
    }
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

pub(crate) async fn retry_setup<
    T,
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
>(
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
