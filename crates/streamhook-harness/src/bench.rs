//! `streamhook-harness bench`: streamhook against its limits, side by side, in one run, with
//! the same load generator, connection count and payload; writes `docs/performance.md`.
//!
//! Every number is measured here, in this run, on this machine; targets are checked as ratios
//! or against the measured figures, never asserted in tests.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::body::Bytes;
use streamhook_core::{Journal, JournalConfig, Verified};

use crate::load::{MEASURED_TIMEOUT, PAYLOAD, Phase, Poster, RESOURCES, closed_loop, fixed_rate};
use crate::server::{Poll, Probe, Process, ServerProcess, admin_client, free_port, wait_ready};

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
    #[arg(long, default_value_t = 6)]
    pub seconds: u64,
    /// Connections of the closed-loop phase.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Offered rate of the fixed-rate phase.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Intake rounds (every server measured in turn, each round).
    #[arg(long, default_value_t = 3)]
    pub rounds: u64,
    /// Idle seconds after each server's turn.
    #[arg(long, default_value_t = 8)]
    pub gap: u64,
    /// Seconds of load with a sink down.
    #[arg(long, default_value_t = 60)]
    pub down_seconds: u64,
    /// Sequential requests counted by callgrind.
    #[arg(long, default_value_t = 1000)]
    pub callgrind_requests: u64,
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

/// The command that runs the bare server (this program's `bare`) on `port`.
pub fn bare_command(me: &Path, port: u16) -> Command {
    let mut cmd = Command::new(me);
    cmd.args(["bare", "--port", &port.to_string()]);
    cmd
}

/// The http sink's receiver: the bare server in a process of its own (not on the bench's
/// runtime, where the load generator's clients would share its threads). Its port.
pub async fn receiver_process(me: &Path) -> Result<(u16, Process)> {
    let port = free_port()?;
    let mut process = Process::spawn_quiet(&mut bare_command(me, port))?;
    wait_listening(port, &mut process).await?;
    Ok((port, process))
}

/// The kernel's dirty and under-writeback data (MiB, `Dirty:` + `Writeback:` in
/// `/proc/meminfo`), then `sync`: what earlier work left for the disk, and how long writing it
/// took (s). `None` when either cannot be had (no /proc, `sync` failed).
fn write_back_dirty_pages() -> Option<(f64, f64)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        meminfo.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
    };
    let kb = field("Dirty:")? + field("Writeback:")?;
    let start = Instant::now();
    let synced = Command::new("sync").status().ok()?.success();
    synced.then(|| (kb as f64 / 1024.0, start.elapsed().as_secs_f64()))
}

/// A streamhook server for the bench: `sinks` (and any journal settings) in `dir`, quick
/// retries, no log written; with `admin`, the admin listener on at `127.0.0.1:admin`.
pub fn streamhook(
    bin: &Path,
    dir: &Path,
    sinks: &str,
    admin: Option<u16>,
) -> Result<ServerProcess> {
    let config = format!(
        "allow = [\"127.0.0.1/32\"]\ndata_dir = \"{}\"\n[admin]\nenabled = {}\n[retry]\ninitial_backoff = \"100ms\"\nmax_backoff = \"500ms\"\n{sinks}",
        dir.join("data").display(),
        admin.is_some()
    );
    let server = ServerProcess::new(bin, dir, &config)?.quiet();
    Ok(match admin {
        Some(port) => server.env("STREAMHOOK_ADMIN_LISTEN", format!("127.0.0.1:{port}")),
        None => server,
    })
}

/// Waits (up to 120 s, every 10 ms) until something accepts connections on the port.
pub async fn wait_listening(port: u16, process: &mut Process) -> Result<()> {
    let poll = Poll {
        every: Duration::from_millis(10),
        within: Duration::from_secs(120),
    };
    wait_ready(port, Probe::Listening, poll, Some(process)).await?;
    Ok(())
}

/// Waits (up to 120 s, every 2 ms) until `GET path` on the port answers 2xx.
pub async fn wait_answering(port: u16, path: &str, process: &mut Process) -> Result<()> {
    let poll = Poll {
        every: Duration::from_millis(2),
        within: Duration::from_secs(120),
    };
    wait_ready(port, Probe::Get(path), poll, Some(process)).await?;
    Ok(())
}

