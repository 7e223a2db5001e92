//! The server over real HTTP on loopback: every fixture accepted and delivered, the allowlist
//! (clients bound to 127.0.0.2), each refusal with its status and JSON body, trusted proxies,
//! path tokens, load shedding, slow bodies, graceful shutdown, reload, metrics, admin API.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn every_fixture_is_accepted_and_reaches_the_sink() {
    let mut server = TestServer::start(|_| {}).await;
    let client = client();
    let mut ids = Vec::new();
    for path in valid_fixtures() {
        let (status, body) = post(
            &client,
            &server.url("/webhook"),
            std::fs::read(&path).unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{}: {body}", path.display());
        assert!(
            body["kinds"].as_array().is_some_and(|k| !k.is_empty()),
            "{body}"
        );
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    eventually("the archive holds every event", || {
        server.archive().len() == ids.len()
    })
    .await;
    let archived: Vec<String> = server
        .archive()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(archived, ids, "in order, each once");
    // Stream 12345's payloads, classified with history over HTTP, in the order sent:
    let kinds: Vec<serde_json::Value> = server
        .archive()
        .iter()
        .filter(|e| e["resource"] == json!({"type": "stream", "id": 12345}))
        .map(|e| e["kinds"].clone())
        .collect();
    assert_eq!(
        kinds,
        [
            json!(["stream.started"]), // lenient/coerced-types: live 1
            json!(["stream.updated"]), // lenient/message-extra-member: still live
            json!(["stream.updated"]), // seed/01: still live
            json!(["stream.stopped"]), // seed/02
            json!(["stream.started", "stream.recording_started"]), // seed/03
            json!(["stream.recording_stopped"]), // seed/04
        ]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_event_sent_the_moment_the_server_starts_reaches_its_sinks() {
    // Regression: a new sink's cursor used to be created by its dispatcher task, which could
    // run after the first event was journaled; the sink then started after that event.
    for _ in 0..5 {
        let mut server = TestServer::start(|_| {}).await;
        let (status, _) = post(
            &client(),
            &server.url("/webhook"),
            fixture("seed/01-stream-started.json"),
        )
        .await;
        assert_eq!(status, 200);
        eventually("archived", || server.archive().len() == 1).await;
        server.shutdown().await;
    }
}

#[tokio::test]
async fn the_allowlist_is_enforced_by_source_address() {
    let mut server = TestServer::start(|c| c.allow = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let body = fixture("seed/01-stream-started.json");
    let (status, _) = post(
        &client_from("127.0.0.1"),
        &server.url("/webhook"),
        body.clone(),
    )
    .await;
    assert_eq!(status, 200);
    // A peer that can never be allowed is closed at accept; a forged X-Forwarded-For
    // changes nothing, since nothing is read.
    assert!(refused_at_accept(&client_from("127.0.0.2"), &server.url("/webhook")).await);
    let forged = client_from("127.0.0.2")
        .post(server.url("/webhook"))
        .header("x-forwarded-for", "127.0.0.1")
        .body(body)
        .send()
        .await;
    assert!(forged.is_err(), "{forged:?}");
    eventually("the accepted event archived", || {
        server.archive().len() == 1
    })
    .await;
    assert_eq!(
        server.readyz().await["last_seq"],
        1,
        "refused requests store nothing"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_trusted_proxy_passes_on_the_real_client() {
    let mut server = TestServer::start(|c| {
        c.allow = streamhook_core::source::gcore_ranges();
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let body = fixture("seed/01-stream-started.json");
    let send = |ip: &'static str, xff: &'static str| {
        let (url, body) = (server.url("/webhook"), body.clone());
        async move {
            client_from(ip)
                .post(url)
                .header("x-forwarded-for", xff)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        send("127.0.0.1", "92.223.123.17").await,
        200,
        "Gcore through the proxy"
    );
    assert_eq!(
        send("127.0.0.1", "92.223.123.17, 198.51.100.7").await,
        403,
        "a forged leftmost hop"
    );
    // Not the proxy, and not allowed itself: closed at accept.
    assert!(refused_at_accept(&client_from("127.0.0.2"), &server.url("/webhook")).await);
    eventually("archived", || server.archive().len() == 1).await;
    assert_eq!(server.archive()[0]["source_ip"], "92.223.123.17");
    server.shutdown().await;
}

#[tokio::test]
async fn each_refusal_has_its_status_and_a_json_error() {
    // Strict mode: a body that is not JSON is refused (by default it is kept as `invalid`).
    let mut server = TestServer::start(|c| {
        c.limits.max_body_bytes = 1024;
        c.strict = true;
    })
    .await;
    let c = client();
    let url = server.url("/webhook");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "not JSON",
            b"{\"type\": \"stream\", ".to_vec(),
            400,
            "invalid JSON: the input ends in the middle of a value; is it truncated? (line 1, column 19)",
        ),
        (
            "not UTF-8",
            b"{\"type\": \"\xff\"}".to_vec(),
            400,
            "invalid JSON: the input is not valid UTF-8 (line 1, column 11)",
        ),
        (
            "too large",
            vec![b' '; 2048],
            413,
            "body larger than 1024 bytes",
        ),
    ];
    for (what, body, status, error) in cases {
        let (got_status, got) = post(&c, &url, body).await;
        assert_eq!(
            (got_status, got),
            (status, json!({ "error": error })),
            "{what}"
        );
    }
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "method GET not allowed: webhooks are POSTed"})
    );
    let resp = c
        .post(server.url("/hooks"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "no such endpoint: POST /hooks"})
    );
    // A body too large by its declared length is refused before it is read.
    let resp = c
        .post(&url)
        .header("content-length", "999999")
        .body(vec![b'{'; 10])
        .send()
        .await;
    assert!(resp.is_err() || resp.unwrap().status() == 413);
    let ready = server.readyz().await;
    assert_eq!(ready["last_seq"], 0, "refused requests store nothing");
    server.shutdown().await;
}

#[tokio::test]
async fn a_body_that_trickles_in_gets_408_and_others_are_served_meanwhile() {
    let mut server =
        TestServer::start(|c| c.limits.body_timeout = Duration::from_millis(500)).await;
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"ty")
        .await
        .unwrap();
    // Meanwhile a normal client is served.
    let (status, _) = post(
        &client(),
        &server.url("/webhook"),
        fixture("seed/01-stream-started.json"),
    )
    .await;
    assert_eq!(status, 200);
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), slow.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"the body did not arrive within 500ms"}"#),
        "{answer}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn headers_that_never_finish_close_the_connection() {
    let mut server =
        TestServer::start(|c| c.limits.header_timeout = Duration::from_millis(300)).await;
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"POST /webhook HTTP/1.1\r\nhost:")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server kept a connection whose headers never came"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn too_many_requests_at_once_are_shed_with_503() {
    let mut server = TestServer::start(|c| {
        c.limits.max_concurrent_requests = 1;
        c.limits.body_timeout = Duration::from_secs(5);
    })
    .await;
    // One request holds the only slot by sending its body slowly.
    let mut holder = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    holder
        .write_all(b"POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-length: 200\r\n\r\n{")
        .await
        .unwrap();
    // Wait until the holder really holds the slot.
    let mut held = false;
    for _ in 0..500 {
        let text = server.metrics().await;
        if text.lines().any(|l| l == "streamhook_requests_in_flight 1") {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held, "the slow request never started");
    let resp = client()
        .post(server.url("/webhook"))
        .body(fixture("seed/01-stream-started.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "too many requests at once; retry shortly"})
    );
    drop(holder);
    server.shutdown().await;
}

#[tokio::test]
async fn path_tokens() {
    let token = "k7Qm2xVb9PzR4tLw8NcY";
    let mut server = TestServer::start(|c| c.path_token = Some(token.into())).await;
    let body = fixture("seed/01-stream-started.json");
    let (status, _) = post(
        &client(),
        &server.url(&format!("/webhook/{token}")),
        body.clone(),
    )
    .await;
    assert_eq!(status, 200);
    for path in ["/webhook", "/webhook/k7Qm2xVb9PzR4tLw8NcZ"] {
        let (status, err) = post(&client(), &server.url(path), body.clone()).await;
        assert_eq!(
            (status, err),
            (403, json!({"error": "missing or wrong path token"})),
            "{path}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_loses_nothing_that_was_acknowledged() {
    let mut server = TestServer::start(|_| {}).await;
    let url = server.url("/webhook");
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // 8 clients send continuously until the server stops answering.
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (url, acked) = (url.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            let client = client();
            for i in 0.. {
                let body = format!(
                    r#"{{"type":"video","message":{{"video":{{"id":{},"status":"ready"}}}}}}"#,
                    w * 100_000 + i
                );
                match client.post(&url).body(body).send().await {
                    Ok(resp) if resp.status() == 200 => {
                        let v: serde_json::Value = resp.json().await.unwrap();
                        acked
                            .lock()
                            .unwrap()
                            .push(v["id"].as_str().unwrap().to_owned());
                    }
                    Ok(resp) => panic!("unexpected {}", resp.status()),
                    Err(_) => return, // refused: the server is gone
                }
            }
        }));
    }
    eventually("some requests acknowledged", || {
        acked.lock().unwrap().len() >= 50
    })
    .await;
    // Shut down while requests are arriving.
    let _ = server.stop.take().unwrap().send(());
    tokio::time::timeout(Duration::from_secs(30), server.task.take().unwrap())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    // Reopen the journal: every acknowledged id is there.
    let journal = streamhook_core::Journal::open(streamhook_core::JournalConfig::new(
        server.dir.path().join("data"),
    ))
    .unwrap();
    let stored: Vec<String> = journal
        .read_from(1, 1_000_000)
        .unwrap()
        .iter()
        .map(|e| e.envelope().unwrap().id.0)
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acknowledged {id} lost");
    }
    assert_eq!(
        stored.len(),
        acked.len(),
        "stored events nobody was told about"
    );
    eprintln!(
        "graceful shutdown: {} acknowledged, {} stored, 0 lost",
        acked.len(),
        stored.len()
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let mut server = TestServer::start(|_| {}).await;
    let c = client();
    assert_eq!(
        c.get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap(),
        json!({"status": "ok"})
    );
    post(
        &c,
        &server.url("/webhook"),
        fixture("seed/15-video-processed.json"),
    )
    .await;
    // A body that is not JSON is kept (as an invalid event), not refused.
    post(&c, &server.url("/webhook"), b"nope".to_vec()).await;
    // A peer that can never be allowed is closed at accept, before a byte is read.
    assert!(
        client_from("127.0.0.3")
            .post(server.url("/webhook"))
            .body("{}")
            .send()
            .await
            .is_err()
    );
    eventually("delivered", || server.archive().len() == 2).await;
    // The operator's endpoints are not on the public listener.
    for path in ["/readyz", "/metrics"] {
        let status = c.get(server.url(path)).send().await.unwrap().status();
        assert_eq!(status, 404, "{path} on the webhook listener");
    }
    let ready = server.readyz().await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["journal"], "writable");
    assert_eq!(ready["last_seq"], 2);
    // The sink's cursor is persisted just after it delivers.
    let mut text = String::new();
    for _ in 0..200 {
        text = server.metrics().await;
        if text.contains("streamhook_sink_lag_events{sink=\"archive\"} 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for line in [
        "streamhook_requests_total{status=\"200\",reason=\"accepted\"} 1",
        "streamhook_requests_total{status=\"200\",reason=\"accepted_invalid\"} 1",
        "streamhook_connections_refused_total{reason=\"source_not_allowed\"} 1",
        "streamhook_journal_writable 1",
        "streamhook_events_total{kind=\"video.ready\"} 1",
        "streamhook_events_total{kind=\"invalid\"} 1",
        "streamhook_journal_appends_total 2",
        "streamhook_journal_commit_seconds_count 2",
        "streamhook_sink_delivered_total{sink=\"archive\"} 2",
        "streamhook_sink_lag_events{sink=\"archive\"} 0",
        "# TYPE streamhook_journal_commit_seconds histogram",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_replays_lists_and_requeues() {
    let mut server = TestServer::start(|_| {}).await;
    let c = client();
    for f in ["seed/01-stream-started.json", "seed/02-stream-paused.json"] {
        post(&c, &server.url("/webhook"), fixture(f)).await;
    }
    eventually("2 archived", || server.archive().len() == 2).await;
    // Without the token: 401.
    let resp = c
        .get(server.admin_url("/admin/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let auth = format!("Bearer {}", server.token);
    let get_status = || async {
        c.get(server.admin_url("/admin/status"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    // The cursor is persisted just after the sink wrote.
    let mut status = get_status().await;
    for _ in 0..200 {
        if status["sinks"][0]["lag"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = get_status().await;
    }
    assert_eq!(status["last_seq"], 2);
    assert_eq!(status["sinks"][0]["name"], "archive");
    assert_eq!(status["sinks"][0]["lag"], 0);
    // Replay the archive from seq 1: both events again, same ids.
    let resp: serde_json::Value = c
        .post(server.admin_url("/admin/replay"))
        .header("authorization", &auth)
        .json(&json!({"sink": "archive", "from_seq": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["sink"], "archive");
    assert_eq!(resp["from_seq"], 1);
    assert_eq!(resp["asked_from_seq"], 1);
    assert_eq!(resp["events"], 2);
    assert_eq!(resp["moved"], true);
    eventually("4 archived", || server.archive().len() == 4).await;
    let a = server.archive();
    assert_eq!(a[0]["id"], a[2]["id"]);
    // Unknown sink.
    let resp = c
        .post(server.admin_url("/admin/replay"))
        .header("authorization", &auth)
        .json(&json!({"sink": "nope", "from_seq": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // The tail: envelopes from a seq, as NDJSON.
    let text = c
        .get(server.admin_url("/admin/events?from=2"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("\"stream.stopped\""));
    // Nothing dead-lettered here.
    let dead: serde_json::Value = c
        .get(server.admin_url("/admin/dead-letters"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dead, json!([]));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reload_never_pauses_intake() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let reload_config = config.clone();
    // Reading the new config takes 3 s (a slow disk, a network file system).
    let server = streamhook_server::Server::new(config)
        .unwrap()
        .with_config_source(std::sync::Arc::new(move || {
            std::thread::sleep(Duration::from_secs(3));
            Ok(reload_config.clone())
        }));
    let token = server.admin_token().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run_with(listener, Some(admin), async move {
        let _ = rx.await;
    }));
    let url = format!("http://{addr}/webhook");
    let c = client();
    assert_eq!(
        post(&c, &url, fixture("seed/01-stream-started.json"))
            .await
            .0,
        200
    );
    let reload = tokio::spawn({
        let c = c.clone();
        async move {
            c.post(format!("http://{admin_addr}/admin/reload"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new connection (a fresh client), accepted and answered while the reload is still
    // reading its config.
    let (status, _) = post(&client(), &url, fixture("seed/02-stream-paused.json")).await;
    assert_eq!(status, 200);
    assert!(
        !reload.is_finished(),
        "the webhook was answered only after the reload: intake paused"
    );
    assert_eq!(reload.await.unwrap(), 200);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn readiness_turns_503_at_a_failed_commit_and_200_when_writes_work_again() {
    // Injected commit failures hit the local writer's appends; on JetStream appends go to
    // the stream (its failures are NATS's: see the ha-test).
    if common::redb_only("readiness_turns_503_at_a_failed_commit") {
        return;
    }
    let mut server = TestServer::start(|_| {}).await;
    let c = client();
    let ready = |s: &TestServer| {
        let url = s.admin_url("/readyz");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&server).await, 200);
    // A failed commit (a full disk): the request gets 503, and readiness says so at once.
    server.journal.inject_commit_failures(1);
    let (status, body) = post(
        &c,
        &server.url("/webhook"),
        fixture("seed/01-stream-started.json"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let answer = server.readyz().await;
    assert_eq!(answer["status"], "not ready", "{answer}");
    assert!(
        answer["journal"]
            .as_str()
            .unwrap()
            .starts_with("cannot write: "),
        "{answer}"
    );
    // The metrics say what failed underneath: the disk, not redb or the network.
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("streamhook_journal_errors_total{cause=\"io\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("streamhook_journal_errors_total{cause=\"shared\"} 0\n"),
        "{metrics}"
    );
    // No traffic needed: the check's probe commit succeeds, and readiness returns.
    eventually_async("ready again", || ready(&server), 200).await;
    let (status, _) = post(
        &c,
        &server.url("/webhook"),
        fixture("seed/01-stream-started.json"),
    )
    .await;
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn readiness_turns_503_when_the_journal_writer_dies() {
    let mut server = TestServer::start(|_| {}).await;
    server.journal.inject_writer_panic();
    let url = server.admin_url("/readyz");
    eventually_async(
        "not ready",
        || {
            let url = url.clone();
            async move { client().get(url).send().await.unwrap().status().as_u16() }
        },
        503,
    )
    .await;
    let answer = server.readyz().await;
    assert_eq!(
        answer["journal"],
        "the journal writer stopped (a bug): restart the server"
    );
    let _ = server.stop.take().map(|s| s.send(()));
}

#[tokio::test]
async fn a_replay_past_the_newest_event_is_refused_with_422() {
    let mut server = TestServer::start(|_| {}).await;
    let c = client();
    post(
        &c,
        &server.url("/webhook"),
        fixture("seed/01-stream-started.json"),
    )
    .await;
    // (A replicated journal answers before this receiver's mirror holds the event.)
    eventually("delivered", || server.archive().len() == 1).await;
    let resp = c
        .post(server.admin_url("/admin/replay"))
        .bearer_auth(&server.token)
        .json(&json!({"sink": "archive", "from_seq": 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"error": "cannot replay from seq 500: the newest event is seq 1"})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn one_peer_cannot_hold_more_than_its_share_of_connections() {
    let mut server = TestServer::start(|c| {
        c.allow = vec![
            "127.0.0.1/32".parse().unwrap(),
            "127.0.0.4/32".parse().unwrap(),
        ];
        c.limits.max_connections_per_peer = 2;
    })
    .await;
    // 127.0.0.4 holds two idle connections: its share.
    let connect = |ip: [u8; 4]| {
        let addr = server.addr;
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind((ip, 0).into()).unwrap();
            socket.connect(addr).await.unwrap()
        }
    };
    let _held = [connect([127, 0, 0, 4]).await, connect([127, 0, 0, 4]).await];
    // The metrics line shows when the server has accepted both.
    let refused_line = "streamhook_connections_refused_total{reason=\"peer_limit\"} 1";
    let mut third = connect([127, 0, 0, 4]).await;
    let mut buf = [0u8; 16];
    // Closed at accept, without an answer.
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the third connection was served");
    // Another peer is served meanwhile.
    let (status, _) = post(
        &client(),
        &server.url("/webhook"),
        fixture("seed/01-stream-started.json"),
    )
    .await;
    assert_eq!(status, 200);
    let metrics = server.metrics().await;
    assert!(metrics.lines().any(|l| l == refused_line), "{metrics}");
    server.shutdown().await;
}

#[tokio::test]
async fn healthz_is_on_the_admin_listener_too_and_a_proxy_is_not_capped() {
    let mut server = TestServer::start(|c| {
        c.allow = streamhook_core::source::gcore_ranges();
        c.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.limits.max_connections_per_peer = 1;
    })
    .await;
    // A probe that is not allowed on the webhook listener reaches /healthz on the admin one.
    let health = client_from("127.0.0.5")
        .get(server.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // The trusted proxy holds two connections at once despite a per-peer cap of 1.
    let connect = || {
        let addr = server.addr;
        async move { tokio::net::TcpStream::connect(addr).await.unwrap() }
    };
    let _idle = connect().await;
    let resp = client()
        .post(server.url("/webhook"))
        .header("x-forwarded-for", "92.223.123.9")
        .body(fixture("seed/01-stream-started.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    server.shutdown().await;
}

/// Reads an HTTP/1.1 response from a raw stream until the connection closes.
async fn read_all(stream: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_stop_serves_the_request_in_flight_and_the_one_just_accepted_with_connection_close() {
    let mut server = TestServer::start(|_| {}).await;
    let body = fixture("seed/01-stream-started.json");
    let head = format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    // A kept-alive request in flight: its body is half sent when the stop comes.
    let mut in_flight = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(&body[..10]).await.unwrap();
    // A connection accepted, its request not sent yet.
    let mut fresh = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    eventually_async(
        "the first request in flight",
        || async {
            server
                .metrics()
                .await
                .lines()
                .any(|l| l == "streamhook_requests_in_flight 1")
        },
        true,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = server.stop.take().unwrap();
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(200)).await;
    in_flight.write_all(&body[10..]).await.unwrap();
    fresh.write_all(head.as_bytes()).await.unwrap();
    fresh.write_all(&body).await.unwrap();
    for (what, stream) in [("in flight", &mut in_flight), ("just accepted", &mut fresh)] {
        let answer = read_all(stream).await.to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 200"), "{what}: {answer}");
        assert!(answer.contains("connection: close"), "{what}: {answer}");
    }
    let task = server.task.take().unwrap();
    task.await.unwrap().unwrap();
}
