//! The typed model of every payload Gcore's Video Streaming platform sends to a webhook URL.
//!
//! The wire shape is `{"type": T, "message": {KEY: {...}}}`. [`Webhook`] holds one such
//! document; [`Payload`] says which of the known types it is. Every field beyond the ids is
//! optional, and whatever the model does not type (new fields, known fields sent as `null`) is
//! kept in an `extra` map, so a decoded payload serialises back to the same JSON value.
//! Decoding lives in [`crate::decode`]; this module only describes the data.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, SchemaGenerator, json_schema};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Members of a JSON object that the model does not type, in the order they were read.
pub type Extra = Map<String, Value>;

/// One webhook document, as Gcore POSTs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// What the webhook is about.
    pub payload: Payload,
    /// Members of the top-level object other than `type` and `message`.
    pub extra: Extra,
    /// Members of `message` other than the payload's own key (for known types only).
    pub message_extra: Extra,
}

/// The payload of a webhook, by its `type`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Payload {
    /// `type: "stream"`: the state of a live stream.
    Stream(Stream),
    /// `type: "video"`: a video (an upload or a recording of a stream) was created or changed.
    Video(Video),
    /// `type: "video_delete"`: a video was deleted.
    VideoDelete(DeletedVideo),
    /// `type: "restream"`: a restream started or stopped.
    Restream(Restream),
    /// `type: "broadcast"` (legacy): a broadcast changed status.
    Broadcast(Broadcast),
    /// Any other `type`, kept whole.
    Unknown(UnknownPayload),
}

/// The `type` strings this model knows, and the `message` key each one's payload sits under.
pub const KNOWN_TYPES: &[(&str, &str)] = &[
    ("stream", "stream"),
    ("video", "video"),
    ("video_delete", "video"),
    ("restream", "restream"),
    ("broadcast", "broadcast"),
];

impl Payload {
    /// The wire `type` string of this payload.
    pub fn type_name(&self) -> &str {
        match self {
            Payload::Stream(_) => "stream",
            Payload::Video(_) => "video",
            Payload::VideoDelete(_) => "video_delete",
            Payload::Restream(_) => "restream",
            Payload::Broadcast(_) => "broadcast",
            Payload::Unknown(u) => &u.type_name,
        }
    }

    /// The key under `message` that holds this payload (`None` for unknown types).
    pub fn message_key(&self) -> Option<&'static str> {
        match self {
            Payload::Stream(_) => Some("stream"),
            Payload::Video(_) | Payload::VideoDelete(_) => Some("video"),
            Payload::Restream(_) => Some("restream"),
            Payload::Broadcast(_) => Some("broadcast"),
            Payload::Unknown(_) => None,
        }
    }
}

/// A webhook whose `type` this model does not know. Nothing of it is dropped.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct UnknownPayload {
    /// The `type` string as sent.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The `message` member as sent, if there was one.
    pub message: Option<Value>,
}

/// The state of a live stream (`message.stream`).
///
/// The payload is a snapshot, not a transition: the same JSON can mean "stream started" or
/// "recording stopped" depending on what came before (see [`crate::classify`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct Stream {
    /// The stream id.
    pub id: u64,
    /// The primary ingest is receiving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
    /// The backup ingest is receiving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_live: Option<bool>,
    /// The stream is being recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<bool>,
    /// Transcoding runs; playback is ready once this is true (newest senders only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcoding: Option<bool>,
    /// The customer's own user id: a number or a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_user_id: Option<ClientUserId>,
    /// The customer's own data attached to the stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_entity_data: Option<String>,
    /// Pulled from an external origin (`true`) or pushed to Gcore (`false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<bool>,
    /// The source URI (`srt://`, `rtmp://`, `https://`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// How the source reaches Gcore.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_source_type: Option<StreamSourceType>,
    /// Members the model does not type: new fields, and known fields sent as `null`.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A video, uploaded or recorded from a stream (`message.video` of `type: "video"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct Video {
    /// The video id.
    pub id: u64,
    /// 16 alphanumeric characters used in playback URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// The video's name; recordings are named `Stream Record: NAME, DATE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Length in milliseconds (older docs said seconds; the API and SDKs say milliseconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    /// The live stream this video is a recording of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u64>,
    /// Processing status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<VideoStatus>,
    /// What went wrong, alongside `status: "error"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The renditions (qualities) and their progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub converted_videos: Option<Vec<Rendition>>,
    /// Members the model does not type: new fields, and known fields sent as `null`.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The prefix Gcore gives the names of stream recordings (older payloads have no `stream_id`).