/// SIGTERM, and up to 30 s for the process to exit (however it exits).
pub fn stop(process: Process) -> Result<()> {
    let poll = Poll {
        every: Duration::from_millis(20),
        within: Duration::from_secs(30),
    };
    process.terminate(poll)?;
    Ok(())
}

/// The journal's own count of events `sink` has not passed, from `/readyz`.
async fn sink_lag(admin: u16, sink: &str) -> Result<u64> {
    readyz_sink_count(admin, sink, "lag").await
}

/// How many events `sink` delivered since the server started, from `/readyz`.
async fn sink_delivered(admin: u16, sink: &str) -> Result<u64> {
    readyz_sink_count(admin, sink, "delivered").await
}

/// One of `sink`'s counts in the server's `/readyz` (on its admin listener).
async fn readyz_sink_count(admin: u16, sink: &str, field: &str) -> Result<u64> {
    let ready: serde_json::Value = admin_client()
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await?
        .json()
        .await?;
    ready["sinks"][sink][field]
        .as_u64()
        .with_context(|| format!("no {field} for sink {sink} in /readyz: {ready}"))
}

fn file_sink(dir: &Path) -> String {
    format!(
        "[[sinks]]\ntype = \"file\"\nname = \"archive\"\npath = \"{}\"\n",
        dir.join("events.jsonl").display()
    )
}

fn http_sink(port: u16) -> String {
    format!(
        "[[sinks]]\ntype = \"http\"\nname = \"app\"\nurl = \"http://127.0.0.1:{port}/webhook\"\n"
    )
}

/// One configuration's figures.
struct IntakeRow {
    name: String,
    /// (64 connections, fixed rate) per round.
    rounds: Vec<(Phase, Phase)>,
    peak_rss: f64,
    #[allow(dead_code)]
    streamhook: bool,
}

/// A server in the intake comparison, running for the whole of it.
struct Contender {
    name: String,
    url: String,
    process: Process,
    /// streamhook's admin port and its sink, to wait until the sink caught up.
    admin: Option<(u16, &'static str)>,
    /// The port and path that answer once it is up ("/" : any answer).
    ready: (u16, String),
    rounds: Vec<(Phase, Phase)>,
}

/// A streamhook server in the intake comparison: `config` (its sinks and journal) in `dir`,
/// the admin listener on (for its sink's lag), `sink` the sink to wait for.
fn streamhook_contender(
    o: &BenchOptions,
    name: &str,
    dir: &Path,
    config: &str,
    sink: &'static str,
) -> Result<Contender> {
    let admin = free_port()?;
    let server = streamhook(&o.server_bin, dir, config, Some(admin))?;
    Ok(Contender {
        name: name.into(),
        url: server.url(),
        process: server.spawn()?,
        admin: Some((admin, sink)),
        ready: (server.port, "/healthz".into()),
        rounds: Vec::new(),
    })
}

/// adnanh/webhook from Debian's package, with an `ip-whitelist` rule for loopback and
/// `/bin/true` as its command: the command, its URL and port; or why there is no row.
fn reference_webhook(dir: &Path) -> Result<std::result::Result<(Command, String, u16), String>> {
    if !tool_exists("webhook") {
        return Ok(Err(
            "the `webhook` program is not installed (Debian package `webhook`)".to_owned(),
        ));
    }
    let hooks = dir.join("hooks.json");
    std::fs::write(
        &hooks,
        r#"[{"id":"gcore","execute-command":"/bin/true","response-message":"ok","trigger-rule":{"match":{"type":"ip-whitelist","ip-range":"127.0.0.0/8"}}}]"#,
    )?;
    let port = free_port()?;
    let mut cmd = Command::new("webhook");
    cmd.arg("-hooks")
        .arg(&hooks)
        .args(["-ip", "127.0.0.1", "-port", &port.to_string()]);
    Ok(Ok((
        cmd,
        format!("http://127.0.0.1:{port}/hooks/gcore"),
        port,
    )))
}

fn tool_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()))
}

