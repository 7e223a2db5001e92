//! Journal appends on a real file with fsync: one at a time, and 64 at once (group commit).
//!
//! The journal is written under the workspace's `target/` folder, the filesystem a checkout's
//! data folder would be on, not the system's temporary folder (often a tmpfs, where fsync is
//! nearly free); the benchmark names say which filesystem it was.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use streamhook_core::{Journal, JournalConfig, Verified};

const BODY: &[u8] = br#"{"type":"video","message":{"video":{"id":784280,"name":"SampleVideo","status":"ready","duration":170859}}}"#;

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::tempdir_in(&target).unwrap();
    let fs = filesystem(dir.path());
    let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
    let webhook = streamhook_types::decode::decode(BODY).unwrap().webhook;
    let source = Verified::trusted_local([127, 0, 0, 1].into());
    let mut group = c.benchmark_group("journal append");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    group.bench_function(format!("single (one fsync each, on {fs})"), |b| {
        b.iter(|| {
            rt.block_on(journal.append(source, BODY, webhook.clone()))
                .unwrap()
        })
    });
    group.bench_function(
        format!("per event, 64 concurrent (group commit, on {fs})"),
        |b| {
            // `iters` appends, 64 in flight at a time; criterion divides the time by `iters`.
            b.iter_custom(|iters| {
                let start = Instant::now();
                rt.block_on(async {
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(64);
                        left -= n;
                        let tasks: Vec<_> = (0..n)
                            .map(|_| {
                                let (j, w) = (journal.clone(), webhook.clone());
                                tokio::spawn(
                                    async move { j.append(source, BODY, w).await.unwrap() },
                                )
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                    }
                });
                start.elapsed()
            })
        },
    );
    group.finish();
}

/// The filesystem type of `dir` (`ext4`, `tmpfs`, ...), as `stat -f` reports it.
fn filesystem(dir: &std::path::Path) -> String {
    std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "an unknown filesystem".into())
}

criterion_group!(benches, append);
criterion_main!(benches);
