//! The journal's errors: [`JournalError`], what the caller can match on, and [`Cause`], what
//! lies underneath a failed read or write (redb, the disk, the shared stream, the data), kept
//! as the error's source so logs and metrics can tell them apart.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// What can go wrong with the journal.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The journal could not be opened.
    #[error("cannot open the journal at {path}: {source}")]
    Open {
        /// The file (or folder).
        path: PathBuf,
        /// Why.
        source: Cause,
    },
    /// Writing failed (a full disk, an I/O error, the shared stream); nothing of the batch was
    /// stored.
    #[error("the journal cannot write: {0}")]
    Write(#[source] Cause),
    /// Reading failed.
    #[error("the journal cannot read: {0}")]
    Read(#[source] Cause),
    /// Too many appends are waiting; try again shortly.
    #[error("the journal is busy; try again shortly")]
    Busy,
    /// The journal was closed.
    #[error("the journal is closed")]
    Closed,
    /// A conditional append ([`Journal::append_reconciled`](crate::Journal::append_reconciled))
    /// found its resource in another state than expected: nothing was written.
    #[error("not journaled: {resource} changed since it was compared (a webhook is newer)")]
    NotAsExpected {
        /// The resource (`stream:12345`).
        resource: String,
    },
    /// A stored record could not be read back.
    #[error("corrupt record at seq {seq}: {message}")]
    Corrupt {
        /// Where.
        seq: u64,
        /// Why.
        message: String,
    },
    /// A replay asked to start after the newest event.
    #[error("cannot replay from seq {from}: the newest event is seq {last}")]
    ReplayPastEnd {
        /// The seq asked for.
        from: u64,
        /// The newest seq held.
        last: u64,
    },
    /// An event the journal does not hold (never written, or pruned).
    #[error("the journal holds no event at seq {seq}")]
    NoSuchEvent {
        /// The seq.
        seq: u64,
    },
    /// The event is already queued to be delivered again to the sink.
    #[error("event {seq} is already queued for sink {sink:?}; wait until it is delivered")]
    AlreadyQueued {
        /// The sink.
        sink: String,
        /// The seq.
        seq: u64,
    },
    /// A sink the journal has no cursor for.
    #[error("the journal knows no sink named {sink:?}")]
    NoSuchSink {
        /// The sink.
        sink: String,
    },
    /// A dead letter that does not exist.
    #[error("no dead letter for sink {sink:?} at seq {seq}")]
    NoSuchDeadLetter {
        /// The sink.
        sink: String,
        /// The seq.
        seq: u64,
    },
}

impl JournalError {
    /// What lies underneath a failed open, read or write (`None` for the other errors).
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            JournalError::Open { source, .. } => Some(source),
            JournalError::Write(c) | JournalError::Read(c) => Some(c),
            _ => None,
        }
    }

    /// A write error with `message` and no error underneath.
    pub fn write(kind: CauseKind, message: impl Into<String>) -> Self {
        JournalError::Write(Cause::new(kind, message))
    }

    /// A read error with `message` and no error underneath.
    pub fn read(kind: CauseKind, message: impl Into<String>) -> Self {
        JournalError::Read(Cause::new(kind, message))
    }
}

/// Where a failure came from, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CauseKind {
    /// The embedded store (redb) refused or failed, other than by an I/O error.
    Storage,
    /// The disk: an I/O error (a full disk, a failed fsync).
    Io,
    /// The shared journal of several receivers (NATS JetStream).
    Shared,
    /// Data that could not be encoded or decoded.
    Encoding,
    /// Anything else (a background task that failed, a lock poisoned by a panic).
    Other,
}

impl CauseKind {
    /// Every kind, in a fixed order (for metrics).
    pub const ALL: [CauseKind; 5] = [
        CauseKind::Storage,
        CauseKind::Io,
        CauseKind::Shared,
        CauseKind::Encoding,
        CauseKind::Other,
    ];

