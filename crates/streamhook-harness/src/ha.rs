//! The high-availability run: a 3-node NATS JetStream cluster, two `streamhook-server`
//! receivers sharing one journal on it, an http sink's destination that records every
//! delivery (which receiver sent it, under which lease), and clients posting stream
//! lifecycles alternately through both receivers (a request one cannot answer goes to the
//! other, as a balancer would).
//!
//! First the stream is deleted and created again with its buckets kept (the receivers
//! restarted with empty folders): the new stream must be delivered from its first event.
//! Then, under load, faults in turn: a receiver SIGKILLed and restarted; a NATS node
//! SIGKILLed; the deliverer frozen (SIGSTOP) for 8 s; the destination refusing for 3 s
//! (dead letters, later requeued wherever the sink is delivered then); quorum lost (2 of 3
//! nodes down for 20 s) with a receiver restarted meanwhile. Pruning runs all along
//! (`max_age` 3 s). A slow disk is not emulated (no device-mapper here).
//!
//! The run fails on: any request a live receiver refused; any acknowledged event neither
//! journaled nor delivered; any acknowledged event never delivered; within one lease, a
//! resource's deliveries going backwards; any delivery under a lease older than one already
//! seen (a holder delivering after its successor's first delivery); mirrors that disagree;
//! events classified differently from one redb journal fed the same order; scripted
//! lifecycles answered with other kinds. It prints overlap, duplicates and refusals.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use streamhook_core::{Journal, JournalConfig, Verified};
use streamhook_testkit::Nats;
use streamhook_types::classify::classify_with;

use crate::faults::Skipped;
use crate::receiver::{Mode, Receiver};
use crate::server::{ServerProcess, admin_client, free_port};

/// The admin token both receivers use.
const TOKEN: &str = "ha-test-admin-token-0123456789abcdef";

/// A journaled event as the checks compare it: seq, id, kinds, payload, late.
type Row = (u64, String, Vec<String>, String, bool);

/// One acknowledged event: its id, the kinds the receiver answered, whether it was spooled.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    kinds: Vec<String>,
    spooled: bool,
    body: String,
}

/// What posting went like.
#[derive(Debug, Default)]
struct Counts {
    /// Answered non-2xx by a receiver that was up: a refusal (Gcore would not resend).
    refused: AtomicU64,
    /// Not acknowledged by either receiver.
    lost_requests: AtomicU64,
    /// Connections that failed (the receiver was down or frozen): the balancer's retry.
    unreachable: AtomicU64,
}

fn stream_body(id: u64, live: bool, recording: bool) -> String {
    format!(
        "{{\"type\":\"stream\",\"message\":{{\"stream\":{{\"id\":{id},\"live\":{live},\"recording\":{recording}}}}}}}"
    )
}

/// A lifecycle: start, recording on, recording off, stop.
fn lifecycle(id: u64) -> [String; 4] {
    [
        stream_body(id, true, false),
        stream_body(id, true, true),
        stream_body(id, true, false),
        stream_body(id, false, false),
    ]
}

