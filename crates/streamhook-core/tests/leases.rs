//! The dispatcher's side of a shared lease ([`streamhook_core::backend::Leases`]), with a
//! backend written for the test (not NATS): a process frozen past its lease (as SIGSTOP
//! freezes it) sends nothing when it runs again. Also the spool's group commit beside a
//! mirror's imports.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use streamhook_core::backend::{Imported, Lease, Leases, Sequencer};
use streamhook_core::{Delivery, Dispatcher, Sink, SinkError};
use tokio::sync::watch;

/// A lease taken once and never again; renewals succeed (the backend would let another
/// receiver take it once it lapsed, which this one cannot tell).
#[derive(Debug, Default)]
struct OnceLease {
    taken: AtomicU32,
}

#[async_trait]
impl Leases for OnceLease {
    fn is_shared(&self) -> bool {
        true
    }
    fn renew_every(&self) -> Option<Duration> {
        Some(Duration::from_millis(200))
    }
    fn hold_for(&self) -> Duration {
        Duration::from_millis(300)
    }
    async fn acquire(&self, _sink: &str) -> Option<Lease> {
        (self.taken.fetch_add(1, Ordering::SeqCst) == 0).then_some(Lease { revision: 7 })
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

/// A sink whose sends take 5 ms (so after a freeze its lane's timer is due before the lease
/// loop's), recording when each started.
#[derive(Debug, Default)]
struct TimedSink {
    started: Mutex<Vec<Instant>>,
}

#[async_trait]
impl Sink for TimedSink {
    fn name(&self) -> &str {
        "app"
    }
    async fn send(&self, delivery: &Delivery) -> Result<(), SinkError> {
        assert_eq!(delivery.lease, Some(7), "deliveries carry their lease");
        self.started.lock().unwrap().push(Instant::now());
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_receiver_frozen_past_its_lease_sends_nothing_when_it_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path()).with_backend(|writer, _| {
        (
            Arc::new(writer.clone()) as Arc<dyn Sequencer>,
            Arc::new(OnceLease::default()) as Arc<dyn Leases>,
        )
    });
    journal.set_cursor("app", 1).unwrap();
    for i in 0..2000 {
        append(&journal, &video(i, "ready")).await;
    }
    let sink = Arc::new(TimedSink::default());
    let (_stop, rx) = watch::channel(false);
    let task = tokio::spawn(
        Dispatcher::new(
            journal.clone(),
            sink.clone(),
            everything(&["app"]),
            fast_policy(),
        )
        .run(rx),
    );
    eventually("delivering", || sink.started.lock().unwrap().len() >= 2).await;
    // Frozen: nothing on this thread runs for 800 ms (the lease's 300 ms go by).
    std::thread::sleep(Duration::from_millis(800));
    let thawed = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<Instant> = sink
        .started
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|t| *t >= thawed)
        .collect();
    // Before the fix a lane sent its next event before the lease loop saw the time had passed
    // (another receiver may have been delivering for half a second by then).
    assert!(
        after.is_empty(),
        "{} sends after the freeze, under a lease that had lapsed",
        after.len()
    );
    task.abort();
}

#[tokio::test]
async fn spooled_events_and_a_mirror_s_imports_share_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let j = journal.clone();
        tasks.push(tokio::spawn(async move {
            streamhook_core::testing::spool_received_at(&j, &video(i, "ready"), 1_000 + i).await;
            Ok::<u64, streamhook_core::JournalError>(0)
        }));
        let j = journal.clone();
        tasks.push(tokio::spawn(async move {
            // An import of nothing new commits nothing but goes through the writer all the same.
            j.import(Vec::<Imported>::new()).await
        }));
    }
    for t in tasks {
        // Before the fix an import that came while spooled events were gathered was refused
        // (Busy): the mirror stalled while the receiver spooled.
        t.await.unwrap().expect("no import refused");
    }
    assert_eq!(journal.spool_len(), 40);
    let resources = journal.spool_resources().unwrap();
    assert_eq!(
        resources.len(),
        40,
        "one event for each video: {resources:?}"
    );
    assert_eq!(resources.get("video:7"), Some(&1));
}
