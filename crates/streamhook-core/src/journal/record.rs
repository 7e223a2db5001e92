//! The on-disk records: the tables of `journal.redb` and how each value is encoded (the
//! layout itself is described in the [module's documentation](super)), the event record
//! (`encode_record`, `decode_event`), the history record, and the event id.
//!
//! Backends that carry events elsewhere (the replicated journal's stream messages) embed the
//! same event record, so a mirror stores what it copies byte for byte.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::TableDefinition;
use serde::{Deserialize, Serialize};
use streamhook_types::{Envelope, EventId, EventKind, Problem, Resource, ResourceState, Webhook};

use super::error::{JournalError, write_err};

pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
pub(crate) const HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("history");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
pub(crate) const DEAD_LETTERS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("dead_letters");
pub(crate) const REQUEUED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("requeued");
pub(crate) const REWINDS: TableDefinition<&str, u64> = TableDefinition::new("rewinds");
/// How each request arrived (peer, rule, headers), for the console; never sent to sinks.
pub(crate) const REQUESTS: TableDefinition<u64, &[u8]> = TableDefinition::new("requests");
/// The first seq each sink was given (its cursor when created, lowered by replays).
pub(crate) const SINK_STARTS: TableDefinition<&str, u64> = TableDefinition::new("sink_starts");

/// When each sink was first found missing from the configuration (journal clock, ms); gone
/// again when it comes back or is forgotten.
pub(crate) const SINK_REMOVED: TableDefinition<&str, u64> = TableDefinition::new("sink_removed");

/// Each sink's delivery attempts of each event, (sink, seq) -> JSON list (the last
/// [`ATTEMPTS_KEPT`] of them), the successful first one too: written with the sink's cursor,
/// pruned with the events.
pub(crate) const ATTEMPTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("attempts");

/// How many attempts of one event each sink keeps.
pub const ATTEMPTS_KEPT: usize = 8;

/// The operator's actions (replay, requeue, resend, forget, reload), by a counter: who, what,
/// when. The newest [`AUDIT_KEPT`] are kept.
pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// How many operator actions are kept.
pub const AUDIT_KEPT: u64 = 1000;

/// Events accepted but not yet forwarded to a backend's shared journal, by arrival (see
/// `spool`).
pub(crate) const SPOOL: TableDefinition<u64, &[u8]> = TableDefinition::new("spool");

/// `meta`: the next seq to assign.
pub(crate) const NEXT_SEQ: &str = "next_seq";
/// `meta`: when the writer last probed whether it can commit.
pub(crate) const PROBE: &str = "probe";
/// `meta`: the next key of the spool.
pub(crate) const SPOOL_NEXT: &str = "spool_next";

/// What intake hands the journal: a webhook the model understood, or JSON that does not fit
/// it (kept with the kind `invalid`, its resource as far as it can be read, and its
/// problems). An invalid event never changes a resource's history.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// A webhook the typed model reads.
    Webhook(Webhook),
    /// JSON that the typed model does not read.
    Invalid {
        /// The resource, when its type and id are readable.
        resource: Resource,
        /// What does not fit, first problem first.
        problems: Vec<Problem>,
    },
}

impl From<Webhook> for Parsed {
    fn from(webhook: Webhook) -> Self {
        Parsed::Webhook(webhook)
    }
}

/// One delivery attempt of an event to a sink, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Which attempt, from 1.
    pub attempt: u32,
    /// When it ended, in ms since the Unix epoch.
    pub at_ms: u64,
    /// How long it took, in ms.
    pub latency_ms: u64,
    /// `delivered`, `failed` or `dead`.
    pub outcome: String,
    /// The sink's error (with the status code, for HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An operator's action, as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// Who: `console session 3f2a…` or `token` (the CLI), with the client's address.
    pub who: String,
    /// What: `replay`, `requeue`, `resend`, `forget`, `reload`.
    pub action: String,
    /// On what, in words (`sink app from seq 120: 42 events`).
    pub detail: String,
}

