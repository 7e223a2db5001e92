//! `streamhook-harness bench`: streamhook against its limits, side by side, in one run, with
//! the same load generator, connection count and payload; writes `docs/performance.md`.
//!
//! Every number is measured here, in this run, on this machine; targets are checked as ratios
//! or against the measured figures, never asserted in tests.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::body::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use streamhook_core::{Journal, JournalConfig, Verified};

use crate::server::free_port;

/// Options of a bench run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// The release server binary (set from the harness's --server-bin).
    #[arg(skip)]
    pub server_bin: PathBuf,
    /// The streamhook CLI binary (for validate vs jq).
    #[arg(long, default_value = "target/release/streamhook")]
    pub cli_bin: PathBuf,
    /// Seconds per load phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Connections of the closed-loop phase.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Offered rate of the fixed-rate phase.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Journaled events to drain.
    #[arg(long, default_value_t = 100_000)]
    pub drain_events: u64,
    /// Journaled events at restart.
    #[arg(long, default_value_t = 1_000_000)]
    pub restart_events: u64,
    /// MB of NDJSON for validate vs jq.
    #[arg(long, default_value_t = 100)]
    pub validate_mb: usize,
    /// Criterion's output folder.
    #[arg(long, default_value = "target/criterion")]
    pub criterion_dir: PathBuf,
    /// The report to write.
    #[arg(long, default_value = "docs/performance.md")]
    pub out: PathBuf,
    /// The command line to record in the report.
    #[arg(long, default_value = "cargo xtask bench")]
    pub command: String,
}

/// Everything after this line in the report is kept when it is regenerated.
pub const NOTES_MARKER: &str = "<!-- notes below are kept by cargo xtask bench -->";

const PAYLOAD: &str = include_str!("../../../fixtures/seed/15-video-processed.json");

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client(connections: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build(connector)
}

async fn post(client: &HttpClient, url: &hyper::Uri) -> bool {
    let request = hyper::Request::post(url.clone())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(PAYLOAD.as_bytes())));
    let Ok(request) = request else { return false };
    match client.request(request).await {
        Ok(resp) => {
            let ok = resp.status().is_success();
            let _ = resp.into_body().collect().await;
            ok
        }
        Err(_) => false,
    }
}

/// What one load phase measured.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Successful requests per second.
    pub rps: f64,
    /// Latency percentiles and max, in microseconds.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Maximum.
    pub max: u64,
    /// Failed requests.
    pub errors: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// `connections` clients sending back to back for `seconds`.
pub async fn closed_loop(url: &str, connections: usize, seconds: u64) -> Result<Phase> {
    let uri: hyper::Uri = url.parse()?;
    let client = client(connections);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (client, uri, errors) = (client.clone(), uri.clone(), errors.clone());
            tokio::spawn(async move {
                let mut h = histogram();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if post(&client, &uri).await {
                        let _ = h.record(t.elapsed().as_micros() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                h
            })
        })
        .collect();
    let mut all = histogram();
    for t in tasks {
        all.add(t.await?)?;
    }
    let took = start.elapsed().as_secs_f64();
    Ok(Phase {
        rps: all.len() as f64 / took,
        p50: all.value_at_quantile(0.5),
        p99: all.value_at_quantile(0.99),
        max: all.max(),
        errors: errors.load(Ordering::Relaxed),
    })
}

/// `rate` requests per second for `seconds`, each timed from when it was due (so a stall
/// counts against every request it delays: no coordinated omission).
pub async fn fixed_rate(url: &str, rate: u64, seconds: u64) -> Result<Phase> {
    let uri: hyper::Uri = url.parse()?;
    let client = client(256);
    let total = rate * seconds;
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<u64>>();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let (client, uri, tx) = (client.clone(), uri.clone(), tx.clone());
        tokio::spawn(async move {
            let ok = post(&client, &uri).await;
            let _ = tx.send(ok.then(|| due.elapsed().as_micros() as u64));
        });
    }
    drop(tx);
    let mut h = histogram();
    let mut errors = 0;
    while let Some(r) = rx.recv().await {
        match r {
            Some(us) => h.record(us)?,
            None => errors += 1,
        }
    }
    let took = start.elapsed().as_secs_f64();
    Ok(Phase {
        rps: h.len() as f64 / took,
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        max: h.max(),
        errors,
    })
}

