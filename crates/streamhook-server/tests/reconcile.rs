//! Reconciliation through the server: a receiver that was down when Gcore sent its webhooks
//! journals what Gcore's API shows it missed (once), delivers it to its sinks marked
//! "reconciled", reports its runs in the admin API, `/readyz`, `/metrics` and status, and keeps
//! taking webhooks whatever the API answers. Gcore's API is a stand-in on loopback.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use serde_json::{Value, json};
use streamhook_reconcile::ApiKey;
use streamhook_server::Config;
use streamhook_testkit::gcore::{self, FakeGcore};

const KEY: &str = "gcore-test-key-0123456789";

fn with_gcore(config: &mut Config, fake: &FakeGcore) {
    config.gcore.api_url = fake.url();
    config.gcore.api_key_env = Some(ApiKey::new(KEY));
    config.reconcile.rate = 50.0;
    // The stand-in shares this host's clock, and nothing is on its way.
    config.reconcile.clock_skew = Duration::ZERO;
    config.reconcile.settle = Duration::ZERO;
}

fn at(from_now_s: i64) -> String {
    let now = SystemTime::now();
    let t = if from_now_s >= 0 {
        now + Duration::from_secs(from_now_s as u64)
    } else {
        now - Duration::from_secs(from_now_s.unsigned_abs())
    };
    humantime::format_rfc3339_millis(t).to_string()
}

