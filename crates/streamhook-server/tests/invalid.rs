//! Keep, then judge: every fixture in `fixtures/invalid/` that is valid JSON is accepted from
//! an allowed source as an `invalid` event with its exact problem (snapshots), reaches every
//! sink, and leaves every history untouched; bodies that are not JSON are kept too, whole, as
//! `{"unparsed": TEXT}`; strict mode answers each as before (422, and 400 for not JSON).

mod common;

use std::path::Path;

use common::*;
use streamhook_sinks::SinkConfig;

use streamhook_types::decode;

fn invalid_fixtures() -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(fixtures().join("invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

fn is_json(path: &Path) -> bool {
    serde_json::from_slice::<serde_json::Value>(&std::fs::read(path).unwrap()).is_ok()
}

#[tokio::test]
async fn json_that_does_not_fit_the_model_is_kept_flagged_and_delivered_everywhere() {
    let mut server = TestServer::start(|c| {
        let second = c.sinks[0].clone();
        if let SinkConfig::File(mut f) = second {
            f.name = Some("second".into());
            f.path = f.path.replace("events.jsonl", "second.jsonl");
            c.sinks.push(SinkConfig::File(f));
        }
    })
    .await;
    let c = client();
    let mut answers = Vec::new();
    let mut kept = 0;
    for path in invalid_fixtures() {
        let body = std::fs::read(&path).unwrap();
        let (status, answer) = post(&c, &server.url("/webhook"), body).await;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // JSON or not: kept, flagged, answered 200 with the problem.
        assert_eq!(status, 200, "{name}: {answer}");
        assert_eq!(answer["kinds"], serde_json::json!(["invalid"]), "{name}");
        kept += 1;
        answers.push((name, status, answer));
    }
    assert!(kept >= 15, "only {kept} invalid fixtures");
    // Every sink gets every kept event, flagged, byte for byte.
    let second =
        || std::fs::read_to_string(server.dir.path().join("second.jsonl")).unwrap_or_default();
    eventually("both sinks have every kept event", || {
        server.archive().len() == kept && second().lines().count() == kept
    })
    .await;
    let archive = server.archive();
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.add_redaction(".answer.id", "[id]");
    settings.bind(|| {
        for (name, status, answer) in &answers {
            // What the sinks got: the body as sent, the resource as far as it could be read.
            let archived = archive.iter().find(|e| e["id"] == answer["id"]);
            if let Some(event) = archived {
                assert_eq!(event["kinds"], serde_json::json!(["invalid"]), "{event}");
                assert_eq!(event["problems"], answer["problems"], "{event}");
                // JSON as it came; anything else whole, as `{"unparsed": TEXT}` (or base64
                // when it is not UTF-8 either).
                let bytes = std::fs::read(fixtures().join("invalid").join(name)).unwrap();
                let sent: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    match String::from_utf8(bytes.clone()) {
                        Ok(text) => serde_json::json!({ "unparsed": text }),
                        Err(_) => {
                            use base64::Engine as _;
                            serde_json::json!({
                                "unparsed_base64":
                                    base64::engine::general_purpose::STANDARD.encode(&bytes)
                            })
                        }
                    }
                });
                assert_eq!(event["payload"], sent, "{name}");
            }
            insta::assert_yaml_snapshot!(
                format!("answer-{name}"),
                serde_json::json!({
                    "status": status,
                    "answer": answer,
                    "resource": archived.map(|e| e["resource"].clone()),
                })
            );
        }
    });
    // The metric counts them by the first problem's path.
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("streamhook_invalid_events_total{path=\"$.message.stream.live\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "streamhook_requests_total{{status=\"200\",reason=\"accepted_invalid\"}} {kept}"
    )));
    server.shutdown().await;

    // No history was written for any resource they name.
    let journal = streamhook_core::Journal::open(streamhook_core::JournalConfig::new(
        server.dir.path().join("data"),
    ))
    .unwrap();
    for event in server.archive() {
        let r = &event["resource"];
        if let Some(id) = r["id"].as_u64() {
            let key = format!("{}:{id}", r["type"].as_str().unwrap());
            assert_eq!(journal.history(&key).unwrap(), None, "{key} has a history");
        }
    }
    journal.close().await;
}

#[tokio::test]
async fn a_partly_readable_payload_keeps_its_resource_in_order_with_its_neighbours() {
    let mut server = TestServer::start(|_| {}).await;
    let c = client();
    let url = server.url("/webhook");
    let started =
        br#"{"type":"stream","message":{"stream":{"id":77,"live":true,"recording":false}}}"#;
    let odd = br#"{"type":"stream","message":{"stream":{"id":77,"live":true,"recording":"on"}}}"#;
    let recording =
        br#"{"type":"stream","message":{"stream":{"id":77,"live":true,"recording":true}}}"#;
    for body in [&started[..], odd, recording] {
        assert_eq!(post(&c, &url, body.to_vec()).await.0, 200);
    }
    eventually("archived", || server.archive().len() == 3).await;
    let archive = server.archive();
    let kinds: Vec<_> = archive.iter().map(|e| e["kinds"].clone()).collect();
    assert_eq!(
        kinds,
        [
            serde_json::json!(["stream.started"]),
            serde_json::json!(["invalid"]),
            // Classified against the history before the invalid payload.
            serde_json::json!(["stream.recording_started"]),
        ]
    );
    assert_eq!(
        archive[1]["resource"],
        serde_json::json!({"type": "stream", "id": 77})
    );
    assert_eq!(
        archive[1]["problems"][0]["path"],
        "$.message.stream.recording"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn strict_mode_answers_every_invalid_fixture_as_before() {
    let mut server = TestServer::start(|c| c.strict = true).await;
    let c = client();
    for path in invalid_fixtures() {
        let body = std::fs::read(&path).unwrap();
        let error = decode::decode(&body).unwrap_err();
        let want = if is_json(&path) { 422 } else { 400 };
        let (status, answer) = post(&c, &server.url("/webhook"), body).await;
        assert_eq!(
            (status, answer),
            (want, serde_json::json!({ "error": error.to_string() })),
            "{}",
            path.display()
        );
    }
    assert_eq!(server.readyz().await["last_seq"], 0);
    server.shutdown().await;
}
