//! Decoding and classifying one payload of each type (what the server does per request).

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(name),
    )
    .unwrap()
}

fn decode_and_classify(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode+classify");
    for (name, file) in [
        ("stream", "upstream/stream-full.json"),
        ("video", "seed/15-video-processed.json"),
        ("video_delete", "upstream/video-delete.json"),
        ("restream", "upstream/restream-started.json"),
        ("broadcast", "seed/09-broadcast-live.json"),
        ("unknown", "lenient/new-type.json"),
    ] {
        let bytes = fixture(file);
        group.bench_function(name, |b| {
            b.iter(|| {
                let decoded = streamhook_types::decode::decode(black_box(&bytes)).unwrap();
                black_box(streamhook_types::classify::classify(&decoded.webhook))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode_and_classify);
criterion_main!(benches);
