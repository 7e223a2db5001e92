//! Delivering only while this receiver holds the sink's lease ([`crate::backend::Leases`]).
//! On one host the lease is always held and never renewed, so this is a straight run of the
//! dispatcher. When receivers share a journal, the dispatcher waits for the lease (the backend
//! adopts the sink's shared cursor and dead letters as it takes it), renews it every
//! [`Leases::renew_every`](crate::backend::Leases::renew_every), shares the sink's state after
//! each renewal, stops delivering [`Leases::hold_for`](crate::backend::Leases::hold_for) after
//! the last successful renewal whatever else is happening, and lets the lease go when it stops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Dispatcher;

/// How long to wait before asking again for a lease another receiver holds.
const ACQUIRE_RETRY: Duration = Duration::from_secs(1);

impl Dispatcher {
    pub(super) async fn run_leased(self, mut shutdown: watch::Receiver<bool>) {
        let leases = Arc::clone(self.journal.leases());
        let name = self.sink.name().to_owned();
        let renew_every = leases.renew_every();
        let hold_for = leases.hold_for();
        if leases.is_shared() {
            self.gate.close();
        }
        loop {
            let (mut lease, mut renewed) = loop {
                if *shutdown.borrow() {
                    return;
                }
                // A receiver that may not deliver now (its mirror is behind) does not take
                // the lease: it would deliver nothing new while another could.
                // The lease's life counts from when the request to take it was sent.
                let sent = Instant::now();
                if leases.may_hold()
                    && let Some(lease) = leases.acquire(&name).await
                {
                    break (lease, sent);
                }
                tokio::select! {
                    _ = tokio::time::sleep(renew_every.unwrap_or(ACQUIRE_RETRY)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            };
            if leases.is_shared() {
                self.epoch.store(lease.revision, Ordering::Relaxed);
                self.stats.leased.store(1, Ordering::Relaxed);
                if let Some(until) = renewed.checked_add(hold_for) {
                    self.gate.until(until);
                }
            }
            let (stop_tx, stop_rx) = watch::channel(false);
            // Boxed so that dropping it (on a lost lease) aborts its lanes at once.
            let mut dispatch = Box::pin(self.run_owned(stop_rx));
            let end = loop {
                // Stop delivering well before the lease can lapse on the server: a receiver
                // that cannot renew (cut off, slow, or paused) stops before another can take
                // over. The lanes' gate closes at the same instant, so after a pause no lane
                // sends before this loop has run.
                let must_stop = renewed
                    .checked_add(hold_for)
                    .map(tokio::time::Instant::from_std);
                tokio::select! {
                    _ = &mut dispatch => break End::Finished,
                    _ = shutdown.wait_for(|s| *s) => break End::Shutdown,
                    _ = sleep_until(must_stop), if must_stop.is_some() => {
                        tracing::warn!(sink = %name, "could not renew the sink's lease in time; delivery stops here (another receiver may take it)");
                        break End::Lost;
                    }
                    _ = sleep(renew_every), if renew_every.is_some() => {}
                }
                if must_stop.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    // Woken late (a pause): the lease may be another's by now.
                    tracing::warn!(sink = %name, "the sink's lease may have lapsed (this process was paused or starved); delivery stops here");
                    break End::Lost;
                }
                if !leases.may_hold() {
                    tracing::warn!(sink = %name, "this receiver's mirror is behind the shared journal; letting the sink's lease go");
                    break End::Handover;
                }
                // Renew first; the state is shared only while the lease is ours. While this
                // runs the dispatcher's lanes keep delivering, so each step is bounded by the
                // time left before delivery must stop.
                let left = must_stop.map_or(Duration::MAX, |t| {
                    t.saturating_duration_since(tokio::time::Instant::now())
                });
                let sent = Instant::now();
                match tokio::time::timeout(left, leases.renew(&name, &mut lease)).await {
                    Ok(true) => {
                        renewed = sent;
                        if let Some(until) = renewed.checked_add(hold_for) {
                            self.gate.until(until);
                        }
                    }
                    _ => {
                        tracing::warn!(sink = %name, "lost the sink's lease (another receiver may hold it now); delivery stops here");
                        break End::Lost;
                    }
                }
                let left = hold_for.saturating_sub(renewed.elapsed());
                if !leases.share(&name, left).await {
                    tracing::warn!(sink = %name, "sharing the cursor and dead letters timed out (retried)");
                }
                if !leases.holds(&name) {
                    // A write of the shared state was refused: another receiver holds the
                    // sink now.
                    tracing::warn!(sink = %name, "another receiver took the sink over (its shared state was written by a newer holder); delivery stops here");
                    break End::Lost;
                }
            };
            if leases.is_shared() {
                self.gate.close();
            }
            match end {
                End::Lost => {
                    // Whatever the lanes, the disk or the sink are doing: stop now (dropping
                    // the dispatch aborts its lanes). What was in flight is delivered again by
                    // the next holder, from the shared cursor.
                    drop(dispatch);
                }
                End::Finished | End::Shutdown | End::Handover => {
                    let _ = stop_tx.send(true);
                    // Bounded by the lease: past it, delivery stops whatever is blocking.
                    let left = hold_for.saturating_sub(renewed.elapsed());
                    if tokio::time::timeout(left, &mut dispatch).await.is_err() {
                        tracing::warn!(sink = %name, "delivery did not stop within the lease; aborted");
                    }
                }
            }
            self.stats.leased.store(0, Ordering::Relaxed);
            // Still ours: the backend shares the final state, then lets the next receiver take
            // over at once instead of after the lease's expiry.
            let elapsed = renewed.elapsed();
            let within = (end != End::Lost && elapsed < hold_for).then(|| hold_for - elapsed);
            leases.release(&name, lease, within).await;
            if end == End::Shutdown || shutdown.has_changed().is_err() {
                return;
            }
        }
    }
}

/// Why a holder stopped delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The dispatcher returned (its stop signal, or a closed journal).
    Finished,
    /// Shutdown.
    Shutdown,
    /// The lease was lost, may have lapsed, or another receiver wrote the sink's state.
    Lost,
    /// The receiver may not hold leases now (its mirror is behind).
    Handover,
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn sleep(every: Option<Duration>) {
    match every {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
