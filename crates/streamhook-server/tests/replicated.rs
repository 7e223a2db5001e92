//! Two receivers on one JetStream journal (a real nats-server): both take webhooks, one of
//! them delivers each sink, and a change to a sink's delivery asked of the other is refused
//! with the name of the one that delivers it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use streamhook_server::config::JournalBackend;

async fn receiver(stream: &str, urls: Vec<String>) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.journal.backend = JournalBackend::Jetstream;
    config.journal.nats_urls = urls;
    config.journal.replicas = 1;
    config.journal.stream = stream.into();
    TestServer::start_with(dir, config).await
}

#[tokio::test]
async fn two_receivers_share_one_journal_and_one_of_them_delivers() {
    if common::jetstream_mode() {
        return; // this suite picks its own journal
    }
    let Some(bin) = streamhook_testkit::nats_server_or_skip("replicated receivers") else {
        return;
    };
    let nats = streamhook_testkit::Nats::single(&bin);
    let mut a = receiver("SHARED", nats.url_list()).await;
    let mut b = receiver("SHARED", nats.url_list()).await;
    let c = client();
    let (status, first) = post(
        &c,
        &a.url("/webhook"),
        fixture("seed/01-stream-started.json"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, second) = post(
        &c,
        &b.url("/webhook"),
        fixture("seed/02-stream-paused.json"),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(first["kinds"], json!(["stream.started"]));
    assert_ne!(
        second["kinds"],
        json!(["stream.started"]),
        "B classified with A's event in the shared history: {second}"
    );
    // Each status says the backend and whether it delivers the sink; exactly one does.
    let status_of = |s: &TestServer| {
        let (c, url, auth) = (
            client(),
            s.admin_url("/admin/status"),
            format!("Bearer {}", s.token),
        );
        async move {
            c.get(url)
                .header("authorization", auth)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let mut holder = None;
    for _ in 0..500 {
        let (sa, sb) = (status_of(&a).await, status_of(&b).await);
        assert_eq!(sa["backend"], "jetstream");
        let (ha, hb) = (
            sa["sinks"][0]["delivering_here"] == json!(true),
            sb["sinks"][0]["delivering_here"] == json!(true),
        );
        assert!(!(ha && hb), "both deliver: {sa} {sb}");
        if ha || hb {
            holder = Some(ha);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_delivers = holder.expect("one receiver takes the sink's lease");
    let (deliverer, standby) = if a_delivers { (&a, &b) } else { (&b, &a) };
    eventually("both events archived by the deliverer", || {
        deliverer.archive().len() == 2
    })
    .await;
    assert!(standby.archive().is_empty(), "the standby delivers nothing");
    let replay = |s: &TestServer| {
        let (c, url, auth) = (
            client(),
            s.admin_url("/admin/replay"),
            format!("Bearer {}", s.token),
        );
        async move {
            let resp = c
                .post(url)
                .header("authorization", auth)
                .json(&json!({"sink": "archive", "from_seq": 1}))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, body) = replay(standby).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("is delivered by receiver"), "{body}");
    let (status, body) = replay(deliverer).await;
    assert_eq!(status, 200, "{body}");
    eventually("replayed", || deliverer.archive().len() == 4).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn while_nats_is_away_webhooks_are_spooled_answered_200_and_delivered_after() {
    if common::jetstream_mode() {
        return; // this suite picks its own journal
    }
    let Some(bin) = streamhook_testkit::nats_server_or_skip("spooling receiver") else {
        return;
    };
    let mut nats = streamhook_testkit::Nats::single(&bin);
    let mut a = receiver("AWAY", nats.url_list()).await;
    let c = client();
    let (status, _) = post(
        &c,
        &a.url("/webhook"),
        fixture("seed/01-stream-started.json"),
    )
    .await;
    assert_eq!(status, 200);
    eventually("delivered", || a.archive().len() == 1).await;
    nats.kill(0);
    eventually_async(
        "the receiver notices",
        || {
            let a = &a;
            async move { a.readyz().await["nats"]["connected"].clone() }
        },
        json!(false),
    )
    .await;
    // Before the fix: 503 for every one of these (lost, since Gcore does not retry).
    let (status, answer) = post(
        &c,
        &a.url("/webhook"),
        fixture("seed/02-stream-paused.json"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["spooled"], json!(true), "{answer}");
    let ready = a.readyz().await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["spooling"]["events"], 1, "{ready}");
    let metrics = a.metrics().await;
    for line in [
        "streamhook_nats_connected 0",
        "streamhook_spool_events 1",
        "streamhook_spooled_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    nats.restart(0);
    eventually("forwarded and delivered once NATS is back", || {
        a.archive().len() == 2
    })
    .await;
    let ready = a.readyz().await;
    assert!(ready.get("spooling").is_none(), "{ready}");
    assert_eq!(
        a.archive()[1]["id"],
        answer["id"],
        "delivered with the id answered"
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receivers_reconcile_one_at_a_time_and_journal_a_missed_transition_once() {
    if common::jetstream_mode() {
        return; // this suite picks its own journal
    }
    let Some(bin) = streamhook_testkit::nats_server_or_skip("replicated reconciliation") else {
        return;
    };
    use streamhook_testkit::gcore::{self, FakeGcore};
    const KEY: &str = "gcore-test-key-0123456789";
    let nats = streamhook_testkit::Nats::single(&bin);
    let fake = FakeGcore::start(KEY).await;
    let created =
        humantime::format_rfc3339_millis(std::time::SystemTime::now() - Duration::from_secs(3600))
            .to_string();
    fake.set_videos(vec![gcore::video(77, "pending", &created)]);
    let start = |urls: Vec<String>, fake_url: String| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.journal.backend = JournalBackend::Jetstream;
        config.journal.nats_urls = urls;
        config.journal.replicas = 1;
        config.journal.stream = "RECONCILE".into();
        config.gcore.api_url = fake_url;
        config.gcore.api_key_env = Some(streamhook_reconcile::ApiKey::new(KEY));
        config.reconcile.on_start = false;
        config.reconcile.rate = 50.0;
        config.reconcile.settle = Duration::ZERO;
        config.reconcile.clock_skew = Duration::ZERO;
        TestServer::start_with(dir, config).await
    };
    let a = start(nats.url_list(), fake.url()).await;
    let b = start(nats.url_list(), fake.url()).await;
    let video = br#"{"type":"video","message":{"video":{"id":77,"status":"pending"}}}"#;
    assert_eq!(
        post(&client(), &a.url("/webhook"), video.to_vec()).await.0,
        200
    );
    eventually("b's mirror to hold the webhook", || {
        b.journal.last_seq().unwrap_or(0) == 1
    })
    .await;

    // Missed while both were unreachable: the video became ready.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut ready = gcore::video(77, "ready", &created);
    ready["updated_at"] =
        json!(humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string());
    fake.set_videos(vec![ready]);
    let run = |s: &TestServer| {
        let (url, token) = (s.admin_url("/admin/reconcile"), s.token.clone());
        async move {
            client()
                .post(url)
                .bearer_auth(token)
                .json(&json!({}))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    // Both at once, then both again: one at a time (a lease), and whichever runs after the
    // other finds nothing left (its copy of the journal caught up first).
    let (ra, rb) = tokio::join!(run(&a), run(&b));
    // Started together, and each run takes at least 80 ms (five requests at 50 a second): one
    // of them finds the other's lease.
    assert!(
        [&ra, &rb].iter().any(|r| r["outcome"] == "elsewhere"),
        "one at a time:\n{ra}\n{rb}"
    );
    let (ra2, rb2) = tokio::join!(run(&a), run(&b));
    let emitted: usize = [&ra, &rb, &ra2, &rb2]
        .iter()
        .map(|r| r["emitted"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(emitted, 1, "{ra}\n{rb}\n{ra2}\n{rb2}");
    for r in [&ra, &rb, &ra2, &rb2] {
        assert!(
            matches!(r["outcome"].as_str(), Some("ok" | "elsewhere")),
            "{r}"
        );
    }
    eventually("both mirrors to hold the reconciled event", || {
        a.journal.last_seq().unwrap_or(0) == 2 && b.journal.last_seq().unwrap_or(0) == 2
    })
    .await;
    let event = a.journal.get(2).unwrap().unwrap().envelope().unwrap();
    assert_eq!(
        event.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        vec!["video.ready"]
    );
    assert!(event.reconciled.is_some());
}
