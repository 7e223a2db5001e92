//! The fault runs: crash (SIGKILL under load), outage (a sink's receiver refusing, then down),
//! disk full (the journal on a tiny tmpfs), slow clients (trickling connections).
//! Each prints its figures and fails when a promise is broken.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use streamhook_core::{Journal, JournalConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::load::Load;
use crate::receiver::{Mode, Receiver};
use crate::server::ServerProcess;

/// A fault run that could not run here, with the reason: the harness exits with
/// [`SKIPPED_EXIT`] and `cargo xtask` reports it as skipped, never as passed.
#[derive(Debug)]
pub struct Skipped(pub String);

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skipped {}

/// The harness's exit code for a skipped run.
pub const SKIPPED_EXIT: u8 = 3;

/// Every event id the journal in `data_dir` holds.
pub(crate) fn journal_ids(data_dir: &Path) -> Result<HashSet<String>> {
    let journal =
        Journal::open(JournalConfig::new(data_dir)).context("the journal does not open cleanly")?;
    let mut ids = HashSet::new();
    let mut from = 1;
    loop {
        let batch = journal.read_from(from, 10_000)?;
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        for e in &batch {
            ids.insert(e.envelope()?.id.0);
        }
    }
    Ok(ids)
}

/// Ids in a file sink's archive, with how often each appears.
pub(crate) fn archive_ids(path: &Path) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && let Some(id) = v["id"].as_str()
        {
            *ids.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    ids
}

fn accepted_ids(receiver: &Receiver) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for a in receiver.attempts().into_iter().filter(|a| a.accepted) {
        *ids.entry(a.id).or_insert(0) += 1;
    }
    ids
}

