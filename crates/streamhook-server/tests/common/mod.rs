//! A server on loopback for tests: `run_with` on 127.0.0.1:0, a file sink in a temporary
//! folder, the admin API, and clients bound to chosen loopback addresses.
//!
//! With `STREAMHOOK_TEST_JOURNAL=jetstream` the servers journal in a real NATS JetStream
//! stream (one nats-server per test binary, a stream per data folder, so a restart on the same
//! folder finds its journal): the suites then check the replicated journal too. Tests of what
//! only the redb backend has (its file, injected commit failures) call [`redb_only`].

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use streamhook_server::{Config, Server};
use streamhook_sinks::SinkConfig;
use streamhook_sinks::file::{FileConfig, FsyncPolicy};
use tokio::sync::oneshot;

#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub token: String,
    pub dir: tempfile::TempDir,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<(), streamhook_server::ServerError>>>,
    /// The running server's journal (to inject faults).
    pub journal: streamhook_core::Journal,
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

/// Every valid fixture (seed, upstream, lenient), sorted.
pub fn valid_fixtures() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["seed", "upstream", "lenient"] {
        for entry in std::fs::read_dir(fixtures().join(dir)).unwrap() {
            out.push(entry.unwrap().path());
        }
    }
    out.sort();
    out
}

/// A config for tests: loopback allowed, a file sink, no stdout, quick retries.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config {
        allow: vec!["127.0.0.1/32".parse().unwrap()],
        data_dir: dir.join("data"),
        sinks: vec![SinkConfig::File(FileConfig {
            name: Some("archive".into()),
            path: dir.join("events.jsonl").to_str().unwrap().to_owned(),
            max_bytes: 0,
            fsync: FsyncPolicy::Always,
            start: None,
        })],
        ..Config::default()
    };
    config.admin.token = Some("test-admin-token-0123456789abcdef".into());
    config.retry.initial_backoff = Duration::from_millis(20);
    config.retry.max_backoff = Duration::from_millis(200);
    config
}

impl TestServer {
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        Self::start_with(dir, config).await
    }

    pub async fn start_with(dir: tempfile::TempDir, mut config: Config) -> TestServer {
        if jetstream_mode() {
            use std::hash::{Hash, Hasher};
            let mut hash = std::collections::hash_map::DefaultHasher::new();
            config.data_dir.hash(&mut hash);
            config.journal.backend = streamhook_server::config::JournalBackend::Jetstream;
            config.journal.nats_urls = shared_nats().url_list();
            config.journal.replicas = 1;
            config.journal.stream = format!("T{:016x}", hash.finish());
        }
        let server = Server::open(config).await.unwrap();
        let token = server.admin_token().unwrap();
        let journal = server.intake().journal().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run_with(listener, Some(admin), async move {
            let _ = rx.await;
        }));
        let server = TestServer {
            addr,
            admin: admin_addr,
            token,
            dir,
            stop: Some(stop),
            task: Some(task),
            journal,
        };
        if jetstream_mode() {
            server.wait_until_delivering().await;
        }
        server
    }

    /// On the JetStream journal, waits (at most 20 s) until this receiver holds every sink's
    /// lease, as a single-host server delivers from the start: tests then ask it for replays
    /// and requeues as they would a single-host one.
    async fn wait_until_delivering(&self) {
        for _ in 0..2000 {
            let status: serde_json::Value = client()
                .get(self.admin_url("/admin/status"))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let sinks = status["sinks"].as_array().cloned().unwrap_or_default();
            // Configured sinks only (one taken out of the configuration delivers nowhere).
            if sinks
                .iter()
                .filter(|s| s["running"] == serde_json::json!(true))
                .all(|s| s["delivering_here"] == serde_json::json!(true))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the receiver did not take its sinks' leases within 20 s");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Stops gracefully and waits.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }

    /// `GET /readyz` on the admin listener, parsed: readiness, and `last_seq` (what the
    /// journal stored).
    pub async fn readyz(&self) -> serde_json::Value {
        client()
            .get(self.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /metrics` on the admin listener: the exposition text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn archive(&self) -> Vec<serde_json::Value> {
        let text =
            std::fs::read_to_string(self.dir.path().join("events.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// A client whose requests leave from `ip` (127.0.0.2 is local too).
pub fn client_from(ip: &str) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ip: IpAddr = ip.parse().unwrap();
    reqwest::Client::builder()
        .local_address(ip)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn client() -> reqwest::Client {
    client_from("127.0.0.1")
}

pub async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let resp = client.post(url).body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// Whether a request from `client` is closed at accept, without an answer (the source
/// filter refuses peers that can never be allowed before reading a byte).
pub async fn refused_at_accept(client: &reqwest::Client, url: &str) -> bool {
    match client.post(url).body("{}").send().await {
        Ok(_) => false,
        Err(e) => !e.is_timeout(),
    }
}

pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Polls an async check until it gives `want`; panics with `what` after 20 s.
pub async fn eventually_async<F, Fut, T>(what: &str, mut check: F, want: T)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
    T: PartialEq + std::fmt::Debug,
{
    let mut last = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        // A check that hangs (a connection nobody accepts) counts as not yet.
        if let Ok(got) = tokio::time::timeout(Duration::from_secs(2), check()).await {
            if got == want {
                return;
            }
            last = Some(got);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what} (last: {last:?})");
}

/// Whether the suites run on the JetStream journal (`STREAMHOOK_TEST_JOURNAL=jetstream`).
pub fn jetstream_mode() -> bool {
    std::env::var("STREAMHOOK_TEST_JOURNAL").as_deref() == Ok("jetstream")
}

/// True (after saying why) when the suite runs on JetStream and the calling test checks what
/// only the redb backend has: the caller returns.
#[allow(clippy::print_stderr)] // a test says why it did not run
pub fn redb_only(test: &str) -> bool {
    if jetstream_mode() {
        eprintln!("{test}: redb backend only; not run on the JetStream journal");
    }
    jetstream_mode()
}

/// One NATS server for the whole test binary (killed when the process ends).
pub fn shared_nats() -> &'static streamhook_testkit::Nats {
    static NATS: OnceLock<streamhook_testkit::Nats> = OnceLock::new();
    NATS.get_or_init(|| {
        let bin = streamhook_testkit::nats_server()
            .unwrap_or_else(|why| panic!("STREAMHOOK_TEST_JOURNAL=jetstream: {why}"));
        streamhook_testkit::Nats::single(&bin)
    })
}
