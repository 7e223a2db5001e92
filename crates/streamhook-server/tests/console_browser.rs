//! The console in a real browser: Debian's Chromium driven through ChromeDriver (WebDriver),
//! against a real server on loopback. Logs in by typing the token into the form (after a
//! stranger's wrong tokens), sees a sent fixture arrive live with relative times, filters by
//! kind and by a sink's delivery state (the failing sink's error in the row), opens an event
//! and its stream's timeline, requeues a dead letter and then all of them after a confirmation
//! that says how many, sees the action in the audit log, and stays logged in while a second
//! console on another port is used in the same browser. Saves screenshots in `target/console-screenshots/` (and in
//! `docs/img/` with `STREAMHOOK_UPDATE_SCREENSHOTS=1`).
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them). Without them the test
//! says so and passes, unless `CI` or `STREAMHOOK_REQUIRE_BROWSER` is set: then it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, client, fixture, post};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use streamhook_sinks::SinkConfig;
use streamhook_sinks::http::HttpConfig;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// ChromeDriver on a free port, with a fresh profile folder; killed (with every browser it
/// started) on drop.
struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .env("XDG_CONFIG_HOME", profile.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        Driver {
            child,
            port,
            profile,
        }
    }

    async fn connect(&self) -> Client {
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-quic",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", self.profile.path().join("chrome").display()),
                ],
            }
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let url = format!("http://127.0.0.1:{}", self.port);
        for _ in 0..100 {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => return c,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        panic!("chromedriver did not start a browser session");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Chromium's crash handler leaves the process group: find its processes by profile.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.profile.path().to_str().unwrap())
            .status();
    }
}

/// The app behind the http sink: refuses (400, so at once a dead letter) while `failing`.
#[derive(Clone, Default)]
struct App {
    failing: Arc<AtomicBool>,
    got: Arc<Mutex<Vec<Value>>>,
}

async fn start_app(app: App) -> String {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route(
        "/hook",
        post(move |body: String| {
            let app = app.clone();
            async move {
                if app.failing.load(Ordering::SeqCst) {
                    return (axum::http::StatusCode::BAD_REQUEST, "not today");
                }
                if let Ok(v) = serde_json::from_str(&body) {
                    app.got.lock().unwrap().push(v);
                }
                (axum::http::StatusCode::OK, "ok")
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}/hook")
}

#[allow(clippy::print_stderr)] // a skip must be seen
fn browser_available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        let required = std::env::var_os("CI").is_some()
            || std::env::var_os("STREAMHOOK_REQUIRE_BROWSER").is_some();
        assert!(
            !required,
            "chromium and chromium-driver are required here (CI or STREAMHOOK_REQUIRE_BROWSER is set): apt-get install chromium chromium-driver"
        );
        eprintln!(
            "SKIPPED: the browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        );
    }
    present
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    if std::env::var_os("STREAMHOOK_UPDATE_SCREENSHOTS").is_some() {
        let docs: PathBuf = root.join("docs/img");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join(format!("console-{name}.png")), &png).unwrap();
    }
}

/// Waits (up to 20 s) until the element's text satisfies `check`; returns the text.
async fn wait_text(
    browser: &Client,
    css: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        if let Ok(el) = browser.find(Locator::Css(css)).await
            && let Ok(text) = el.text().await
        {
            if check(&text) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = screenshot(browser, "failure").await;
    panic!("timed out waiting for {what} in {css:?}; last text: {last:?}");
}

/// Clicks the element the selector finds now.
async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css:?} to click: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css:?}: {e}"));
}