pub(crate) fn temp_dir(name: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let dir =
        std::env::temp_dir().join(format!("streamhook-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn sinks_config(dir: &Path, receiver: &Receiver) -> String {
    format!(
        r#"allow = ["127.0.0.1/32"]
data_dir = "{data}"
[admin]
enabled = false
[retry]
initial_backoff = "50ms"
max_backoff = "1s"
max_attempts = 1000
[[sinks]]
type = "file"
name = "archive"
path = "{archive}"
[[sinks]]
type = "http"
name = "app"
url = "{url}"
concurrency = 4
"#,
        data = dir.join("data").display(),
        archive = dir.join("events.jsonl").display(),
        url = receiver.url()
    )
}

/// Waits until `done` holds, up to `within`.
pub(crate) async fn until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

/// SIGKILL the real server at random moments under load, restart, repeat; then check that
/// every acknowledged event is in the journal, the file sink and the http sink.
pub async fn crash(server_bin: &Path, cycles: usize) -> Result<()> {
    let dir = temp_dir("crash")?;
    let receiver = Receiver::start().await?;
    let mut server = ServerProcess::new(server_bin, &dir, &sinks_config(&dir, &receiver))?;
    server.start().await?;
    let load = Load::start(server.url(), 8, 40, 64)?;
    for cycle in 1..=cycles {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1500))).await;
        server.kill()?;
        eprintln!(
            "crash-test: cycle {cycle}/{cycles}: SIGKILL after {} acknowledged",
            load.tally.acked.lock().map(|a| a.len()).unwrap_or(0)
        );
        server.start().await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = load.stop().await;
    let acked = tally.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let archive = dir.join("events.jsonl");
    let delivered = until(Duration::from_secs(120), || {
        let (file, http) = (archive_ids(&archive), accepted_ids(&receiver));
        acked
            .keys()
            .all(|id| file.contains_key(id) && http.contains_key(id))
    })
    .await;
    server.terminate()?;
    let journal = journal_ids(&dir.join("data"))?;
    let (file, http) = (archive_ids(&archive), accepted_ids(&receiver));
    let lost = |held: &dyn Fn(&String) -> bool| acked.keys().filter(|id| !held(id)).count();
    let (lost_journal, lost_file, lost_http) = (
        lost(&|id| journal.contains(id)),
        lost(&|id| file.contains_key(id)),
        lost(&|id| http.contains_key(id)),
    );
    let dup =
        |m: &HashMap<String, usize>| m.values().filter(|n| **n > 1).map(|n| n - 1).sum::<usize>();
    println!("crash-test: {cycles} SIGKILL cycles under load");
    println!("  acknowledged        {}", acked.len());
    println!(
        "  refused or unanswered while down  {}",
        tally
            .refused
            .lock()
            .map(|r| r.values().sum::<u64>())
            .unwrap_or(0)
    );
    println!("  lost: journal {lost_journal}, file sink {lost_file}, http sink {lost_http}");
    println!(
        "  duplicated: file sink {}, http sink {}",
        dup(&file),
        dup(&http)
    );
    println!(
        "  journal holds {} events (acknowledged, plus any committed just before a kill)",
        journal.len()
    );
    if lost_journal + lost_file + lost_http > 0 || !delivered {
        bail!(
            "crash-test: acknowledged events were lost; the data is kept in {}",
            dir.display()
        );
    }
    if dup(&file) > 0 {
        bail!(
            "crash-test: the file sink holds duplicates (it must resume after what it wrote); the data is kept in {}",
            dir.display()
        );
    }
    if acked.is_empty() {
        bail!("crash-test: nothing was acknowledged; the run proves nothing");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The http sink's receiver answers 503 for a while, then is down, then returns, all under
/// load: every event arrives, per-resource order holds, retries keep their webhook-id.
pub async fn outage(server_bin: &Path, seconds: u64) -> Result<()> {
    let dir = temp_dir("outage")?;
    let mut receiver = Receiver::start().await?;
    let mut server = ServerProcess::new(server_bin, &dir, &sinks_config(&dir, &receiver))?;
    server.start().await?;
    let load = Load::start(server.url(), 8, 25, 64)?;
    let phase = Duration::from_millis(seconds * 1000 / 4);
    tokio::time::sleep(phase).await;
    receiver.set_mode(Mode::Refuse);
    eprintln!("outage-test: the receiver answers 503");
    tokio::time::sleep(phase).await;
    receiver.down();
    eprintln!("outage-test: the receiver is down");
    tokio::time::sleep(phase).await;
    receiver.set_mode(Mode::Accept);
    receiver.up().await?;
    eprintln!("outage-test: the receiver is back");
    tokio::time::sleep(phase).await;
    let tally = load.stop().await;
    let acked = tally.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let delivered = until(Duration::from_secs(120), || {
        let http = accepted_ids(&receiver);
        acked.keys().all(|id| http.contains_key(id))
    })
    .await;
    server.terminate()?;
    let attempts = receiver.attempts();
    let http = accepted_ids(&receiver);
    let lost = acked.keys().filter(|id| !http.contains_key(*id)).count();
    // Order: per resource, accepted deliveries come in increasing seq.
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut out_of_order = 0;
    for a in attempts.iter().filter(|a| a.accepted) {
        let prev = last.insert(a.resource.clone(), a.seq);
        if prev.is_some_and(|p| p > a.seq) {
            out_of_order += 1;
        }
    }
    // Retries: every attempt at one seq carries one id.
    let mut ids_by_seq: HashMap<u64, HashSet<&str>> = HashMap::new();
    for a in &attempts {
        ids_by_seq.entry(a.seq).or_default().insert(&a.id);
    }
    let id_changed = ids_by_seq.values().filter(|ids| ids.len() > 1).count();
    let retried = {
        let mut n: HashMap<u64, usize> = HashMap::new();
        for a in &attempts {
            *n.entry(a.seq).or_default() += 1;
        }
        n.values().filter(|c| **c > 1).count()
    };
    println!("outage-test: receiver refusing, then down, then back, under load ({seconds}s)");
    println!(
        "  acknowledged {}, delivered {}, lost {lost}",
        acked.len(),
        http.len()
    );
    println!(
        "  attempts {}, events retried {retried}, retries with another webhook-id {id_changed}",
        attempts.len()
    );
    println!("  per-resource order violations {out_of_order}");
    if lost > 0 || !delivered || out_of_order > 0 || id_changed > 0 {
        bail!("outage-test failed");
    }
    if retried == 0 {
        bail!("outage-test: no event was retried; the outage did not happen");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn available_bytes(dir: &Path) -> Result<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .context("cannot read free space")
}

/// The journal on a 32 MiB tmpfs that fills up: requests get 503 and none is acknowledged
/// without being stored; freeing space recovers by itself; the journal opens cleanly.
pub async fn disk_full(server_bin: &Path) -> Result<()> {
    if !is_root() {
        return Err(Skipped("mounting a small tmpfs needs root".into()).into());
    }
    let dir = temp_dir("disk-full")?;
    let mount = dir.join("tiny");
    std::fs::create_dir_all(&mount)?;
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"])
        .arg(&mount)
        .status()?;
    if !mounted.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(
            Skipped("cannot mount a tmpfs here (no permission in this container)".into()).into(),
        );
    }
    let result = disk_full_on(server_bin, &dir, &mount).await;
    let _ = Command::new("umount").arg(&mount).status();
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn disk_full_on(server_bin: &Path, dir: &Path, mount: &Path) -> Result<()> {
    let data = mount.join("data");
    let config = format!(
        "allow = [\"127.0.0.1/32\"]\ndata_dir = \"{}\"\n[admin]\nenabled = false\n[[sinks]]\ntype = \"file\"\nname = \"archive\"\npath = \"{}\"\n",
        data.display(),
        dir.join("events.jsonl").display()
    );
    let mut server = ServerProcess::new(server_bin, dir, &config)?;
    server.start().await?;
    // Leave about 3 MiB.
    let filler = mount.join("filler");
    let free = available_bytes(mount)?;
    let size = free.saturating_sub(3 * 1024 * 1024);
    std::fs::write(&filler, vec![0u8; size as usize])?;
    let load = Load::start(server.url(), 4, 50, 30_000)?;
    let full = until(Duration::from_secs(60), || {
        load.tally
            .refused
            .lock()
            .map(|r| r.get(&503).copied().unwrap_or(0) >= 20)
            .unwrap_or(false)
    })
    .await;
    let acked_when_full = load.tally.acked.lock().map(|a| a.len()).unwrap_or(0);
    eprintln!(
        "disk-full-test: the disk is full: {acked_when_full} acknowledged so far, now refusing"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::remove_file(&filler)?;
    eprintln!("disk-full-test: space freed");
    let recovered = until(Duration::from_secs(60), || {
        load.tally.acked.lock().map(|a| a.len()).unwrap_or(0) > acked_when_full + 20
    })
    .await;
    let tally = load.stop().await;
    let acked = tally.acked.lock().map(|a| a.clone()).unwrap_or_default();
    // Delivery went on (or resumed) once space returned: the sink has every event.
    let archive = dir.join("events.jsonl");
    let delivered = until(Duration::from_secs(60), || {
        let file = archive_ids(&archive);
        acked.keys().all(|id| file.contains_key(id))
    })
    .await;
    server.terminate()?;
    let refused = tally.refused.lock().map(|r| r.clone()).unwrap_or_default();
    let journal = journal_ids(&data)?;
    let lost = acked.keys().filter(|id| !journal.contains(*id)).count();
    let file = archive_ids(&archive);
    let lost_sink = acked.keys().filter(|id| !file.contains_key(*id)).count();
    // Journal errors pause the dispatcher, which starts again from its persisted cursor: the
    // file sink must still write each event once.
    let duplicated: usize = file.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    println!("disk-full-test: journal on a 32 MiB tmpfs, filled, then freed");
    println!(
        "  acknowledged {} ({acked_when_full} before the disk filled)",
        acked.len()
    );
    println!("  refused: {refused:?} (503 = the journal could not write; nothing stored)");
    println!("  acknowledged but not stored: {lost}");
    println!("  acknowledged but not delivered to the file sink after space returned: {lost_sink}");
    println!("  in the file sink more than once: {duplicated}");
    println!(
        "  recovered by itself after space was freed: {recovered}; journal reopened cleanly with {} events",
        journal.len()
    );
    if !full {
        bail!("disk-full-test: the disk never filled (no 503s)");
    }
    if lost > 0 || lost_sink > 0 || !recovered || !delivered {
        bail!("disk-full-test failed");
    }
    if duplicated > 0 {
        bail!("disk-full-test: the file sink wrote events twice");
    }
    Ok(())
}

/// A TCP connection to 127.0.0.1:`port` leaving from `from` (127.0.0.2 is local too).
async fn connect_from(from: [u8; 4], port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from((from, 0)))?;
    socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// Two attacks while a well-behaved client (127.0.0.1) keeps posting:
/// 1. `attackers` connections from an allowed address (127.0.0.3) trickle headers or bodies:
///    the timeouts and the per-peer cap close them;
/// 2. a flood from an address that is not allowed (127.0.0.2): more connections than
///    `max_connections`, fresh ones as soon as each is closed, each sending half a request
///    line. They are closed at accept, so the allowed client's p99 must stay under 100 ms.
pub async fn slow_clients(server_bin: &Path, attackers: usize) -> Result<()> {
    let dir = temp_dir("slow-clients")?;
    let max_connections = attackers.max(10);
    let flooders = max_connections + max_connections / 10;
    let config = format!(
        "allow = [\"127.0.0.1/32\", \"127.0.0.3/32\"]\ndata_dir = \"{}\"\n[admin]\nenabled = false\n[limits]\nheader_timeout = \"2s\"\nbody_timeout = \"2s\"\nmax_connections = {max_connections}\n[[sinks]]\ntype = \"file\"\nname = \"archive\"\npath = \"{}\"\n",
        dir.join("data").display(),
        dir.join("events.jsonl").display()
    );
    let mut server = ServerProcess::new(server_bin, &dir, &config)?;
    server.start().await?;
    let client = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 1]))
        .timeout(Duration::from_secs(30))
        .build()?;
    let measure = |n: usize| {
        let (client, url) = (client.clone(), server.url());
        async move {
            let mut times = Vec::with_capacity(n);
            let mut failures = 0;
            for i in 0..n {
                let (body, _) = crate::load::payload(i as u64 + 1, 0, 16);
                let t = Instant::now();
                match client.post(&url).body(body).send().await {
                    Ok(r) if r.status().as_u16() == 200 => times.push(t.elapsed()),
                    _ => failures += 1,
                }
            }
            times.sort();
            (times, failures)
        }
    };
    let (baseline, base_failures) = measure(200).await;

    // Attack 1: half trickle headers, half trickle bodies, one byte every 500 ms.
    let port = server.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let closed_by_server = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..attackers {
        let (stop, closed) = (stop.clone(), closed_by_server.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = connect_from([127, 0, 0, 3], port).await else {
                closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            };
            let head: &[u8] = if i % 2 == 0 {
                b"POST /webhook HTTP/1.1\r\nhost: x\r\n"
            } else {
                b"POST /webhook HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{"
            };
            if s.write_all(head).await.is_err() {
                closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            let mut buf = [0u8; 1024];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::select! {
                    r = s.read(&mut buf) => {
                        if matches!(r, Ok(0) | Err(_)) {
                            closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {
                        if s.write_all(b"x").await.is_err() {
                            closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (attacked, attack_failures) = measure(200).await;
    // Past the timeouts every trickling connection has been closed by the server.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let closed = closed_by_server.load(std::sync::atomic::Ordering::Relaxed);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }

    // Attack 2: the flood from an address that is not allowed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood_connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..flooders {
        let (stop, count) = (stop.clone(), flood_connections.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut s) = connect_from([127, 0, 0, 2], port).await {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if s.write_all(b"POST /webhook HTT").await.is_ok() {
                        // Hold it until the server closes it (or 10 s).
                        let _ =
                            tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
                    }
                }
                // A fresh connection soon after, as an attacker would.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flood_started = Instant::now();
    let (flooded, flood_failures) = measure(400).await;
    let flood_secs = flood_started.elapsed().as_secs_f64();
    let flood_opened = flood_connections.load(std::sync::atomic::Ordering::Relaxed);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    server.terminate()?;
    println!(
        "slow-clients-test: {attackers} allowed connections trickling headers or bodies, then a flood of {flooders} connections (max_connections {max_connections}) from an address that is not allowed"
    );
    println!(
        "  well-behaved client alone:        p50 {:?}  p99 {:?}  failures {base_failures}",
        percentile(&baseline, 0.5),
        percentile(&baseline, 0.99)
    );
    println!(
        "  well-behaved client, trickling:   p50 {:?}  p99 {:?}  failures {attack_failures}",
        percentile(&attacked, 0.5),
        percentile(&attacked, 0.99)
    );
    println!(
        "  trickling connections closed by the server within the timeouts: {closed}/{attackers}"
    );
    let flood_p99 = percentile(&flooded, 0.99);
    println!(
        "  well-behaved client, flooded:     p50 {:?}  p99 {flood_p99:?}  max {:?}  failures {flood_failures}",
        percentile(&flooded, 0.5),
        flooded.last().copied().unwrap_or_default()
    );
    println!(
        "  flood connections opened (and closed at accept): {flood_opened} in {flood_secs:.1} s"
    );
    if attack_failures > 0 || base_failures > 0 || flood_failures > 0 {
        bail!("slow-clients-test: a well-behaved request failed");
    }
    if closed < attackers {
        bail!(
            "slow-clients-test: {} trickling connections were still open after the timeouts",
            attackers - closed
        );
    }
    if flood_p99 >= Duration::from_millis(100) {
        bail!(
            "slow-clients-test: under the flood the allowed client's p99 was {flood_p99:?} (goal: under 100 ms)"
        );
    }
    if flood_opened < flooders {
        bail!(
            "slow-clients-test: the flood opened only {flood_opened} connections; it proves nothing"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