/// What an append stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The event's stable id.
    pub id: EventId,
    /// Its journal position; 0 while it waits in the spool (see [`Appended::spooled`]).
    pub seq: u64,
    /// What it means, given the resource's history. For a spooled event, what it means by
    /// this receiver's copy of the history (the shared journal decides when it stores it).
    pub kinds: Vec<EventKind>,
    /// Kept in this receiver's spool, synced, to be placed in a shared journal when it can
    /// (see [`Journal::spool`](crate::Journal::spool)); false on one host.
    pub spooled: bool,
}

/// An event a sink gave up on, with the last error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The sink that failed.
    pub sink: String,
    /// The event's seq.
    pub seq: u64,
    /// The event's id.
    pub id: String,
    /// The last error.
    pub error: String,
    /// How many deliveries were tried.
    pub attempts: u32,
    /// When it was dead-lettered (RFC 3339).
    pub failed_at: String,
    /// The envelope, so the event can be requeued after the journal pruned it.
    pub envelope: String,
    /// The request body exactly as received.
    pub body: String,
}

/// One journaled event as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its journal position.
    pub seq: u64,
    /// When it was accepted, in ms since the Unix epoch.
    pub received_at_ms: u64,
    /// The envelope as stored (its payload is the body without outer whitespace).
    pub json: String,
    /// Whitespace the request body had before its JSON.
    pub body_prefix: String,
    /// Whitespace the request body had after its JSON.
    pub body_suffix: String,
}

impl StoredEvent {
    /// The typed envelope.
    pub fn envelope(&self) -> Result<Envelope, JournalError> {
        serde_json::from_str(&self.json).map_err(|e| JournalError::Corrupt {
            seq: self.seq,
            message: e.to_string(),
        })
    }

    /// The envelope on one line (NDJSON): raw newlines can only be whitespace between JSON
    /// tokens (inside strings they are escaped), so they become spaces.
    pub fn json_line(&self) -> String {
        one_line(&self.json)
    }

    /// The request body exactly as Gcore sent it (for a body that was not JSON, kept as
    /// `{"unparsed": TEXT}`, that text; one that was not UTF-8 either stays in its wrapper).
    pub fn body(&self, envelope: &Envelope) -> String {
        if envelope.kinds == [EventKind::Invalid]
            && let Some(text) = unparsed_text(envelope.payload.get())
        {
            return text;
        }
        let mut body = String::with_capacity(
            self.body_prefix.len() + envelope.payload.get().len() + self.body_suffix.len(),
        );
        body.push_str(&self.body_prefix);
        body.push_str(envelope.payload.get());
        body.push_str(&self.body_suffix);
        body
    }
}

/// The text of a body that was not JSON, from its `{"unparsed": TEXT}` wrapper.
fn unparsed_text(payload: &str) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Unparsed {
        unparsed: String,
    }
    serde_json::from_str::<Unparsed>(payload)
        .ok()
        .map(|u| u.unparsed)
}

/// JSON on one line: raw CR and LF become spaces (they can only be whitespace).
pub fn one_line(json: &str) -> String {
    if memchr::memchr2(b'\n', b'\r', json.as_bytes()).is_some() {
        json.replace(['\n', '\r'], " ")
    } else {
        json.to_owned()
    }
}

/// [`one_line`], keeping the string when it already is one line (no copy).
pub fn one_line_owned(json: String) -> String {
    if memchr::memchr2(b'\n', b'\r', json.as_bytes()).is_some() {
        json.replace(['\n', '\r'], " ")
    } else {
        json
    }
}

/// How a request arrived, as [`Journal::append_received`](super::Journal::append_received) kept
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// The TCP peer (a trusted proxy when it differs from `client`).
    pub peer: IpAddr,
    /// The client address the source check decided on.
    pub client: IpAddr,
    /// The allowlist entry that admitted the client.
    pub rule: Option<String>,
    /// The request's headers, in order, as received (bounded by the caller).
    pub headers: Vec<(String, String)>,
}

