//! The file and stdout sinks: rotation, templated paths, reopen after a move, torn tails cut
//! off, whole lines after a SIGKILL mid-write, the pretty and json formats.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use streamhook_core::{Delivery, Sink};
use streamhook_sinks::file::{FileConfig, FileSink, FsyncPolicy};
use streamhook_sinks::stdout::{Format, StdoutSink};
use streamhook_types::Envelope;
use tokio::io::AsyncReadExt;

fn delivery(seq: u64, payload: &str, received_at: &str) -> Delivery {
    let webhook = streamhook_types::decode::decode(payload.as_bytes())
        .unwrap()
        .webhook;
    let meaning = streamhook_types::classify::classify(&webhook);
    let json = serde_json::json!({
        "id": format!("0193-test-{seq}"),
        "seq": seq,
        "received_at": received_at,
        "source_ip": "92.223.123.1",
        "kinds": meaning.kinds,
        "origin": meaning.origin,
        "resource": meaning.resource,
        "payload": serde_json::from_str::<serde_json::Value>(payload).unwrap(),
    })
    .to_string();
    let envelope: Envelope = serde_json::from_str(&json).unwrap();
    Delivery {
        envelope,
        json,
        body: payload.to_owned(),
        attempt: 1,
    }
}

fn video(id: u64, status: &str) -> String {
    format!(
        r#"{{"type":"video","message":{{"video":{{"id":{id},"name":"SampleVideo","status":"{status}","converted_videos":[{{"status":"complete"}},{{"status":"processing"}}]}}}}}}"#
    )
}

fn stream(id: u64) -> String {
    format!(
        r#"{{"type":"stream","message":{{"stream":{{"id":{id},"live":true,"recording":false}}}}}}"#
    )
}

fn sink(path: &Path, max_bytes: u64, fsync: FsyncPolicy) -> FileSink {
    let config = FileConfig {
        name: None,
        path: path.to_str().unwrap().to_owned(),
        max_bytes,
        fsync,
    };
    FileSink::new("file".into(), &config).unwrap()
}

/// Every line of a file, each parsed; panics on a line that is not an envelope.
fn lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in a torn line",
        path.display()
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

fn seqs(path: &Path) -> Vec<u64> {
    lines(path)
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn appends_whole_envelope_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let s = sink(&path, 0, FsyncPolicy::Always);
    for seq in 1..=3 {
        s.send(&delivery(
            seq,
            &video(seq, "ready"),
            "2026-11-28T09:15:02.123Z",
        ))
        .await
        .unwrap();
    }
    assert_eq!(seqs(&path), [1, 2, 3]);
    assert_eq!(lines(&path)[0]["kinds"], serde_json::json!(["video.ready"]));
}

#[tokio::test]
async fn rotates_by_size_keeping_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let line_len = delivery(1, &video(1, "ready"), "2026-11-28T09:15:02.123Z")
        .json
        .len() as u64
        + 1;
    let s = sink(&path, line_len * 3, FsyncPolicy::Batch);
    for seq in 1..=10 {
        s.send(&delivery(
            seq,
            &video(seq, "ready"),
            "2026-11-28T09:15:02.123Z",
        ))
        .await
        .unwrap();
    }
    s.flush().await.unwrap();
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    assert_eq!(seqs(&rotated(1)), [1, 2, 3]);
    assert_eq!(seqs(&rotated(2)), [4, 5, 6]);
    assert_eq!(seqs(&rotated(3)), [7, 8, 9]);
    assert_eq!(seqs(&path), [10]);
    for n in 1..=3 {
        assert!(std::fs::metadata(rotated(n)).unwrap().len() <= line_len * 3);
    }
}

#[tokio::test]
async fn templated_paths_split_by_date_and_type() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("{date}/{type}.jsonl");
    let s = sink(&template, 0, FsyncPolicy::Never);
    s.send(&delivery(1, &video(1, "ready"), "2026-11-28T23:59:59.999Z"))
        .await
        .unwrap();
    s.send(&delivery(2, &stream(7), "2026-11-28T23:59:59.999Z"))
        .await
        .unwrap();
    s.send(&delivery(3, &video(2, "ready"), "2026-11-29T00:00:00.001Z"))
        .await
        .unwrap();
    let day1 = dir.path().join("2026-11-28");
    assert_eq!(seqs(&day1.join("video.jsonl")), [1]);
    assert_eq!(seqs(&day1.join("stream.jsonl")), [2]);
    assert_eq!(seqs(&dir.path().join("2026-11-29/video.jsonl")), [3]);
    // Bad templates are refused when the sink is built.
    let bad = FileConfig::new("events/{day}.jsonl");
    assert_eq!(
        FileSink::new("archive".into(), &bad)
            .unwrap_err()
            .to_string(),
        "sink \"archive\": unknown placeholder `{day}` in path \"events/{day}.jsonl\"; use {date} or {type}"
    );
}

