//! One host, round three, end to end through the server: a replay never skips a sink's
//! backlog, a sink taken out of the configuration and put back gets what it missed, flag-made
//! sinks keep their place across an upgrade, and two path tokens work during a rotation.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{TestServer, client, eventually, fixture, post};
use serde_json::json;
use streamhook_sinks::http::HttpConfig;
use streamhook_sinks::{BodyMode, SinkConfig};

/// An app that is down (503) until told otherwise, then records the seqs it gets.
struct App {
    url: String,
    up: Arc<AtomicBool>,
    got: Arc<std::sync::Mutex<Vec<u64>>>,
}

async fn app() -> App {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let up = Arc::new(AtomicBool::new(false));
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (u, g) = (Arc::clone(&up), Arc::clone(&got));
    let router = axum::Router::new().fallback(move |body: String| {
        let (u, g) = (Arc::clone(&u), Arc::clone(&g));
        async move {
            if !u.load(Ordering::SeqCst) {
                return axum::http::StatusCode::SERVICE_UNAVAILABLE;
            }
            let envelope: serde_json::Value = serde_json::from_str(&body).unwrap();
            g.lock().unwrap().push(envelope["seq"].as_u64().unwrap());
            axum::http::StatusCode::OK
        }
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    App { url, up, got }
}

fn forward(url: &str) -> SinkConfig {
    let mut http = HttpConfig::new(url);
    http.name = Some("forward".into());
    http.body = BodyMode::Envelope;
    SinkConfig::Http(http)
}

async fn admin_post(
    server: &TestServer,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = client()
        .post(server.admin_url(path))
        .bearer_auth(&server.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn status(server: &TestServer) -> serde_json::Value {
    client()
        .get(server.admin_url("/admin/status"))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn send_five(server: &TestServer) {
    for i in 0..5u64 {
        let body = format!(
            r#"{{"type":"video","message":{{"video":{{"id":{},"status":"ready"}}}}}}"#,
            100 + i
        );
        let (status, answer) = post(&client(), &server.url("/webhook"), body.into_bytes()).await;
        assert_eq!(status, 200, "{answer}");
    }
}

/// `POST /admin/replay {"from_seq": 5}` on a sink whose app is down (its cursor at 1) used to
/// move the cursor to 5: the app got 1 of 5 events when it came back.
#[tokio::test]
async fn a_replay_through_the_admin_api_never_skips_the_backlog() {
    let app = app().await;
    let server = TestServer::start(|c| {
        c.sinks = vec![forward(&app.url)];
        c.retry.max_attempts = 10_000;
    })
    .await;
    send_five(&server).await;
    let (code, dry) = admin_post(
        &server,
        "/admin/replay",
        json!({"sink": "forward", "from_seq": 5, "dry_run": true}),
    )
    .await;
    assert_eq!(code, 200, "{dry}");
    assert_eq!(dry["from_seq"], 1, "{dry}");
    let (code, done) = admin_post(
        &server,
        "/admin/replay",
        json!({"sink": "forward", "from_seq": 5}),
    )
    .await;
    assert_eq!(code, 200, "{done}");
    assert_eq!(done["moved"], false, "{done}");
    assert_eq!(done["from_seq"], 1, "{done}");
    assert!(
        done["message"]
            .as_str()
            .unwrap()
            .contains("nothing is skipped"),
        "{done}"
    );
    app.up.store(true, Ordering::SeqCst);
    eventually("all five", || app.got.lock().unwrap().len() >= 5).await;
    // Five resources, delivered side by side: each once (order holds per resource).
    let mut got = app.got.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, [1, 2, 3, 4, 5]);
}

/// A receiver restarted without a sink, then pruning, then with it again: the sink gets every
/// event it missed. Status says it is out of the configuration and until when it holds events;
/// a configured sink cannot be forgotten.
#[tokio::test]
async fn a_sink_out_of_the_configuration_and_back_gets_what_it_missed() {
    let app = app().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.sinks.push(forward(&app.url));
    config.retry.max_attempts = 10_000;
    // Prune as often and as much as allowed.
    config.retention.max_age = Some(Duration::ZERO);
    config.retention.interval = Duration::from_millis(50);
    let mut first = TestServer::start_with(dir, config.clone()).await;
    send_five(&first).await;
    first.shutdown().await;

    let mut without = config.clone();
    without.sinks.truncate(1);
    let mut second = TestServer::start_with(first.dir, without).await;
    send_five(&second).await;
    eventually("archived", || second.archive().len() == 10).await;
    // Several pruning passes.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = status(&second).await;
    let removed = s["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "forward")
        .cloned()
        .expect("the removed sink is listed");
    assert_eq!(removed["running"], false);
    assert!(removed["holds_events_until"].is_string(), "{removed}");
    let (code, refused) =
        admin_post(&second, "/admin/sinks/forget", json!({"sink": "archive"})).await;
    assert_eq!(code, 409, "{refused}");
    second.shutdown().await;

    app.up.store(true, Ordering::SeqCst);
    let third = TestServer::start_with(second.dir, config).await;
    eventually("all ten", || app.got.lock().unwrap().len() >= 10).await;
    let mut got = app.got.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (1..=10).collect::<Vec<u64>>());
    drop(third);
}

/// Two path tokens during a rotation: the new one and the old one are both accepted, anything
/// else refused.
#[tokio::test]
async fn two_path_tokens_work_during_a_rotation() {
    let new = "new-token-0123456789abcdef";
    let old = "old-token-0123456789abcdef";
    let server = TestServer::start(|c| {
        c.path_tokens = vec![new.into(), old.into()];
    })
    .await;
    let body = || fixture("seed/01-stream-started.json");
    for token in [new, old] {
        let (status, answer) =
            post(&client(), &server.url(&format!("/webhook/{token}")), body()).await;
        assert_eq!(status, 200, "{token}: {answer}");
    }
    let (status, _) = post(
        &client(),
        &server.url("/webhook/wrong-token-0123456789abc"),
        body(),
    )
    .await;
    assert_ne!(status, 200);
    let (status, _) = post(&client(), &server.url("/webhook"), body()).await;
    assert_ne!(status, 200);
}

/// A flag-made sink's journal place under its old name (by flag order) is taken by its new
/// name (by what it writes to) at start: the upgrade skips nothing.
#[tokio::test]
async fn an_upgraded_flag_sink_keeps_its_place() {
    if common::redb_only("an_upgraded_flag_sink_keeps_its_place") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flag.jsonl").to_str().unwrap().to_owned();
    // The old server: the sink was "file"; its cursor stands at 1 with two events waiting.
    {
        let journal = streamhook_core::Journal::open(streamhook_core::JournalConfig::new(
            dir.path().join("data"),
        ))
        .unwrap();
        journal.set_cursor("file", 1).unwrap();
        for i in 0..2 {
            streamhook_core::testing::append(
                &journal,
                &streamhook_core::testing::video(i, "ready"),
            )
            .await;
        }
        journal.close().await;
    }
    let mut config = common::test_config(dir.path());
    let mut file = streamhook_sinks::file::FileConfig::new(path.clone());
    file.name = Some(format!("file:{path}"));
    config.sinks = vec![SinkConfig::File(file)];
    config.sink_aliases = vec![(format!("file:{path}"), "file".into())];
    let server = TestServer::start_with(dir, config).await;
    let read = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count()
    };
    eventually("the two waiting events", || read() == 2).await;
    let s = status(&server).await;
    let names: Vec<&str> = s["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [format!("file:{path}")]);
}
