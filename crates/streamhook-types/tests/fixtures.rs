//! Snapshot tests over every file in `fixtures/`: the typed model, its meaning, what the
//! lenient decoder tolerated, and the round trip; for `fixtures/invalid/` the exact error a
//! user sees.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use streamhook_types::decode::{self, WarningKind};
use streamhook_types::{Classification, classify};

#[derive(Serialize)]
struct Accepted {
    classification: Classification,
    warnings: Vec<String>,
    round_trip: &'static str,
}

#[derive(Serialize)]
struct Rejected {
    error: String,
    path: String,
    line: Option<usize>,
    column: Option<usize>,
    status: &'static str,
    /// For JSON: the resource an `invalid` event keeps (type and id, as far as readable).
    resource: Option<streamhook_types::Resource>,
}

fn is_invalid(path: &Path) -> bool {
    path.parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "invalid")
}

#[test]
fn every_fixture() {
    let mut settings = insta::Settings::clone_current();
    settings.set_sort_maps(true);
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        insta::glob!("../../../fixtures", "**/*.json", |path| {
            let bytes = std::fs::read(path).unwrap();
            if is_invalid(path) {
                let err = decode::decode(&bytes).expect_err("an invalid fixture decoded");
                let loc = err.location();
                insta::assert_yaml_snapshot!(Rejected {
                    error: err.to_string(),
                    path: err.path(),
                    line: loc.map(|l| l.line),
                    column: loc.map(|l| l.column),
                    status: match err {
                        decode::DecodeError::Syntax(_) => "400 not JSON",
                        _ => "200 kept as invalid (422 in strict mode)",
                    },
                    resource: serde_json::from_slice::<Value>(&bytes)
                        .ok()
                        .map(|v| classify::salvage_resource(&v)),
                });
                return;
            }
            let decoded =
                decode::decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let original: Value = serde_json::from_slice(&bytes).unwrap();
            let reserialised = serde_json::to_value(&decoded.webhook).unwrap();
            let coerced = decoded
                .warnings
                .iter()
                .any(|w| matches!(w.kind, WarningKind::Coerced { .. }));
            let round_trip = if coerced {
                // Coerced values come back in their canonical type; a second pass is stable.
                let again = decode::decode_value(&reserialised).unwrap();
                assert_eq!(again.webhook, decoded.webhook, "{}", path.display());
                assert!(
                    again
                        .warnings
                        .iter()
                        .all(|w| !matches!(w.kind, WarningKind::Coerced { .. }))
                );
                "canonical (coerced values re-serialise in their documented type)"
            } else {
                assert_eq!(
                    reserialised,
                    original,
                    "{} does not round-trip",
                    path.display()
                );
                "exact"
            };
            insta::assert_yaml_snapshot!(Accepted {
                classification: classify::classify(&decoded.webhook),
                warnings: decoded.warnings.iter().map(ToString::to_string).collect(),
                round_trip,
            });
            insta::assert_debug_snapshot!("model", decoded.webhook);
        });
    });
}

/// Checks that a fixture classifies, on its own, to `kinds` (and `origin`, if given).
fn check(fixture: &str, kinds: &[&str], origin: Option<&str>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(fixture);
    let bytes = std::fs::read(&path).unwrap();
    let decoded = decode::decode(&bytes).unwrap();
    let meaning = classify::classify(&decoded.webhook);
    let got: Vec<&str> = meaning.kinds.iter().map(|k| k.as_str()).collect();
    assert_eq!(got, kinds, "{fixture}");
    assert_eq!(
        meaning.origin.map(|o| o.to_string()).as_deref(),
        origin,
        "{fixture}"
    );
}

#[test]
fn seed_payloads_classify_as_design_says() {
    check("seed/01-stream-started.json", &["stream.started"], None);
    check("seed/02-stream-paused.json", &["stream.stopped"], None);
    check(
        "seed/03-stream-recording-started.json",
        &["stream.started", "stream.recording_started"],
        None,
    );
    // Without history this is indistinguishable from "stream started" (see the core's classifier).
    check(
        "seed/04-stream-recording-finished.json",
        &["stream.started"],
        None,
    );
    check(
        "seed/05-recording-processing.json",
        &["video.processing"],
        Some("recording"),
    );
    check(
        "seed/06-recording-partially-processed.json",
        &["video.viewable"],
        Some("recording"),
    );
    check(
        "seed/07-recording-processed.json",
        &["video.ready"],
        Some("recording"),
    );
    check(
        "seed/08-broadcast-pending.json",
        &["broadcast.pending"],
        None,
    );
    check("seed/09-broadcast-live.json", &["broadcast.live"], None);
    check(
        "seed/10-broadcast-finished.json",
        &["broadcast.finished"],
        None,
    );
    check("seed/11-broadcast-paused.json", &["broadcast.paused"], None);
    check(
        "seed/12-video-uploaded.json",
        &["video.uploaded"],
        Some("upload"),
    );
    check(
        "seed/13-video-processing.json",
        &["video.processing"],
        Some("upload"),
    );
    check(
        "seed/14-video-partially-processed.json",
        &["video.viewable"],
        Some("upload"),
    );
    check(
        "seed/15-video-processed.json",
        &["video.ready"],
        Some("upload"),
    );
}

#[test]
fn upstream_payloads_classify() {
    check(
        "upstream/stream-full.json",
        &["stream.started", "stream.transcoding_started"],
        None,
    );
    check(
        "upstream/stream-backup-live.json",
        &[
            "stream.started",
            "stream.transcoding_started",
            "stream.backup_started",
        ],
        None,
    );
    check(
        "upstream/stream-client-user-id-null.json",
        &["stream.stopped"],
        None,
    );
    check(
        "upstream/video-recording-with-stream-id.json",
        &["video.ready"],
        Some("recording"),
    );
    check(
        "upstream/video-upload-stream-id-null.json",
        &["video.processing"],
        Some("upload"),
    );
    check(
        "upstream/video-error.json",
        &["video.failed"],
        Some("upload"),
    );
    check(
        "upstream/video-delete.json",
        &["video.deleted"],
        Some("upload"),
    );
    check(
        "upstream/video-delete-recording.json",
        &["video.deleted"],
        Some("recording"),
    );
    check(
        "upstream/restream-started.json",
        &["restream.started"],
        None,
    );
    check(
        "upstream/restream-stopped.json",
        &["restream.stopped"],
        None,
    );
    check(
        "upstream/restream-legacy-active.json",
        &["restream.started"],
        None,
    );
}

#[test]
fn new_fields_statuses_and_types_are_kept() {
    check("lenient/new-field.json", &["video.ready"], Some("upload"));
    check("lenient/new-status.json", &["unknown"], Some("upload"));
    check("lenient/new-type.json", &["unknown"], None);
    check("lenient/broadcast-new-status.json", &["unknown"], None);
    // Each of these round-trips exactly: asserted for every fixture by `every_fixture`.
}

#[test]
fn seed_fixtures_are_the_fifteen_examples_of_the_page() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/seed");
    let count = std::fs::read_dir(dir).unwrap().count();
    assert_eq!(count, 15);
}
