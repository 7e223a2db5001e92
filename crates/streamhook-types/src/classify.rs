//! Classification: what a payload means, as event kinds users route on.
//!
//! Gcore sends state, not transitions. [`classify`] works from the payload alone (a stream
//! with `live: true` "started"); [`classify_with`] takes what was known of the resource before
//! ([`ResourceState`]) and reports only what changed, so the seed's identical "stream started"
//! and "recording finished" payloads come out as `stream.started` or
//! `stream.recording_stopped` depending on history. Keeping and persisting that history is the
//! core crate's job; the rules live here so the CLI and the server agree.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{BroadcastStatus, Payload, Stream, VideoStatus, Webhook};

macro_rules! event_kinds {
    ($( $(#[$m:meta])* $variant:ident = $wire:literal, )*) => {
        /// An event kind: what happened, as users route on it (`stream.started`, ...).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum EventKind {
            $( $(#[$m])* $variant, )*
        }

        impl EventKind {
            /// Every kind, in documentation order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant),*];

            /// The name users route on, such as `stream.started`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( EventKind::$variant => $wire, )*
                }
            }
        }

        impl FromStr for EventKind {
            type Err = UnknownEventKind;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $wire => Ok(EventKind::$variant), )*
                    other => Err(UnknownEventKind(other.to_owned())),
                }
            }
        }
    };
}

event_kinds! {
    /// A stream's primary ingest started receiving.
    StreamStarted = "stream.started",
    /// A stream's primary ingest stopped.
    StreamStopped = "stream.stopped",
    /// Recording of a stream started.
    StreamRecordingStarted = "stream.recording_started",
    /// Recording of a stream stopped.
    StreamRecordingStopped = "stream.recording_stopped",
    /// Transcoding started: playback is ready.
    StreamTranscodingStarted = "stream.transcoding_started",
    /// The backup ingest started receiving.
    StreamBackupStarted = "stream.backup_started",
    /// The backup ingest stopped.
    StreamBackupStopped = "stream.backup_stopped",
    /// A stream payload that changes none of the above.
    StreamUpdated = "stream.updated",
    /// A video was uploaded (status `empty`).
    VideoUploaded = "video.uploaded",
    /// A video is processing (status `pending`).
    VideoProcessing = "video.processing",
    /// Some renditions can be watched (status `viewable`).
    VideoViewable = "video.viewable",
    /// Every rendition is ready (status `ready`).
    VideoReady = "video.ready",
    /// Processing failed (status `error`).
    VideoFailed = "video.failed",
    /// A video was deleted (`video_delete`).
    VideoDeleted = "video.deleted",
    /// A video payload whose status the video had already (sent again, or reconciled
    /// before its webhook came).
    VideoUpdated = "video.updated",
    /// A restream started.
    RestreamStarted = "restream.started",
    /// A restream stopped.
    RestreamStopped = "restream.stopped",
    /// A restream payload that changes nothing known.
    RestreamUpdated = "restream.updated",
    /// A legacy broadcast is waiting to start.
    BroadcastPending = "broadcast.pending",
    /// A legacy broadcast is live.
    BroadcastLive = "broadcast.live",
    /// A legacy broadcast is paused.
    BroadcastPaused = "broadcast.paused",
    /// A legacy broadcast finished.
    BroadcastFinished = "broadcast.finished",
    /// A broadcast payload whose status the broadcast had already.
    BroadcastUpdated = "broadcast.updated",
    /// Any other type or status: kept whole, routable, never dropped.
    Unknown = "unknown",
    /// JSON from a verified source that does not fit the model (a field of another type, a
    /// missing id, ...): kept byte for byte with its problems, routed, never refused.
    Invalid = "invalid",
}

/// A string that names no [`EventKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownEventKind(pub String);

impl fmt::Display for UnknownEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown event kind {:?}; known kinds: ", self.0)?;
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        f.write_str(&names.join(", "))
    }
}

