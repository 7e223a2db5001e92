//! Reconciliation: recovers the transitions Gcore never sent, from Gcore's Streaming API.
//!
//! Gcore sends each webhook once. If every receiver was unreachable, or Gcore's own send
//! failed, the event is gone. But the Streaming API knows the current state of every stream,
//! video, restream and broadcast, and for streams when the last session started and ended. A
//! [`Reconciler`] reads the API's lists (paged until a page comes back empty or short, at most
//! `rate` requests a second), compares each resource with the last state the journal knows of
//! it ([`plan`]), and journals each difference as the webhook Gcore would have sent, marked in
//! the envelope's `reconciled` block (when the API was read, when the change happened where
//! the API says, and why). The events go through the journal's own append (on the replicated
//! journal, the same compare-and-set as a webhook), so they are classified, routed and
//! delivered like any other, and never conflict with a webhook arriving meanwhile.
//!
//! Nothing is emitted when the states agree, so a second run emits nothing; a state the API
//! does not show is never invented. Among receivers sharing a journal, one reconciles at a
//! time (a lease). A key the API refuses pauses runs (shown in [`Reconciler::status`]) and
//! nothing else; 429 and 5xx are retried, honouring `Retry-After`.
//!
//! ```no_run
//! # async fn example(journal: streamhook_core::Journal) -> Result<(), String> {
//! use streamhook_reconcile::{ApiKey, ReconcileConfig, Reconciler};
//! let config = ReconcileConfig::new("https://api.gcore.com", ApiKey::new("KEY"));
//! let reconciler = Reconciler::new(journal, config)?;
//! let report = reconciler.run_once(true).await.map_err(|e| e.to_string())?;
//! for event in &report.emitted {
//!     println!("{} {:?}: {}", event.resource, event.kinds, event.reason);
//! }
//! tokio::spawn(reconciler.run_loop());
//! # Ok(())
//! # }
//! ```

pub mod api;
pub mod config;
pub mod plan;
pub mod run;

pub use api::{ApiCounters, ApiError};
pub use config::{ApiKey, ReconcileConfig};
pub use run::{Emitted, Outcome, Reconciler, Report, RunError, State, Status};
