//! The engine between "a request arrived" and "a sink got the event": source filter,
//! classifier with history, router, durable journal and dispatcher.

pub mod dispatch;
pub mod duration;
pub mod journal;
pub mod router;
pub mod sink;
pub mod source;

pub use dispatch::{Dispatcher, RetryPolicy, SinkStats};
pub use journal::{
    Appended, DeadLetter, Journal, JournalConfig, JournalError, ReplayFrom, StoredEvent,
};
pub use router::{KindPattern, RouteConfig, RouteError, RouteInput, Router};
pub use sink::{Delivery, Sink, SinkError};
pub use source::{Cidr, ForwardingHeaders, SourceError, SourceFilter, Unverified, Verified};