pub const RECORDING_NAME_PREFIX: &str = "Stream Record: ";

impl Video {
    /// The length, read as milliseconds.
    pub fn duration(&self) -> Option<std::time::Duration> {
        self.duration.map(std::time::Duration::from_millis)
    }

    /// Whether this video is a recording of a live stream rather than an upload.
    pub fn is_recording(&self) -> bool {
        is_recording(self.stream_id, self.name.as_deref())
    }

    /// How many renditions are complete, out of how many.
    pub fn rendition_progress(&self) -> (usize, usize) {
        let all = self.converted_videos.as_deref().unwrap_or_default();
        let done = all
            .iter()
            .filter(|r| r.status == Some(RenditionStatus::Complete))
            .count();
        (done, all.len())
    }
}

pub(crate) fn is_recording(stream_id: Option<u64>, name: Option<&str>) -> bool {
    stream_id.is_some() || name.is_some_and(|n| n.starts_with(RECORDING_NAME_PREFIX))
}

/// One rendition (quality) of a video (`converted_videos[]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct Rendition {
    /// Free-form name: `vod720n`, `4029_h264_720p`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Progress of this rendition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<RenditionStatus>,
    /// Where the finished MP4 can be fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mp4_url: Option<String>,
    /// Members the model does not type.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A deleted video (`message.video` of `type: "video_delete"`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct DeletedVideo {
    /// The video id.
    pub id: u64,
    /// The video's slug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// The video's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The status the video had when it was deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<VideoStatus>,
    /// When it was deleted: ISO-8601 UTC with milliseconds, as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<String>,
    /// The live stream the video was a recording of, if the sender says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u64>,
    /// Members the model does not type.
    #[serde(flatten)]
    pub extra: Extra,
}

impl DeletedVideo {
    /// Whether the deleted video was a recording of a live stream.
    pub fn is_recording(&self) -> bool {
        is_recording(self.stream_id, self.name.as_deref())
    }
}

/// A restream (`message.restream`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct Restream {
    /// The restream id.
    pub id: u64,
    /// The restream's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The stream being restreamed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u64>,
    /// The restream is running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<bool>,
    /// Older senders' name for `live`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
    /// Members the model does not type.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Restream {
    /// Whether the restream runs: `live`, or the legacy `active` when `live` is absent.
    pub fn is_live(&self) -> Option<bool> {
        self.live.or(self.active)
    }
}

/// A legacy broadcast (`message.broadcast`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct Broadcast {
    /// The broadcast id.
    pub id: u64,
    /// The broadcast's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<BroadcastStatus>,
    /// Members the model does not type.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `client_user_id`: the docs' table says string, their example and the API say integer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ClientUserId {
    /// An integer id.
    Number(i64),
    /// A string id.
    Text(String),
}

impl fmt::Display for ClientUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientUserId::Number(n) => write!(f, "{n}"),
            ClientUserId::Text(s) => f.write_str(s),
        }
    }
}

/// Declares an open string enum: known values as variants, anything else kept in `Other`.
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A value this model does not know, kept as sent.
            Other(String),
        }

        impl $name {
            /// The wire strings this model knows.
            pub const KNOWN: &'static [&'static str] = &[$($wire),*];

            /// The wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $wire, )*
                    $name::Other(s) => s,
                }
            }

            /// Whether this is one of the known values.
            pub fn is_known(&self) -> bool {
                !matches!(self, $name::Other(_))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $( $wire => $name::$variant, )*
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Cow::<'de, str>::deserialize(d)?;
                Ok($name::from(&*s))
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }

            fn json_schema(_: &mut SchemaGenerator) -> schemars::Schema {
                json_schema!({
                    "description": concat!("Known values: ", $($wire, " "),* , "; any other string is kept as sent."),
                    "anyOf": [
                        { "type": "string", "enum": [$($wire),*] },
                        { "type": "string" }
                    ]
                })
            }
        }
    };
}

