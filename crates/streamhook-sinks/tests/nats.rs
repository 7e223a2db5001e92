//! The nats sink against a real nats-server on loopback, driven by the real dispatcher over a
//! real journal: JetStream publishes with their ack (subjects, headers, the body byte for
//! byte), retries while no stream takes the subject and while the server is down, duplicate
//! suppression by `Nats-Msg-Id`, and core NATS publishes to a subscriber.
#![cfg(feature = "nats")]

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures_util::StreamExt as _;
use streamhook_core::{Dispatcher, Journal, JournalConfig, RetryPolicy, Router, Sink, Verified};
use streamhook_sinks::nats::{NatsConfig, NatsSink, PublishMode};
use streamhook_testkit::{Nats, nats_server_or_skip};
use tokio::sync::watch;

struct Rig {
    journal: Journal,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn rig(config: NatsConfig) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
    let sink: Arc<dyn Sink> = Arc::new(NatsSink::new("bus".into(), &config).unwrap());
    let router = Arc::new(RwLock::new(Arc::new(
        Router::new(&[], &[], &["bus".to_owned()]).unwrap(),
    )));
    journal.set_cursor("bus", 1).unwrap();
    let (stop, rx) = watch::channel(false);
    let policy = RetryPolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        max_attempts: 1000,
        max_age: Duration::from_secs(120),
        send_timeout: Duration::from_secs(10),
    };
    tokio::spawn(Dispatcher::new(journal.clone(), sink, router, policy).run(rx));
    Rig {
        journal,
        stop,
        _dir: dir,
    }
}

async fn append(journal: &Journal, body: &str) -> streamhook_core::Appended {
    let webhook = streamhook_types::decode::decode(body.as_bytes())
        .unwrap()
        .webhook;
    journal
        .append(
            Verified::trusted_local([92, 223, 123, 1].into()),
            body.as_bytes(),
            webhook,
        )
        .await
        .unwrap()
}

fn video(id: u64, status: &str) -> String {
    format!(
        "{{\"type\": \"video\", \"message\": {{\"video\": {{\"id\": {id}, \"status\": \"{status}\"}}}}}}\n"
    )
}