impl std::error::Error for UnknownEventKind {}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for EventKind {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("EventKind")
    }

    fn json_schema(_: &mut SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        json_schema!({ "type": "string", "enum": names })
    }
}

/// Where a video came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A recording of a live stream (`stream_id` set, or named `Stream Record: ...`).
    Recording,
    /// Uploaded.
    Upload,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Recording => "recording",
            Origin::Upload => "upload",
        })
    }
}

/// The thing a payload is about: `{"type": "video", "id": 784280}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Resource {
    /// `stream`, `video`, `restream`, `broadcast`, or an unknown payload's `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The resource's id, when the payload has one.
    pub id: Option<u64>,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id {
            Some(id) => write!(f, "{} {id}", self.kind),
            None => f.write_str(&self.kind),
        }
    }
}

/// What a payload means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Classification {
    /// What happened; never empty.
    pub kinds: Vec<EventKind>,
    /// For videos: recording or upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// What it is about.
    pub resource: Resource,
}

/// What was last known of a stream's flags (`None`: never reported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StreamState {
    /// Last `live`.
    pub live: Option<bool>,
    /// Last `recording`.
    pub recording: Option<bool>,
    /// Last `transcoding`.
    pub transcoding: Option<bool>,
    /// Last `backup_live`.
    pub backup_live: Option<bool>,
}

/// What was last known of a resource, for [`classify_with`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResourceState {
    /// A stream's flags.
    Stream(StreamState),
    /// A video's last status (and whether it was deleted).
    Video {
        /// The last status, as sent.
        status: Option<String>,
        /// A `video_delete` was seen.
        deleted: bool,
    },
    /// A restream's last `live`.
    Restream {
        /// The last `live` (or `active`).
        live: Option<bool>,
    },
    /// A broadcast's last status.
    Broadcast {
        /// The last status, as sent.
        status: Option<String>,
    },
}

/// Classifies a payload on its own, as if nothing was known of its resource before.
pub fn classify(webhook: &Webhook) -> Classification {
    classify_with(webhook, None).0
}

/// Classifies a payload given what was known of its resource, and returns the state to
/// remember for the next payload of the same resource (`None` for unknown types).
pub fn classify_with(
    webhook: &Webhook,
    prior: Option<&ResourceState>,
) -> (Classification, Option<ResourceState>) {
    use EventKind as K;
    let resource = resource_of(&webhook.payload);
    let one = |kind: K| vec![kind];
    let (kinds, origin, state) = match &webhook.payload {
        Payload::Stream(stream) => {
            let prior = match prior {
                Some(ResourceState::Stream(s)) => Some(*s),
                _ => None,
            };
            let (kinds, state) = stream_transition(prior, stream);
            (kinds, None, Some(ResourceState::Stream(state)))
        }
        Payload::Video(video) => {
            let kind = match &video.status {
                Some(VideoStatus::Empty) => K::VideoUploaded,
                Some(VideoStatus::Pending) => K::VideoProcessing,
                Some(VideoStatus::Viewable) => K::VideoViewable,
                Some(VideoStatus::Ready) => K::VideoReady,
                Some(VideoStatus::Error) => K::VideoFailed,
                _ => K::Unknown,
            };
            let state = ResourceState::Video {
                status: video.status.as_ref().map(|s| s.as_str().to_owned()),
                deleted: false,
            };
            // The same status again is no transition.
            let kind = if kind != K::Unknown && prior == Some(&state) {
                K::VideoUpdated
            } else {
                kind
            };
            (
                one(kind),
                Some(origin_of(video.is_recording())),
                Some(state),
            )
        }
        Payload::VideoDelete(video) => {
            let state = ResourceState::Video {
                status: video.status.as_ref().map(|s| s.as_str().to_owned()),
                deleted: true,
            };
            let origin = origin_of(video.is_recording());
            // A video already deleted (a late webhook after a deletion found by
            // reconciliation) is deleted no second time.
            let kind = if matches!(prior, Some(ResourceState::Video { deleted: true, .. })) {
                K::VideoUpdated
            } else {
                K::VideoDeleted
            };
            (one(kind), Some(origin), Some(state))
        }
        Payload::Restream(restream) => {
            let live = restream.is_live();
            let kind = match live {
                Some(true) => K::RestreamStarted,
                Some(false) => K::RestreamStopped,
                None => K::Unknown,
            };
            let state = ResourceState::Restream { live };
            let kind = if kind != K::Unknown && prior == Some(&state) {
                K::RestreamUpdated
            } else {
                kind
            };
            (one(kind), None, Some(state))
        }
        Payload::Broadcast(broadcast) => {
            let kind = match &broadcast.status {
                Some(BroadcastStatus::Pending) => K::BroadcastPending,
                Some(BroadcastStatus::Live) => K::BroadcastLive,
                Some(BroadcastStatus::Paused) => K::BroadcastPaused,
                Some(BroadcastStatus::Finished) => K::BroadcastFinished,
                _ => K::Unknown,
            };
            let status = broadcast.status.as_ref().map(|s| s.as_str().to_owned());
            let state = ResourceState::Broadcast { status };
            let kind = if kind != K::Unknown && prior == Some(&state) {
                K::BroadcastUpdated
            } else {
                kind
            };
            (one(kind), None, Some(state))
        }
        Payload::Unknown(_) => (one(K::Unknown), None, None),
    };
    let classification = Classification {
        kinds,
        origin,
        resource,
    };
    (classification, state)
}

