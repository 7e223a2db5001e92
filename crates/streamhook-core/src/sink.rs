//! The `Sink` trait: one required method to deliver an event, an error that says whether to
//! try again.
//!
//! Sinks are chosen at run time from config, so the trait is object-safe and held as
//! `Arc<dyn Sink>`. The dispatcher calls [`Sink::send`] for each event routed to the sink, in
//! journal order per resource, and retries on [`SinkError::Retryable`] with backoff (honouring
//! `retry_after`); a [`SinkError::Permanent`] error dead-letters the event at once.
//! Delivery is at least once: deduplicate on [`Delivery::envelope`]'s `id`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use streamhook_types::Envelope;

/// One event handed to a sink.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event.
    pub envelope: Envelope,
    /// The envelope as JSON on one line (what an NDJSON sink writes).
    pub json: String,
    /// The request body exactly as Gcore sent it, byte for byte.
    pub body: String,
    /// 1 for the first try, then 2, 3, ...
    pub attempt: u32,
    /// A dead letter delivered again (requeued): out of journal order.
    pub requeued: bool,
    /// On a replicated journal, the lease under which it is delivered: a number that grows
    /// from each holder of the sink's lease to the next (`None` on one host). A destination
    /// that sees a smaller one after a larger one got a delivery from a holder that was
    /// already replaced.
    pub lease: Option<u64>,
}

/// A destination for events.
#[async_trait]
pub trait Sink: Send + Sync + fmt::Debug + 'static {
    /// The sink's name, as routes and metrics refer to it.
    fn name(&self) -> &str;

    /// Delivers one event. Return only when it is delivered (or failed).
    async fn send(&self, delivery: &Delivery) -> Result<(), SinkError>;

    /// Whether [`Sink::send_batch`] writes several events at once. When true, a lane hands
    /// the sink every event waiting for it in one call, without the dispatcher's per-send
    /// timeout (the sink bounds its own time). Default false: one event per call.
    fn batches(&self) -> bool {
        false
    }

    /// Delivers several events, in this order, as [`Sink::send`] would one by one. On a
    /// failure, returns how many were delivered before it, with the error: the dispatcher
    /// retries from there, one event at a time. Called only when [`Sink::batches`] is true;
    /// the default sends them one by one; a sink that can write several at once (the file
    /// sink: one write and one position record per file) overrides both.
    async fn send_batch(&self, deliveries: &[&Delivery]) -> Result<(), (usize, SinkError)> {
        for (i, delivery) in deliveries.iter().enumerate() {
            self.send(delivery).await.map_err(|e| (i, e))?;
        }
        Ok(())
    }

    /// How many events the dispatcher may hand this sink at once. Events of one resource are
    /// never sent concurrently, so per-resource order holds whatever this is.
    fn concurrency(&self) -> usize {
        1
    }

    /// Flushes buffered output; called when the dispatcher is idle and on shutdown.
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }

    /// The newest seq this sink is known to hold already, read from its own storage when
    /// the dispatcher starts (`None`: it cannot tell). The dispatcher then resumes after it
    /// instead of at its persisted cursor, so a sink that records what it wrote (the file
    /// sink) receives nothing twice after a crash. Only for sinks that deliver in journal
    /// order (a [`Sink::concurrency`] of 1): everything before that seq was delivered too.
    async fn delivered_through(&self) -> Option<Held> {
        None
    }

    /// The oldest seq this sink accepted ([`Sink::send`] returned) that is not yet durable in
    /// it (`None`: everything it accepted is, the default). The dispatcher never saves the
    /// sink's cursor past it, so after a power cut the journal still has, and delivers again,
    /// what the sink had not made durable; [`Sink::flush`] makes it durable. Called often:
    /// no I/O.
    fn not_durable_from(&self) -> Option<u64> {
        None
    }

    /// A replay moved this sink back to `seq`: what it recorded for
    /// [`Sink::delivered_through`] no longer says where to resume, so forget it. Called before
    /// the replayed events are delivered (and again after a restart, until it succeeds).
    async fn rewound(&self, seq: u64) -> Result<(), SinkError> {
        let _ = seq;
        Ok(())
    }
}

/// The newest event a sink holds already, by seq and id (the dispatcher checks the id against
/// the journal, so a position left by another journal is never trusted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its journal position.
    pub seq: u64,
    /// Its envelope id.
    pub id: String,
}

/// Why a delivery failed, and whether to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Worth trying again: a timeout, a refused connection, a 5xx, a full disk.
    #[error("{message}")]
    Retryable {
        /// What went wrong.
        message: String,
        /// The destination's own hint of when to try again.
        retry_after: Option<Duration>,
    },
    /// Trying again will not help: the destination refused the event itself.
    #[error("{message}")]
    Permanent {
        /// What went wrong.
        message: String,
    },
}

impl SinkError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        SinkError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A failure not worth retrying.
    pub fn permanent(message: impl Into<String>) -> Self {
        SinkError::Permanent {
            message: message.into(),
        }
    }

    /// Adds the destination's hint of when to retry (ignored on permanent errors).
    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        if let SinkError::Retryable { retry_after, .. } = &mut self {
            *retry_after = after;
        }
        self
    }

    /// Whether the dispatcher should try again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable { .. })
    }
}
