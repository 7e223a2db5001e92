//! What the replicated journal's tests share: receivers on a NATS server, dispatchers, the
//! sinks' shared records as a holder writes them, and readings of a mirror.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use streamhook_core::dispatch::SharedRouter;
use streamhook_core::testing::{RecordingSink, fast_policy, stream as stream_body};
use streamhook_core::{Dispatcher, Journal, JournalConfig};
use streamhook_jetstream::JetStreamConfig;
use streamhook_testkit::Nats;
use tokio::sync::watch;

/// A receiver on `nats` with `replicas`.
pub async fn replica(nats: &Nats, dir: &std::path::Path, replicas: usize) -> Journal {
    replica_with(dir, &config_for(nats, replicas)).await
}

/// The configuration tests use: `replicas`, a 20 s publish timeout.
pub fn config_for(nats: &Nats, replicas: usize) -> JetStreamConfig {
    let mut config = JetStreamConfig::new(nats.url_list());
    config.replicas = replicas;
    config.timeout = Duration::from_secs(20);
    config
}

/// A receiver on `config`, opened within 60 s.
pub async fn replica_with(dir: &std::path::Path, config: &JetStreamConfig) -> Journal {
    tokio::time::timeout(
        Duration::from_secs(60),
        streamhook_jetstream::open(JournalConfig::new(dir), config),
    )
    .await
    .expect("a replicated journal opens within 60 s")
    .unwrap()
}

/// Waits (at most 5 s) until some receiver holds the sink's lease.
pub async fn wait_for_lease(journal: &Journal, sink: &str) {
    for _ in 0..200 {
        if journal.lease_holder(sink).await.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nobody took the free lease of {sink} within 5 s");
}

/// Two receivers, A and B, on one stream (one replica), with sink `app`'s cursor at the
/// start in each; the folders live as long as the first element.
pub async fn two_receivers(nats: &Nats) -> ([tempfile::TempDir; 2], Journal, Journal) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = replica(nats, dirs[0].path(), 1).await;
    let b = replica(nats, dirs[1].path(), 1).await;
    a.set_cursor("app", 1).unwrap();
    b.set_cursor("app", 1).unwrap();
    (dirs, a, b)
}

/// A dispatcher of `sink` on `journal`, with every event routed to it (on the replicated
/// journal, its lease decides whether this receiver delivers).
pub fn deliver(
    journal: &Journal,
    sink: &Arc<RecordingSink>,
    router: &SharedRouter,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        Dispatcher::new(
            journal.clone(),
            sink.clone(),
            Arc::clone(router),
            fast_policy(),
        )
        .run(stop),
    )
}

/// The stream's identity (its creation time, ns), as shared records carry it.
pub async fn stream_created(js: &jetstream::Context) -> u64 {
    js.get_stream("STREAMHOOK")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .created
        .unix_timestamp_nanos() as u64
}

/// Writes a sink's shared cursor as a holder would (for this stream, or `stream`).
pub async fn put_shared_cursor(js: &jetstream::Context, sink: &str, seq: u64, stream: Option<u64>) {
    let stream = match stream {
        Some(s) => s,
        None => stream_created(js).await,
    };
    let sinks = js.get_key_value("STREAMHOOK_sinks").await.unwrap();
    let value = serde_json::json!({"stream": stream, "seq": seq}).to_string();
    sinks
        .put(format!("{sink}.cursor"), value.into())
        .await
        .unwrap();
}

/// A sink's shared cursor, if any.
pub async fn shared_cursor(js: &jetstream::Context, sink: &str) -> Option<u64> {
    let sinks = js.get_key_value("STREAMHOOK_sinks").await.unwrap();
    let value = sinks.get(format!("{sink}.cursor")).await.unwrap()?;
    let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
    v["seq"].as_u64()
}

pub fn kinds(appended: &streamhook_core::Appended) -> Vec<String> {
    appended.kinds.iter().map(|k| k.to_string()).collect()
}

/// Every event of a mirror, as (seq, id, kinds, payload).
pub fn events(journal: &Journal) -> Vec<(u64, String, Vec<String>, String)> {
    journal
        .read_from(1, 100_000)
        .unwrap()
        .into_iter()
        .map(|e| {
            let env = e.envelope().unwrap();
            assert_eq!(env.seq, e.seq, "the envelope carries the stream's seq");
            (
                e.seq,
                env.id.0.clone(),
                env.kinds.iter().map(|k| k.to_string()).collect(),
                env.payload.get().to_owned(),
            )
        })
        .collect()
}

/// A stream's lifecycle: start, recording on, recording off, stop.
pub fn lifecycle(id: u64) -> Vec<Vec<u8>> {
    vec![
        stream_body(id, true, false),
        stream_body(id, true, true),
        stream_body(id, true, false),
        stream_body(id, false, false),
    ]
}