fn origin_of(recording: bool) -> Origin {
    if recording {
        Origin::Recording
    } else {
        Origin::Upload
    }
}

/// The resource a payload is about.
pub fn resource_of(payload: &Payload) -> Resource {
    let (kind, id) = match payload {
        Payload::Stream(s) => ("stream", Some(s.id)),
        Payload::Video(v) => ("video", Some(v.id)),
        Payload::VideoDelete(v) => ("video", Some(v.id)),
        Payload::Restream(r) => ("restream", Some(r.id)),
        Payload::Broadcast(b) => ("broadcast", Some(b.id)),
        Payload::Unknown(u) => {
            // Best effort: `message.<type>.id`, else the id of the message's only object.
            let message = u.message.as_ref().and_then(|m| m.as_object());
            let inner = message.and_then(|m| {
                m.get(&u.type_name).or_else(|| {
                    let mut objects = m.values().filter(|v| v.is_object());
                    match (objects.next(), objects.next()) {
                        (Some(only), None) => Some(only),
                        _ => None,
                    }
                })
            });
            let id = inner.and_then(|i| i.get("id")).and_then(|id| id.as_u64());
            return Resource {
                kind: u.type_name.clone(),
                id,
            };
        }
    };
    Resource {
        kind: kind.to_owned(),
        id,
    }
}

