//! The `forwarded` fuzz target's kept corpus (and any crash it found) as regression tests, run
//! on stable with the same checks as the fuzzer (`fuzz/checks/forwarded.rs`).

#[path = "../../../fuzz/checks/forwarded.rs"]
mod checks;

use std::path::Path;

#[test]
fn the_forwarded_corpus_holds_the_fuzzer_s_properties() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for dir in ["corpus/forwarded", "artifacts/forwarded"] {
        for entry in std::fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            checks::check(&std::fs::read(entry.path()).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "the fuzz corpus is missing");
}