open_enum! {
    /// A video's processing status.
    VideoStatus {
        /// Uploaded, not processed yet.
        Empty = "empty",
        /// Processing.
        Pending = "pending",
        /// Some renditions are ready to watch.
        Viewable = "viewable",
        /// Every rendition is ready.
        Ready = "ready",
        /// Processing failed.
        Error = "error",
    }
}

open_enum! {
    /// A rendition's progress.
    RenditionStatus {
        /// Being transcoded.
        Processing = "processing",
        /// Done.
        Complete = "complete",
        /// Failed.
        Error = "error",
    }
}

open_enum! {
    /// A legacy broadcast's status.
    BroadcastStatus {
        /// Waiting to start.
        Pending = "pending",
        /// Live.
        Live = "live",
        /// Paused.
        Paused = "paused",
        /// Finished.
        Finished = "finished",
    }
}

open_enum! {
    /// How a stream's source reaches Gcore.
    StreamSourceType {
        /// RTMP push or pull.
        Rtmp = "rtmp",
        /// SRT.
        Srt = "srt",
        /// WebRTC (WHIP).
        Webrtc = "webrtc",
        /// HTTPS (HLS/DASH pull).
        Https = "https",
    }
}

impl Serialize for Webhook {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", self.payload.type_name())?;
        match &self.payload {
            Payload::Unknown(u) => {
                if let Some(message) = &u.message {
                    map.serialize_entry("message", message)?;
                }
            }
            _ => map.serialize_entry("message", &MessageRef(self))?,
        }
        for (k, v) in &self.extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Serialises `message` of a known type: the payload under its key, then `message_extra`.
struct MessageRef<'a>(&'a Webhook);

impl Serialize for MessageRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let w = self.0;
        let mut map = s.serialize_map(None)?;
        let key = w.payload.message_key().unwrap_or("message");
        match &w.payload {
            Payload::Stream(p) => map.serialize_entry(key, p)?,
            Payload::Video(p) => map.serialize_entry(key, p)?,
            Payload::VideoDelete(p) => map.serialize_entry(key, p)?,
            Payload::Restream(p) => map.serialize_entry(key, p)?,
            Payload::Broadcast(p) => map.serialize_entry(key, p)?,
            Payload::Unknown(_) => {}
        }
        for (k, v) in &w.message_extra {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl JsonSchema for Webhook {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Webhook")
    }

    fn json_schema(g: &mut SchemaGenerator) -> schemars::Schema {
        fn variant(type_name: &str, key: &str, payload: schemars::Schema) -> Value {
            serde_json::json!({
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": { "const": type_name },
                    "message": {
                        "type": "object",
                        "required": [key],
                        "properties": { key: payload }
                    }
                }
            })
        }
        let known: Vec<&str> = KNOWN_TYPES.iter().map(|(t, _)| *t).collect();
        json_schema!({
            "description": "A webhook from Gcore's Video Streaming platform: {\"type\", \"message\": {KEY: {...}}}. Unknown fields are allowed everywhere and kept; an unknown `type` is kept whole.",
            "oneOf": [
                variant("stream", "stream", g.subschema_for::<Stream>()),
                variant("video", "video", g.subschema_for::<Video>()),
                variant("video_delete", "video", g.subschema_for::<DeletedVideo>()),
                variant("restream", "restream", g.subschema_for::<Restream>()),
                variant("broadcast", "broadcast", g.subschema_for::<Broadcast>()),
                {
                    "type": "object",
                    "description": "Any other type: kept whole and classified as `unknown`.",
                    "required": ["type"],
                    "properties": {
                        "type": { "type": "string", "not": { "enum": known } }
                    }
                }
            ]
        })
    }
}
