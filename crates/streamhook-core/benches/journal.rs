//! Journal appends on a real file with fsync: one at a time, and 64 at once (group commit).

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use streamhook_core::{Journal, JournalConfig, Verified};

const BODY: &[u8] = br#"{"type":"video","message":{"video":{"id":784280,"name":"SampleVideo","status":"ready","duration":170859}}}"#;

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path())).unwrap();
    let webhook = streamhook_types::decode::decode(BODY).unwrap().webhook;
    let source = Verified::trusted_local([127, 0, 0, 1].into());
    let mut group = c.benchmark_group("journal append");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    group.bench_function("single (one fsync each)", |b| {
        b.iter(|| {
            rt.block_on(journal.append(source, BODY, webhook.clone()))
                .unwrap()
        })
    });
    group.bench_function("per event, 64 concurrent (group commit)", |b| {
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
                            tokio::spawn(async move { j.append(source, BODY, w).await.unwrap() })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
            });
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
