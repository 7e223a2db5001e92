//! The gate a dispatcher's lanes pass before every send: open on one host, open on a replicated
//! journal only until the deadline the sink's lease allows (counted from when its last renewal
//! was *sent*). A process paused past it (SIGSTOP, a frozen VM) finds it closed when it runs
//! again, before any lane can send: the lease is checked before the next delivery.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Whether the lanes may send now.
#[derive(Debug)]
pub(super) struct Gate {
    /// `None`: always open (one host). Otherwise open until then.
    until: Mutex<Option<Instant>>,
    changed: Notify,
}

impl Gate {
    /// A gate that never closes.
    pub(super) fn open() -> Self {
        Gate {
            until: Mutex::new(None),
            changed: Notify::new(),
        }
    }

    /// A gate closed until [`Gate::until`] opens it.
    #[cfg(test)]
    pub(super) fn closed() -> Self {
        let gate = Gate::open();
        gate.close();
        gate
    }

    /// Opens the gate until `deadline`.
    pub(super) fn until(&self, deadline: Instant) {
        *self.lock() = Some(deadline);
        self.changed.notify_waiters();
    }

    /// Closes the gate now.
    pub(super) fn close(&self) {
        *self.lock() = Some(Instant::now() - Duration::from_millis(1));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        match self.until.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether a lane may send now.
    pub(super) fn is_open(&self) -> bool {
        self.lock().is_none_or(|until| Instant::now() < until)
    }

    /// Waits until a lane may send (at once when it may).
    pub(super) async fn pass(&self) {
        loop {
            let notified = self.changed.notified();
            if self.is_open() {
                return;
            }
            // Re-checked now and then as well: the clock moves without a notification.
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_gate_past_its_deadline_holds_lanes_until_renewed() {
        let gate = std::sync::Arc::new(Gate::closed());
        assert!(!gate.is_open());
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.pass().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a closed gate let a lane through");
        gate.until(Instant::now() + Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("an opened gate lets lanes through")
            .unwrap();
        // A deadline that passes (a pause) closes it without anyone closing it.
        gate.until(Instant::now() + Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(40));
        assert!(!gate.is_open());
        assert!(Gate::open().is_open());
    }
}
