//! The envelope: what sinks receive and what `--json` prints for one accepted webhook.
//!
//! `{"id", "seq", "received_at", "source_ip", "kinds", "origin"?, "resource", "payload"}`.
//! `payload` is Gcore's JSON byte for byte, so a consumer that already parses Gcore payloads
//! reads it unchanged; the other members are what Gcore leaves out (a stable id, a receive
//! time, the source) and what the classifier worked out.

use std::fmt;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::classify::{EventKind, Origin, Resource};

/// One accepted webhook, as delivered to sinks.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// Stable for the event's whole life (a UUIDv7): deduplicate on it downstream.
    pub id: EventId,
    /// The event's position in the journal, increasing.
    pub seq: u64,
    /// When streamhook accepted it: RFC 3339, UTC.
    pub received_at: String,
    /// The address the webhook came from (after trusted proxies).
    pub source_ip: IpAddr,
    /// What happened; never empty.
    pub kinds: Vec<EventKind>,
    /// For videos: recording or upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// What the event is about.
    pub resource: Resource,
    /// For `invalid` events: what in the payload does not fit the model (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    /// The event was received before one already stored for the same resource (on the
    /// replicated journal: it waited in a receiver's spool, or a retry came after a newer
    /// event): it is delivered, classified on its own, and does not change the resource's
    /// state. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
    /// Set when the event was not sent by Gcore but recovered from Gcore's Streaming API (a
    /// transition whose webhook never arrived); its payload is built from what the API
    /// showed, in the webhook's shape. Absent for webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciled: Option<Reconciled>,
    /// Gcore's JSON, unchanged.
    #[schemars(with = "crate::Webhook")]
    pub payload: Box<RawValue>,
}

/// How a reconciled event was found ([`Envelope::reconciled`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Reconciled {
    /// When the API showed the state: RFC 3339, UTC.
    pub observed_at: String,
    /// When the change happened, where the API says (a stream's session start or end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub happened_at: Option<String>,
    /// What was compared, in words (`live: false in the API, true in the journal`).
    pub reason: String,
}

/// Something in a payload that does not fit the model, as an `invalid` event carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    /// The JSON path of the value, such as `$.message.stream.live`.
    pub path: String,
    /// Its line in the request body, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// Its column in the request body, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// What is wrong, in plain words (with the path, without the location).
    pub message: String,
}

impl Problem {
    /// The problem a decoding error describes.
    pub fn from_error(error: &crate::DecodeError) -> Problem {
        let location = error.location();
        Problem {
            path: error.path(),
            line: location.map(|l| l.line),
            column: location.map(|l| l.column),
            message: error.message(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

/// An event's stable id.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct EventId(pub String);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