async fn js(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

async fn gcore_stream(js: &jetstream::Context) -> stream::Stream {
    js.create_stream(stream::Config {
        name: "GCORE".into(),
        subjects: vec!["gcore.>".into()],
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Waits (at most 20 s) until the stream holds `n` messages.
async fn wait_for_messages(stream: &mut stream::Stream, n: u64) {
    for _ in 0..2000 {
        if stream.info().await.unwrap().state.messages >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "the stream holds {} messages, expected {n}",
        stream.info().await.unwrap().state.messages
    );
}

#[tokio::test]
async fn publishes_to_jetstream_with_subject_headers_and_the_original_body() {
    let Some(bin) = nats_server_or_skip("nats sink: jetstream") else {
        return;
    };
    let nats = Nats::single(&bin);
    let js = js(&nats.urls()).await;
    let mut stream = gcore_stream(&js).await;
    let rig = rig(NatsConfig::new(nats.url_list())).await;
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/seed/06-recording-partially-processed.json"
    ))
    .unwrap();
    let first = append(&rig.journal, &body).await;
    let second = append(&rig.journal, &video(5, "ready")).await;
    wait_for_messages(&mut stream, 2).await;
    let msg = stream.get_raw_message(1).await.unwrap();
    let video_id =
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["message"]["video"]["id"]
            .as_u64()
            .unwrap();
    assert_eq!(msg.subject.as_str(), format!("gcore.video.{video_id}"));
    assert_eq!(
        &msg.payload[..],
        body.as_bytes(),
        "Gcore's body, byte for byte"
    );
    let h = |name: &str| {
        msg.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", msg.headers))
            .as_str()
            .to_owned()
    };
    assert_eq!(
        msg.headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .unwrap()
            .as_str(),
        first.id.0
    );
    assert_eq!(h("Streamhook-Kinds"), "video.viewable");
    assert_eq!(h("Streamhook-Seq"), "1");
    assert_eq!(h("Streamhook-Type"), "video");
    let msg = stream.get_raw_message(2).await.unwrap();
    assert_eq!(msg.subject.as_str(), "gcore.video.5", "journal order kept");
    assert_eq!(
        msg.headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .unwrap()
            .as_str(),
        second.id.0
    );
    rig.stop.send(true).unwrap();
}

#[tokio::test]
async fn retries_until_a_stream_takes_the_subject_and_the_server_is_back() {
    let Some(bin) = nats_server_or_skip("nats sink: retries") else {
        return;
    };
    let mut nats = Nats::single(&bin);
    let mut config = NatsConfig::new(nats.url_list());
    config.timeout = Duration::from_secs(1);
    let rig = rig(config).await;
    // No stream yet: the publish has no responder and is retried, not dropped.
    append(&rig.journal, &video(1, "ready")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let js1 = js(&nats.urls()).await;
    let mut stream = gcore_stream(&js1).await;
    wait_for_messages(&mut stream, 1).await;
    // The server goes away: events wait, then arrive in order once it is back.
    nats.kill(0);
    append(&rig.journal, &video(2, "ready")).await;
    append(&rig.journal, &video(3, "ready")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.restart(0);
    let js2 = js(&nats.urls()).await;
    let mut stream = js2.get_stream("GCORE").await.unwrap();
    wait_for_messages(&mut stream, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        3,
        "each event once"
    );
    let mut subjects = Vec::new();
    for seq in 1..=3 {
        let msg = stream.get_raw_message(seq).await.unwrap();
        subjects.push(msg.subject.to_string());
    }
    assert_eq!(
        subjects,
        ["gcore.video.1", "gcore.video.2", "gcore.video.3"],
        "each event once, in journal order"
    );
    rig.stop.send(true).unwrap();
}

#[tokio::test]
async fn a_publish_sent_twice_is_stored_once() {
    let Some(bin) = nats_server_or_skip("nats sink: duplicates") else {
        return;
    };
    let nats = Nats::single(&bin);
    let js = js(&nats.urls()).await;
    let mut stream = gcore_stream(&js).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
    append(&journal, &video(9, "ready")).await;
    let event = journal.read_from(1, 1).unwrap().remove(0);
    let envelope = event.envelope().unwrap();
    let delivery = streamhook_core::Delivery {
        body: event.body(&envelope),
        json: event.json_line(),
        envelope,
        attempt: 1,
        requeued: false,
        lease: None,
    };
    let sink = NatsSink::new("bus".into(), &NatsConfig::new(nats.url_list())).unwrap();
    sink.send(&delivery).await.unwrap();
    sink.send(&delivery).await.unwrap(); // a retry after a lost ack looks like this
    wait_for_messages(&mut stream, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test]
async fn core_publish_reaches_a_subscriber_on_a_custom_subject() {
    let Some(bin) = nats_server_or_skip("nats sink: core") else {
        return;
    };
    let nats = Nats::single(&bin);
    let client = async_nats::connect(nats.urls()).await.unwrap();
    let mut sub = client.subscribe("hooks.>").await.unwrap();
    client.flush().await.unwrap();
    let mut config = NatsConfig::new(nats.url_list());
    config.publish = PublishMode::Core;
    config.subject = "hooks.{type}.x{id}".into();
    config.body = streamhook_sinks::BodyMode::Envelope;
    let rig = rig(config).await;
    let appended = append(&rig.journal, &video(7, "ready")).await;
    let msg = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("a message within 20 s")
        .unwrap();
    assert_eq!(msg.subject.as_str(), "hooks.video.x7");
    let envelope: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(envelope["id"], appended.id.0);
    assert_eq!(envelope["kinds"], serde_json::json!(["video.ready"]));
    rig.stop.send(true).unwrap();
}

#[test]
fn bad_configs_are_refused_with_a_reason() {
    let bad = |edit: fn(&mut NatsConfig)| {
        let mut c = NatsConfig::new(vec!["nats://127.0.0.1:4222".into()]);
        edit(&mut c);
        NatsSink::new("bus".into(), &c).unwrap_err().message
    };
    assert!(bad(|c| c.urls.clear()).contains("urls"));
    assert!(bad(|c| c.subject = "a.*".into()).contains("wildcards"));
    assert!(bad(|c| c.subject = "a.{seq}".into()).contains("unknown placeholder"));
    assert!(bad(|c| c.urls = vec!["nats://[::1".into()]).contains("bad server URL"));
}