/// The ceiling: an axum server that reads the body and answers 200.
pub async fn bare_server(port: u16) -> Result<()> {
    let app = axum::Router::new().route(
        "/webhook",
        axum::routing::post(|body: Bytes| async move {
            std::hint::black_box(body.len());
            "{}"
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// A receiver that counts what it is sent and answers 204.
async fn counting_receiver(count: Arc<AtomicU64>) -> Result<(u16, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |_: Bytes| {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    Ok((
        port,
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }),
    ))
}

/// A child process to measure, with its peak memory.
struct Measured {
    child: Child,
}

impl Measured {
    fn spawn(cmd: &mut Command) -> Result<Measured> {
        Ok(Measured {
            child: cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?,
        })
    }

    fn status_kb(&self, key: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Peak resident memory so far, MiB.
    fn peak_rss_mib(&self) -> f64 {
        self.status_kb("VmHWM:") as f64 / 1024.0
    }

    /// Resident memory now, MiB.
    fn rss_mib(&self) -> f64 {
        self.status_kb("VmRSS:") as f64 / 1024.0
    }

    fn stop(mut self) -> Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        bail!("the process did not stop on SIGTERM")
    }
}

async fn wait_ready(port: u16, path: &str) -> Result<Duration> {
    let start = Instant::now();
    let http = reqwest::Client::new();
    while start.elapsed() < Duration::from_secs(120) {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            && r.status().is_success()
        {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("not ready on port {port} after 120 s")
}

fn streamhook(bin: &Path, dir: &Path, port: u16, sinks: &str) -> Result<Command> {
    let config = dir.join("streamhook.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nallow = [\"127.0.0.1/32\"]\ndata_dir = \"{}\"\n[admin]\nenabled = false\n[retry]\ninitial_backoff = \"100ms\"\nmax_backoff = \"500ms\"\n{sinks}",
            dir.join("data").display()
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(config);
    Ok(cmd)
}

/// Turns the admin listener on (at `127.0.0.1:port`) in the config `streamhook()` wrote.
fn enable_admin(cmd: &mut Command, dir: &Path, port: u16) -> Result<()> {
    cmd.env("STREAMHOOK_ADMIN_LISTEN", format!("127.0.0.1:{port}"));
    let config = dir.join("streamhook.toml");
    let text = std::fs::read_to_string(&config)?.replace("enabled = false", "enabled = true");
    std::fs::write(&config, text)?;
    Ok(())
}

/// The journal's own count of events `sink` has not passed, from `/readyz`.
async fn sink_lag(admin: u16, sink: &str) -> Result<u64> {
    let ready: serde_json::Value = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await?
        .json()
        .await?;
    ready["sinks"][sink]["lag"]
        .as_u64()
        .with_context(|| format!("no lag for sink {sink} in /readyz: {ready}"))
}

fn file_sink(dir: &Path) -> String {
    format!(
        "[[sinks]]\ntype = \"file\"\nname = \"archive\"\npath = \"{}\"\n",
        dir.join("events.jsonl").display()
    )
}

fn http_sink(port: u16) -> String {
    format!("[[sinks]]\ntype = \"http\"\nname = \"app\"\nurl = \"http://127.0.0.1:{port}/hook\"\n")
}

/// One configuration's figures.
struct Row {
    name: String,
    closed: Phase,
    fixed: Phase,
    peak_rss: f64,
}

/// Fills a journal with `n` events through the real append path (group commit), and leaves
/// the cursor of `sink` (if any) at the start, so a server finds them all as a backlog.
pub async fn fill_journal(data: &Path, n: u64, sink: Option<&str>) -> Result<Duration> {
    let journal = Journal::open(JournalConfig::new(data))?;
    if let Some(s) = sink {
        journal.set_cursor(s, journal.last_seq()? + 1)?;
    }
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..256)
        .map(|_| {
            let (journal, next) = (journal.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let body = format!(r#"{{"type":"video","message":{{"video":{{"id":{},"name":"clip","status":"ready","duration":19580}}}}}}"#, i % 5000);
                    let webhook = streamhook_types::decode::decode(body.as_bytes())?.webhook;
                    loop {
                        match journal.append(Verified::trusted_local([127, 0, 0, 1].into()), body.as_bytes(), webhook.clone()).await {
                            Err(streamhook_core::JournalError::Busy) => tokio::task::yield_now().await,
                            other => {
                                other?;
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let took = start.elapsed();
    journal.close().await;
    Ok(took)
}

fn criterion_estimates(dir: &Path) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.ends_with("new/estimates.json") {
                let name = path
                    .parent()
                    .and_then(Path::parent)
                    .and_then(|p| p.strip_prefix(dir).ok())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let mean = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["mean"]["point_estimate"].as_f64());
                if let Some(ns) = mean {
                    out.push((name, ns));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores ({cpu})")
}

/// Today's date (UTC), `2026-11-28`.
fn today() -> String {
    humantime::format_rfc3339(std::time::SystemTime::now())
        .to_string()
        .chars()
        .take(10)
        .collect()
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// Times one command over a file, best of three, in MB/s.
fn throughput(cmd: &mut dyn FnMut() -> Command, bytes: u64) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let status = cmd().stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        let took = t.elapsed().as_secs_f64();
        if !status.success() && status.code() != Some(1) {
            bail!("the command failed: {status}");
        }
        best = best.min(took);
    }
    Ok(bytes as f64 / 1e6 / best)
}

/// Runs everything and writes the report.
pub async fn run(o: &BenchOptions) -> Result<()> {
    let dir = crate::faults::temp_dir("bench")?;
    let mut rows = Vec::new();
    let mut report = String::new();
    let me = std::env::current_exe()?;

    // 1. The bare axum server.
    eprintln!("bench: 1/3 bare axum server");
    let port = free_port()?;
    let bare = Measured::spawn(Command::new(&me).args(["bare", "--port", &port.to_string()]))?;
    wait_ready(port, "/webhook").await.ok();
    let url = format!("http://127.0.0.1:{port}/webhook");
    let closed = closed_loop(&url, o.connections, o.seconds).await?;
    let fixed = fixed_rate(&url, o.rate, o.seconds).await?;
    rows.push(Row {
        name: "bare axum (reads the body, answers 200)".into(),
        closed,
        fixed,
        peak_rss: bare.peak_rss_mib(),
    });
    bare.stop()?;

    // 2. streamhook with a file sink.
    eprintln!("bench: 2/3 streamhook-server, journal fsync on, file sink");
    let d2 = dir.join("file");
    std::fs::create_dir_all(&d2)?;
    let port = free_port()?;
    let server = Measured::spawn(&mut streamhook(&o.server_bin, &d2, port, &file_sink(&d2))?)?;
    wait_ready(port, "/healthz").await?;
    let url = format!("http://127.0.0.1:{port}/webhook");
    let closed = closed_loop(&url, o.connections, o.seconds).await?;
    let fixed = fixed_rate(&url, o.rate, o.seconds).await?;
    rows.push(Row {
        name: "streamhook-server + file sink".into(),
        closed,
        fixed,
        peak_rss: server.peak_rss_mib(),
    });
    server.stop()?;

    // 3. streamhook with an http sink draining to a local receiver.
    eprintln!("bench: 3/3 streamhook-server, journal fsync on, http sink to a local receiver");
    let d3 = dir.join("http");
    std::fs::create_dir_all(&d3)?;
    let received = Arc::new(AtomicU64::new(0));
    let (receiver_port, receiver) = counting_receiver(received.clone()).await?;
    let port = free_port()?;
    let server = Measured::spawn(&mut streamhook(
        &o.server_bin,
        &d3,
        port,
        &http_sink(receiver_port),
    )?)?;
    wait_ready(port, "/healthz").await?;
    let url = format!("http://127.0.0.1:{port}/webhook");
    let closed = closed_loop(&url, o.connections, o.seconds).await?;
    let fixed = fixed_rate(&url, o.rate, o.seconds).await?;
    rows.push(Row {
        name: "streamhook-server + http sink".into(),
        closed,
        fixed,
        peak_rss: server.peak_rss_mib(),
    });
    server.stop()?;
    receiver.abort();

    // 4. Memory while a sink is down and the backlog grows.
    eprintln!("bench: memory with the http sink's receiver down");
    let d4 = dir.join("down");
    std::fs::create_dir_all(&d4)?;
    let port = free_port()?;
    // The admin listener, to read the sink's own lag from `/readyz`.
    let admin = free_port()?;
    let mut cmd = streamhook(&o.server_bin, &d4, port, &http_sink(free_port()?))?;
    enable_admin(&mut cmd, &d4, admin)?;
    let server = Measured::spawn(&mut cmd)?;
    wait_ready(port, "/healthz").await?;
    let url = format!("http://127.0.0.1:{port}/webhook");
    let _first = closed_loop(&url, o.connections, o.seconds).await?;
    let rss_1 = server.rss_mib();
    let backlog_1 = sink_lag(admin, "app").await?;
    let _second = closed_loop(&url, o.connections, o.seconds).await?;
    let rss_2 = server.rss_mib();
    let backlog_2 = sink_lag(admin, "app").await?;
    let peak_down = server.peak_rss_mib();
    server.stop()?;

    // 5. Drain a backlog to a local receiver.
    eprintln!("bench: draining {} journaled events", o.drain_events);
    let d5 = dir.join("drain");
    std::fs::create_dir_all(&d5)?;
    fill_journal(&d5.join("data"), o.drain_events, Some("app")).await?;
    let received = Arc::new(AtomicU64::new(0));
    let (receiver_port, receiver) = counting_receiver(received.clone()).await?;
    let port = free_port()?;
    let start = Instant::now();
    let server = Measured::spawn(&mut streamhook(
        &o.server_bin,
        &d5,
        port,
        &http_sink(receiver_port),
    )?)?;
    while received.load(Ordering::Relaxed) < o.drain_events
        && start.elapsed() < Duration::from_secs(600)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = start.elapsed();
    let drained = received.load(Ordering::Relaxed);
    server.stop()?;
    receiver.abort();
    let drain_rate = drained as f64 / drain.as_secs_f64();

    // 6. Restart with a large journal.
    eprintln!("bench: filling a journal with {} events", o.restart_events);
    let d6 = dir.join("restart");
    std::fs::create_dir_all(&d6)?;
    let fill = fill_journal(&d6.join("data"), o.restart_events, None).await?;
    let size_mb = std::fs::metadata(d6.join("data").join(streamhook_core::journal::JOURNAL_FILE))
        .map(|m| m.len())
        .unwrap_or(0) as f64
        / 1e6;
    let mut ready = Vec::new();
    for _ in 0..3 {
        let port = free_port()?;
        let start = Instant::now();
        // `/readyz` is on the admin listener.
        let admin = free_port()?;
        let mut cmd = streamhook(&o.server_bin, &d6, port, &file_sink(&d6))?;
        enable_admin(&mut cmd, &d6, admin)?;
        let server = Measured::spawn(&mut cmd)?;
        wait_ready(admin, "/readyz").await?;
        ready.push(start.elapsed());
        server.stop()?;
    }
    ready.sort();

    // 7. streamhook validate against jq on a large NDJSON archive, one core each.
    eprintln!("bench: validate vs jq over {} MB", o.validate_mb);
    let ndjson = dir.join("archive.jsonl");
    {
        let line =
            serde_json::to_string(&serde_json::from_str::<serde_json::Value>(PAYLOAD)?)? + "\n";
        let mut text = String::with_capacity(o.validate_mb * 1_000_000 + line.len());
        while text.len() < o.validate_mb * 1_000_000 {
            text.push_str(&line);
        }
        std::fs::write(&ndjson, text)?;
    }
    let bytes = std::fs::metadata(&ndjson)?.len();
    let taskset = Command::new("taskset").arg("--version").output().is_ok();
    let pinned = |program: &Path, args: Vec<String>| {
        let program = program.to_owned();
        move || {
            let mut c = if taskset {
                Command::new("taskset")
            } else {
                Command::new(&program)
            };
            if taskset {
                c.args(["-c", "0"]).arg(&program);
            }
            c.args(&args);
            c
        }
    };
    let validate = throughput(
        &mut pinned(
            &o.cli_bin,
            vec!["validate".into(), ndjson.display().to_string()],
        ),
        bytes,
    )?;
    let jq = Command::new("jq").arg("--version").output().is_ok();
    let jq_rate = if jq {
        Some(throughput(
            &mut pinned(
                Path::new("jq"),
                vec!["-c".into(), ".".into(), ndjson.display().to_string()],
            ),
            bytes,
        )?)
    } else {
        None
    };

    // The report.
    let bare = &rows[0];
    let _ = writeln!(report, "# Performance\n");
    let _ = writeln!(
        report,
        "Measured by `{}` on {} on {}, every figure from the same run.",
        o.command,
        today(),
        machine()
    );
    let _ = writeln!(
        report,
        "The load generator is the hyper client in `streamhook-harness` (on the same machine, so it shares the cores);"
    );
    let _ = writeln!(
        report,
        "the payload is the seed page's \"video completely processed\" ({} bytes).\n",
        PAYLOAD.len()
    );
    let _ = writeln!(report, "## Intake\n");
    let _ = writeln!(
        report,
        "{} connections back to back for {} s, then a fixed {} requests/s for {} s (latency timed from when each request was due).\n",
        o.connections, o.seconds, o.rate, o.seconds
    );
    let _ = writeln!(
        report,
        "| server | requests/s at {} connections | ratio to bare | p50 ms | p99 ms | max ms | at {}/s: p50 ms | p99 ms | max ms | errors | peak RSS MiB |",
        o.connections, o.rate
    );
    let _ = writeln!(
        report,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &rows {
        let _ = writeln!(
            report,
            "| {} | {:.0} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            r.name,
            r.closed.rps,
            r.closed.rps / bare.closed.rps,
            ms(r.closed.p50),
            ms(r.closed.p99),
            ms(r.closed.max),
            ms(r.fixed.p50),
            ms(r.fixed.p99),
            ms(r.fixed.max),
            r.closed.errors + r.fixed.errors,
            r.peak_rss
        );
    }
    let _ = writeln!(report, "\n## Memory while a sink is down\n");
    let _ = writeln!(
        report,
        "The http sink's receiver is down; load runs for two periods of {} s and the backlog (the journal's own count of events the sink has not passed, from `/readyz`) grows on disk.\n",
        o.seconds
    );
    let _ = writeln!(
        report,
        "| after | backlog (events) | RSS MiB |\n| --- | ---: | ---: |"
    );
    let _ = writeln!(
        report,
        "| {} s | {backlog_1} | {rss_1:.1} |\n| {} s | {backlog_2} | {rss_2:.1} |",
        o.seconds,
        2 * o.seconds
    );
    let _ = writeln!(report, "\nPeak RSS in that run: {peak_down:.1} MiB.\n");
    let _ = writeln!(report, "## Dispatcher drain\n");
    let _ = writeln!(
        report,
        "{drained} events already journaled, delivered by one http sink (concurrency 4) to a local receiver, timed from the server's start: **{:.1} s, {drain_rate:.0} events/s**.\n",
        drain.as_secs_f64()
    );
    let _ = writeln!(report, "## Restart\n");
    let _ = writeln!(
        report,
        "{} events journaled ({size_mb:.0} MB, filled through the real append path in {:.1} s); from process start to `/readyz` 200, three clean restarts: **{}** ms (best {:.0} ms).\n",
        o.restart_events,
        fill.as_secs_f64(),
        ready
            .iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", "),
        ready.first().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    let _ = writeln!(report, "## `streamhook validate` against `jq -c .`\n");
    let _ = writeln!(
        report,
        "A {:.0} MB NDJSON archive, each tool pinned to one core{}, best of three.\n",
        bytes as f64 / 1e6,
        if taskset { " (`taskset -c 0`)" } else { "" }
    );
    let _ = writeln!(
        report,
        "| tool | MB/s |\n| --- | ---: |\n| `streamhook validate` | {validate:.0} |"
    );
    match jq_rate {
        Some(j) => {
            let _ = writeln!(
                report,
                "| `jq -c . >/dev/null` | {j:.0} |\n\nRatio: **{:.1}x** jq.\n",
                validate / j
            );
        }
        None => {
            let _ = writeln!(report, "\n`jq` is not installed: no comparison.\n");
        }
    }
    let estimates = criterion_estimates(&o.criterion_dir);
    if !estimates.is_empty() {
        let _ = writeln!(report, "## Micro-benchmarks (criterion, mean)\n");
        let _ = writeln!(report, "| benchmark | time |\n| --- | ---: |");
        for (name, ns) in &estimates {
            let shown = if *ns >= 1e6 {
                format!("{:.2} ms", ns / 1e6)
            } else if *ns >= 1e3 {
                format!("{:.2} µs", ns / 1e3)
            } else {
                format!("{ns:.0} ns")
            };
            let _ = writeln!(report, "| {name} | {shown} |");
        }
        let _ = writeln!(report);
    }
    let s = &rows[1];
    let check = |ok: bool| if ok { "met" } else { "**missed**" };
    let _ = writeln!(report, "## Targets\n");
    let _ = writeln!(report, "| target | measured | |\n| --- | --- | --- |");
    let _ = writeln!(
        report,
        "| durable intake at {} connections ≥ 0.3x bare | {:.2}x | {} |",
        o.connections,
        s.closed.rps / bare.closed.rps,
        check(s.closed.rps / bare.closed.rps >= 0.3)
    );
    let _ = writeln!(
        report,
        "| p99 < 10 ms at {}/s offered | {} ms | {} |",
        o.rate,
        ms(s.fixed.p99),
        check(s.fixed.p99 < 10_000)
    );
    let peak = rows[1..]
        .iter()
        .map(|r| r.peak_rss)
        .fold(peak_down, f64::max);
    let _ = writeln!(
        report,
        "| peak RSS under load < 64 MiB | {peak:.1} MiB | {} |",
        check(peak < 64.0)
    );
    let _ = writeln!(
        report,
        "| RSS flat while a sink is down | {rss_1:.1} -> {rss_2:.1} MiB as the backlog doubled | {} |",
        check(rss_2 <= rss_1 * 1.25 + 2.0)
    );
    let _ = writeln!(
        report,
        "| drain ≥ 10,000 events/s | {drain_rate:.0}/s | {} |",
        check(drain_rate >= 10_000.0)
    );
    let best_ready = ready.first().copied().unwrap_or_default();
    let _ = writeln!(
        report,
        "| ready within 1 s with {} events | {:.0} ms | {} |",
        o.restart_events,
        best_ready.as_secs_f64() * 1000.0,
        check(best_ready < Duration::from_secs(1))
    );
    if let Some(j) = jq_rate {
        let _ = writeln!(
            report,
            "| validate ≥ 3x jq on one core | {:.1}x | {} |",
            validate / j,
            check(validate / j >= 3.0)
        );
    }
    // Hand-written notes after the marker survive regeneration.
    if let Ok(old) = std::fs::read_to_string(&o.out)
        && let Some(at) = old.find(NOTES_MARKER)
    {
        let _ = write!(report, "{}", &old[at..]);
    }
    std::fs::write(&o.out, &report).with_context(|| format!("cannot write {}", o.out.display()))?;
    print!("{report}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
