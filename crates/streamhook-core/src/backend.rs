//! The two interfaces behind which a journal's backend sits, so that the journal and the
//! dispatcher never name one:
//!
//! - [`Sequencer`]: where an event gets its place. The local one hands the event to the
//!   journal's writer thread (one redb file, group commit); the replicated one
//!   (`streamhook-jetstream`) publishes it to a stream shared by several receivers. Each
//!   classifies the event against its resource's state *inside* its write, so history and
//!   events never disagree.
//! - [`Leases`]: who delivers a sink. The local implementation always holds every sink's lease;
//!   the replicated one holds a lease per sink in a shared bucket, renews it, and shares the
//!   sink's cursor and dead letters so that another receiver can take over.
//!
//! A backend that copies events from elsewhere into the local file (the replicated journal's
//! mirror) hands them to [`crate::Journal::import`] as [`Imported`] records, in the shared
//! order. A backend holds a [`WeakJournal`](crate::journal::WeakJournal) for what it
//! does in the local file (adopting a sink's shared cursor, reading cursors to prune): the
//! journal holds the backend, never the reverse.
//!
//! **Architecture Invariant:** nothing in `streamhook-core` names NATS or any other backend;
//! backends depend on core, never the reverse.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::journal::error::JournalError;
use crate::journal::record::{Appended, Parsed, StoredEvent};

/// What an append hands its [`Sequencer`]: the request as the journal keeps it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Draft {
    /// What the body means (or why it is invalid).
    pub parsed: Parsed,
    /// The body without its outer whitespace, byte for byte.
    pub payload: Box<RawValue>,
    /// Whitespace before the JSON.
    pub prefix: String,
    /// Whitespace after the JSON.
    pub suffix: String,
    /// The client the source check decided on.
    pub source: IpAddr,
    /// How the request arrived (the `requests` table's JSON), when kept.
    pub received: Option<Vec<u8>>,
    /// Set for an event recovered from the provider's API instead of sent by it.
    pub reconciled: Option<streamhook_types::Reconciled>,
    /// Journal it only if its resource's state, at the write, is this (`Some(None)`: the
    /// resource is unknown); else [`JournalError::NotAsExpected`]. Never spooled. For
    /// reconciled events, whose comparison was made against that state.
    pub expect: Option<Option<streamhook_types::ResourceState>>,
}

/// Where an event gets its place in the journal.
#[async_trait]
pub trait Sequencer: Send + Sync + fmt::Debug + 'static {
    /// The backend's name, as status and logs show it (`redb`, `jetstream`).
    fn backend(&self) -> &'static str;

    /// Journals one event and returns once it is durable (fsync'd, or stored by a quorum):
    /// classified against its resource's state inside the write, given its seq and id.
    async fn append(&self, draft: Draft) -> Result<Appended, JournalError>;

    /// Why the backend cannot take events now, beyond the local file's own health (`None`:
    /// it can). Called by every readiness check: no I/O.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// How the connection to what the backend shares stands, for readiness checks and
    /// metrics (`None`: nothing shared). No I/O.
    fn shared_status(&self) -> Option<SharedStatus> {
        None
    }

    /// Takes the right to do `name` alone among the receivers sharing the journal (`None`:
    /// another holds it). One host: always granted.
    async fn exclusive(&self, name: &str) -> Option<Box<dyn Exclusive>> {
        let _ = name;
        Some(Box::new(Alone))
    }

    /// Waits, up to `within`, until this receiver's copy of the journal holds every event the
    /// shared journal held when called (what reads of histories need to be current); false
    /// if it did not. One host: at once.
    async fn caught_up(&self, within: Duration) -> bool {
        let _ = within;
        true
    }

    /// Before the journal closes: hands what the backend keeps locally for the shared
    /// journal (a spool) over to it, for up to `within`; returns how many events are left.
    async fn drain(&self, within: Duration) -> u64 {
        let _ = within;
        0
    }

    /// Prunes what the backend shares with other receivers, as
    /// [`Journal::prune`](crate::Journal::prune) prunes the local file (`None`: nothing
    /// shared, or another receiver prunes now).
    async fn prune_shared(
        &self,
        retention: &SharedRetention,
    ) -> Result<Option<SharedPruned>, JournalError> {
        let _ = retention;
        Ok(None)
    }
}

/// The right to do something alone ([`Sequencer::exclusive`]), given back when dropped.
pub trait Exclusive: Send + Sync + fmt::Debug {
    /// Whether it is still held (a shared one can be lost: stop what it guards).
    fn held(&self) -> bool;
}

/// One host: nobody else could.
#[derive(Debug)]
struct Alone;

impl Exclusive for Alone {
    fn held(&self) -> bool {
        true
    }
}

/// How a backend's connection to its shared journal stands ([`Sequencer::shared_status`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SharedStatus {
    /// Connected to a server of the shared journal now.
    pub connected: bool,
    /// What it says of itself, for people (`connected`, `not connected: ...`, `refused: ...`).
    pub state: String,
    /// Something an operator must fix (a refused setting, a mirror that cannot follow), while
    /// events are still accepted.
    pub problem: Option<String>,
}

impl SharedStatus {
    /// A status.
    pub fn new(connected: bool, state: impl Into<String>) -> Self {
        SharedStatus {
            connected,
            state: state.into(),
            problem: None,
        }
    }

