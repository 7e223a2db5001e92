//! The `decode` fuzz target's kept corpus (and any crash it found) as regression tests, run on
//! stable with the same checks as the fuzzer (`fuzz/checks/decode.rs`), plus every fixture.

#[path = "../../../fuzz/checks/decode.rs"]
mod checks;

use std::path::Path;

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn the_decode_corpus_and_the_fixtures_hold_the_fuzzer_s_properties() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut inputs = files(&root.join("fuzz/corpus/decode"));
    inputs.extend(files(&root.join("fuzz/artifacts/decode")));
    assert!(!inputs.is_empty(), "the fuzz corpus is missing");
    for dir in ["seed", "upstream", "lenient", "invalid"] {
        inputs.extend(files(&root.join("fixtures").join(dir)));
    }
    for input in &inputs {
        let data = std::fs::read(input).unwrap();
        checks::check(&data);
    }
}