/// Waits until `sink` has passed every journaled event (its lag in `/readyz` is 0).
async fn wait_caught_up(admin: u16, sink: &str, within: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if sink_lag(admin, sink).await.ok() == Some(0) {
            return Ok(());
        }
        if start.elapsed() > within {
            bail!("sink {sink} did not catch up within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `n` requests one after another on one connection.
async fn sequential(url: &str, n: u64) -> Result<()> {
    let poster = Poster::new(url, 1, MEASURED_TIMEOUT)?;
    for _ in 0..n {
        if !poster.post_ok(Bytes::from_static(PAYLOAD.as_bytes())).await {
            bail!("a request to {url} failed");
        }
    }
    Ok(())
}

/// The server `cmd` starts, run under callgrind: instructions (all threads) per request over
/// `n` sequential requests, counted between a zeroing and a dump of the counters.
async fn instructions_per_request(
    dir: &Path,
    cmd: Command,
    port: u16,
    ready_path: &str,
    n: u64,
) -> Result<f64> {
    let out = dir.join(format!("callgrind-{port}"));
    std::fs::create_dir_all(&out)?;
    let mut valgrind = Command::new("valgrind");
    valgrind
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.join("cg").display()))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => valgrind.env(k, v),
            None => valgrind.env_remove(k),
        };
    }
    let mut process = Process::spawn_quiet(&mut valgrind)?;
    let pid = process.id().to_string();
    let result = async {
        if ready_path == "/" {
            wait_listening(port, &mut process).await?;
        } else {
            wait_answering(port, ready_path, &mut process).await?;
        }
        let url = format!("http://127.0.0.1:{port}/webhook");
        sequential(&url, 100).await?;
        let zeroed = Command::new("callgrind_control")
            .args(["-z", &pid])
            .output()?;
        if !zeroed.status.success() {
            bail!(
                "callgrind_control -z failed: {}",
                String::from_utf8_lossy(&zeroed.stderr)
            );
        }
        sequential(&url, n).await?;
        let dumped = Command::new("callgrind_control")
            .args(["-d", &pid])
            .output()?;
        if !dumped.status.success() {
            bail!(
                "callgrind_control -d failed: {}",
                String::from_utf8_lossy(&dumped.stderr)
            );
        }
        // The dump is `cg.1` (or `cg.<pid>.1`): its `summary:` (or `totals:`) line.
        for entry in std::fs::read_dir(&out)? {
            let text = std::fs::read_to_string(entry?.path()).unwrap_or_default();
            if let Some(total) = text.lines().find_map(|l| {
                l.strip_prefix("summary: ")
                    .or_else(|| l.strip_prefix("totals: "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            }) {
                return Ok(total / n as f64);
            }
        }
        bail!("no callgrind dump in {}", out.display())
    }
    .await;
    // Killed (and reaped) by Process's Drop.
    drop(process);
    result
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
    let mut report = String::new();
    let me = std::env::current_exe()?;

    // 1. Intake: every server up at once, measured in turns, `rounds` times over, with an
    //    idle gap after each turn (and, for streamhook, its sinks caught up first), so no
    //    server drains its backlog during another's turn.
    let mut contenders: Vec<Contender> = Vec::new();
    let port = free_port()?;
    contenders.push(Contender {
        name: "bare axum (reads the body, answers 200)".into(),
        url: format!("http://127.0.0.1:{port}/webhook"),
        process: Process::spawn_quiet(&mut bare_command(&me, port))?,
        admin: None,
        ready: (port, "/".into()),
        rounds: Vec::new(),
    });
    let (receiver_port, receiver) = receiver_process(&me).await?;
    for (key, name, sinks) in [
        ("file", "streamhook-server + file sink", None),
        ("http", "streamhook-server + http sink", Some(receiver_port)),
    ] {
        let d = dir.join(key);
        std::fs::create_dir_all(&d)?;
        let (config, sink) = match sinks {
            None => (file_sink(&d), "archive"),
            Some(p) => (http_sink(p), "app"),
        };
        contenders.push(streamhook_contender(o, name, &d, &config, sink)?);
    }
    let webhook_row = match reference_webhook(&dir)? {
        Ok((cmd, url, port)) => {
            let mut cmd = cmd;
            contenders.push(Contender {
                name: "adnanh/webhook 2.8 (`ip-whitelist` rule, runs /bin/true; stores nothing)"
                    .into(),
                url,
                process: Process::spawn_quiet(&mut cmd)?,
                admin: None,
                ready: (port, "/".into()),
                rounds: Vec::new(),
            });
            None
        }
        Err(why) => Some(why),
    };
    // streamhook on the JetStream journal (the file sink): a 1-node server (replicas 1) and
    // a 3-node cluster (replicas 3), all on this machine's two cores with everything else.
    let mut clusters = Vec::new();
    let jetstream_row = match streamhook_testkit::nats_server() {
        Ok(bin) => {
            for (key, name, nodes) in [
                (
                    "js1",
                    "streamhook-server + file sink, JetStream journal (1 node, replicas 1)",
                    1,
                ),
                (
                    "js3",
                    "streamhook-server + file sink, JetStream journal (3-node cluster, replicas 3)",
                    3,
                ),
            ] {
                let nats = streamhook_testkit::Nats::cluster(&bin, nodes);
                let urls: Vec<String> = nats.url_list().iter().map(|u| format!("{u:?}")).collect();
                let d = dir.join(key);
                std::fs::create_dir_all(&d)?;
                let config = format!(
                    "[journal]\nbackend = \"jetstream\"\nnats_urls = [{}]\nreplicas = {nodes}\n{}",
                    urls.join(", "),
                    file_sink(&d)
                );
                contenders.push(streamhook_contender(o, name, &d, &config, "archive")?);
                clusters.push(nats);
            }
            None
        }
        Err(why) => Some(why),
    };
    for c in &mut contenders {
        wait_listening(c.ready.0, &mut c.process).await?;
        if c.ready.1 != "/" {
            wait_answering(c.ready.0, &c.ready.1, &mut c.process).await?;
        }
    }
    let mut dirty_before_turns = Vec::new();
    for round in 1..=o.rounds {
        for c in &mut contenders {
            eprintln!("bench: intake round {round}/{}: {}", o.rounds, c.name);
            // Earlier turns' data goes to the disk now, not during this turn (the kernel
            // writes dirty pages back some 30 s later; one server's writeback slowed the next).
            dirty_before_turns.push(write_back_dirty_pages());
            let closed = closed_loop(&c.url, o.connections, o.seconds).await?;
            // The fixed rate measures a steady state: the closed loop's backlog drained and
            // its data written out first.
            if let Some((admin, sink)) = c.admin {
                wait_caught_up(admin, sink, Duration::from_secs(300)).await?;
            }
            dirty_before_turns.push(write_back_dirty_pages());
            let fixed = fixed_rate(&c.url, o.rate, o.seconds).await?;
            c.rounds.push((closed, fixed));
            if let Some((admin, sink)) = c.admin {
                wait_caught_up(admin, sink, Duration::from_secs(300)).await?;
            }
            tokio::time::sleep(Duration::from_secs(o.gap)).await;
        }
    }
    // The RSS target is the single-host server's (the file and http rows).
    let peak_intake = contenders
        .iter()
        .skip(1)
        .take(2)
        .filter(|c| c.admin.is_some())
        .map(|c| c.process.peak_rss_mib())
        .fold(0.0, f64::max);
    let rows: Vec<IntakeRow> = contenders
        .into_iter()
        .map(|c| {
            let peak = c.process.peak_rss_mib();
            let _ = stop(c.process);
            IntakeRow {
                name: c.name,
                rounds: c.rounds,
                peak_rss: peak,
                streamhook: c.admin.is_some(),
            }
        })
        .collect();
    let _ = stop(receiver);
    drop(clusters);

    // 2. Memory and intake while a sink is down for `down_seconds`.
    eprintln!(
        "bench: {} s with the http sink's receiver down",
        o.down_seconds
    );
    let d4 = dir.join("down");
    std::fs::create_dir_all(&d4)?;
    let admin = free_port()?;
    let server = streamhook(&o.server_bin, &d4, &http_sink(free_port()?), Some(admin))?;
    let (port, url) = (server.port, server.url());
    let mut server = server.spawn()?;
    wait_answering(port, "/healthz", &mut server).await?;
    let mut down = Vec::new();
    let periods = (o.down_seconds / 10).max(1);
    for i in 1..=periods {
        let phase = closed_loop(&url, o.connections, 10).await?;
        down.push((
            i * 10,
            phase.rps,
            sink_lag(admin, "app").await?,
            server.rss_mib(),
        ));
    }
    let peak_down = server.peak_rss_mib();
    stop(server)?;

    // 3. Drains of a journaled backlog: the file sink, and the http sink (concurrency 4,
    //    keep-alive) to a local receiver, timed from the server's start until the sink has
    //    passed every event (its own lag, from `/readyz`).
    eprintln!(
        "bench: draining {} journaled events (file sink)",
        o.drain_events
    );
    let d5 = dir.join("drain-file");
    std::fs::create_dir_all(&d5)?;
    fill_journal(&d5.join("data"), o.drain_events, Some("archive")).await?;
    let admin = free_port()?;
    let mut cmd = streamhook(&o.server_bin, &d5, &file_sink(&d5), Some(admin))?.command();
    // Timed from the process's start (its command and config already written).
    let start = Instant::now();
    let mut server = Process::spawn_quiet(&mut cmd)?;
    wait_answering(admin, "/readyz", &mut server).await?;
    wait_caught_up(admin, "archive", Duration::from_secs(600)).await?;
    let drain_file = start.elapsed();
    stop(server)?;
    let file_rate = o.drain_events as f64 / drain_file.as_secs_f64();

    eprintln!(
        "bench: draining {} journaled events (http sink)",
        o.drain_events
    );
    let d5 = dir.join("drain-http");
    std::fs::create_dir_all(&d5)?;
    fill_journal(&d5.join("data"), o.drain_events, Some("app")).await?;
    let (receiver_port, receiver) = receiver_process(&me).await?;
    let admin = free_port()?;
    let mut cmd = streamhook(&o.server_bin, &d5, &http_sink(receiver_port), Some(admin))?.command();
    let start = Instant::now();
    let mut server = Process::spawn_quiet(&mut cmd)?;
    wait_answering(admin, "/readyz", &mut server).await?;
    wait_caught_up(admin, "app", Duration::from_secs(600)).await?;
    let drain_http = start.elapsed();
    // Passed means delivered: a receiver that refused would have dead-lettered them as fast.
    let drained = sink_delivered(admin, "app").await?;
    stop(server)?;
    let _ = stop(receiver);
    if drained != o.drain_events {
        bail!(
            "the http sink delivered {drained} of {} events (the rest dead-lettered?)",
            o.drain_events
        );
    }
    let http_rate = drained as f64 / drain_http.as_secs_f64();

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
        let start = Instant::now();
        // `/readyz` is on the admin listener.
        let admin = free_port()?;
        let server = streamhook(&o.server_bin, &d6, &file_sink(&d6), Some(admin))?;
        let mut server = server.spawn()?;
        wait_answering(admin, "/readyz", &mut server).await?;
        ready.push(start.elapsed());
        stop(server)?;
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

    // 4. Instructions per accepted request, counted by valgrind's callgrind (server side
    //    only): repeatable whatever else the machine does.
    let callgrind = if tool_exists("valgrind") && tool_exists("callgrind_control") {
        eprintln!(
            "bench: callgrind over {} sequential requests each",
            o.callgrind_requests
        );
        let mut out = Vec::new();
        let port = free_port()?;
        out.push((
            "bare axum (reads the body, answers 200)".to_owned(),
            instructions_per_request(
                &dir,
                bare_command(&me, port),
                port,
                "/",
                o.callgrind_requests,
            )
            .await?,
        ));
        for (key, name, sink) in [
            (
                "cg-journal",
                "streamhook-server, journal only (no sink)",
                false,
            ),
            ("cg-file", "streamhook-server + file sink", true),
        ] {
            let d = dir.join(key);
            std::fs::create_dir_all(&d)?;
            let sinks = if sink { file_sink(&d) } else { String::new() };
            let mut server = streamhook(&o.server_bin, &d, &sinks, None)?;
            if !sink {
                server = server.arg("--no-stdout");
            }
            out.push((
                name.to_owned(),
                instructions_per_request(
                    &dir,
                    server.command(),
                    server.port,
                    "/healthz",
                    o.callgrind_requests,
                )
                .await?,
            ));
        }
        Ok(out)
    } else {
        Err("valgrind (with callgrind_control) is not installed".to_owned())
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
        "the payload is the seed page's \"video completely processed\" ({} bytes), each request carrying the next of {} video ids in turn, as Gcore's traffic spreads over many videos and streams.\n",
        PAYLOAD.len(),
        RESOURCES
    );
    let _ = writeln!(report, "## Intake\n");
    let _ = writeln!(
        report,
        "Every server runs at once and is measured in turns, {} rounds: `sync` (the disk writes what earlier work left, so no phase pays for another's writeback), {} connections back to back for {} s, streamhook's sinks catch up (their lag, from `/readyz`, reaches 0), `sync` again, then a fixed {} requests/s for {} s (latency timed from when each request was due: a steady state, no backlog draining), the sinks catch up again, then {} s idle. Figures per round, in order.\n",
        o.rounds, o.connections, o.seconds, o.rate, o.seconds, o.gap
    );
    let _ = writeln!(
        report,
        "| server | requests/s at {} connections | ratio to bare | p99 ms | max ms | at {}/s: p99 ms | max ms | errors | peak RSS MiB |",
        o.connections, o.rate
    );
    let _ = writeln!(
        report,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let per_round = |r: &IntakeRow, f: &dyn Fn(usize, &(Phase, Phase)) -> String| -> String {
        r.rounds
            .iter()
            .enumerate()
            .map(|(i, p)| f(i, p))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    for r in &rows {
        let _ = writeln!(
            report,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
            r.name,
            per_round(r, &|_, p| format!("{:.0}", p.0.rps)),
            per_round(r, &|i, p| format!("{:.2}", p.0.rps / bare.rounds[i].0.rps)),
            per_round(r, &|_, p| ms(p.0.p99)),
            per_round(r, &|_, p| ms(p.0.max)),
            per_round(r, &|_, p| ms(p.1.p99)),
            per_round(r, &|_, p| ms(p.1.max)),
            r.rounds
                .iter()
                .map(|p| p.0.errors + p.1.errors)
                .sum::<u64>(),
            r.peak_rss
        );
    }
    if dirty_before_turns.iter().all(Option::is_some) {
        let all: Vec<(f64, f64)> = dirty_before_turns.iter().flatten().copied().collect();
        let dirty_max = all.iter().map(|d| d.0).fold(0.0, f64::max);
        let sync_max = all.iter().map(|d| d.1).fold(0.0, f64::max);
        let _ = writeln!(
            report,
            "\nBefore each phase the kernel held up to {dirty_max:.1} MiB of dirty data (`Dirty` + `Writeback` in /proc/meminfo); `sync` took up to {sync_max:.2} s."
        );
    } else {
        let _ = writeln!(
            report,
            "\nThe dirty data before each phase is unavailable here (no /proc/meminfo, or `sync` failed): turns may have paid for each other's writeback."
        );
    }
    if let Some(why) = &webhook_row {
        let _ = writeln!(report, "\nadnanh/webhook: no row ({why}).");
    }
    match &jetstream_row {
        Some(why) => {
            let _ = writeln!(report, "\nJetStream journal: no rows ({why}).");
        }
        None => {
            let _ = writeln!(
                report,
                "\nThe JetStream rows journal in nats-server {} processes on the same two cores \
                 (their CPU counts against streamhook's); a 2xx there means a quorum of the \
                 stream's replicas stored the event (NATS's default `sync_interval`: not fsync'd \
                 per event, see docs/ha.md), where the redb rows mean fsync'd on this disk.",
                streamhook_testkit::nats_server()
                    .ok()
                    .and_then(|b| std::process::Command::new(b).arg("--version").output().ok())
                    .map(|o| String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .replace("nats-server: ", ""))
                    .unwrap_or_default()
            );
        }
    }
    let _ = writeln!(report, "\n## A sink down for {} s\n", o.down_seconds);
    let _ = writeln!(
        report,
        "The http sink's receiver is down; load runs at {} connections; the backlog is the journal's own count of events the sink has not passed (from `/readyz`).\n",
        o.connections
    );
    let _ = writeln!(
        report,
        "| after | requests/s in the last 10 s | backlog (events) | RSS MiB |\n| --- | ---: | ---: | ---: |"
    );
    for (at, rps, backlog, rss) in &down {
        let _ = writeln!(report, "| {at} s | {rps:.0} | {backlog} | {rss:.1} |");
    }
    let _ = writeln!(report, "\nPeak RSS in that run: {peak_down:.1} MiB.\n");
    let _ = writeln!(report, "## Dispatcher drain\n");
    let _ = writeln!(
        report,
        "{} events already journaled, timed from the server's start until the sink has passed them all (the http sink's receiver is the bare server, in a process of its own):\n",
        o.drain_events
    );
    let _ = writeln!(
        report,
        "| sink | seconds | events/s |\n| --- | ---: | ---: |\n| file | {:.2} | {file_rate:.0} |\n| http (concurrency 4, keep-alive, local receiver) | {:.2} | {http_rate:.0} |\n",
        drain_file.as_secs_f64(),
        drain_http.as_secs_f64()
    );
    let _ = writeln!(report, "## Instructions per request (callgrind)\n");
    match &callgrind {
        Ok(figures) => {
            let _ = writeln!(
                report,
                "valgrind's callgrind counts the server's instructions (every thread) over {} requests sent one after another on one connection, after 100 for warm-up, all naming the same video: a figure that does not move with the machine's load. With one request at a time, every append is its own commit.\n",
                o.callgrind_requests
            );
            let _ = writeln!(
                report,
                "| server | instructions per request | ratio to bare |\n| --- | ---: | ---: |"
            );
            let base = figures.first().map_or(1.0, |f| f.1);
            for (name, ir) in figures {
                let _ = writeln!(report, "| {name} | {ir:.0} | {:.1} |", ir / base);
            }
            let _ = writeln!(report);
        }
        Err(why) => {
            let _ = writeln!(report, "Not measured: {why}.\n");
        }
    }
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
    let check = |ok: bool| if ok { "met" } else { "**missed**" };
    let file = &rows[1];
    let ratios: Vec<f64> = file
        .rounds
        .iter()
        .zip(&bare.rounds)
        .map(|(f, b)| f.0.rps / b.0.rps)
        .collect();
    let worst_ratio = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let worst_fixed = file.rounds.iter().map(|p| p.1.p99).max().unwrap_or(0);
    let worst_closed = file.rounds.iter().map(|p| p.0.p99).max().unwrap_or(0);
    let _ = writeln!(report, "## Targets\n");
    let _ = writeln!(report, "| target | measured | |\n| --- | --- | --- |");
    let _ = writeln!(
        report,
        "| durable intake with a file sink ≥ 0.45x bare, every round | {} | {} |",
        ratios
            .iter()
            .map(|r| format!("{r:.2}x"))
            .collect::<Vec<_>>()
            .join(" / "),
        check(worst_ratio >= 0.45)
    );
    let _ = writeln!(
        report,
        "| p99 ≤ 5 ms at {}/s, every round | worst {} ms | {} |",
        o.rate,
        ms(worst_fixed),
        check(worst_fixed <= 5_000)
    );
    let _ = writeln!(
        report,
        "| p99 ≤ 15 ms at {} connections, every round | worst {} ms | {} |",
        o.connections,
        ms(worst_closed),
        check(worst_closed <= 15_000)
    );
    let peak = peak_intake.max(peak_down);
    let _ = writeln!(
        report,
        "| peak RSS ≤ 64 MiB | {peak:.1} MiB | {} |",
        check(peak <= 64.0)
    );
    let (first_rss, last_rss) = (
        down.first().map_or(0.0, |d| d.3),
        down.last().map_or(0.0, |d| d.3),
    );
    let _ = writeln!(
        report,
        "| RSS flat with a sink down {} s | {first_rss:.1} -> {last_rss:.1} MiB as the backlog grew to {} | {} |",
        o.down_seconds,
        down.last().map_or(0, |d| d.2),
        check(last_rss <= first_rss * 1.25 + 2.0)
    );
    let http_row = &rows[2];
    let mut normal: Vec<f64> = http_row.rounds.iter().map(|p| p.0.rps).collect();
    normal.sort_by(f64::total_cmp);
    let median = normal.get(normal.len() / 2).copied().unwrap_or(0.0);
    let down_mean = down.iter().map(|d| d.1).sum::<f64>() / down.len().max(1) as f64;
    let _ = writeln!(
        report,
        "| intake unchanged with a sink down | {down_mean:.0}/s against {median:.0}/s (http sink row, median) | {} |",
        check(down_mean >= median * 0.8)
    );
    let _ = writeln!(
        report,
        "| drain, file sink ≥ 50,000 events/s | {file_rate:.0}/s | {} |",
        check(file_rate >= 50_000.0)
    );
    let _ = writeln!(
        report,
        "| drain, http sink ≥ 30,000 events/s | {http_rate:.0}/s | {} |",
        check(http_rate >= 30_000.0)
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
