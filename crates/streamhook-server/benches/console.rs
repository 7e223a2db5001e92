//! The console's queries on a journal of 100,000 events, through the admin API on loopback:
//! the first page of the newest events, a filter that matches one event in a thousand (read
//! until the page is full or the scan budget is spent), one event, and a stream's timeline.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use streamhook_core::Verified;
use streamhook_server::{Config, Server};

const EVENTS: u64 = 100_000;
const TOKEN: &str = "bench-admin-token-0123456789abcdef";

fn body(i: u64) -> String {
    if i % 1000 == 0 {
        format!(
            r#"{{"type":"video","message":{{"video":{{"id":{i},"name":"Rare {i}","status":"ready","duration":170859}}}}}}"#
        )
    } else {
        format!(
            r#"{{"type":"stream","message":{{"stream":{{"id":{},"live":{},"recording":false}}}}}}"#,
            i % 500,
            i % 2 == 0
        )
    }
}

fn console(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::create_dir_all(&target).unwrap();
    let dir = tempfile::tempdir_in(&target).unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        sinks: Vec::new(),
        ..Config::default()
    };
    config.admin.token = Some(TOKEN.into());
    let server = Server::new(config).unwrap();
    let journal = server.intake().journal().clone();
    let source = Verified::trusted_local([127, 0, 0, 1].into());
    rt.block_on(async {
        let mut i = 1;
        while i <= EVENTS {
            let tasks: Vec<_> = (i..(i + 256).min(EVENTS + 1))
                .map(|n| {
                    let j = journal.clone();
                    tokio::spawn(async move {
                        let b = body(n);
                        let w = streamhook_types::decode::decode(b.as_bytes())
                            .unwrap()
                            .webhook;
                        j.append(source, b.as_bytes(), w).await.unwrap();
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            i += 256;
        }
    });
    let (addr, stop) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = admin.local_addr().unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run_with(listener, Some(admin), async move {
            let _ = rx.await;
        }));
        (addr, stop)
    });
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let url = format!("http://{addr}{path}");
        let c = client.clone();
        rt.block_on(async move {
            let r = c.get(url).bearer_auth(TOKEN).send().await.unwrap();
            assert!(r.status().is_success());
            r.bytes().await.unwrap()
        })
    };
    let mut group = c.benchmark_group("console, 100k events");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    group.bench_function("first page (50 newest)", |b| {
        b.iter(|| get("/admin/events/search?limit=50"))
    });
    group.bench_function("kind filter matching 1 in 1000 (one call)", |b| {
        b.iter(|| get("/admin/events/search?limit=50&kind=video.*"))
    });
    group.bench_function("text filter matching 1 in 1000 (one call)", |b| {
        b.iter(|| get("/admin/events/search?limit=50&q=rare"))
    });
    group.bench_function("one event", |b| b.iter(|| get("/admin/events/50000")));
    group.bench_function("timeline of a stream (200 of 100k events)", |b| {
        b.iter(|| get("/admin/resources/stream/7"))
    });
    group.finish();
    let _ = stop.send(());
}

criterion_group!(benches, console);
criterion_main!(benches);
