//! The http sink against a real axum receiver on loopback, driven by the real dispatcher over
//! a real journal: delivery, signatures verified by the independent `standardwebhooks` crate,
//! retries after 5xx and refused connections, Retry-After, permanent 4xx, redirects, order.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use streamhook_core::{Dispatcher, Journal, JournalConfig, RetryPolicy, Router, Sink, Verified};
use streamhook_sinks::http::{HttpConfig, HttpSink};
use tokio::sync::watch;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_2: &str = "whsec_dGhpcyBpcyBhIHNlY29uZCBzZWNyZXQga2V5IQ==";

#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A status and headers to answer with.
type Answer = (u16, Vec<(&'static str, String)>);

#[derive(Default)]
struct Receiver {
    /// Answers to give, in order; then 200.
    plan: Mutex<VecDeque<Answer>>,
    got: Mutex<Vec<Received>>,
    delay_ms: Mutex<u64>,
    /// The first request hangs this long before it is answered.
    hang_first_ms: Mutex<u64>,
}

async fn handle(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    r.got.lock().unwrap().push(Received {
        at: Instant::now(),
        headers,
        body: body.to_vec(),
    });
    let hang = std::mem::take(&mut *r.hang_first_ms.lock().unwrap());
    let delay = *r.delay_ms.lock().unwrap();
    if hang > 0 {
        tokio::time::sleep(Duration::from_millis(hang)).await;
    } else if delay > 0 {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=delay))).await;
    }
    let answer = r.plan.lock().unwrap().pop_front();
    match answer {
        Some((status, headers)) => {
            let mut resp = (StatusCode::from_u16(status).unwrap(), "plan says no").into_response();
            for (k, v) in headers {
                resp.headers_mut().insert(k, v.parse().unwrap());
            }
            resp
        }
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn serve_on(listener: tokio::net::TcpListener) -> Arc<Receiver> {
    let r = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(handle))
        .with_state(r.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    r
}

async fn serve() -> (Arc<Receiver>, SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (serve_on(listener).await, addr)
}

struct Rig {
    journal: Journal,
    stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_secs(3),
        max_attempts: 50,
        max_age: Duration::from_secs(60),
        send_timeout: Duration::from_secs(10),
    }
}

async fn rig(config: HttpConfig) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
    let sink: Arc<dyn Sink> = Arc::new(HttpSink::new("app".into(), &config).unwrap());
    let router = Arc::new(RwLock::new(Arc::new(
        Router::new(&[], &[], &["app".to_owned()]).unwrap(),
    )));
    journal.set_cursor("app", 1).unwrap();
    let (stop, rx) = watch::channel(false);
    let d = Dispatcher::new(journal.clone(), sink, router, policy());
    tokio::spawn(d.run(rx));
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

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/hook")
}

#[tokio::test]
async fn delivers_the_original_body_signed_and_verifiable_independently() {
    let (recv, addr) = serve().await;
    let mut config = HttpConfig::new(url(addr));
    config.secrets = vec![SECRET.into(), SECRET_2.into()];
    config.headers.insert("x-tenant".into(), "acme".into());
    let rig = rig(config).await;
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/seed/06-recording-partially-processed.json"
    ))
    .unwrap();
    let appended = append(&rig.journal, &body).await;
    eventually("delivery", || recv.got.lock().unwrap().len() == 1).await;
    let got = recv.got.lock().unwrap()[0].clone();
    assert_eq!(
        got.body,
        body.as_bytes(),
        "the body is Gcore's, byte for byte"
    );
    let h = |k: &str| got.headers.get(k).unwrap().to_str().unwrap().to_owned();
    assert_eq!(h("webhook-id"), appended.id.0);
    assert_eq!(h("x-streamhook-kinds"), "video.viewable");
    assert_eq!(h("x-streamhook-seq"), "1");
    assert_eq!(h("x-tenant"), "acme");
    assert_eq!(h("content-type"), "application/json");
    assert!(h("user-agent").starts_with("streamhook/"));
    // Verified by the Standard Webhooks reference crate, with either secret (rotation).
    for secret in [SECRET, SECRET_2] {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&got.body, &got.headers)
            .unwrap();
    }
    // A tampered body fails.
    let mut tampered = got.body.clone();
    tampered[10] ^= 1;
    assert!(
        standardwebhooks::Webhook::new(SECRET)
            .unwrap()
            .verify(&tampered, &got.headers)
            .is_err()
    );
    // And our own verify agrees.
    let keys = vec![streamhook_sinks::http::decode_secret(SECRET).unwrap()];
    streamhook_sinks::http::verify(
        &keys,
        &h("webhook-id"),
        &h("webhook-timestamp"),
        &h("webhook-signature"),
        &got.body,
        Duration::from_secs(300),
    )
    .unwrap();
    rig.stop.send(true).unwrap();
}