async fn admin(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let c = client();
    let url = server.admin_url(path);
    let req = match method {
        "POST" => c.post(url).json(&body.unwrap_or(json!({}))),
        _ => c.get(url),
    };
    let resp = req.bearer_auth(&server.token).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn kinds(envelope: &Value) -> Vec<String> {
    envelope["kinds"]
        .as_array()
        .map(|k| {
            k.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_was_down_gets_what_gcore_s_api_shows_it_missed_once() {
    let fake = FakeGcore::start(KEY).await;
    fake.set_streams(vec![gcore::stream(41, true, Some(&at(-3600)), None)]);
    fake.set_videos(vec![gcore::video(77, "pending", &at(-3600))]);
    let mut server = TestServer::start(|c| with_gcore(c, &fake)).await;
    let c = client();
    let stream_live =
        br#"{"type":"stream","message":{"stream":{"id":41,"live":true,"recording":true}}}"#;
    let video_pending =
        br#"{"type":"video","message":{"video":{"id":77,"status":"pending","name":"talk"}}}"#;
    assert_eq!(
        post(&c, &server.url("/webhook"), stream_live.to_vec())
            .await
            .0,
        200
    );
    assert_eq!(
        post(&c, &server.url("/webhook"), video_pending.to_vec())
            .await
            .0,
        200
    );
    server.shutdown().await;

    // While it was down, the stream stopped and the video became ready; Gcore's webhooks for
    // those went nowhere.
    fake.set_streams(vec![gcore::stream(
        41,
        false,
        Some(&at(-3600)),
        Some(&at(0)),
    )]);
    let mut ready = gcore::video(77, "ready", &at(-3600));
    ready["updated_at"] = json!(at(0));
    fake.set_videos(vec![ready]);
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let mut config = test_config(dir.path());
    with_gcore(&mut config, &fake);
    let server = TestServer::start_with(dir, config).await;

    // The run at start journals both, and the file sink gets them, marked reconciled.
    let reconciled = || {
        server
            .archive()
            .into_iter()
            .filter(|e| e.get("reconciled").is_some())
            .collect::<Vec<_>>()
    };
    eventually("the reconciled events in the archive", || {
        reconciled().len() == 2
    })
    .await;
    let got = reconciled();
    let mut all: Vec<Vec<String>> = got.iter().map(kinds).collect();
    all.sort();
    assert_eq!(
        all,
        vec![
            vec![
                "stream.recording_stopped".to_owned(),
                "stream.stopped".to_owned()
            ],
            vec!["video.ready".to_owned()],
        ]
    );
    for e in &got {
        assert!(e["reconciled"]["observed_at"].is_string(), "{e}");
        assert!(e["reconciled"]["reason"].is_string(), "{e}");
        assert_eq!(e["source_ip"], json!("0.0.0.0"), "not from a webhook: {e}");
    }

    // The last run as the admin API (and so the CLI and the console) shows it.
    let (status, rc) = admin(&server, "GET", "/admin/reconcile", None).await;
    assert_eq!(status, 200);
    assert_eq!(rc["state"], json!("idle"), "{rc}");
    assert_eq!(rc["last_run"]["outcome"], json!("ok"), "{rc}");
    assert_eq!(rc["last_run"]["emitted"].as_array().unwrap().len(), 2);
    assert!(rc["last_run"]["requests"].as_u64().unwrap() >= 4);

    // A run now: nothing differs any more.
    let (status, report) = admin(&server, "POST", "/admin/reconcile", Some(json!({}))).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["emitted"], json!([]), "{report}");
    let (_, st) = admin(&server, "GET", "/admin/status", None).await;
    assert_eq!(st["reconcile"]["last_run"]["differences"], json!(0), "{st}");

    // Gcore's own webhook for the same state, arriving late, is no second transition.
    let video_ready =
        br#"{"type":"video","message":{"video":{"id":77,"status":"ready","name":"talk"}}}"#;
    let (status, answer) = post(&c, &server.url("/webhook"), video_ready.to_vec()).await;
    assert_eq!(status, 200);
    assert_eq!(answer["kinds"], json!(["video.updated"]), "{answer}");
    let ready = server
        .archive()
        .iter()
        .filter(|e| kinds(e).contains(&"video.ready".to_owned()))
        .count();
    assert_eq!(ready, 1);

    let metrics = server.metrics().await;
    assert!(
        metrics.contains("streamhook_reconcile_emitted_total{kind=\"video.ready\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("streamhook_reconcile_runs_total{outcome=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("streamhook_reconcile_paused 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_pauses_reconciliation_visibly_and_intake_goes_on() {
    let fake = FakeGcore::start(KEY).await;
    fake.set_unauthorized(true);
    let server = TestServer::start(|c| with_gcore(c, &fake)).await;
    eventually_async(
        "the run at start to find the key refused",
        || async { server.readyz().await["reconcile"]["state"].clone() },
        json!("paused"),
    )
    .await;
    let ready = server.readyz().await;
    assert_eq!(ready["status"], json!("ready"), "{ready}");
    let reason = ready["reconcile"]["reason"].as_str().unwrap();
    assert!(reason.contains("refused the key (401)"), "{reason}");
    assert!(!reason.contains(KEY));

    let (_, st) = admin(&server, "GET", "/admin/status", None).await;
    assert_eq!(st["reconcile"]["state"], json!("paused"));
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("streamhook_reconcile_paused 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("streamhook_reconcile_api_requests_total{status=\"401\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("streamhook_reconcile_runs_total{outcome=\"unauthorized\"} 1"));

    let (status, _) = post(
        &client(),
        &server.url("/webhook"),
        fixture("seed/01-stream-started.json"),
    )
    .await;
    assert_eq!(status, 200, "intake does not depend on Gcore's API");

    // The key works again: a dry run says so and leaves the schedule's state alone; the
    // next run resumes.
    fake.set_unauthorized(false);
    let (status, report) = admin(
        &server,
        "POST",
        "/admin/reconcile",
        Some(json!({"dry_run": true})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(report["outcome"], json!("ok"), "{report}");
    assert_eq!(server.readyz().await["reconcile"]["state"], json!("paused"));
    let (status, report) = admin(&server, "POST", "/admin/reconcile", Some(json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(report["outcome"], json!("ok"), "{report}");
    assert_eq!(server.readyz().await["reconcile"]["state"], json!("idle"));

    // A POST without a JSON body is refused, never taken for a run.
    let resp = client()
        .post(server.admin_url("/admin/reconcile"))
        .bearer_auth(&server.token)
        .body("dry_run=true")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
}

#[tokio::test]
async fn without_a_key_reconciliation_is_off_and_says_how_to_turn_it_on() {
    let server = TestServer::start(|_| {}).await;
    let (status, answer) = admin(&server, "POST", "/admin/reconcile", Some(json!({}))).await;
    assert_eq!(status, 409);
    assert!(
        answer["error"].as_str().unwrap().contains("api_key_file"),
        "{answer}"
    );
    assert!(server.readyz().await.get("reconcile").is_none());
    let (_, st) = admin(&server, "GET", "/admin/status", None).await;
    assert!(st.get("reconcile").is_none());
}

#[test]
fn the_key_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gcore.key");
    std::fs::write(&file, "SECRET-KEY-123\n").unwrap();
    let mut config = test_config(dir.path());
    config.gcore.api_key_file = Some(file.clone());
    assert!(config.reconcile_config().unwrap().is_some());
    let shown = config.redacted().to_toml();
    assert!(shown.contains("api_key_file"), "{shown}");
    assert!(!shown.contains("SECRET-KEY-123"), "{shown}");
    config.gcore.api_key_file = None;
    config.gcore.api_key_env = Some(ApiKey::new("SECRET-KEY-456"));
    assert!(!format!("{config:?}").contains("SECRET-KEY-456"));
    assert!(!config.to_toml().contains("SECRET-KEY-456"));
    let rc = config.reconcile_config().unwrap().unwrap();
    assert!(!format!("{rc:?}").contains("SECRET-KEY-456"));
    let args = streamhook_server::config::Args {
        gcore_api_key: Some(ApiKey::new("SECRET-KEY-789")),
        ..Default::default()
    };
    assert!(!format!("{args:?}").contains("SECRET-KEY-789"));

    // http:// only to loopback (the key would cross the network in clear).
    config.gcore.api_url = "http://api.example.com".into();
    let err = config.reconcile_config().unwrap_err().to_string();
    assert!(err.contains("https://"), "{err}");
    for local in [
        "http://127.0.0.1:9000",
        "http://localhost:9000/",
        "http://[::1]:9000",
    ] {
        config.gcore.api_url = local.into();
        assert!(config.reconcile_config().is_ok(), "{local}");
    }
    config.gcore.api_url = "https://api.gcore.com".into();

    // A key file with two lines in it is refused, naming the file's problem, not the key.
    std::fs::write(&file, "SECRET one\nSECRET two\n").unwrap();
    config.gcore.api_key_file = Some(file);
    let err = config.reconcile_config().unwrap_err().to_string();
    assert!(err.contains("spaces or line breaks"), "{err}");
    assert!(!err.contains("SECRET"));
}
