//! The console over HTTP: login and its cookie, CSRF, the API it calls (search, live events,
//! one event with how it arrived, timelines, resend), and that none of it is on the webhook
//! listener. The same flows in a real browser are in `console_browser.rs`.

mod common;

use std::time::Duration;

use common::{TestServer, client, eventually_async, fixture, post};
use serde_json::Value;

fn no_redirects() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Logs in with `/?token=` and returns the session cookie ("name=value").
async fn log_in(server: &TestServer) -> String {
    let resp = no_redirects()
        .get(server.admin_url(&format!("/?token={}", server.token)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(
        !cookie.contains(&server.token),
        "the cookie must not carry the token itself: {cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

async fn get_json(server: &TestServer, cookie: &str, path: &str) -> (u16, Value) {
    let resp = no_redirects()
        .get(server.admin_url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn login_sets_a_strict_cookie_and_a_wrong_token_shows_nothing() {
    let mut server = TestServer::start(|_| {}).await;
    let c = no_redirects();

    // Without a session: the login form, nothing of the journal.
    let page = c.get(server.admin_url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(html.contains("Admin token"), "{html}");
    assert!(
        !html.contains("app.js"),
        "the app is not served before login"
    );

    // A wrong token: 401, a clear message, no cookie.
    let wrong = c
        .get(server.admin_url("/?token=not-the-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().await.unwrap().contains("Wrong admin token"));
    let form = c
        .post(server.admin_url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 401);

    // The API refuses a forged cookie.
    let (status, _) = get_json(&server, "streamhook_session=forged", "/admin/status").await;
    assert_eq!(status, 401);

    // The right token: the cookie opens the app and the API.
    let cookie = log_in(&server).await;
    let app = c
        .get(server.admin_url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(app.contains("/console/app.js"));
    let (status, session) = get_json(&server, &cookie, "/admin/session").await;
    assert_eq!(status, 200);
    assert_eq!(session["sinks"], serde_json::json!(["archive"]));

    // The login form works too, and refuses a cross-site post.
    let form = c
        .post(server.admin_url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", server.token))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 303);
    let cross = c
        .post(server.admin_url("/login"))
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", server.token))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    server.shutdown().await;
}

#[tokio::test]
async fn state_changes_with_the_cookie_need_the_csrf_token() {
    let mut server = TestServer::start(|_| {}).await;
    let (status, _) = post(
        &client(),
        &server.url("/webhook"),
        fixture("seed/01-stream-started.json"),
    )
    .await;
    assert_eq!(status, 200);
    let cookie = log_in(&server).await;
    let (_, session) = get_json(&server, &cookie, "/admin/session").await;
    let csrf = session["csrf"].as_str().unwrap().to_owned();
    let c = no_redirects();
    let replay = |csrf: Option<&str>| {
        let mut r = c
            .post(server.admin_url("/admin/replay"))
            .header("cookie", &cookie)
            .json(&serde_json::json!({"sink": "archive", "from_seq": 1}));
        if let Some(t) = csrf {
            r = r.header("x-csrf-token", t);
        }
        r.send()
    };
    assert_eq!(replay(None).await.unwrap().status(), 403);
    assert_eq!(replay(Some("wrong")).await.unwrap().status(), 403);
    assert_eq!(replay(Some(&csrf)).await.unwrap().status(), 200);
    // The CLI's bearer token needs no CSRF token.
    let bearer = c
        .post(server.admin_url("/admin/replay"))
        .bearer_auth(&server.token)
        .json(&serde_json::json!({"sink": "archive", "from_seq": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    // Logging out needs it too.
    let out = c
        .post(server.admin_url("/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 403);
    server.shutdown().await;
}

#[tokio::test]
async fn the_console_is_not_on_the_webhook_listener() {
    let mut server = TestServer::start(|_| {}).await;
    let c = client();
    for path in [
        "/",
        "/console/app.js",
        "/admin/status",
        "/admin/events/search",
        "/login",
    ] {
        let resp = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path} on the webhook listener");
        let body = resp.text().await.unwrap();
        assert!(!body.contains("streamhook console"), "{path}: {body}");
    }
    let resp = c
        .get(server.url(&format!("/?token={}", server.token)))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("set-cookie").is_none());
    server.shutdown().await;
}

#[tokio::test]
async fn search_filters_pages_and_describes_each_sink() {
    let mut server = TestServer::start(|_| {}).await;
    let c = client();
    for name in [
        "seed/01-stream-started.json",
        "seed/03-stream-recording-started.json",
        "seed/12-video-uploaded.json",
        "seed/04-stream-recording-finished.json",
        "invalid/id-negative.json",
    ] {
        let (status, _) = post(&c, &server.url("/webhook"), fixture(name)).await;
        assert_eq!(status, 200, "{name}");
    }
    let cookie = log_in(&server).await;
    let search = |q: &'static str| {
        let (server, cookie) = (&server, &cookie);
        async move {
            let (status, v) = get_json(server, cookie, &format!("/admin/events/search?{q}")).await;
            assert_eq!(status, 200, "{q}: {v}");
            v
        }
    };
    let seqs = |v: &Value| -> Vec<u64> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(seqs(&search("").await), vec![5, 4, 3, 2, 1], "newest first");
    assert_eq!(seqs(&search("type=video").await), vec![3]);
    assert_eq!(seqs(&search("kind=stream.recording_*").await), vec![4, 2]);
    assert_eq!(seqs(&search("kind=invalid").await), vec![5]);
    assert_eq!(seqs(&search("resource=54321").await), vec![3]);
    assert_eq!(
        seqs(&search("q=samplevideo").await),
        vec![3],
        "text, any case"
    );
    assert_eq!(seqs(&search("since=1h").await).len(), 5);
    assert_eq!(
        seqs(&search("until=2000-01-01T00:00:00Z").await),
        Vec::<u64>::new()
    );
    // Paging: two at a time, then on from where it stopped.
    let first = search("limit=2").await;
    assert_eq!(seqs(&first), vec![5, 4]);
    assert_eq!(first["next_before"], 4);
    assert_eq!(seqs(&search("limit=2&before=4").await), vec![3, 2]);
    let last = search("limit=2&before=2").await;
    assert_eq!(seqs(&last), vec![1]);
    assert_eq!(
        last["next_before"],
        Value::Null,
        "the start of the journal was reached"
    );
    // Rows: what the list shows, and each sink's state.
    let all = search("").await;
    let video = &all["events"][2];
    assert_eq!(video["name"], "SampleVideo");
    assert_eq!(
        video["resource"],
        serde_json::json!({"type": "video", "id": 54321})
    );
    assert_eq!(video["source_ip"], "127.0.0.1");
    eventually_async(
        "the archive delivered everything",
        || async {
            let (_, v) = get_json(&server, &cookie, "/admin/events/states?seqs=1,2,3,4,5").await;
            (1..=5).all(|s| v[s.to_string()]["archive"]["state"] == "delivered")
        },
        true,
    )
    .await;
    // A bad filter is a clear 400.
    let (status, v) = get_json(&server, &cookie, "/admin/events/search?resource=abc").await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("numeric"), "{v}");
    server.shutdown().await;
}

#[tokio::test]
async fn an_event_shows_how_it_arrived_and_a_timeline_its_resource() {
    let mut server = TestServer::start(|_| {}).await;
    let c = client();
    for name in [
        "seed/01-stream-started.json",
        "seed/03-stream-recording-started.json",
        "seed/04-stream-recording-finished.json",
        "seed/02-stream-paused.json",
    ] {
        let resp = c
            .post(server.url("/webhook"))
            .header("user-agent", "Gcore-webhooks/1.0")
            .header("authorization", "Basic c2VjcmV0")
            .body(fixture(name))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let cookie = log_in(&server).await;
    let (status, ev) = get_json(&server, &cookie, "/admin/events/1").await;
    assert_eq!(status, 200, "{ev}");
    assert_eq!(
        ev["body"],
        String::from_utf8(fixture("seed/01-stream-started.json")).unwrap()
    );
    assert_eq!(
        ev["envelope"]["kinds"],
        serde_json::json!(["stream.started"])
    );
    assert_eq!(ev["received"]["peer"], "127.0.0.1");
    assert_eq!(ev["received"]["rule"], "127.0.0.1/32");
    let headers = ev["received"]["headers"].as_array().unwrap();
    assert!(
        headers.contains(&serde_json::json!(["user-agent", "Gcore-webhooks/1.0"])),
        "{headers:?}"
    );
    assert!(
        headers.contains(&serde_json::json!(["authorization", "(redacted)"])),
        "{headers:?}"
    );
    assert_eq!(ev["sinks"][0]["name"], "archive");

    let (status, missing) = get_json(&server, &cookie, "/admin/events/99").await;
    assert_eq!(status, 404, "{missing}");

    let (status, tl) = get_json(&server, &cookie, "/admin/resources/stream/12345").await;
    assert_eq!(status, 200);
    let kinds: Vec<Value> = tl["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kinds"].clone())
        .collect();
    assert_eq!(
        kinds,
        vec![
            serde_json::json!(["stream.started"]),
            serde_json::json!(["stream.recording_started"]),
            serde_json::json!(["stream.recording_stopped"]),
            serde_json::json!(["stream.stopped"]),
        ],
        "oldest first"
    );
    assert_eq!(tl["complete"], true);
    server.shutdown().await;
}

#[tokio::test]
async fn live_events_arrive_as_server_sent_events() {
    let mut server = TestServer::start(|_| {}).await;
    let cookie = log_in(&server).await;
    let mut stream = no_redirects()
        .get(server.admin_url("/admin/events/live?type=video"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let c = client();
    post(
        &c,
        &server.url("/webhook"),
        fixture("seed/01-stream-started.json"),
    )
    .await;
    post(
        &c,
        &server.url("/webhook"),
        fixture("seed/12-video-uploaded.json"),
    )
    .await;
    let mut text = String::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !text.contains("\n\n") {
            let chunk = stream.chunk().await.unwrap().expect("stream open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(read.is_ok(), "no event within 10 s: {text:?}");
    assert!(text.contains("event: event"), "{text}");
    assert!(text.contains("\"video.uploaded\""), "{text}");
    assert!(
        !text.contains("stream.started"),
        "the filter applies live: {text}"
    );
    drop(stream);
    server.shutdown().await;
}

#[tokio::test]
async fn resend_queues_one_event_again() {
    let mut server = TestServer::start(|_| {}).await;
    post(
        &client(),
        &server.url("/webhook"),
        fixture("seed/01-stream-started.json"),
    )
    .await;
    eventually_async("delivered once", || async { server.archive().len() }, 1).await;
    let c = no_redirects();
    let resp = c
        .post(server.admin_url("/admin/events/1/resend"))
        .bearer_auth(&server.token)
        .json(&serde_json::json!({"sink": "archive"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    eventually_async("delivered again", || async { server.archive().len() }, 2).await;
    let archive = server.archive();
    assert_eq!(
        archive[0]["id"], archive[1]["id"],
        "the same event, same id"
    );
    let missing = c
        .post(server.admin_url("/admin/events/1/resend"))
        .bearer_auth(&server.token)
        .json(&serde_json::json!({"sink": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    server.shutdown().await;
}

#[tokio::test]
async fn logout_ends_the_session_on_the_server() {
    let mut server = TestServer::start(|_| {}).await;
    let cookie = log_in(&server).await;
    let (_, session) = get_json(&server, &cookie, "/admin/session").await;
    let csrf = session["csrf"].as_str().unwrap().to_owned();
    let out = no_redirects()
        .post(server.admin_url("/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    // A copy of the cookie kept elsewhere is worthless now.
    let (status, _) = get_json(&server, &cookie, "/admin/status").await;
    assert_eq!(status, 401);
    server.shutdown().await;
}

#[tokio::test]
async fn another_host_name_gets_no_login_and_no_cookie_access() {
    let mut server = TestServer::start(|_| {}).await;
    let cookie = log_in(&server).await;
    let c = no_redirects();
    // A page reaching the listener under another name (DNS rebinding).
    let login = c
        .get(server.admin_url(&format!("/?token={}", server.token)))
        .header("host", format!("rebound.example:{}", server.admin.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 421);
    assert!(login.headers().get("set-cookie").is_none());
    let status = c
        .get(server.admin_url("/admin/status"))
        .header("host", "rebound.example")
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    // localhost and addresses are fine.
    let status = c
        .get(server.admin_url("/admin/status"))
        .header("host", format!("localhost:{}", server.admin.port()))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_tokens_lock_token_checks_for_a_while() {
    let mut server = TestServer::start(|_| {}).await;
    let c = no_redirects();
    for _ in 0..10 {
        let resp = c
            .get(server.admin_url("/admin/status"))
            .bearer_auth("wrong-token-wrong-token-wrong-token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    // Even the right token waits now, by bearer or by login.
    let resp = c
        .get(server.admin_url("/admin/status"))
        .bearer_auth(&server.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let login = c
        .get(server.admin_url(&format!("/?token={}", server.token)))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 429);
    server.shutdown().await;
}

#[tokio::test]
async fn credential_headers_are_not_kept_and_many_headers_are_cut() {
    let mut server = TestServer::start(|_| {}).await;
    let mut req = client()
        .post(server.url("/webhook"))
        .header("x-api-key", "k-123")
        .header("x-signature", "s-123")
        .header("x-my-token", "t-123")
        .header("x-trace", "visible");
    for i in 0..80 {
        req = req.header(format!("x-extra-{i}"), "v");
    }
    let resp = req
        .body(fixture("seed/01-stream-started.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cookie = log_in(&server).await;
    let (_, ev) = get_json(&server, &cookie, "/admin/events/1").await;
    let headers: Vec<(String, String)> =
        serde_json::from_value(ev["received"]["headers"].clone()).unwrap();
    let value = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(value("x-api-key"), Some("(redacted)"));
    assert_eq!(value("x-signature"), Some("(redacted)"));
    assert_eq!(value("x-my-token"), Some("(redacted)"));
    assert_eq!(value("x-trace"), Some("visible"));
    assert_eq!(headers.len(), 65, "64 headers and a marker");
    assert!(
        headers[64].1.contains("more headers not kept"),
        "{:?}",
        headers[64]
    );
    server.shutdown().await;
}

#[tokio::test]
async fn sink_states_tell_dead_pending_not_routed_and_before_the_sink() {
    use streamhook_sinks::SinkConfig;
    use streamhook_sinks::http::HttpConfig;
    // An app that refuses (400: a dead letter at once) and one that is down (503: retried).
    let refuse = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refuse_url = format!("http://{}/", refuse.local_addr().unwrap());
    let app =
        axum::Router::new().fallback(|| async { (axum::http::StatusCode::BAD_REQUEST, "no") });
    tokio::spawn(async move { axum::serve(refuse, app).await });
    let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down_url = format!("http://{}/", down.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "later") });
    tokio::spawn(async move { axum::serve(down, app).await });
    let dir = tempfile::tempdir().unwrap();
    // First run: only the archive; one event.
    let config = common::test_config(dir.path());
    let mut first = TestServer::start_with(dir, config.clone()).await;
    assert_eq!(
        post(
            &client(),
            &first.url("/webhook"),
            fixture("seed/01-stream-started.json")
        )
        .await
        .0,
        200
    );
    first.shutdown().await;
    // Second run: two more sinks, and a route that sends videos only to the archive.
    let mut config = config;
    let mut refusing = HttpConfig::new(&refuse_url);
    refusing.name = Some("refusing".into());
    let mut waiting = HttpConfig::new(&down_url);
    waiting.name = Some("waiting".into());
    config.sinks.push(SinkConfig::Http(refusing));
    config.sinks.push(SinkConfig::Http(waiting));
    config.retry.initial_backoff = Duration::from_secs(30);
    config.routes = vec![streamhook_core::RouteConfig {
        name: None,
        kinds: Vec::new(),
        types: vec!["video".into()],
        origin: None,
        ids: Vec::new(),
        sinks: vec!["archive".into()],
        is_final: true,
    }];
    config.default_sinks = vec!["archive".into(), "refusing".into(), "waiting".into()];
    let dir = first.dir;
    let mut server = TestServer::start_with(dir, config).await;
    let c = client();
    assert_eq!(
        post(
            &c,
            &server.url("/webhook"),
            fixture("seed/03-stream-recording-started.json")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            &c,
            &server.url("/webhook"),
            fixture("seed/12-video-uploaded.json")
        )
        .await
        .0,
        200
    );
    let cookie = log_in(&server).await;
    eventually_async(
        "every state",
        || async {
            let (_, v) = get_json(&server, &cookie, "/admin/events/states?seqs=1,2,3").await;
            let st = |seq: u64, sink: &str| {
                v[seq.to_string()][sink]["state"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            };
            (
                st(1, "refusing"),
                st(2, "archive"),
                st(2, "refusing"),
                st(2, "waiting"),
                v["2"]["waiting"]["attempts"].as_u64().unwrap_or(0) >= 1,
                st(3, "waiting"),
            )
        },
        (
            "before the sink".to_owned(),
            "delivered".to_owned(),
            "dead".to_owned(),
            "pending".to_owned(),
            true,
            "not routed".to_owned(),
        ),
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_an_open_live_stream() {
    let mut server = TestServer::start(|_| {}).await;
    let cookie = log_in(&server).await;
    let mut stream = no_redirects()
        .get(server.admin_url("/admin/events/live"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // The drain does not wait for the stream (shutdown() fails the test after 30 s).
    server.shutdown().await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the live stream stayed open after shutdown");
}
