//! streamhook's replicated journal: events journaled in a NATS JetStream stream shared by several
//! receivers, each keeping a local redb mirror of it, behind `streamhook-core`'s backend
//! interfaces ([`streamhook_core::backend`]). The server enables it with its default feature
//! `jetstream`; a build without it has no NATS client at all.
//!
//! # How an event is journaled
//!
//! Each event is one message on its resource's subject, `<STREAM>.ev.<hex of "stream:12345">`
//! (`<STREAM>.ev._` for events without a resource). The message carries, besides the event
//! record, the resource's classifier state *after* the event, and (a header) the newest
//! receive time of the resource's events. To append, a receiver classifies against the
//! resource's last message, which it knows from its own previous append or its mirror (or
//! reads from the stream's leader), and publishes with `Nats-Expected-Last-Subject-Sequence`
//! set to that message's sequence (0: none): one round trip. If another receiver appended to
//! the resource in between, the server refuses the publish ("wrong last sequence") and the
//! receiver reads and classifies again. Per resource this serialises writers exactly as the
//! single-file journal's write transaction does. `Nats-Msg-Id` is the event id: a publish
//! retried within the stream's 2-minute duplicate window is stored once. An event received
//! before the resource's newest (spooled, retried, resent to another receiver) is stored
//! after it, flagged `late`, classified on its own, and leaves the resource's state alone.
//!
//! An answer of 2xx follows the stream's ack: the event is stored on a quorum of the stream's
//! replicas (their disks are synced every `sync_interval` of the NATS servers; see docs/ha.md).
//! The journal's seq is the stream's sequence: one order for all receivers. When the stream
//! does not take an event within `spool_after` (or no server is connected), the receiver keeps
//! it in its spool, synced in its own file, answers 2xx, and forwards it in arrival order once
//! the stream takes events again.
//!
//! # The local mirror
//!
//! Every receiver copies the stream, in order, into its own redb file (the same tables as a
//! single-host journal: events at the stream's seqs, the requests table, the history), so that
//! dispatchers, the admin API, the console and the CLI read locally, unchanged. The answer does
//! not wait for the mirror. A folder mirrors one incarnation of the stream (by its creation
//! time); receivers share how far their mirrors hold, and the stream is never pruned below a
//! live mirror.
//!
//! # Delivery
//!
//! Each sink is delivered by one receiver at a time: the holder of the sink's lease, a key in
//! the `<STREAM>_leases` bucket that expires unless renewed (every [`LEASE_RENEW`]; it lapses
//! after [`LEASE_TTL`]). The holder delivers only until 4.5 s after its last renewal was sent,
//! shares the sink's cursor and dead letters in the `<STREAM>_sinks` bucket with every renewal
//! (writes fenced: a holder that was replaced finds them refused), so when it dies another
//! receiver takes the lease and resumes from there: at least once, the same ids.

//! # Example
//!
//! ```no_run
//! use streamhook_core::JournalConfig;
//! use streamhook_jetstream::JetStreamConfig;
//!
//! # async fn demo() -> Result<(), streamhook_core::JournalError> {
//! let mut nats = JetStreamConfig::new(vec!["nats://127.0.0.1:4222".into()]);
//! nats.replicas = 1;
//! let journal = streamhook_jetstream::open(JournalConfig::new("./streamhook-data"), &nats).await?;
//! // Append, deliver and read through `journal` as with a single-host journal.
//! # drop(journal);
//! # Ok(()) }
//! ```
//!
//! # Files
//!
//! `config` (the settings and the limits the others share), `remote` (the connection, the
//! stream and buckets set up and checked, fenced writes and bucket reads), `append` (the
//! [`Sequencer`]: the compare-and-set per resource, the spool's forwarder, late events),
//! `lease` (the [`Leases`]: delivery leases, shared cursors and dead letters), `mirror`
//! (opening a receiver, the mirror, shared mirror positions), `prune` (retention of the shared
//! stream), `message` (what a stream message holds).
//!
//! [`Sequencer`]: streamhook_core::backend::Sequencer
//! [`Leases`]: streamhook_core::backend::Leases

mod append;
mod config;
mod lease;
mod message;
mod mirror;
mod prune;
mod remote;

pub use config::{
    JetStreamConfig, LEASE_RENEW, LEASE_TTL, MIN_DUPLICATE_WINDOW, MIN_SERVER_VERSION,
    MIRROR_STALE, check_url, check_version, parse_version,
};
pub use mirror::open;
