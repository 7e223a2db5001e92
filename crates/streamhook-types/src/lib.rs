//! The types of Gcore Video Streaming webhooks: payloads, event kinds and the envelope.
//!
//! # Brief overview
//!
//! Gcore POSTs one JSON document per event, `{"type": T, "message": {KEY: {...}}}`, to one
//! URL per account. This crate reads those documents into a typed [`Webhook`] without losing
//! anything ([`decode`]), says what they mean as [`EventKind`]s ([`classify`]), and defines
//! the [`Envelope`] that streamhook hands to its sinks.
//!
//! - Tolerant: every field beyond the ids is optional; unknown fields, statuses and types are
//!   kept, so a decoded payload serialises back to the same JSON value.
//! - Honest: [`decode::Decoded::warnings`] lists everything the lenient decoder tolerated,
//!   and errors name the JSON path, line and column of the problem.
//! - Pure: no I/O, no async runtime. **Architecture invariant:** this crate depends on serde,
//!   serde_json and schemars only.
//!
//! # Example
//!
//! ```
//! use streamhook_types::{decode, classify, EventKind, Origin, Payload};
//!
//! let body = br#"{"type": "video", "message": {"video": {
//!     "id": 784280, "name": "SampleVideo", "status": "viewable", "duration": 170859,
//!     "converted_videos": [{"name": "vod720n", "status": "complete"},
//!                          {"name": "vod480n", "status": "processing"}]}}}"#;
//! let decoded = decode::decode(body).unwrap();
//! assert!(decoded.warnings.is_empty());
//!
//! let Payload::Video(video) = &decoded.webhook.payload else { unreachable!() };
//! assert_eq!(video.rendition_progress(), (1, 2));
//!
//! let meaning = classify::classify(&decoded.webhook);
//! assert_eq!(meaning.kinds, [EventKind::VideoViewable]);
//! assert_eq!(meaning.origin, Some(Origin::Upload));
//! assert_eq!(meaning.resource.to_string(), "video 784280");
//! ```
//!
//! Add it with:
//!
//! ```toml
//! [dependencies]
//! streamhook-types = "0.1"
//! ```

pub mod classify;
pub mod decode;
pub mod envelope;
pub mod model;
pub mod schema;
pub mod summary;

pub use classify::{Classification, EventKind, Origin, Resource, ResourceState, StreamState};
pub use decode::{DecodeError, Decoded, Warning};
pub use envelope::{Envelope, EventId, Problem, Reconciled};
pub use model::{
    Broadcast, BroadcastStatus, ClientUserId, DeletedVideo, Payload, Rendition, RenditionStatus,
    Restream, Stream, StreamSourceType, UnknownPayload, Video, VideoStatus, Webhook,
};