#[tokio::test]
async fn reopens_after_the_file_is_moved_away() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let s = sink(&path, 0, FsyncPolicy::Always);
    s.send(&delivery(1, &video(1, "ready"), "2026-11-28T09:15:02.123Z"))
        .await
        .unwrap();
    let moved = dir.path().join("events.jsonl.old");
    std::fs::rename(&path, &moved).unwrap(); // what logrotate does
    s.send(&delivery(2, &video(2, "ready"), "2026-11-28T09:15:02.123Z"))
        .await
        .unwrap();
    assert_eq!(seqs(&moved), [1]);
    assert_eq!(seqs(&path), [2]);
    // Deleted too.
    std::fs::remove_file(&path).unwrap();
    s.send(&delivery(3, &video(3, "ready"), "2026-11-28T09:15:02.123Z"))
        .await
        .unwrap();
    assert_eq!(seqs(&path), [3]);
}

#[tokio::test]
async fn a_torn_last_line_is_cut_off_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let whole = delivery(1, &video(1, "ready"), "2026-11-28T09:15:02.123Z").json;
    std::fs::write(&path, format!("{whole}\n{}", &whole[..40])).unwrap();
    let s = sink(&path, 0, FsyncPolicy::Always);
    s.send(&delivery(2, &video(2, "ready"), "2026-11-28T09:15:02.123Z"))
        .await
        .unwrap();
    assert_eq!(seqs(&path), [1, 2]);
}

const CHILD_ENV: &str = "STREAMHOOK_FILE_CHILD";

#[test]
fn whole_lines_after_a_kill_mid_write() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        // The child: write big events as fast as possible until killed.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = sink(Path::new(&path), 0, FsyncPolicy::Never);
            let big = "x".repeat(256 * 1024);
            for seq in 1.. {
                let payload = format!(r#"{{"type":"video","message":{{"video":{{"id":{seq},"name":"{big}","status":"ready"}}}}}}"#);
                s.send(&delivery(seq, &payload, "2026-11-28T09:15:02.123Z")).await.unwrap();
                println!("WROTE {seq}");
            }
        });
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut torn_seen = 0;
    for _ in 0..5 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "whole_lines_after_a_kill_mid_write",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while out.read_line(&mut line).unwrap() > 0 && !line.contains("WROTE") {
            line.clear();
        }
        std::thread::sleep(Duration::from_millis(fastrand::u64(5..60)));
        child.kill().unwrap();
        child.wait().unwrap();
        // A reader now sees whole lines, or a last line without its newline it can skip.
        let text = std::fs::read(&path).unwrap();
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        if complete < text.len() {
            torn_seen += 1;
        }
        for l in text[..complete]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
        {
            serde_json::from_slice::<serde_json::Value>(l)
                .expect("a complete line that is not an envelope");
        }
        // The next writer cuts the torn tail off: after it, every line is whole.
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let s = sink(&path, 0, FsyncPolicy::Always);
            s.send(&delivery(0, &video(0, "ready"), "2026-11-28T09:15:02.123Z"))
                .await
                .unwrap();
        });
        assert!(!lines(&path).is_empty());
    }
    eprintln!("file sink: 5 kills mid-write, {torn_seen} left a torn tail, all repaired");
}

async fn printed(format: Format, color: bool, d: &Delivery) -> String {
    let (writer, mut reader) = tokio::io::duplex(1 << 16);
    let s = StdoutSink::with_writer("stdout".into(), format, color, Box::new(writer));
    s.send(d).await.unwrap();
    drop(s);
    let mut out = String::new();
    reader.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn stdout_pretty_and_json() {
    let d = delivery(4, &video(784280, "viewable"), "2026-11-28T09:15:02.123Z");
    assert_eq!(
        printed(Format::Pretty, false, &d).await,
        "2026-11-28T09:15:02.123Z  video.viewable  video 784280 \"SampleVideo\" viewable 1/2 renditions  (upload)\n"
    );
    let coloured = printed(Format::Pretty, true, &d).await;
    assert!(
        coloured.contains("\x1b[36mvideo.viewable\x1b[0m"),
        "{coloured:?}"
    );
    let json = printed(Format::Json, false, &d).await;
    assert_eq!(json.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["seq"], 4);
}

#[test]
fn unknown_sink_types_list_the_valid_ones() {
    let err =
        serde_json::from_str::<streamhook_sinks::SinkConfig>(r#"{"type": "s3", "bucket": "x"}"#)
            .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("unknown variant `s3`, expected one of `stdout`, `file`, `http`"),
        "{err}"
    );
    let err = serde_json::from_str::<streamhook_sinks::SinkConfig>(
        r#"{"type": "file", "path": "x", "rotate": 1}"#,
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "unknown field `rotate`, expected one of `name`, `path`, `max_bytes`, `fsync`"
        ),
        "{err}"
    );
}