async fn wait_for(browser: &Client, css: &str) -> fantoccini::elements::Element {
    for _ in 0..200 {
        if let Ok(el) = browser.find(Locator::Css(css)).await {
            return el;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = screenshot(browser, "failure").await;
    panic!("timed out waiting for {css:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    if common::jetstream_mode() {
        // The pages, the login and the clicks are the same on both journals; the console's
        // reads on the replicated journal are run by tests/console.rs in this mode. (It saves
        // CI a second browser run of some 40 s.)
        return;
    }
    if !browser_available() {
        return;
    }
    let app = App {
        failing: Arc::new(AtomicBool::new(true)),
        ..App::default()
    };
    let app_url = start_app(app.clone()).await;
    let mut server = TestServer::start(|c| {
        let mut http = HttpConfig::new(&app_url);
        http.name = Some("app".into());
        http.body = streamhook_sinks::http::BodyMode::Envelope;
        c.sinks.push(SinkConfig::Http(http));
    })
    .await;
    let driver = Driver::start();
    let browser = driver.connect().await;
    let admin = server.admin_url("");
    let webhook = server.url("/webhook");
    let c = client();

    // The form, typed into and submitted as a person does. (Before the fix Chromium sent
    // `Origin: null` under the page's no-referrer policy: "Cross-site login refused.")
    browser.goto(&format!("{admin}/")).await.unwrap();
    let field = wait_for(&browser, "#token").await;
    field.send_keys("not-the-token").await.unwrap();
    click(&browser, "#login-form button[type='submit']").await;
    let message = wait_text(&browser, "#login-error", "the refusal", |t| !t.is_empty()).await;
    assert!(message.contains("Wrong admin token"), "{message}");
    assert!(browser.find(Locator::Css("#events-table")).await.is_err());
    screenshot(&browser, "login-refused").await;

    // A stranger tries wrong tokens, from its address and from ours: the right one still
    // works at once (before the fix: 429 for everyone).
    let stranger = common::client_from("127.0.0.2");
    for _ in 0..12 {
        for c in [&stranger, &c] {
            let status = c
                .get(format!("{admin}/admin/status"))
                .bearer_auth("wrong-token-wrong-token-wrong-token")
                .send()
                .await
                .unwrap()
                .status();
            assert!(status == 401 || status == 429, "{status}");
        }
    }
    let field = wait_for(&browser, "#token").await;
    field.send_keys(&server.token).await.unwrap();
    click(&browser, "#login-form button[type='submit']").await;
    wait_for(&browser, "#events-table").await;
    let url = browser.current_url().await.unwrap();
    assert!(
        !url.as_str().contains(&server.token),
        "token in the URL: {url}"
    );
    wait_text(&browser, "#live-state", "the live connection", |t| {
        t.contains("live") && !t.contains("not")
    })
    .await;

    // A fixture sent now appears live, with its sinks' states.
    let (status, _) = post(&c, &webhook, fixture("seed/01-stream-started.json")).await;
    assert_eq!(status, 200);
    let row = wait_text(&browser, "#events tr[data-seq='1']", "the live row", |t| {
        t.contains("stream.started")
    })
    .await;
    assert!(row.contains("stream 12345"), "{row}");
    assert!(row.contains("127.0.0.1"), "{row}");
    // Relative times, and the zone the times are in, said on screen.
    assert!(
        row.contains("just now") || row.contains(" s ago"),
        "a relative time: {row}"
    );
    let zone = browser
        .find(Locator::Css("#zone"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        zone.contains("local (UTC") || zone.contains("UTC"),
        "{zone}"
    );
    for name in [
        "seed/03-stream-recording-started.json",
        "seed/12-video-uploaded.json",
        "seed/04-stream-recording-finished.json",
        "seed/02-stream-paused.json",
    ] {
        assert_eq!(post(&c, &webhook, fixture(name)).await.0, 200);
    }
    wait_for(&browser, "#events tr[data-seq='5']").await;
    // The app refuses: its state becomes dead, the archive's delivered.
    wait_text(
        &browser,
        "#events tr[data-seq='3'] td.sinks",
        "sink states",
        |t| t.contains("archive: delivered") && t.contains("app: dead"),
    )
    .await;
    screenshot(&browser, "events").await;

    // Filter: the URL holds it, and only videos stay.
    let kind = browser.find(Locator::Css("#f-type")).await.unwrap();
    kind.send_keys("video").await.unwrap();
    click(&browser, "#apply").await;
    wait_text(&browser, "#events-status", "the filtered list", |t| {
        t.starts_with("1 event shown")
    })
    .await;
    let url = browser.current_url().await.unwrap();
    assert!(url.as_str().ends_with("#/events?type=video"), "{url}");
    let rows = browser.find_all(Locator::Css("#events tr")).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].text().await.unwrap().contains("video.uploaded"));
    // A shared link opens the same view.
    browser
        .goto(&format!("{admin}/#/events?kind=stream.recording_*"))
        .await
        .unwrap();
    wait_text(&browser, "#events-status", "the shared filter", |t| {
        t.starts_with("2 events shown")
    })
    .await;
    // By delivery state: what the failing app has as dead letters, why in each row.
    browser.goto(&format!("{admin}/#/events")).await.unwrap();
    wait_for(&browser, "#events tr[data-seq='5']").await;
    browser
        .find(Locator::Css("#f-sink"))
        .await
        .unwrap()
        .select_by_value("app")
        .await
        .unwrap();
    browser
        .find(Locator::Css("#f-state"))
        .await
        .unwrap()
        .select_by_value("dead")
        .await
        .unwrap();
    click(&browser, "#apply").await;
    wait_text(&browser, "#events-status", "the dead ones", |t| {
        t.starts_with("5 events shown")
    })
    .await;
    let row = wait_text(&browser, "#events tr[data-seq='3']", "a dead row", |t| {
        t.contains("app: dead")
    })
    .await;
    assert!(row.contains("400"), "why it failed, in the row: {row}");
    screenshot(&browser, "events-dead").await;

    // The keyboard: `j` twice selects the second newest, Enter opens it, Escape goes back.
    browser.goto(&format!("{admin}/#/events")).await.unwrap();
    wait_for(&browser, "#events tr[data-seq='5']").await;
    let body = browser.find(Locator::Css("body")).await.unwrap();
    body.send_keys("jj").await.unwrap();
    browser
        .active_element()
        .await
        .unwrap()
        .send_keys("\u{E007}")
        .await
        .unwrap();
    wait_text(&browser, "#event-title", "the event opened by keys", |t| {
        t.contains("Event 4")
    })
    .await;
    browser
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys("\u{E00C}")
        .await
        .unwrap();
    wait_for(&browser, "#events tr[data-seq='5']").await;

    // Open an event: body, envelope, source check, sinks.
    // (The time cell: the resource cell's link leads to the timeline.)
    wait_for(&browser, "#events tr[data-seq='1'] td:first-child").await;
    click(&browser, "#events tr[data-seq='1'] td:first-child").await;
    wait_text(&browser, "#event-title", "the event", |t| {
        t.contains("Event 1")
    })
    .await;
    let body = browser
        .find(Locator::Css("#body-json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("\"live\": true"), "{body}");
    let source = browser
        .find(Locator::Css("#source-check"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(source.contains("127.0.0.1/32"), "{source}");
    let sinks = browser
        .find(Locator::Css("#event-sinks"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        sinks.contains("400"),
        "the app's status code is shown: {sinks}"
    );
    screenshot(&browser, "event").await;

    // Its stream's timeline: live and recording spans, marks linking to events.
    click(&browser, "#timeline-link").await;
    wait_text(&browser, "#timeline-title", "the timeline", |t| {
        t.contains("stream 12345")
    })
    .await;
    for lane in ["live", "recording"] {
        wait_for(
            &browser,
            &format!("#timeline rect.span[data-lane='{lane}']"),
        )
        .await;
    }
    let marks = browser
        .find_all(Locator::Css("#timeline a.mark-link"))
        .await
        .unwrap();
    assert_eq!(marks.len(), 4, "one mark per event of the stream");
    screenshot(&browser, "timeline").await;

    // Sinks: requeue the app's dead letters once it accepts, and see them delivered.
    app.failing.store(false, Ordering::SeqCst);
    browser.goto(&format!("{admin}/#/sinks")).await.unwrap();
    wait_for(
        &browser,
        "section[data-sink='app'] button[data-requeue='3']",
    )
    .await;
    screenshot(&browser, "sinks").await;
    click(
        &browser,
        "section[data-sink='app'] button[data-requeue='3']",
    )
    .await;
    wait_text(
        &browser,
        "section[data-sink='app'] .notice",
        "the requeue",
        |t| t.contains("Requeued event 3"),
    )
    .await;
    let mut delivered = false;
    for _ in 0..100 {
        if app.got.lock().unwrap().iter().any(|e| e["seq"] == 3) {
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(delivered, "the requeued event reached the app");
    browser.goto(&format!("{admin}/#/event/3")).await.unwrap();
    wait_text(
        &browser,
        "#event-sinks tr[data-sink='app']",
        "the delivered state",
        |t| t.contains("delivered"),
    )
    .await;
    // Requeue all that remain, from the sinks page: it says how many first.
    browser.goto(&format!("{admin}/#/sinks")).await.unwrap();
    wait_for(
        &browser,
        "section[data-sink='app'] button[data-requeue='4']",
    )
    .await;
    click(
        &browser,
        "section[data-sink='app'] button[data-requeue-all]",
    )
    .await;
    wait_text(&browser, "#confirm-text", "the confirmation", |t| {
        t.contains("Requeue 4 dead letters of app")
    })
    .await;
    screenshot(&browser, "sinks-confirm").await;
    click(&browser, "#confirm-yes").await;
    wait_text(
        &browser,
        "section[data-sink='app'] .notice",
        "the requeue",
        |t| t.contains("Requeued 4 events"),
    )
    .await;
    // Who did it, and when, on the page.
    let audit = wait_text(&browser, "#audit", "the audit log", |t| {
        t.contains("requeue") && t.contains("4 dead letters of sink app")
    })
    .await;
    assert!(audit.contains("console session"), "{audit}");
    for _ in 0..100 {
        if app.got.lock().unwrap().len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        app.got.lock().unwrap().len(),
        5,
        "every event reached the app once it accepted"
    );

    // Dark theme and a phone's width.
    browser.goto(&format!("{admin}/#/events")).await.unwrap();
    wait_for(&browser, "#events tr[data-seq='5']").await;
    click(&browser, "#theme").await;
    screenshot(&browser, "events-dark").await;
    browser.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    screenshot(&browser, "phone").await;

    // A payload that carries markup stays text: no element, no script.
    browser.set_window_size(1280, 900).await.unwrap();
    let hostile = String::from_utf8(fixture("seed/12-video-uploaded.json"))
        .unwrap()
        .replace("SampleVideo", r#"<img src=x onerror=\"window.__xss=1\">"#);
    assert_eq!(post(&c, &webhook, hostile.into_bytes()).await.0, 200);
    let row = wait_text(
        &browser,
        "#events tr[data-seq='6']",
        "the hostile row",
        |t| t.contains("<img"),
    )
    .await;
    assert!(
        row.contains(r#"<img src=x onerror="window.__xss=1">"#),
        "{row}"
    );
    let injected = browser
        .execute(
            "return document.querySelectorAll('#view img').length + (window.__xss ? 100 : 0)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        injected,
        json!(0),
        "markup from a payload became page content"
    );

    // A second console, another receiver on another port, in the same browser: neither
    // logs the other out (the cookie is named after the port).
    let mut second = TestServer::start(|_| {}).await;
    let admin2 = second.admin_url("");
    browser.goto(&format!("{admin2}/")).await.unwrap();
    let field = wait_for(&browser, "#token").await;
    field.send_keys(&second.token).await.unwrap();
    click(&browser, "#login-form button[type='submit']").await;
    wait_for(&browser, "#events-table").await;
    browser.goto(&format!("{admin}/#/events")).await.unwrap();
    wait_for(&browser, "#events-table").await;
    browser.goto(&format!("{admin2}/#/sinks")).await.unwrap();
    wait_for(&browser, "section[data-sink='archive']").await;

    browser.close().await.unwrap();
    drop(driver);
    second.shutdown().await;
    server.shutdown().await;
}
