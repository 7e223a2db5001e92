//! Helpers for tests of the journal, the dispatcher and their backends (feature `test-hooks`,
//! which only the workspace's tests enable): a journal in a folder, seed payloads, a router
//! that sends everything everywhere, a quick retry policy, and sinks that record what they get
//! and fail on demand. `streamhook-core`'s own tests and `streamhook-jetstream`'s use the same
//! ones, so both backends are exercised the same way.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::dispatch::SharedRouter;
use crate::{Delivery, Journal, JournalConfig, RetryPolicy, Router, Sink, SinkError, Verified};
use async_trait::async_trait;
use streamhook_types::decode;

/// A single-host journal in `dir`, with the default settings.
pub fn open(dir: &Path) -> Journal {
    Journal::open(JournalConfig::new(dir)).unwrap()
}

/// A file of the workspace's `fixtures/` folder.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(name),
    )
    .unwrap()
}

/// Appends `body` (a webhook the model reads) as if Gcore had sent it.
pub async fn append(journal: &Journal, body: &[u8]) -> crate::Appended {
    let webhook = decode::decode(body).unwrap().webhook;
    let source = Verified::trusted_local("92.223.123.1".parse().unwrap());
    journal.append(source, body, webhook).await.unwrap()
}

/// Keeps `body` in the spool as if it had been received at `received_at_ms` and spooled then
/// (the scenario of an event a receiver kept while its stream was away); returns its id.
pub async fn spool_received_at(
    journal: &Journal,
    body: &[u8],
    received_at_ms: u64,
) -> streamhook_types::EventId {
    let webhook = decode::decode(body).unwrap().webhook;
    let source = Verified::trusted_local("92.223.123.1".parse().unwrap());
    let draft = crate::journal::draft_of(&source, body, webhook.into(), None).unwrap();
    let id = crate::journal::record::event_id(received_at_ms);
    journal
        .spool(id.clone(), received_at_ms, draft)
        .await
        .unwrap();
    id
}

/// A `stream` webhook.
pub fn stream(id: u64, live: bool, recording: bool) -> Vec<u8> {
    format!(r#"{{"type":"stream","message":{{"stream":{{"id":{id},"live":{live},"recording":{recording}}}}}}}"#).into_bytes()
}

/// A `video` webhook.
pub fn video(id: u64, status: &str) -> Vec<u8> {
    format!(r#"{{"type":"video","message":{{"video":{{"id":{id},"status":"{status}"}}}}}}"#)
        .into_bytes()
}

/// A router that sends every event to each of `sinks`.
pub fn everything(sinks: &[&str]) -> SharedRouter {
    let names: Vec<String> = sinks.iter().map(|s| s.to_string()).collect();
    Arc::new(RwLock::new(Arc::new(
        Router::new(&[], &[], &names).unwrap(),
    )))
}

/// Retries within milliseconds, five attempts.
pub fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
        max_attempts: 5,
        max_age: Duration::from_secs(60),
        send_timeout: Duration::from_secs(5),
    }
}

/// What a recording sink does with each event.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Accepts every event.
    Accept,
    /// Fails this many times per event (retryably), then accepts.
    FailTimes(u32),
    /// Always refuses, permanently.
    Refuse,
    /// Waits this long per event, then accepts.
    Slow(Duration),
    /// Fails retryably (a destination that is down) while the flag is true, then accepts.
    DownWhile(Arc<std::sync::atomic::AtomicBool>),
}

/// A sink that records every delivery it accepts.
#[derive(Debug)]
pub struct RecordingSink {
    /// Its name.
    pub name: String,
    /// What it does with each event.
    pub behaviour: Behaviour,
    /// Its [`Sink::concurrency`].
    pub concurrency: usize,
    /// What it accepted, in order.
    pub got: Mutex<Vec<Delivery>>,
    /// Failures so far, by event id.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Every attempt, failed or not.
    pub attempts: AtomicU32,
    /// Sends under way now.
    pub in_flight: AtomicU32,
    /// The most sends ever under way at once.
    pub max_in_flight: AtomicU32,
}

impl RecordingSink {
    /// A sink of concurrency 1.
    pub fn new(name: &str, behaviour: Behaviour) -> Arc<Self> {
        Arc::new(RecordingSink {
            name: name.into(),
            behaviour,
            concurrency: 1,
            got: Mutex::new(Vec::new()),
            failures: Mutex::new(HashMap::new()),
            attempts: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            max_in_flight: AtomicU32::new(0),
        })
    }

    /// A sink that takes `concurrency` events at once.
    pub fn with_concurrency(name: &str, behaviour: Behaviour, concurrency: usize) -> Arc<Self> {
        let mut s = Arc::try_unwrap(Self::new(name, behaviour)).unwrap();
        s.concurrency = concurrency;
        Arc::new(s)
    }

    /// The seqs accepted, in order.
    pub fn seqs(&self) -> Vec<u64> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.envelope.seq)
            .collect()
    }

    /// The ids accepted, in order.
    pub fn ids(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.envelope.id.0.clone())
            .collect()
    }

    /// How many were accepted.
    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

#[async_trait]
impl Sink for RecordingSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    async fn send(&self, d: &Delivery) -> Result<(), SinkError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let result = self.handle(d).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

impl RecordingSink {
    async fn handle(&self, d: &Delivery) -> Result<(), SinkError> {
        match &self.behaviour {
            Behaviour::Accept => {}
            Behaviour::FailTimes(n) => {
                let mut failures = self.failures.lock().unwrap();
                let seen = failures.entry(d.envelope.id.0.clone()).or_default();
                if *seen < *n {
                    *seen += 1;
                    return Err(SinkError::retryable(format!("failure {} of {n}", *seen)));
                }
            }
            Behaviour::Refuse => return Err(SinkError::permanent("410 Gone")),
            Behaviour::Slow(d) => tokio::time::sleep(*d).await,
            Behaviour::DownWhile(down) => {
                if down.load(Ordering::SeqCst) {
                    return Err(SinkError::retryable("503 Service Unavailable (down)"));
                }
            }
        }
        self.got.lock().unwrap().push(d.clone());
        Ok(())
    }
}

/// Waits until `cond` holds, polling; panics with `what` after 20 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}