/// A history record: the time it was written (ms, big endian), then the state's JSON.
/// Records from before that format are bare JSON (they start with `{`; a time never does).
pub(crate) fn history_time(value: &[u8]) -> Option<u64> {
    if value.first() == Some(&b'{') {
        return None;
    }
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// A history record's state; an unreadable one is `None`, counted in `corrupt` and logged.
pub(crate) fn read_history(corrupt: &AtomicU64, key: &str, value: &[u8]) -> Option<ResourceState> {
    let json = if history_time(value).is_some() {
        &value[8..]
    } else {
        value
    };
    match serde_json::from_slice(json) {
        Ok(state) => Some(state),
        Err(e) => {
            corrupt.fetch_add(1, Ordering::Relaxed);
            tracing::error!(resource = %key, error = %e, "unreadable classifier history; classifying the resource as new");
            None
        }
    }
}

pub(crate) fn encode_history(at_ms: u64, state: &ResourceState) -> Result<Vec<u8>, JournalError> {
    let mut out = at_ms.to_be_bytes().to_vec();
    serde_json::to_writer(&mut out, state).map_err(write_err)?;
    Ok(out)
}

pub(crate) fn ms_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn header_ms(value: &[u8]) -> u64 {
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// An event record: received-at in ms (u64), the lengths of the body's leading and trailing
/// whitespace (u32 each), those bytes, then the envelope JSON. All integers big endian.
pub fn encode_record(
    out: &mut Vec<u8>,
    received_at_ms: u64,
    prefix: &str,
    suffix: &str,
    envelope: &Envelope,
) -> Result<(), JournalError> {
    out.clear();
    out.extend_from_slice(&received_at_ms.to_be_bytes());
    out.extend_from_slice(&(prefix.len() as u32).to_be_bytes());
    out.extend_from_slice(&(suffix.len() as u32).to_be_bytes());
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    serde_json::to_writer(out, envelope).map_err(write_err)
}

/// Encodes an event record around envelope JSON already written (as [`encode_record`]).
pub(crate) fn encode_raw_record(
    out: &mut Vec<u8>,
    received_at_ms: u64,
    prefix: &str,
    suffix: &str,
    json: &str,
) {
    out.clear();
    out.extend_from_slice(&received_at_ms.to_be_bytes());
    out.extend_from_slice(&(prefix.len() as u32).to_be_bytes());
    out.extend_from_slice(&(suffix.len() as u32).to_be_bytes());
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    out.extend_from_slice(json.as_bytes());
}

/// Reads an event record [`encode_record`] wrote ([`JournalError::Corrupt`] when it cannot).
pub fn decode_event(seq: u64, value: &[u8]) -> Result<StoredEvent, JournalError> {
    let corrupt = |message: &str| JournalError::Corrupt {
        seq,
        message: message.to_owned(),
    };
    let len_at = |at: usize| -> Result<usize, JournalError> {
        let bytes: [u8; 4] = value
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("record too short"))?;
        Ok(u32::from_be_bytes(bytes) as usize)
    };
    let (pre, suf) = (len_at(8)?, len_at(12)?);
    let text = |from: usize, to: usize| -> Result<String, JournalError> {
        let bytes = value
            .get(from..to)
            .ok_or_else(|| corrupt("record too short"))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("record is not UTF-8"))
    };
    let body_start = 16;
    Ok(StoredEvent {
        seq,
        received_at_ms: header_ms(value),
        body_prefix: text(body_start, body_start + pre)?,
        body_suffix: text(body_start + pre, body_start + pre + suf)?,
        json: text(body_start + pre + suf, value.len())?,
    })
}

/// A UUIDv7: the receive time in ms, then 74 random bits. fastrand (seeded from the OS) is
/// enough for uniqueness and costs no system call, unlike the uuid crate's default generator.
pub fn event_id(received_at_ms: u64) -> EventId {
    let random = fastrand::u128(..).to_le_bytes();
    let mut bytes = [0u8; 10];
    bytes.copy_from_slice(&random[..10]);
    EventId(
        uuid::Builder::from_unix_timestamp_millis(received_at_ms, &bytes)
            .into_uuid()
            .to_string(),
    )
}

/// The key under which a resource's history is kept (`"stream:12345"`).
pub fn history_key(webhook: &Webhook) -> Option<String> {
    let resource = streamhook_types::classify::resource_of(&webhook.payload);
    resource.id.map(|id| format!("{}:{id}", resource.kind))
}