/// The resource of a document that does not fit the model, as far as it can be read: the
/// `type` when it is a string, and the id at `message.<key>.id` when it is a non-negative
/// integer (or a string of one). An unreadable `type` gives the resource type `invalid`.
///
/// Used for `invalid` events, so that per-resource order and timelines still include them.
pub fn salvage_resource(value: &serde_json::Value) -> Resource {
    let Some(type_name) = value.get("type").and_then(|t| t.as_str()) else {
        return Resource {
            kind: "invalid".to_owned(),
            id: None,
        };
    };
    let known = crate::model::KNOWN_TYPES
        .iter()
        .find(|(t, _)| *t == type_name)
        .map(|&(_, key)| key);
    let key = known.unwrap_or(type_name);
    let id = value
        .get("message")
        .and_then(|m| m.get(key))
        .and_then(|inner| inner.get("id"))
        .and_then(|id| match id {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
    let kind = match known {
        Some(key) => key.to_owned(),
        None => type_name.to_owned(),
    };
    Resource { kind, id }
}

/// How one flag moved between two payloads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Flip {
    /// Reported now, and differs from what was known (or nothing was known).
    On,
    Off,
    /// Not reported, or unchanged.
    Same,
}

fn flip(before: Option<bool>, now: Option<bool>) -> Flip {
    match (before, now) {
        (Some(b), Some(n)) if b == n => Flip::Same,
        (_, Some(true)) => Flip::On,
        (_, Some(false)) => Flip::Off,
        (_, None) => Flip::Same,
    }
}

/// The kinds a stream payload yields after `prior` (`None`: the stream was never seen), and
/// the state to remember. Fields the payload leaves out keep their prior value.
pub fn stream_transition(
    prior: Option<StreamState>,
    now: &Stream,
) -> (Vec<EventKind>, StreamState) {
    use EventKind as K;
    let before = prior.unwrap_or_default();
    let live = flip(before.live, now.live);
    let recording = flip(before.recording, now.recording);
    let transcoding = flip(before.transcoding, now.transcoding);
    let backup = flip(before.backup_live, now.backup_live);
    // With nothing known, `false` is no change to report, except for `live`: a stream
    // reported not live "stopped" (design: no history, live=false -> stopped).
    let known = |b: Option<bool>| b.is_some();

    let mut kinds = Vec::new();
    if live == Flip::On {
        kinds.push(K::StreamStarted);
    }
    if transcoding == Flip::On {
        kinds.push(K::StreamTranscodingStarted);
    }
    if recording == Flip::On {
        kinds.push(K::StreamRecordingStarted);
    }
    if backup == Flip::On {
        kinds.push(K::StreamBackupStarted);
    }
    if recording == Flip::Off && known(before.recording) {
        kinds.push(K::StreamRecordingStopped);
    }
    if backup == Flip::Off && known(before.backup_live) {
        kinds.push(K::StreamBackupStopped);
    }
    if live == Flip::Off {
        kinds.push(K::StreamStopped);
    }
    if kinds.is_empty() {
        kinds.push(K::StreamUpdated);
    }
    let state = StreamState {
        live: now.live.or(before.live),
        recording: now.recording.or(before.recording),
        transcoding: now.transcoding.or(before.transcoding),
        backup_live: now.backup_live.or(before.backup_live),
    };
    (kinds, state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;

    fn kinds(
        body: &str,
        prior: Option<&ResourceState>,
    ) -> (Vec<&'static str>, Option<ResourceState>) {
        let webhook = decode(body.as_bytes()).unwrap().webhook;
        let (meaning, state) = classify_with(&webhook, prior);
        (meaning.kinds.iter().map(|k| k.as_str()).collect(), state)
    }

    #[test]
    fn a_status_a_resource_had_already_is_no_transition() {
        let ready = r#"{"type":"video","message":{"video":{"id":7,"status":"ready"}}}"#;
        let (first, state) = kinds(ready, None);
        assert_eq!(first, ["video.ready"]);
        // Sent again, or reconciled before its webhook came: no second `video.ready`.
        let (again, _) = kinds(ready, state.as_ref());
        assert_eq!(again, ["video.updated"]);
        let failed = r#"{"type":"video","message":{"video":{"id":7,"status":"error"}}}"#;
        assert_eq!(kinds(failed, state.as_ref()).0, ["video.failed"]);
        let live = r#"{"type":"restream","message":{"restream":{"id":3,"live":true}}}"#;
        let (on, state) = kinds(live, None);
        assert_eq!(on, ["restream.started"]);
        assert_eq!(kinds(live, state.as_ref()).0, ["restream.updated"]);
        let deleted = r#"{"type":"video_delete","message":{"video":{"id":7}}}"#;
        let (gone, state) = kinds(deleted, None);
        assert_eq!(gone, ["video.deleted"]);
        assert_eq!(kinds(deleted, state.as_ref()).0, ["video.updated"]);
    }
}