/// Posts `body` to the first receiver, or the other when the first does not answer 2xx:
/// what a balancer with a retry does. `None` when neither acknowledged it.
async fn post(
    client: &reqwest::Client,
    urls: [&str; 2],
    body: &str,
    counts: &Counts,
) -> Option<Acked> {
    for url in urls {
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .timeout(Duration::from_secs(15))
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {
                let v = resp.json::<serde_json::Value>().await.ok()?;
                return Some(Acked {
                    id: v["id"].as_str()?.to_owned(),
                    kinds: v["kinds"]
                        .as_array()?
                        .iter()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect(),
                    spooled: v["spooled"].as_bool().unwrap_or(false),
                    body: body.to_owned(),
                });
            }
            Ok(resp) => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "  refused by {url}: {} {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                );
            }
            Err(_) => {
                counts.unreachable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    counts.lost_requests.fetch_add(1, Ordering::Relaxed);
    None
}

fn config(data: &Path, urls: &str, receiver: &str, name: &str) -> Result<String> {
    let nats: Vec<String> = urls.split(',').map(|u| format!("{u:?}")).collect();
    Ok(format!(
        "data_dir = {data:?}\nallow = [\"127.0.0.0/8\"]\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = {TOKEN:?}\n\
         [journal]\nbackend = \"jetstream\"\nnats_urls = [{nats}]\nreplicas = 3\ntimeout = \"20s\"\n\
         [retention]\nmax_age = \"3s\"\ninterval = \"2s\"\n\
         [retry]\ninitial_backoff = \"50ms\"\nmax_backoff = \"400ms\"\nmax_attempts = 4\n\
         [[sinks]]\ntype = \"http\"\nname = \"app\"\nurl = {receiver:?}\nconcurrency = 1\n\
         headers = {{ \"x-receiver\" = {name:?} }}\n",
        admin = free_port()?,
        nats = nats.join(", "),
    ))
}

/// The two receivers.
struct Receivers {
    servers: Vec<ServerProcess>,
    folders: Vec<PathBuf>,
    admin_ports: Vec<u16>,
}

impl Receivers {
    fn urls(&self) -> [String; 2] {
        [self.servers[0].url(), self.servers[1].url()]
    }

    /// Asks each receiver to requeue the sink's dead letters: the one that delivers it does
    /// (the other answers 409). Retried until one did.
    async fn requeue_all(&self) -> Result<u64> {
        let client = admin_client();
        for _ in 0..100 {
            for port in &self.admin_ports {
                let resp = client
                    .post(format!(
                        "http://127.0.0.1:{port}/admin/dead-letters/requeue"
                    ))
                    .bearer_auth(TOKEN)
                    .json(&serde_json::json!({"sink": "app", "all": true}))
                    .send()
                    .await;
                if let Ok(resp) = resp
                    && resp.status().is_success()
                {
                    let v: serde_json::Value = resp.json().await.unwrap_or_default();
                    return Ok(v["requeued"].as_array().map_or(0, |a| a.len() as u64));
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("no receiver requeued the dead letters (none delivers the sink?)")
    }
}

fn admin_port(config_text: &str) -> u16 {
    config_text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse().ok())
        .unwrap_or(0)
}

/// Waits until every id in `wanted` was accepted by the destination (up to `within`);
/// returns those that were not.
async fn wait_delivered(receiver: &Receiver, wanted: &HashSet<String>, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let delivered: HashSet<String> = receiver
            .attempts()
            .into_iter()
            .filter(|a| a.accepted)
            .map(|a| a.id)
            .collect();
        let missing = wanted.iter().filter(|id| !delivered.contains(*id)).count();
        if missing == 0 || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Posts `n` lifecycles one step at a time, alternating the receiver tried first.
async fn post_lifecycles(urls: &[String; 2], first: u64, n: u64, counts: &Counts) -> Vec<Acked> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for stream in first..first + n {
        for (step, body) in lifecycle(stream).iter().enumerate() {
            let order = if (stream as usize + step) % 2 == 0 {
                [urls[0].as_str(), urls[1].as_str()]
            } else {
                [urls[1].as_str(), urls[0].as_str()]
            };
            if let Some(a) = post(&client, order, body, counts).await {
                out.push(a);
            }
        }
    }
    out
}

/// Runs the HA fault run: `cycles` faults in turn under `clients` posting clients.
pub async fn run(server_bin: &Path, cycles: usize, clients: usize) -> Result<()> {
    let nats_bin = match streamhook_testkit::nats_server() {
        Ok(bin) => bin,
        Err(why) if std::env::var_os("CI").is_none() => return Err(Skipped(why).into()),
        Err(why) => bail!("no usable nats-server with CI set: {why}"),
    };
    let started = Instant::now();
    let mut nats = Nats::cluster(&nats_bin, 3);
    let urls = nats.urls();
    let mut receiver = Receiver::start().await?;
    let dir = tempfile::tempdir()?;
    let mut rx = Receivers {
        servers: Vec::new(),
        folders: Vec::new(),
        admin_ports: Vec::new(),
    };
    for name in ["a", "b"] {
        let folder = dir.path().join(name);
        std::fs::create_dir_all(&folder)?;
        let config = config(&folder.join("data"), &urls, &receiver.url(), name)?;
        rx.admin_ports.push(admin_port(&config));
        let mut server = ServerProcess::new(server_bin, &folder, &config)?;
        server
            .start()
            .await
            .with_context(|| format!("receiver {name}"))?;
        rx.servers.push(server);
        rx.folders.push(folder);
    }
    let webhook_urls = rx.urls();
    println!(
        "ha-test: 3 NATS nodes, 2 receivers ({}, {}), {clients} clients, {cycles} faults",
        webhook_urls[0], webhook_urls[1]
    );
    let counts = Arc::new(Counts::default());

    // The stream deleted and created again, its buckets (cursors, dead letters) kept.
    let before = post_lifecycles(&webhook_urls, 1, 5, &counts).await;
    let before_ids: HashSet<String> = before.iter().map(|a| a.id.clone()).collect();
    let missing_before = wait_delivered(&receiver, &before_ids, Duration::from_secs(60)).await;
    for s in &mut rx.servers {
        s.terminate()?;
    }
    {
        let client = async_nats::connect(nats.url_list()).await?;
        async_nats::jetstream::new(client)
            .delete_stream("STREAMHOOK")
            .await
            .context("deleting the stream")?;
    }
    for (server, folder) in rx.servers.iter_mut().zip(&rx.folders) {
        std::fs::remove_dir_all(folder.join("data"))?;
        server.start().await?;
    }
    let after = post_lifecycles(&webhook_urls, 101, 5, &counts).await;
    let after_ids: HashSet<String> = after.iter().map(|a| a.id.clone()).collect();
    let missing_after = wait_delivered(&receiver, &after_ids, Duration::from_secs(60)).await;
    println!(
        "  stream deleted and created again (buckets kept): {} of {} delivered before, {} of {} after",
        before_ids.len() - missing_before,
        before_ids.len(),
        after_ids.len() - missing_after,
        after_ids.len()
    );

    // Load: each client walks its own streams' lifecycles, one step at a time, alternating
    // the receiver it tries first.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients as u64 {
        let (acked, stop, counts) = (acked.clone(), stop.clone(), counts.clone());
        let urls = webhook_urls.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0u64;
            let mut stream = 1_000_000 + c * 100_000;
            while !stop.load(Ordering::Relaxed) {
                stream += 1;
                for body in lifecycle(stream) {
                    n += 1;
                    let order = if n % 2 == 0 {
                        [urls[0].as_str(), urls[1].as_str()]
                    } else {
                        [urls[1].as_str(), urls[0].as_str()]
                    };
                    if let Some(a) = post(&client, order, &body, &counts).await {
                        acked.lock().expect("lock").push(a);
                    }
                }
            }
        }));
    }

    // Faults in turn.
    let deliverer = |receiver: &Receiver| -> usize {
        receiver
            .attempts()
            .iter()
            .rev()
            .find(|a| a.accepted)
            .map_or(0, |a| usize::from(a.from == "b"))
    };
    for cycle in 0..cycles {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        match cycle % 5 {
            0 => {
                let i = (cycle / 5) % 2;
                rx.servers[i].kill()?;
                println!("  fault {}: SIGKILL receiver {}", cycle + 1, ["a", "b"][i]);
                tokio::time::sleep(Duration::from_millis(1000)).await;
                rx.servers[i].start().await?;
            }
            1 => {
                let node = (cycle / 5) % 3;
                nats.kill(node);
                println!("  fault {}: SIGKILL NATS node {}", cycle + 1, node + 1);
                tokio::time::sleep(Duration::from_millis(2000)).await;
                nats.restart(node);
            }
            2 => {
                let i = deliverer(&receiver);
                println!(
                    "  fault {}: SIGSTOP the deliverer (receiver {}) for 8 s",
                    cycle + 1,
                    ["a", "b"][i]
                );
                rx.servers[i].freeze(true)?;
                tokio::time::sleep(Duration::from_secs(8)).await;
                rx.servers[i].freeze(false)?;
            }
            3 => {
                println!(
                    "  fault {}: the destination refuses for 3 s (dead letters), then accepts; the deliverer is SIGKILLed after",
                    cycle + 1
                );
                receiver.set_mode(Mode::Refuse);
                tokio::time::sleep(Duration::from_secs(3)).await;
                receiver.set_mode(Mode::Accept);
                // The dead letters move to the next holder with the sink.
                let i = deliverer(&receiver);
                rx.servers[i].kill()?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                rx.servers[i].start().await?;
            }
            _ => {
                let (x, y) = ((cycle / 5) % 3, (cycle / 5 + 1) % 3);
                println!(
                    "  fault {}: quorum lost (NATS nodes {} and {} down 20 s), receiver {} restarted meanwhile",
                    cycle + 1,
                    x + 1,
                    y + 1,
                    ["a", "b"][cycle / 5 % 2]
                );
                nats.kill(x);
                nats.kill(y);
                tokio::time::sleep(Duration::from_secs(5)).await;
                let i = cycle / 5 % 2;
                rx.servers[i].kill()?;
                rx.servers[i].start().await?;
                tokio::time::sleep(Duration::from_secs(15)).await;
                nats.restart(x);
                nats.restart(y);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    let requeued = rx.requeue_all().await?;

    // The scripted lifecycle: 100 streams, each step through the other receiver than the
    // last, no faults.
    let mut scripted = Vec::new();
    let mut lifecycles = Vec::new();
    for stream in 1..=100u64 {
        let urls = webhook_urls.clone();
        let counts = counts.clone();
        lifecycles.push(tokio::spawn(async move {
            let got = post_lifecycles(&urls, 10_000 + stream, 1, &counts).await;
            got.iter()
                .filter(|a| !a.spooled)
                .map(|a| a.kinds.join(","))
                .collect::<Vec<_>>()
        }));
    }
    for l in lifecycles {
        scripted.push(l.await?);
    }
    // What one redb journal gives for the same sequence.
    let single_dir = tempfile::tempdir()?;
    let single = Journal::open(JournalConfig::new(single_dir.path()))?;
    let mut expected = Vec::new();
    for body in lifecycle(1) {
        let got = classify_alone(&single, &body).await?;
        expected.push(got.join(","));
    }
    let scripted_ok = scripted.iter().filter(|k| **k == expected).count();

    // Every acknowledged event reaches the sink.
    let mut wanted: HashSet<String> = acked.iter().map(|a| a.id.clone()).collect();
    wanted.extend(before_ids.iter().cloned());
    wanted.extend(after_ids.iter().cloned());
    let undelivered = wait_delivered(&receiver, &wanted, Duration::from_secs(120)).await;
    let attempts = receiver.attempts();
    receiver.down();

    // Stop both; read their mirrors (pruned as they went: what they still hold).
    for s in &mut rx.servers {
        s.terminate()?;
    }
    let (in_a, in_b) = (
        mirror(&rx.folders[0].join("data"))?,
        mirror(&rx.folders[1].join("data"))?,
    );
    let by_seq_b: HashMap<u64, &Row> = in_b.iter().map(|r| (r.0, r)).collect();
    let mirrors_disagree = in_a
        .iter()
        .filter(|r| by_seq_b.get(&r.0).is_some_and(|b| *b != *r))
        .count();
    let journaled: HashMap<&str, &Row> = in_a
        .iter()
        .chain(in_b.iter())
        .map(|e| (e.1.as_str(), e))
        .collect();
    let delivered: HashSet<&str> = attempts
        .iter()
        .filter(|a| a.accepted)
        .map(|a| a.id.as_str())
        .collect();
    let lost = acked
        .iter()
        .filter(|a| !journaled.contains_key(a.id.as_str()) && !delivered.contains(a.id.as_str()))
        .count();
    let wrong_answer = acked
        .iter()
        .filter(|a| !a.spooled)
        .filter(|a| journaled.get(a.id.as_str()).is_some_and(|e| e.2 != a.kinds))
        .count();
    let late = in_a.iter().filter(|r| r.4).count();

    // Equivalence, on each resource whose every acknowledged event the mirror still holds
    // (pruning removes the rest): its events in the stream's order, fed to one redb journal,
    // classify the same (a late event on its own).
    let mut acked_per_resource: HashMap<String, usize> = HashMap::new();
    for a in &acked {
        *acked_per_resource.entry(resource_of(&a.body)).or_default() += 1;
    }
    let mut rows_per_resource: HashMap<String, Vec<&Row>> = HashMap::new();
    for r in &in_a {
        rows_per_resource
            .entry(resource_of(&r.3))
            .or_default()
            .push(r);
    }
    // The classifier one journal runs, resource by resource (what an append does: the same
    // function against the resource's last state).
    let (mut checked, mut differ) = (0, 0);
    for (resource, rows) in &rows_per_resource {
        if acked_per_resource.get(resource) != Some(&rows.len()) {
            continue;
        }
        checked += 1;
        let mut state = None;
        for (_, _, kinds, payload, is_late) in rows.iter().copied() {
            let webhook = streamhook_types::decode::decode(payload.as_bytes())?.webhook;
            let got: Vec<String> = if *is_late {
                // On its own; the resource's state stays.
                classify_with(&webhook, None)
                    .0
                    .kinds
                    .iter()
                    .map(|k| k.to_string())
                    .collect()
            } else {
                let (meaning, next) = classify_with(&webhook, state.as_ref());
                if next.is_some() {
                    state = next;
                }
                meaning.kinds.iter().map(|k| k.to_string()).collect()
            };
            if &got != kinds {
                differ += 1;
            }
        }
    }

    // Overlap: a delivery under a lease older than one already seen came from a holder after
    // its successor's first delivery. Regression: within one lease, a resource's deliveries
    // go backwards (requeued dead letters excepted: they were refused before).
    let refused_ids: HashSet<&str> = attempts
        .iter()
        .filter(|a| !a.accepted)
        .map(|a| a.id.as_str())
        .collect();
    let mut newest_lease = 0;
    let mut overlap = 0;
    let mut last: HashMap<(u64, &str), u64> = HashMap::new();
    let mut regressions = 0;
    for a in &attempts {
        if a.lease < newest_lease {
            overlap += 1;
        }
        newest_lease = newest_lease.max(a.lease);
        if !a.accepted || refused_ids.contains(a.id.as_str()) {
            continue;
        }
        let seen = last.entry((a.lease, a.resource.as_str())).or_insert(0);
        if a.seq < *seen {
            regressions += 1;
        }
        *seen = (*seen).max(a.seq);
    }
    let accepted = attempts.iter().filter(|a| a.accepted).count();
    let distinct: HashSet<&str> = attempts
        .iter()
        .filter(|a| a.accepted)
        .map(|a| a.id.as_str())
        .collect();
    let duplicates = accepted.saturating_sub(distinct.len());
    let pruned = stream_pruned(nats.url_list()).await.unwrap_or(0);
    let refused = counts.refused.load(Ordering::Relaxed);
    let not_acked = counts.lost_requests.load(Ordering::Relaxed);
    let spooled = acked.iter().filter(|a| a.spooled).count();
    println!(
        "ha-test: {} acknowledged ({spooled} spooled), {refused} refused by a live receiver, {not_acked} acknowledged by neither, {} connections failed (receiver down or frozen)",
        acked.len(),
        counts.unreachable.load(Ordering::Relaxed)
    );
    println!(
        "  lost (acknowledged, neither journaled nor delivered): {lost}; non-spooled answers whose kinds differ from the journal's: {wrong_answer}"
    );
    println!(
        "  delivered: {} of {} acknowledged, undelivered: {undelivered}; {accepted} deliveries in all, {duplicates} duplicates ({:.1}%); {requeued} dead letters requeued",
        wanted.len() - undelivered,
        wanted.len(),
        100.0 * duplicates as f64 / accepted.max(1) as f64
    );
    println!(
        "  overlap (deliveries under a replaced lease): {overlap}; per-resource regressions within a lease: {regressions}"
    );
    println!(
        "  late events: {late}; pruned from the stream: {pruned}; mirrors disagree on {mirrors_disagree} seqs held by both ({} and {} held)",
        in_a.len(),
        in_b.len()
    );
    println!(
        "  classified differently from one redb journal: {differ} (over {checked} resources the mirror holds whole)"
    );
    println!(
        "  scripted lifecycles (100 streams, alternating receivers) with exactly {expected:?}: {scripted_ok}/100"
    );
    println!("  took {:.0} s", started.elapsed().as_secs_f64());
    // Failover repeats at most this share of the deliveries.
    let duplicate_goal = duplicates * 20 > accepted;
    if duplicate_goal {
        println!("  duplicates above 5% of deliveries: the goal is missed");
    }
    if lost > 0
        || duplicate_goal
        || undelivered > 0
        || refused > 0
        || not_acked > 0
        || overlap > 0
        || regressions > 0
        || mirrors_disagree > 0
        || differ > 0
        || wrong_answer > 0
        || scripted_ok != 100
        || acked.is_empty()
        || missing_before > 0
        || missing_after > 0
    {
        bail!("ha-test: a goal was missed (see above)");
    }
    println!("ha-test: PASS");
    Ok(())
}

/// What one journal answers for `body` (its kinds).
async fn classify_alone(journal: &Journal, body: &str) -> Result<Vec<String>> {
    let webhook = streamhook_types::decode::decode(body.as_bytes())?.webhook;
    let got = journal
        .append(
            Verified::trusted_local([127, 0, 0, 1].into()),
            body.as_bytes(),
            webhook,
        )
        .await?;
    Ok(got.kinds.iter().map(|k| k.to_string()).collect())
}

/// The resource of a `stream` body (its id).
fn resource_of(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"]["stream"]["id"].as_u64())
        .map_or_else(String::new, |id| format!("stream:{id}"))
}

/// Every event a stopped receiver's mirror holds.
fn mirror(data: &Path) -> Result<Vec<Row>> {
    let journal = Journal::open(JournalConfig::new(data))?;
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let batch = journal.read_from(from, 10_000)?;
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        for e in batch {
            let env = e.envelope()?;
            out.push((
                e.seq,
                env.id.0.clone(),
                env.kinds.iter().map(|k| k.to_string()).collect(),
                env.payload.get().to_owned(),
                env.late,
            ));
        }
    }
    Ok(out)
}

/// How many messages pruning removed from the shared stream (its last sequence less what it
/// holds).
async fn stream_pruned(urls: Vec<String>) -> Result<u64> {
    let client = async_nats::connect(urls).await?;
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("STREAMHOOK")
        .await?;
    let info = stream.info().await?;
    Ok(info.state.last_sequence.saturating_sub(info.state.messages))
}
