//! The engine between "a request arrived" and "a sink got the event": source filter,
//! classifier with history, router, durable journal and dispatcher.

pub mod dispatch;
pub mod duration;
#[cfg(feature = "jetstream")]
pub mod jetstream;
pub mod journal;
pub mod router;
pub mod sink;
pub mod source;

pub use dispatch::{
    Activity, Attempt, Dispatcher, Progress, Rate, RetryPolicy, Retrying, SinkStats,
};
pub use journal::{
    Appended, DeadLetter, Health, Journal, JournalConfig, JournalError, Parsed, Pruned, Received,
    ReplayFrom, StoredEvent,
};
pub use router::{KindPattern, RouteConfig, RouteError, RouteInput, Router};
pub use sink::{Delivery, Held, Sink, SinkError};
pub use source::{Cidr, ForwardingHeaders, SourceError, SourceFilter, Unverified, Verified};

/// An error and its sources on one line, without repeating a source its parent already
/// quoted: `cannot connect: error trying to connect: tcp connect error: Connection refused`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
