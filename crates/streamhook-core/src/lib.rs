//! The engine between "a request arrived" and "a sink got the event": source filter,
//! classifier with history, router, durable journal and dispatcher.

pub mod backend;
pub mod dispatch;
pub mod duration;
pub mod journal;
pub mod router;
pub mod sink;
pub mod source;
#[cfg(feature = "test-hooks")]
pub mod testing;

pub use dispatch::{
    Activity, Attempt, Dispatcher, Progress, Rate, RetryPolicy, Retrying, SinkStats,
};
pub use journal::{
    Appended, AttemptRecord, AuditEntry, Cause, CauseKind, DeadLetter, Forgotten, Health, Journal,
    JournalConfig, JournalError, PRUNE_CHUNK, Parsed, PrunePolicy, Pruned, Received, RemovedSink,
    ReplayFrom, Replayed, SinkStart, SpoolStats, Spooled, StoredEvent,
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

/// A server URL with its credentials (a user and password, or a token, before `@`) replaced by
/// `<redacted>`, with or without a scheme: `nats://u:p@h:4222` -> `nats://<redacted>@h:4222`,
/// `u:p@h:4222` -> `<redacted>@h:4222`. For logs, errors and printed configurations.
pub fn redact_url(url: &str) -> String {
    // Credentials cannot hold an unescaped `@`, but a password may hold `/`, `?` or `#`: cut
    // at the last `@` (a path holding one is redacted too: more, never less).
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let Some((_, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match scheme {
        Some(scheme) => format!("{scheme}://<redacted>@{host}"),
        None => format!("<redacted>@{host}"),
    }
}

#[cfg(test)]
mod redact_tests {
    #[test]
    fn credentials_are_redacted_with_or_without_a_scheme() {
        use super::redact_url;
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://<redacted>@h:4222");
        assert_eq!(redact_url("u:p@h:4222"), "<redacted>@h:4222");
        assert_eq!(redact_url("tls://token@h"), "tls://<redacted>@h");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact_url("http://h/a@b"), "http://<redacted>@b");
        assert_eq!(
            redact_url("nats://u:p/a?b#c@h:4222"),
            "nats://<redacted>@h:4222"
        );
        assert_eq!(redact_url("nats://a@b@h"), "nats://<redacted>@h");
    }
}