    /// With a problem an operator must fix.
    pub fn with_problem(mut self, problem: Option<String>) -> Self {
        self.problem = problem;
        self
    }
}

/// What [`Sequencer::prune_shared`] may remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedRetention {
    /// The sinks this receiver runs (their local cursors hold events too).
    pub sinks: Vec<String>,
    /// Events older than this, once every sink passed them.
    pub max_age: Option<Duration>,
    /// Events beyond the newest this many, once every sink passed them.
    pub max_events: Option<u64>,
    /// A resource idle this long loses its history.
    pub history_max_age: Option<Duration>,
}

/// What one pass over a shared journal removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedPruned {
    /// Messages purged.
    pub events: u64,
    /// Resources whose last message went too (idle longer than `history_max_age`).
    pub histories: u64,
    /// The seq below which events were removed (a resource's last message stays).
    pub below: u64,
}

/// A sink's delivery lease as its holder knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The backend's token for the lease (a revision to renew from). When taken, it is
    /// greater than any earlier holder's (deliveries carry it as [`crate::Delivery::lease`]).
    pub revision: u64,
}

/// Who delivers each sink, when several receivers share a journal.
///
/// The dispatcher of a sink calls [`Leases::acquire`] until it gets the lease, delivers while
/// it renews it every [`Leases::renew_every`], stops delivering [`Leases::hold_for`] after the
/// last successful renewal whatever else happens, shares the sink's state at each renewal, and
/// [releases](Leases::release) the lease when it stops.
#[async_trait]
pub trait Leases: Send + Sync + fmt::Debug + 'static {
    /// Whether other receivers may deliver the same sinks (false: this receiver always holds
    /// every lease, and nothing below is ever waited for).
    fn is_shared(&self) -> bool;

    /// How often a held lease must be renewed (`None`: it never lapses).
    fn renew_every(&self) -> Option<Duration>;

    /// How long after its last successful renewal a holder must stop delivering: less than
    /// the lease's life, so it stops before another receiver can take over.
    fn hold_for(&self) -> Duration;

    /// Takes the sink's lease if it is free and this receiver may deliver now, then adopts the
    /// sink's shared state (cursor, dead letters) into the local journal. `None`: not now.
    async fn acquire(&self, sink: &str) -> Option<Lease>;

    /// Renews a held lease; false when it was lost (delivery must stop).
    async fn renew(&self, sink: &str, lease: &mut Lease) -> bool;

    /// Shares the sink's state (dead letters first, then the cursor), within `within`; false
    /// when it did not finish in time.
    async fn share(&self, sink: &str, within: Duration) -> bool;

    /// Delivery of the sink stopped. With `within`, the lease is still ours: share the final
    /// state and let the lease go (so another receiver takes over at once) within that time.
    async fn release(&self, sink: &str, lease: Lease, within: Option<Duration>);

    /// Whether this receiver may go on holding leases (a replicated journal's mirror that
    /// fell behind may not).
    fn may_hold(&self) -> bool {
        true
    }

    /// Whether this receiver delivers `sink` now.
    fn holds(&self, sink: &str) -> bool;

    /// Who delivers `sink` now (`None`: nobody, or a single host).
    async fn holder(&self, sink: &str) -> Option<String>;

    /// Brings the local cursors of sinks delivered elsewhere to their shared values (so their
    /// lag and this receiver's pruning follow the deliverer).
    async fn follow(&self, sinks: &[String]) -> Result<(), JournalError> {
        let _ = sinks;
        Ok(())
    }
}

/// One host: this receiver always delivers every sink.
#[derive(Debug, Default)]
pub(crate) struct LocalLeases;

#[async_trait]
impl Leases for LocalLeases {
    fn is_shared(&self) -> bool {
        false
    }

    fn renew_every(&self) -> Option<Duration> {
        None
    }

    fn hold_for(&self) -> Duration {
        Duration::MAX
    }

    async fn acquire(&self, _sink: &str) -> Option<Lease> {
        Some(Lease { revision: 0 })
    }

    async fn renew(&self, _sink: &str, _lease: &mut Lease) -> bool {
        true
    }

    async fn share(&self, _sink: &str, _within: Duration) -> bool {
        true
    }

    async fn release(&self, _sink: &str, _lease: Lease, _within: Option<Duration>) {}

    fn holds(&self, _sink: &str) -> bool {
        true
    }

    async fn holder(&self, _sink: &str) -> Option<String> {
        None
    }
}

/// One record a backend copied from its shared journal, at the shared journal's seq.
#[derive(Debug, Clone)]
pub struct Imported {
    /// Its seq in the shared journal (and so in the local file).
    pub seq: u64,
    /// The event, or why it could not be read (kept as an unreadable record, which each sink's
    /// dispatcher dead-letters).
    pub event: Result<ImportedEvent, String>,
}

/// A readable record copied from a shared journal.
#[derive(Debug, Clone)]
pub struct ImportedEvent {
    /// The event as the journal's record holds it (its envelope's seq is set on import).
    pub stored: StoredEvent,
    /// How the request arrived (the `requests` table's JSON), when kept.
    pub received: Option<Vec<u8>>,
    /// The resource's history key and its classifier state after the event (JSON).
    pub history: Option<(String, Vec<u8>)>,
}