    /// The kind's name in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CauseKind::Storage => "storage",
            CauseKind::Io => "io",
            CauseKind::Shared => "shared",
            CauseKind::Encoding => "encoding",
            CauseKind::Other => "other",
        }
    }

    /// Its place in [`CauseKind::ALL`].
    pub fn index(self) -> usize {
        CauseKind::ALL
            .iter()
            .position(|k| *k == self)
            .unwrap_or(CauseKind::ALL.len() - 1)
    }
}

impl fmt::Display for CauseKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a journal operation failed: its [kind](CauseKind), a message, and the error underneath
/// (its [`std::error::Error::source`]).
#[derive(Debug, Clone)]
pub struct Cause {
    kind: CauseKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Cause {
    /// A cause with a message and no error underneath.
    pub fn new(kind: CauseKind, message: impl Into<String>) -> Self {
        Cause {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A cause whose message is `message` and whose source is `error`.
    pub fn with_source(
        kind: CauseKind,
        message: impl Into<String>,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Cause {
            kind,
            message: message.into(),
            source: Some(Arc::new(error)),
        }
    }

    /// A cause that is `error` itself: its text is the message, it is the source.
    pub fn of(kind: CauseKind, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Cause::with_source(kind, error.to_string(), error)
    }

    /// Where it came from.
    pub fn kind(&self) -> CauseKind {
        self.kind
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Errors the journal's code turns into a [`Cause`].
pub(crate) trait IntoCause {
    fn into_cause(self) -> Cause;
}

macro_rules! redb_causes {
    ($($t:ty),* $(,)?) => {$(
        impl IntoCause for $t {
            fn into_cause(self) -> Cause {
                // The message is the error's own text; the source is redb's error, whose `Io`
                // variant says the disk failed.
                let message = self.to_string();
                let error = redb::Error::from(self);
                let kind = if matches!(error, redb::Error::Io(_)) {
                    CauseKind::Io
                } else {
                    CauseKind::Storage
                };
                Cause::with_source(kind, message, error)
            }
        }
    )*};
}

redb_causes!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
);

impl IntoCause for serde_json::Error {
    fn into_cause(self) -> Cause {
        Cause::of(CauseKind::Encoding, self)
    }
}

impl IntoCause for std::io::Error {
    fn into_cause(self) -> Cause {
        Cause::of(CauseKind::Io, self)
    }
}

impl IntoCause for tokio::task::JoinError {
    fn into_cause(self) -> Cause {
        Cause::of(CauseKind::Other, self)
    }
}

impl IntoCause for Cause {
    fn into_cause(self) -> Cause {
        self
    }
}

pub(crate) fn write_err(e: impl IntoCause) -> JournalError {
    JournalError::Write(e.into_cause())
}

pub(crate) fn read_err(e: impl IntoCause) -> JournalError {
    JournalError::Read(e.into_cause())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_error_keeps_its_text_and_its_source() {
        let io = std::io::Error::other("No space left on device");
        let e = write_err(io);
        assert_eq!(
            e.to_string(),
            "the journal cannot write: No space left on device"
        );
        assert_eq!(e.cause().map(Cause::kind), Some(CauseKind::Io));
        // The whole chain, without repeats.
        assert_eq!(
            crate::error_chain(&e),
            "the journal cannot write: No space left on device"
        );
        let source = std::error::Error::source(&e).expect("a source");
        assert!(
            std::error::Error::source(source).is_some(),
            "the io error underneath"
        );
    }

    #[test]
    fn redb_io_errors_are_io_and_others_storage() {
        let e = write_err(redb::StorageError::Io(std::io::Error::other("disk")));
        assert_eq!(e.cause().map(Cause::kind), Some(CauseKind::Io));
        let e = write_err(redb::TableError::TableDoesNotExist("events".into()));
        assert_eq!(e.cause().map(Cause::kind), Some(CauseKind::Storage));
    }
}
