//! A corpus of malformed and hostile requests, each with the status and error body it must
//! get; afterwards the server still serves and the journal holds only the valid events.
//! Requests are written as raw bytes over TCP, so nothing on the client side "fixes" them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "Zq8Jm3Rt6Vw9Yb2Nd5Kg";
const VALID: &str =
    r#"{"type":"stream","message":{"stream":{"id":1,"live":true,"recording":false}}}"#;

/// Sends raw bytes from `from` and returns the status and body of the answer (or 0 if the
/// server closed the connection without one).
async fn raw(addr: SocketAddr, from: &str, request: &[u8]) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn post(path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nhost: streamhook\r\nconnection: close\r\ncontent-length: {}\r\n{headers}\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    r
}

fn hook(body: &[u8]) -> Vec<u8> {
    post(&format!("/webhook/{TOKEN}"), "", body)
}

fn err(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

/// What the answer to JSON that does not fit the model holds: kept as `invalid`, with its
/// problem (path, line, column, message).
fn kept(path: &str, line: usize, column: usize, message: &str) -> String {
    let problem =
        serde_json::json!({ "path": path, "line": line, "column": column, "message": message });
    format!(
        r#""kinds":["invalid"],"problems":[{{"path":{},"line":{line},"column":{column},"message":{}}}]"#,
        problem["path"], problem["message"]
    )
}

/// The JSON bodies that are not webhooks, with the problem each is kept with (default) or
/// refused for (strict mode, 422, the problem and its location as the error).
/// (name, body, problem path, line, column, message)
type NotWebhook = (
    &'static str,
    Vec<u8>,
    &'static str,
    usize,
    usize,
    &'static str,
);

fn not_webhooks() -> Vec<NotWebhook> {
    let big_id = r#"{"type":"video","message":{"video":{"id":18446744073709551616}}}"#;
    vec![
        (
            "null",
            b"null".to_vec(),
            "$",
            1,
            1,
            "$: expected a JSON object with `type` and `message`, found null",
        ),
        (
            "a number",
            b"42".to_vec(),
            "$",
            1,
            1,
            "$: expected a JSON object with `type` and `message`, found the number 42",
        ),
        (
            "an array",
            format!("[{VALID}]").into_bytes(),
            "$",
            1,
            1,
            "$: expected a JSON object with `type` and `message`, found an array",
        ),
        (
            "empty object",
            b"{}".to_vec(),
            "$.type",
            1,
            1,
            "$.type: missing; expected a string naming the webhook type (stream, video, video_delete, restream, broadcast, ...)",
        ),
        (
            "type is null",
            br#"{"type":null}"#.to_vec(),
            "$.type",
            1,
            9,
            "$.type: expected a string naming the webhook type (stream, video, video_delete, restream, broadcast, ...), found null",
        ),
        (
            "message is an array",
            br#"{"type":"video","message":[]}"#.to_vec(),
            "$.message",
            1,
            27,
            "$.message: expected an object with a `video` member, found an array",
        ),
        (
            "id too large",
            big_id.as_bytes().to_vec(),
            "$.message.video.id",
            1,
            42,
            "$.message.video.id: expected a non-negative integer id, found the number 1.8446744073709552e+19",
        ),
        (
            "id a float",
            br#"{"type":"stream","message":{"stream":{"id":1.5}}}"#.to_vec(),
            "$.message.stream.id",
            1,
            44,
            "$.message.stream.id: expected a non-negative integer id, found the number 1.5",
        ),
        (
            "renditions of strings",
            br#"{"type":"video","message":{"video":{"id":1,"converted_videos":["720p"]}}}"#
                .to_vec(),
            "$.message.video.converted_videos[0]",
            1,
            64,
            "$.message.video.converted_videos[0]: expected a rendition object ({name, status, mp4_url}), found the string \"720p\"",
        ),
        (
            "restream live a number",
            br#"{"type":"restream","message":{"restream":{"id":1,"live":2}}}"#.to_vec(),
            "$.message.restream.live",
            1,
            57,
            "$.message.restream.live: expected a boolean, found the number 2",
        ),
    ]
}

#[tokio::test]
async fn hostile_requests_get_clear_answers_and_store_nothing() {
    let mut server = TestServer::start(|c| {
        c.path_token = Some(TOKEN.into());
        c.allow = vec![
            "127.0.0.1/32".parse().unwrap(),
            "92.223.123.0/24".parse().unwrap(),
        ];
        c.trusted_proxies = vec!["127.0.0.3/32".parse().unwrap()];
        c.limits.max_body_bytes = 64 * 1024;
        c.limits.body_timeout = Duration::from_secs(1);
        c.limits.header_timeout = Duration::from_secs(1);
    })
    .await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_object = format!(
        r#"{{"type":"stream","message":{{"stream":{{"id":1,"x":{}1{}}}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let huge = vec![b'a'; 10 * 1024 * 1024];
    let huge_number = r#"{"type":"video","message":{"video":{"id":1e400}}}"#;
    let dup_keys =
        r#"{"type":"stream","type":"video","message":{"video":{"id":5,"status":"ready"}}}"#;
    let lone_surrogate = r#"{"type":"video","message":{"video":{"id":1,"name":"\ud800"}}}"#;
    let gcore_via_proxy = "x-forwarded-for: 92.223.123.7\r\n";

    type Case = (&'static str, &'static str, Vec<u8>, u16, String);
    let mut cases: Vec<Case> = vec![
        // Not JSON: kept whole as an `invalid` event (Gcore never resends; strict mode
        // refuses them with 400, below).
        ("invalid UTF-8", "127.0.0.1", hook(b"{\"type\": \"\xc3\x28\"}"), 200, kept("$", 1, 11, "invalid JSON: the input is not valid UTF-8")),
        ("truncated", "127.0.0.1", hook(br#"{"type":"stream","message":{"stream":{"id":1"#), 200, kept("$", 1, 44, "invalid JSON: the input ends in the middle of an object; is it truncated?")),
        ("empty body", "127.0.0.1", hook(b""), 200, kept("$", 1, 1, "invalid JSON: empty input: expected a JSON object")),
        ("whitespace only", "127.0.0.1", hook(b" \r\n\t "), 200, kept("$", 1, 1, "invalid JSON: empty input: expected a JSON object")),
        ("NUL bytes", "127.0.0.1", hook(b"\0\0\0\0"), 200, kept("$", 1, 1, "invalid JSON: expected a JSON value (an object, array, string, number, true, false or null)")),
        ("trailing garbage", "127.0.0.1", hook(format!("{VALID} trailing").as_bytes()), 200, kept("$", 1, 79, "invalid JSON: trailing characters")),
        ("two documents", "127.0.0.1", hook(format!("{VALID}{VALID}").as_bytes()), 200, kept("$", 1, 78, "invalid JSON: trailing characters")),
        ("deep nesting", "127.0.0.1", hook(deep.as_bytes()), 200, kept("$", 1, 128, "invalid JSON: recursion limit exceeded")),
        ("deep nesting inside a payload", "127.0.0.1", hook(deep_object.as_bytes()), 200, kept("$", 1, 174, "invalid JSON: recursion limit exceeded")),
        ("single quotes", "127.0.0.1", hook(b"{'type': 'stream'}"), 200, kept("$", 1, 2, "invalid JSON: key must be a string")),
        ("comments", "127.0.0.1", hook(b"// hi\n{}"), 200, kept("$", 1, 1, "invalid JSON: expected a JSON value (an object, array, string, number, true, false or null)")),
        ("a lone surrogate", "127.0.0.1", hook(lone_surrogate.as_bytes()), 200, kept("$", 1, 58, "invalid JSON: unexpected end of hex escape: a \\u escape of half a surrogate pair; JSON text must be valid Unicode")),
        ("number out of range", "127.0.0.1", hook(huge_number.as_bytes()), 200, kept("$", 1, 46, "invalid JSON: number out of range")),
        ("BOM", "127.0.0.1", hook(format!("\u{feff}{VALID}").as_bytes()), 200, kept("$", 1, 1, "invalid JSON: expected a JSON value (an object, array, string, number, true, false or null)")),
        // JSON, not a webhook: see `not_webhooks` below (kept as `invalid`, answered 200).
        // Size.
        ("10 MB body", "127.0.0.1", hook(&huge), 413, err("body larger than 65536 bytes")),
        ("declared 10 MB, sent little", "127.0.0.1", format!("POST /webhook/{TOKEN} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 10485760\r\n\r\n{{").into_bytes(), 413, err("body larger than 65536 bytes")),
        ("chunked, too large", "127.0.0.1", {
            let mut r = format!("POST /webhook/{TOKEN} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n").into_bytes();
            for _ in 0..20 {
                r.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
                r.extend(std::iter::repeat_n(b' ', 8192));
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        }, 413, err("body larger than 65536 bytes")),
        ("body stops coming", "127.0.0.1", format!("POST /webhook/{TOKEN} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{{\"type\"").into_bytes(), 408, err("the body did not arrive within 1s")),
        // Source and forwarding headers. A peer that is neither allowed nor a trusted proxy
        // can never pass: it is closed at accept, with no answer (status 0), whatever it sends.
        ("not allowed", "127.0.0.2", hook(VALID.as_bytes()), 0, String::new()),
        ("forged X-Forwarded-For from an untrusted peer", "127.0.0.2", post(&format!("/webhook/{TOKEN}"), gcore_via_proxy, VALID.as_bytes()), 0, String::new()),
        ("forged Forwarded from an untrusted peer", "127.0.0.2", post(&format!("/webhook/{TOKEN}"), "forwarded: for=92.223.123.7\r\n", VALID.as_bytes()), 0, String::new()),
        ("forged X-Real-IP from an untrusted peer", "127.0.0.2", post(&format!("/webhook/{TOKEN}"), "x-real-ip: 127.0.0.1\r\n", VALID.as_bytes()), 0, String::new()),
        ("a stranger guessing the token", "127.0.0.2", post("/webhook/Zq8Jm3Rt6Vw9Yb2Nd5Kh", "", VALID.as_bytes()), 0, String::new()),
        ("trusted proxy, client not allowed", "127.0.0.3", post(&format!("/webhook/{TOKEN}"), "x-forwarded-for: 198.51.100.9\r\n", VALID.as_bytes()), 403, err("source address 198.51.100.9 is not allowed")),
        // The source is checked before the token: a stranger behind the proxy learns nothing.
        ("trusted proxy, stranger with a wrong token", "127.0.0.3", post("/webhook/Zq8Jm3Rt6Vw9Yb2Nd5Kh", "x-forwarded-for: 198.51.100.9\r\n", VALID.as_bytes()), 403, err("source address 198.51.100.9 is not allowed")),
        ("trusted proxy, forged leftmost hop", "127.0.0.3", post(&format!("/webhook/{TOKEN}"), "x-forwarded-for: 92.223.123.7, 198.51.100.9\r\n", VALID.as_bytes()), 403, err("source address 198.51.100.9 is not allowed")),
        ("trusted proxy, headers disagree", "127.0.0.3", post(&format!("/webhook/{TOKEN}"), "x-forwarded-for: 198.51.100.9\r\nforwarded: for=92.223.123.7\r\n", VALID.as_bytes()), 403, err("forwarding headers from a trusted proxy disagree about the client address")),
        ("trusted proxy, garbage header", "127.0.0.3", post(&format!("/webhook/{TOKEN}"), "x-forwarded-for: ../../etc/passwd\r\n", VALID.as_bytes()), 403, err("malformed X-Forwarded-For header from a trusted proxy")),
        ("trusted proxy, obfuscated Forwarded", "127.0.0.3", post(&format!("/webhook/{TOKEN}"), "forwarded: for=_hidden\r\n", VALID.as_bytes()), 403, err("malformed Forwarded header from a trusted proxy")),
        ("trusted proxy, too many hops", "127.0.0.3", post(&format!("/webhook/{TOKEN}"), &format!("x-forwarded-for: {}\r\n", vec!["92.223.123.7"; 40].join(",")), VALID.as_bytes()), 403, err("too many forwarding hops")),
        // Paths and tokens.
        ("no token", "127.0.0.1", post("/webhook", "", VALID.as_bytes()), 403, err("missing or wrong path token")),
        ("wrong token", "127.0.0.1", post("/webhook/Zq8Jm3Rt6Vw9Yb2Nd5Kh", "", VALID.as_bytes()), 403, err("missing or wrong path token")),
        ("token prefix", "127.0.0.1", post("/webhook/Zq8Jm3Rt6Vw9Yb2Nd5K", "", VALID.as_bytes()), 403, err("missing or wrong path token")),
        ("path traversal", "127.0.0.1", post("/webhook/../metrics", "", VALID.as_bytes()), 404, err("no such endpoint: POST /webhook/../metrics")),
        ("unknown path", "127.0.0.1", post("/admin/replay", "", b"{}"), 404, err("no such endpoint: POST /admin/replay")),
        // Methods.
        ("GET", "127.0.0.1", format!("GET /webhook/{TOKEN} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").into_bytes(), 405, err("method GET not allowed: webhooks are POSTed")),
        ("PUT", "127.0.0.1", format!("PUT /webhook/{TOKEN} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{{}}").into_bytes(), 405, err("method PUT not allowed: webhooks are POSTed")),
        ("DELETE", "127.0.0.1", format!("DELETE /webhook/{TOKEN} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").into_bytes(), 405, err("method DELETE not allowed: webhooks are POSTed")),
        // Content types do not matter (Gcore documents none), valid or not.
        ("text/plain with a valid payload", "127.0.0.1", post(&format!("/webhook/{TOKEN}"), "content-type: text/plain\r\n", VALID.as_bytes()), 200, String::new()),
        ("form content type, JSON body", "127.0.0.1", post(&format!("/webhook/{TOKEN}"), "content-type: application/x-www-form-urlencoded\r\n", VALID.as_bytes()), 200, String::new()),
        ("duplicate keys: the last wins, as in any JSON parser", "127.0.0.1", hook(dup_keys.as_bytes()), 200, String::new()),
        ("Gcore through the trusted proxy", "127.0.0.3", post(&format!("/webhook/{TOKEN}"), gcore_via_proxy, VALID.as_bytes()), 200, String::new()),
    ];
    // JSON from an allowed source that does not fit the model: kept, flagged and answered
    // 200 with its problem (Gcore never resends; a 422 would lose the event).
    for (name, body, path, line, column, message) in not_webhooks() {
        cases.push((
            name,
            "127.0.0.1",
            hook(&body),
            200,
            kept(path, line, column, message),
        ));
    }
    assert!(cases.len() >= 50, "the corpus has {} cases", cases.len());
    let mut accepted = 0;
    let mut wrong = Vec::new();
    for (name, from, request, status, body) in &cases {
        let (got_status, got_body) = raw(server.addr, from, request).await;
        if got_status == 200 {
            accepted += 1;
        }
        let body_ok = if *status == 200 {
            got_body.contains("\"kinds\"") && got_body.contains(body.as_str())
        } else {
            &got_body == body
        };
        if got_status != *status || !body_ok {
            wrong.push(format!(
                "{name}: expected {status} {body}\n{:>width$}got {got_status} {got_body}",
                "",
                width = name.len() + 2
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases answered otherwise:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    // Malformed HTTP itself: the connection is refused without harm.
    for (name, request) in [
        ("garbage request line", b"HELLO\r\n\r\n".to_vec()),
        ("bad header", b"POST /webhook HTTP/1.1\r\nhost x\r\n\r\n".to_vec()),
        ("conflicting lengths", format!("POST /webhook/{TOKEN} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{{}}").into_bytes()),
        ("headers never end", b"POST /webhook HTTP/1.1\r\nhost: x\r\nx-slow: ".to_vec()),
    ] {
        let (status, _) = raw(server.addr, "127.0.0.1", &request).await;
        assert!(status == 0 || status == 400, "{name}: {status}");
    }

    // Still serving, and the journal holds only the accepted events.
    let (status, _) = raw(server.addr, "127.0.0.1", &hook(VALID.as_bytes())).await;
    assert_eq!(status, 200);
    accepted += 1;
    eventually("archived", || server.archive().len() == accepted).await;
    // (On a replicated journal the answer does not wait for this receiver's mirror: the
    // archive having them all means the mirror does.)
    let ready = server.readyz().await;
    assert_eq!(
        ready["last_seq"], accepted,
        "only the valid events were stored"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn strict_mode_refuses_what_does_not_fit_the_model_with_422() {
    let mut server = TestServer::start(|c| {
        c.path_token = Some(TOKEN.into());
        c.strict = true;
    })
    .await;
    let mut wrong = Vec::new();
    for (name, body, _, line, column, message) in not_webhooks() {
        let (status, got) = raw(server.addr, "127.0.0.1", &hook(&body)).await;
        let want = err(&format!("{message} (line {line}, column {column})"));
        if status != 422 || got != want {
            wrong.push(format!("{name}: expected 422 {want}\n  got {status} {got}"));
        }
    }
    // A body that is not JSON at all: 400, as before.
    for (name, body, want) in [
        (
            "truncated",
            &br#"{"type":"stream","message":{"stream":{"id":1"#[..],
            err(
                "invalid JSON: the input ends in the middle of an object; is it truncated? (line 1, column 44)",
            ),
        ),
        (
            "empty body",
            &b""[..],
            err("invalid JSON: empty input: expected a JSON object (line 1, column 1)"),
        ),
        (
            "invalid UTF-8",
            &b"{\"type\": \"\xc3\x28\"}"[..],
            err("invalid JSON: the input is not valid UTF-8 (line 1, column 11)"),
        ),
    ] {
        let (status, got) = raw(server.addr, "127.0.0.1", &hook(body)).await;
        if status != 400 || got != want {
            wrong.push(format!("{name}: expected 400 {want}\n  got {status} {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        server.readyz().await["last_seq"],
        0,
        "strict mode stored nothing"
    );
    server.shutdown().await;
}
