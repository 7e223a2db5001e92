//! The real `streamhook` binary on the fixtures: exit codes, the exact error text of every
//! invalid fixture (snapshots), `--json`, stdin, NDJSON with a bad line in the middle,
//! inspect and its timeline, schema, completions.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_streamhook");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `streamhook ARGS` in the workspace root (so paths in messages are relative).
fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn run_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_valid_fixture_validates_with_exit_0() {
    let o = run(&[
        "validate",
        "fixtures/seed",
        "fixtures/upstream",
        "fixtures/lenient",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(
        stdout(&o),
        "37 files, 37 payloads: 37 valid, 0 invalid, 18 warnings (--strict shows them)\n"
    );
    let o = run(&["validate", "--deny-warnings", "fixtures/lenient"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "--deny-warnings fails on tolerated oddities"
    );
}

#[test]
fn each_invalid_fixture_gets_its_exact_error_and_exit_1() {
    insta::glob!("../../../fixtures", "invalid/*.json", |path| {
        let rel = path
            .strip_prefix(root().canonicalize().unwrap())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let o = run(&["validate", &rel]);
        assert_eq!(o.status.code(), Some(1), "{rel}");
        insta::assert_snapshot!(stdout(&o));
    });
}

#[test]
fn strict_reports_what_was_tolerated_in_document_order() {
    let o = run(&[
        "validate",
        "--strict",
        "fixtures/lenient/new-field.json",
        "fixtures/lenient/coerced-types.json",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        "\
fixtures/lenient/new-field.json:1:160: warning: $.message.video.poster_url: unknown field, kept as sent
fixtures/lenient/new-field.json:1:268: warning: $.message.video.converted_videos[0].bitrate: unknown field, kept as sent
fixtures/lenient/new-field.json:1:292: warning: $.account_id: unknown field, kept as sent
fixtures/lenient/coerced-types.json:1:49: warning: $.message.stream.id: the string \"12345\" read as the integer 12345
fixtures/lenient/coerced-types.json:1:66: warning: $.message.stream.live: the number 1 read as the boolean true
fixtures/lenient/coerced-types.json:1:82: warning: $.message.stream.recording: the string \"false\" read as the boolean false
2 files, 2 payloads: 2 valid, 0 invalid, 6 warnings
"
    );
}

#[test]
fn ndjson_with_a_bad_line_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("batch.jsonl");
    let good = r#"{"type":"video","message":{"video":{"id":1,"status":"ready"}}}"#;
    let bad = r#"{"type":"video","message":{"video":{"id":2,"status":7}}}"#;
    std::fs::write(
        &path,
        format!("{good}\n{good}\n{bad}\nnot json\n\n{good}\n"),
    )
    .unwrap();
    let o = run(&["validate", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let p = path.display();
    assert_eq!(
        stdout(&o),
        format!(
            "{p}:3:53: error: $.message.video.status: expected a string, found the number 7\n\
             {p}:4:2: error: invalid JSON: expected a JSON value (an object, array, string, number, true, false or null)\n\
             1 file, 5 payloads: 3 valid, 2 invalid, 0 warnings\n"
        )
    );
}

#[test]
fn json_output_is_machine_readable() {
    let o = run(&[
        "validate",
        "--json",
        "fixtures/invalid/live-wrong-type.json",
        "fixtures/seed/01-stream-started.json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        serde_json::json!({
            "file": "fixtures/invalid/live-wrong-type.json", "line": 6, "column": 15, "valid": false,
            "error": {"path": "$.message.stream.live", "message": "$.message.stream.live: expected a boolean, found the string \"yes\"", "line": 6, "column": 15}
        })
    );
    assert_eq!(
        lines[1],
        serde_json::json!({"summary": {"files": 2, "payloads": 2, "valid": 1, "invalid": 1, "warnings": 0, "io_errors": 0}})
    );
}

#[test]
fn stdin_and_arrays() {
    let o = run_stdin(
        &["validate", "-"],
        &std::fs::read(root().join("fixtures/seed/15-video-processed.json")).unwrap(),
    );
    assert_eq!(
        (o.status.code(), stdout(&o)),
        (
            Some(0),
            "1 file, 1 payload: 1 valid, 0 invalid, 0 warnings\n".to_owned()
        )
    );
    let array = br#"[
  {"type": "stream", "message": {"stream": {"id": 1, "live": true}}},
  {"type": "stream", "message": {"stream": {"id": "one"}}}
]"#;
    let o = run_stdin(&["validate", "-"], array);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "-:3:51: error: $.message.stream.id: expected a non-negative integer id, found the string \"one\"\n1 file, 2 payloads: 1 valid, 1 invalid, 0 warnings\n"
    );
}

#[test]
fn usage_and_io_errors_exit_2() {
    let o = run(&["validate", "no/such/file.json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stdout(&o).starts_with("no/such/file.json: error: cannot read: No such file or directory"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        run(&["validate"]).status.code(),
        Some(2),
        "no path is a usage error"
    );
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn inspect_classifies_with_history_in_the_order_given() {
    let o = run(&[
        "inspect",
        "fixtures/seed/01-stream-started.json",
        "fixtures/seed/03-stream-recording-started.json",
        "fixtures/seed/04-stream-recording-finished.json",
        "fixtures/seed/02-stream-paused.json",
        "fixtures/seed/14-video-partially-processed.json",
    ]);
    assert_eq!(o.status.code(), Some(0));
    insta::assert_snapshot!(stdout(&o), @r#"
    fixtures/seed/01-stream-started.json:1:1  stream.started  stream 12345 live not-recording
    fixtures/seed/03-stream-recording-started.json:1:1  stream.recording_started  stream 12345 live recording
    fixtures/seed/04-stream-recording-finished.json:1:1  stream.recording_stopped  stream 12345 live not-recording
    fixtures/seed/02-stream-paused.json:1:1  stream.stopped  stream 12345 not-live not-recording
    fixtures/seed/14-video-partially-processed.json:1:1  video.viewable  video 784280 "SampleVideo" viewable 1/4 renditions 2m50s  (upload)
    "#);
    // Without history each is read alone.
    let o = run(&[
        "inspect",
        "--no-history",
        "fixtures/seed/04-stream-recording-finished.json",
    ]);
    assert!(stdout(&o).contains("  stream.started  "));
    // Filters.
    let o = run(&[
        "inspect",
        "--kind",
        "video.*",
        "--id",
        "784280",
        "fixtures/seed",
    ]);
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));
    let o = run(&["inspect", "--kind", "stream.start", "fixtures/seed"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a kind pattern that matches nothing is a usage error"
    );
    // JSON.
    let o = run(&[
        "inspect",
        "--json",
        "fixtures/seed/14-video-partially-processed.json",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["renditions"], serde_json::json!({"done": 1, "total": 4}));
    assert_eq!(v["status"], "viewable");
    assert_eq!(v["origin"], "upload");
}

#[test]
fn inspect_timeline_over_an_archive() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("events.jsonl");
    let line = |seq: u64, at: &str, kinds: &str, payload: &str| {
        format!(
            r#"{{"id":"id-{seq}","seq":{seq},"received_at":"{at}","source_ip":"92.223.123.1","kinds":[{kinds}],"resource":{{"type":"x","id":1}},"payload":{payload}}}"#
        )
    };
    let v = |status: &str| {
        format!(
            r#"{{"type":"video","message":{{"video":{{"id":7,"name":"clip","status":"{status}"}}}}}}"#
        )
    };
    let s = r#"{"type":"stream","message":{"stream":{"id":3,"live":true}}}"#;
    let text = [
        line(
            1,
            "2026-11-28T09:00:00.000Z",
            r#""video.uploaded""#,
            &v("empty"),
        ),
        line(2, "2026-11-28T09:00:01.000Z", r#""stream.started""#, s),
        line(
            3,
            "2026-11-28T09:01:00.000Z",
            r#""video.ready""#,
            &v("ready"),
        ),
    ]
    .join("\n");
    std::fs::write(&archive, text + "\n").unwrap();
    let o = run(&["inspect", "--timeline", archive.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        "\
video 7
  2026-11-28T09:00:00.000Z  video.uploaded  video 7 \"clip\" empty  (upload)
  2026-11-28T09:01:00.000Z  video.ready  video 7 \"clip\" ready  (upload)
stream 3
  2026-11-28T09:00:01.000Z  stream.started  stream 3 live
"
    );
}

#[test]
fn inspect_lists_the_invalid_events_of_an_archive() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("events.jsonl");
    let good = r#"{"id":"id-1","seq":1,"received_at":"2026-11-28T09:00:00.000Z","source_ip":"92.223.123.1","kinds":["stream.started"],"resource":{"type":"stream","id":3},"payload":{"type":"stream","message":{"stream":{"id":3,"live":true}}}}"#;
    let kept = r#"{"id":"id-2","seq":2,"received_at":"2026-11-28T09:00:01.000Z","source_ip":"92.223.123.1","kinds":["invalid"],"resource":{"type":"stream","id":3},"problems":[{"path":"$.message.stream.live","line":1,"column":48,"message":"$.message.stream.live: expected a boolean, found the string \"yes\""}],"payload":{"type":"stream","message":{"stream":{"id":3,"live":"yes"}}}}"#;
    std::fs::write(&archive, format!("{good}\n{kept}\n")).unwrap();
    let path = archive.to_str().unwrap();
    let o = run(&["inspect", path]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].ends_with("2026-11-28T09:00:00.000Z  stream.started  stream 3 live"),
        "{out}"
    );
    assert!(
        lines[1].ends_with("2026-11-28T09:00:01.000Z  invalid  stream 3  does not fit the model: $.message.stream.live: expected a boolean, found the string \"yes\" (line 1, column 48)"),
        "{out}"
    );
    // Filter on the kind, and machine-readable.
    let o = run(&["inspect", "--json", "--kind", "invalid", path]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["kinds"], serde_json::json!(["invalid"]));
    assert_eq!(v["problems"][0]["path"], "$.message.stream.live");
    assert_eq!(v["seq"], 2);
}

#[test]
fn schema_is_the_generated_one() {
    let o = run(&["schema"]);
    assert_eq!(
        stdout(&o),
        std::fs::read_to_string(root().join("docs/schema/webhook.schema.json")).unwrap()
    );
    let o = run(&["schema", "--envelope"]);
    assert_eq!(
        stdout(&o),
        std::fs::read_to_string(root().join("docs/schema/envelope.schema.json")).unwrap()
    );
}

#[test]
fn completions_and_help() {
    let o = run(&["completions", "bash"]);
    assert!(stdout(&o).contains("streamhook"));
    for cmd in [
        "validate",
        "inspect",
        "send",
        "tail",
        "replay",
        "dead-letters",
        "schema",
    ] {
        let o = run(&["help", cmd]);
        assert!(
            stdout(&o).contains("Example"),
            "`streamhook help {cmd}` has no example"
        );
    }
}
