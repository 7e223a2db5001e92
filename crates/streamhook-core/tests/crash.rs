//! Crash test: a child process appends concurrently and prints each append that returned; the
//! parent kills it with SIGKILL at a random moment, reopens the journal, and checks that every
//! acknowledged event is there and that each stream's history agrees with its last event.
//! Repeated `STREAMHOOK_CRASH_CYCLES` times (default 10).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use streamhook_types::{Payload, ResourceState};

const CHILD_ENV: &str = "STREAMHOOK_CRASH_CHILD";
const TEST_NAME: &str = "acknowledged_appends_survive_sigkill";

/// The child: 16 tasks append stream toggles as fast as the journal takes them.
fn child(dir: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let journal = open(std::path::Path::new(dir));
        let mut tasks = Vec::new();
        for task in 0..16u64 {
            let j = journal.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let body = stream(task % 4, i % 2 == 0, i % 3 == 0);
                    let a = append(&j, &body).await;
                    // Printed only after the append returned (after fsync).
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {} {}", a.seq, a.id).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    let cycles: usize = std::env::var("STREAMHOOK_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<(u64, String)> = Vec::new();
    let mut worst_open = Duration::ZERO;
    for cycle in 0..cycles {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let parsed = line.strip_prefix("ACK ").and_then(|rest| {
                    let (seq, id) = rest.split_once(' ')?;
                    Some((seq.parse::<u64>().ok()?, id.to_owned()))
                });
                if let Some(ack) = parsed {
                    if got.is_empty() {
                        let _ = first_tx.send(());
                    }
                    got.push(ack);
                }
            }
            got
        });
        // Opening after a kill includes redb's repair, which grows with the file: start the
        // clock at the first acknowledgement, then kill at a random moment.
        let opened = Instant::now();
        first_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("cycle {cycle}: the child acknowledged nothing in 60 s"));
        let open_took = opened.elapsed();
        std::thread::sleep(Duration::from_millis(fastrand::u64(1..250)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let got = reader.join().unwrap();
        worst_open = worst_open.max(open_took);
        acked.extend(got);

        // Reopen: every acknowledged event is there, under its seq, with its id.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let journal = open(dir.path());
            for (seq, id) in &acked {
                let event = journal
                    .get(*seq)
                    .unwrap()
                    .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged seq {seq} lost"));
                assert_eq!(
                    &event.envelope().unwrap().id.0,
                    id,
                    "cycle {cycle}: seq {seq} holds another event"
                );
            }
            // History is atomic with events: each stream's state is that of its last event.
            let last = journal.last_seq().unwrap();
            let events = journal.read_from(1, last as usize).unwrap();
            for stream_id in 0..4u64 {
                let Some(last_event) = events
                    .iter()
                    .rev()
                    .find(|e| e.envelope().unwrap().resource.id == Some(stream_id))
                else {
                    continue;
                };
                let webhook = streamhook_types::decode::decode(
                    last_event.envelope().unwrap().payload.get().as_bytes(),
                )
                .unwrap()
                .webhook;
                let Payload::Stream(s) = webhook.payload else {
                    panic!("not a stream")
                };
                let Some(ResourceState::Stream(state)) =
                    journal.history(&format!("stream:{stream_id}")).unwrap()
                else {
                    panic!("cycle {cycle}: no history for stream {stream_id}")
                };
                assert_eq!(
                    (state.live, state.recording),
                    (s.live, s.recording),
                    "cycle {cycle}: stream {stream_id}"
                );
            }
            journal.close().await;
        });
    }
    assert!(
        acked.len() > cycles,
        "only {} acknowledgements in {cycles} cycles",
        acked.len()
    );
    eprintln!(
        "crash test: {cycles} SIGKILLs, {} acknowledged appends, 0 lost; slowest start to first ack {worst_open:?}",
        acked.len()
    );
}