#[tokio::test]
async fn envelope_mode_sends_the_envelope() {
    let (recv, addr) = serve().await;
    let mut config = HttpConfig::new(url(addr));
    config.body = streamhook_sinks::http::BodyMode::Envelope;
    let rig = rig(config).await;
    append(&rig.journal, &video(5, "ready")).await;
    eventually("delivery", || recv.got.lock().unwrap().len() == 1).await;
    let got = recv.got.lock().unwrap()[0].clone();
    let envelope: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(envelope["kinds"], serde_json::json!(["video.ready"]));
    assert_eq!(envelope["payload"]["message"]["video"]["id"], 5);
    assert!(
        got.headers.get("webhook-signature").is_none(),
        "no secret, no signature"
    );
    rig.stop.send(true).unwrap();
}

#[tokio::test]
async fn retries_after_500s_with_the_same_webhook_id() {
    let (recv, addr) = serve().await;
    recv.plan
        .lock()
        .unwrap()
        .extend([(500, vec![]), (502, vec![]), (503, vec![])]);
    let rig = rig(HttpConfig::new(url(addr))).await;
    let appended = append(&rig.journal, &video(1, "ready")).await;
    eventually("4 attempts", || recv.got.lock().unwrap().len() == 4).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = recv.got.lock().unwrap().clone();
    assert_eq!(got.len(), 4, "delivered once after three failures");
    for r in &got {
        assert_eq!(r.headers.get("webhook-id").unwrap(), appended.id.0.as_str());
    }
    assert!(rig.journal.dead_letters(None).unwrap().is_empty());
    rig.stop.send(true).unwrap();
}

#[tokio::test]
async fn retries_while_the_connection_is_refused_then_delivers() {
    // A port with nobody listening.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let rig = rig(HttpConfig::new(url(addr))).await;
    append(&rig.journal, &video(1, "ready")).await;
    append(&rig.journal, &video(2, "ready")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rig.journal.dead_letters(None).unwrap().is_empty());
    // The receiver comes up on that port.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let recv = serve_on(listener).await;
    eventually("both delivered", || recv.got.lock().unwrap().len() == 2).await;
    let mut bodies: Vec<String> = recv
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|r| String::from_utf8(r.body.clone()).unwrap())
        .collect();
    // Two resources on concurrent lanes: each arrives once, in either order.
    bodies.sort();
    assert_eq!(bodies, [video(1, "ready"), video(2, "ready")]);
    rig.stop.send(true).unwrap();
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (recv, addr) = serve().await;
    recv.plan
        .lock()
        .unwrap()
        .push_back((429, vec![("retry-after", "1".into())]));
    let rig = rig(HttpConfig::new(url(addr))).await;
    append(&rig.journal, &video(1, "ready")).await;
    eventually("2 attempts", || recv.got.lock().unwrap().len() == 2).await;
    let got = recv.got.lock().unwrap().clone();
    let waited = got[1].at - got[0].at;
    // Without the hint the backoff would be ~10 ms.
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}, not the 1 s asked"
    );
    rig.stop.send(true).unwrap();
}

#[tokio::test]
async fn permanent_4xx_and_redirects_dead_letter_at_once() {
    let (recv, addr) = serve().await;
    recv.plan.lock().unwrap().extend([
        (422, vec![]),
        (301, vec![("location", "http://elsewhere.invalid/".into())]),
    ]);
    let rig = rig(HttpConfig::new(url(addr))).await;
    append(&rig.journal, &video(1, "ready")).await;
    append(&rig.journal, &video(2, "ready")).await;
    eventually("2 dead letters", || {
        rig.journal.dead_letters(Some("app")).unwrap().len() == 2
    })
    .await;
    let letters = rig.journal.dead_letters(Some("app")).unwrap();
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(
        letters[0].error,
        "HTTP 422 Unprocessable Entity: plan says no"
    );
    assert_eq!(
        letters[1].error,
        "HTTP 301 Moved Permanently: plan says no (redirect to http://elsewhere.invalid/ not followed)"
    );
    assert_eq!(recv.got.lock().unwrap().len(), 2, "no retries");
    rig.stop.send(true).unwrap();
}

#[tokio::test]
async fn a_receiver_that_times_out_is_retried() {
    let (recv, addr) = serve().await;
    *recv.hang_first_ms.lock().unwrap() = 3000;
    let mut config = HttpConfig::new(url(addr));
    config.timeout = Duration::from_millis(300);
    let rig = rig(config).await;
    append(&rig.journal, &video(1, "ready")).await;
    eventually("a second attempt", || recv.got.lock().unwrap().len() == 2).await;
    let got = recv.got.lock().unwrap().clone();
    assert_eq!(
        got[0].headers.get("webhook-id"),
        got[1].headers.get("webhook-id")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rig.journal.dead_letters(None).unwrap().is_empty());
    assert_eq!(recv.got.lock().unwrap().len(), 2);
    rig.stop.send(true).unwrap();
}

#[tokio::test]
async fn per_resource_order_holds_with_concurrent_requests() {
    let (recv, addr) = serve().await;
    *recv.delay_ms.lock().unwrap() = 5;
    let mut config = HttpConfig::new(url(addr));
    config.concurrency = 8;
    let rig = rig(config).await;
    for status in ["empty", "pending", "viewable", "ready"] {
        for id in 0..20 {
            append(&rig.journal, &video(id, status)).await;
        }
    }
    eventually("80 delivered", || recv.got.lock().unwrap().len() == 80).await;
    let got = recv.got.lock().unwrap().clone();
    for id in 0..20u64 {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                v["message"]["video"]["id"] == id
            })
            .map(|r| {
                r.headers
                    .get("x-streamhook-seq")
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "video {id} out of order");
        assert_eq!(seqs.len(), 4);
    }
    rig.stop.send(true).unwrap();
}

#[test]
fn bad_configs_are_reported() {
    let err = |c: HttpConfig| HttpSink::new("app".into(), &c).unwrap_err().to_string();
    assert_eq!(
        err(HttpConfig::new("not a url")),
        "sink \"app\": bad url \"not a url\": relative URL without a base"
    );
    assert_eq!(
        err(HttpConfig::new("ftp://x/")),
        "sink \"app\": url \"ftp://x/\" must start with http:// or https://"
    );
    let mut c = HttpConfig::new("http://127.0.0.1:1/");
    c.secrets = vec!["whsec_***".into()];
    assert!(err(c).starts_with("sink \"app\": secret #1 is not a whsec_ secret: not base64"));
    let mut c = HttpConfig::new("http://127.0.0.1:1/");
    c.headers.insert("bad header".into(), "x".into());
    assert_eq!(err(c), "sink \"app\": bad header name \"bad header\"");
}

#[test]
fn retry_after_parses_seconds_and_dates() {
    use streamhook_sinks::http::parse_retry_after;
    assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon"), None);
}

fn one_delivery(body: &str) -> streamhook_core::Delivery {
    let json = format!(
        r#"{{"id":"0193-test-1","seq":1,"received_at":"2026-11-28T10:00:00.000Z","source_ip":"92.223.123.1","kinds":["video.ready"],"resource":{{"type":"video","id":1}},"payload":{body}}}"#
    );
    streamhook_core::Delivery {
        envelope: serde_json::from_str(&json).unwrap(),
        json,
        body: body.to_owned(),
        attempt: 1,
        requeued: false,
        lease: None,
    }
}

#[tokio::test]
async fn an_endless_error_body_is_read_only_up_to_a_limit() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async {
            let chunks = futures_endless();
            (
                StatusCode::BAD_REQUEST,
                axum::body::Body::from_stream(chunks),
            )
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut config = HttpConfig::new(format!("http://{addr}/hook"));
    config.timeout = Duration::from_secs(60);
    let sink = HttpSink::new("app".into(), &config).unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        sink.send(&one_delivery(
            r#"{"type":"video","message":{"video":{"id":1}}}"#,
        )),
    )
    .await
    .expect("the sink waited for an endless error body");
    let err = result.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string().starts_with("HTTP 400 Bad Request: xxxx"),
        "{err}"
    );
    assert!(err.to_string().len() < 300, "{err}");
}

/// An endless body of `x`.
fn futures_endless()
-> impl tokio_stream_like::Stream<Item = Result<axum::body::Bytes, std::convert::Infallible>> {
    tokio_stream_like::repeat(axum::body::Bytes::from(vec![b'x'; 8192]))
}

/// The few lines of a stream that repeats an item forever.
mod tokio_stream_like {
    pub use futures_core::Stream;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct Repeat(axum::body::Bytes);

    pub fn repeat(item: axum::body::Bytes) -> Repeat {
        Repeat(item)
    }

    impl Stream for Repeat {
        type Item = Result<axum::body::Bytes, std::convert::Infallible>;
        fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(Some(Ok(self.0.clone())))
        }
    }
}

#[tokio::test]
async fn configured_headers_replace_ours_and_computed_ones_are_refused() {
    let (receiver, addr) = serve().await;
    let mut config = HttpConfig::new(format!("http://{addr}/hook"));
    config
        .headers
        .insert("Content-Type".into(), "application/vnd.gcore+json".into());
    config.headers.insert("x-team".into(), "video".into());
    let sink = HttpSink::new("app".into(), &config).unwrap();
    sink.send(&one_delivery(
        r#"{"type":"video","message":{"video":{"id":1}}}"#,
    ))
    .await
    .unwrap();
    let got = receiver.got.lock().unwrap()[0].headers.clone();
    let types: Vec<_> = got.get_all("content-type").iter().collect();
    assert_eq!(
        types,
        ["application/vnd.gcore+json"],
        "one content-type, the configured one"
    );
    assert_eq!(got.get_all("webhook-id").iter().count(), 1);
    assert_eq!(got["x-team"], "video");

    for computed in ["webhook-id", "Webhook-Signature", "webhook-timestamp"] {
        let mut bad = HttpConfig::new(format!("http://{addr}/hook"));
        bad.headers.insert(computed.into(), "x".into());
        let e = HttpSink::new("app".into(), &bad).unwrap_err().to_string();
        assert!(e.contains("is set by the sink on every request"), "{e}");
    }
}

#[test]
fn verify_survives_hostile_timestamps() {
    let key = streamhook_sinks::http::decode_secret(SECRET).unwrap();
    for ts in [i64::MIN.to_string(), i64::MAX.to_string(), "-1".into()] {
        assert!(matches!(
            streamhook_sinks::http::verify(
                std::slice::from_ref(&key),
                "id",
                &ts,
                "v1,AAAA",
                b"{}",
                Duration::from_secs(300)
            ),
            Err(streamhook_sinks::http::VerifyError::Stale)
        ));
    }
}

#[test]
fn passwords_and_header_values_are_redacted() {
    let mut config = HttpConfig::new("https://app:hunter2-secret@example.test/gcore");
    config
        .headers
        .insert("authorization".into(), "Bearer tok-9f8e".into());
    config.secrets = vec![SECRET.into()];
    let shown = serde_json::to_string(&config.redacted()).unwrap();
    for secret in ["hunter2-secret", "tok-9f8e", "MfKQ9r8"] {
        assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
    }
    assert!(
        shown.contains("https://app:***@example.test/gcore"),
        "{shown}"
    );
    let described = streamhook_sinks::SinkConfig::Http(config).describe();
    assert!(!described.contains("hunter2"), "{described}");
}
