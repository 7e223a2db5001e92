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
        requeued: false,
        lease: None,
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
        start: None,
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

#[tokio::test]
async fn stdout_shows_an_invalid_event_in_red_with_its_problem() {
    let body = r#"{"type":"stream","message":{"stream":{"id":7,"live":"yes"}}}"#;
    let json = serde_json::json!({
        "id": "0193-test-9", "seq": 9, "received_at": "2026-11-28T09:15:02.123Z",
        "source_ip": "92.223.123.1", "kinds": ["invalid"],
        "resource": {"type": "stream", "id": 7},
        "problems": [{"path": "$.message.stream.live", "line": 1, "column": 48,
            "message": "$.message.stream.live: expected a boolean, found the string \"yes\""}],
        "payload": serde_json::from_str::<serde_json::Value>(body).unwrap(),
    })
    .to_string();
    let d = Delivery {
        envelope: serde_json::from_str(&json).unwrap(),
        json,
        body: body.into(),
        attempt: 1,
        requeued: false,
        lease: None,
    };
    assert_eq!(
        printed(Format::Pretty, false, &d).await,
        "2026-11-28T09:15:02.123Z  invalid  stream 7  does not fit the model: $.message.stream.live: expected a boolean, found the string \"yes\" (line 1, column 48)\n"
    );
    let coloured = printed(Format::Pretty, true, &d).await;
    assert!(coloured.contains("\x1b[31minvalid\x1b[0m"), "{coloured:?}");
    assert!(
        coloured.contains("\x1b[31mdoes not fit the model: "),
        "{coloured:?}"
    );
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

#[tokio::test]
async fn after_a_crash_it_says_what_it_already_holds() {
    use streamhook_core::Held;
    let held = |seq: u64| {
        Some(Held {
            seq,
            id: format!("0193-test-{seq}"),
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("{type}.jsonl");
    let s = sink(&template, 0, FsyncPolicy::Never);
    assert_eq!(s.delivered_through().await, None, "nothing written yet");
    for seq in 1..=4 {
        let payload = if seq % 2 == 0 {
            stream(seq)
        } else {
            video(seq, "ready")
        };
        s.send(&delivery(seq, &payload, "2026-11-28T10:00:00.000Z"))
            .await
            .unwrap();
    }
    drop(s);
    // A new process: the position file and the last line agree on seq 4.
    let again = sink(&template, 0, FsyncPolicy::Never);
    assert_eq!(again.delivered_through().await, held(4));

    // Killed after recording seq 5 but before its line: 4 is what it holds.
    let video_file = dir.path().join("video.jsonl");
    std::fs::write(
        again.position_path(),
        format!("5 0193-test-5 {}\n4 0193-test-4\n", video_file.display()),
    )
    .unwrap();
    assert_eq!(again.delivered_through().await, held(4));
    // Killed after the line of seq 5 was written: 5.
    again
        .send(&delivery(5, &video(5, "ready"), "2026-11-28T10:00:00.000Z"))
        .await
        .unwrap();
    assert_eq!(again.delivered_through().await, held(5));
    // A position file older than the lines (a power loss): the line written before the
    // recorded one, never anything newer: lines may be written again, none is skipped.
    std::fs::write(
        again.position_path(),
        format!(
            "2 0193-test-2 {}\n1 0193-test-1\n",
            dir.path().join("stream.jsonl").display()
        ),
    )
    .unwrap();
    assert_eq!(again.delivered_through().await, held(1));
    // Another sink's (or another journal's) line at the end of the named file does not count:
    // same seq, other id.
    std::fs::write(
        again.position_path(),
        format!("5 another-id {}\n4 0193-test-4\n", video_file.display()),
    )
    .unwrap();
    assert_eq!(again.delivered_through().await, held(4));
    // A requeued dead letter (out of journal order) says nothing about where to resume.
    let mut requeued = delivery(40, &stream(40), "2026-11-28T10:00:00.000Z");
    requeued.requeued = true;
    again
        .send(&delivery(6, &video(6, "ready"), "2026-11-28T10:00:00.000Z"))
        .await
        .unwrap();
    again.send(&requeued).await.unwrap();
    assert_eq!(again.delivered_through().await, held(6));
    // A torn position file: it cannot tell.
    std::fs::write(again.position_path(), "9").unwrap();
    assert_eq!(again.delivered_through().await, None);
    // A replay moved it back: it forgets.
    again.rewound(1).await.unwrap();
    assert!(!again.position_path().exists());
    assert_eq!(again.delivered_through().await, None);
}

#[tokio::test]
async fn a_hostile_type_is_cut_to_a_bounded_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("{type}.jsonl");
    let s = sink(&template, 0, FsyncPolicy::Always);
    let long = "x/../".repeat(2000);
    let payload = format!(r#"{{"type":"{long}","message":{{}}}}"#);
    let d = delivery(1, &payload, "2026-11-28T10:00:00.000Z");
    let path = s.path_for(&d);
    let name = path.file_name().unwrap().to_str().unwrap();
    assert_eq!(name.len(), 64 + ".jsonl".len(), "{name}");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    );
    s.send(&d).await.unwrap();
    assert_eq!(seqs(&path), [1]);
}

#[tokio::test]
async fn a_restart_after_a_kill_writes_nothing_twice() {
    use std::sync::{Arc, RwLock};
    use streamhook_core::{Dispatcher, Journal, JournalConfig, RetryPolicy, Router, Verified};
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path().join("data"))).unwrap();
    journal.set_cursor("file", 1).unwrap();
    let source = Verified::trusted_local([127, 0, 0, 1].into());
    for i in 0..20 {
        let body = video(i, "ready");
        let webhook = streamhook_types::decode::decode(body.as_bytes())
            .unwrap()
            .webhook;
        journal
            .append(source, body.as_bytes(), webhook)
            .await
            .unwrap();
    }
    let path = dir.path().join("events.jsonl");
    let router = Arc::new(RwLock::new(Arc::new(
        Router::new(&[], &[], &["file".to_owned()]).unwrap(),
    )));
    let run = |journal: Journal| {
        let sink = Arc::new(sink(&path, 0, FsyncPolicy::Never));
        let d = Dispatcher::new(journal, sink, Arc::clone(&router), RetryPolicy::default());
        let (stop, rx) = tokio::sync::watch::channel(false);
        (stop, tokio::spawn(d.run(rx)))
    };
    let (stop, task) = run(journal.clone());
    for _ in 0..500 {
        if path.exists() && seqs(&path).len() == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    // The kill: the persisted cursor is behind what the file holds.
    journal.set_cursor("file", 1).unwrap();
    let (stop, task) = run(journal.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(seqs(&path), (1..=20).collect::<Vec<_>>(), "each event once");
    assert_eq!(journal.cursor("file").unwrap(), 21);

    // A replay asked while no dispatcher runs (a reload, a restart) is not undone by what the
    // sink held: every event is written again.
    journal
        .replay("file", streamhook_core::ReplayFrom::Seq(1))
        .await
        .unwrap();
    let (stop, task) = run(journal.clone());
    for _ in 0..500 {
        if seqs(&path).len() == 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    let mut want: Vec<u64> = (1..=20).collect();
    want.extend(1..=20);
    assert_eq!(seqs(&path), want, "the replay happened");

    // The same files under a new journal (another data directory): the recorded position
    // names an event this journal does not hold, so it is ignored and nothing is skipped.
    let other = Journal::open(JournalConfig::new(dir.path().join("other"))).unwrap();
    other.set_cursor("file", 1).unwrap();
    for i in 0..25 {
        let body = video(100 + i, "ready");
        let webhook = streamhook_types::decode::decode(body.as_bytes())
            .unwrap()
            .webhook;
        other
            .append(source, body.as_bytes(), webhook)
            .await
            .unwrap();
    }
    let (stop, task) = run(other.clone());
    for _ in 0..500 {
        if seqs(&path).len() == 65 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        seqs(&path).len(),
        65,
        "the new journal's 25 events were all written"
    );
}

#[tokio::test]
async fn a_batch_writes_runs_in_order_and_resumes_inside_a_torn_run() {
    use streamhook_core::Held;
    let held = |seq: u64| {
        Some(Held {
            seq,
            id: format!("0193-test-{seq}"),
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("{type}.jsonl");
    let s = sink(&template, 0, FsyncPolicy::Always);
    // Streams 1-3, videos 4-5, stream 6: three runs, in order.
    let batch: Vec<Delivery> = (1..=6)
        .map(|seq| {
            let payload = if (4..=5).contains(&seq) {
                video(seq, "ready")
            } else {
                stream(seq)
            };
            delivery(seq, &payload, "2026-11-28T10:00:00.000Z")
        })
        .collect();
    let refs: Vec<&Delivery> = batch.iter().collect();
    s.send_batch(&refs).await.unwrap();
    let streams = dir.path().join("stream.jsonl");
    let videos = dir.path().join("video.jsonl");
    assert_eq!(seqs(&streams), vec![1, 2, 3, 6]);
    assert_eq!(seqs(&videos), vec![4, 5]);
    assert_eq!(s.delivered_through().await, held(6));

    // A run of 7-9 recorded (its last line, where it starts), then killed after line 8.
    let more: Vec<Delivery> = (7..=9)
        .map(|seq| delivery(seq, &stream(seq), "2026-11-28T10:00:00.000Z"))
        .collect();
    let start = std::fs::metadata(&streams).unwrap().len();
    let refs: Vec<&Delivery> = more.iter().collect();
    s.send_batch(&refs).await.unwrap();
    let text = std::fs::read_to_string(&streams).unwrap();
    let cut = text.match_indices('\n').nth(5).unwrap().0 + 1; // 1, 2, 3, 6, 7, 8
    std::fs::write(&streams, &text[..cut]).unwrap();
    std::fs::write(
        s.position_path(),
        format!(
            "9 0193-test-9 {}\n6 0193-test-6\n@ {start}\n",
            streams.display()
        ),
    )
    .unwrap();
    assert_eq!(s.delivered_through().await, held(8), "resumes after line 8");
    // The same, killed before any line of the run: the line before the run.
    std::fs::write(
        &streams,
        &text[..text.match_indices('\n').nth(3).unwrap().0 + 1],
    )
    .unwrap();
    assert_eq!(s.delivered_through().await, held(6));
    // A line before the run's start never counts, even with a seq inside the run's range
    // (an older line, written before a replay moved the sink back).
    std::fs::write(
        s.position_path(),
        format!(
            "9 0193-test-9 {}\n2 0193-test-2\n@ {}\n",
            streams.display(),
            std::fs::metadata(&streams).unwrap().len()
        ),
    )
    .unwrap();
    assert_eq!(s.delivered_through().await, held(2));
}

#[tokio::test]
async fn a_batch_rotates_before_a_run_would_pass_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let one = delivery(1, &stream(1), "2026-11-28T10:00:00.000Z")
        .json
        .len() as u64
        + 1;
    // Room for three lines a file.
    let s = sink(&path, one * 3 + 10, FsyncPolicy::Never);
    let batch: Vec<Delivery> = (1..=10)
        .map(|seq| delivery(seq, &stream(seq), "2026-11-28T10:00:00.000Z"))
        .collect();
    let refs: Vec<&Delivery> = batch.iter().collect();
    s.send_batch(&refs).await.unwrap();
    let mut all = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("events.jsonl"))
        .collect();
    // Oldest first: .1, .2, ..., then the live file.
    files.sort_by_key(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .and_then(|e| e.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    });
    for f in &files {
        assert!(
            std::fs::metadata(f).unwrap().len() <= one * 3 + 10,
            "{} grew past max_bytes",
            f.display()
        );
        all.extend(seqs(f));
    }
    assert_eq!(all, (1..=10).collect::<Vec<_>>());
}

/// With `fsync = "batch"` the sink tells the dispatcher what is not synced yet (its cursor
/// waits for it); a sync makes it durable and records so in the position file.
#[tokio::test]
async fn unsynced_lines_hold_the_cursor_until_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let s = sink(&path, 0, FsyncPolicy::Batch);
    assert_eq!(s.not_durable_from(), None);
    // The first write syncs at once (no sync yet), the next ones wait for the next second.
    for seq in 1..=3 {
        s.send(&delivery(
            seq,
            &video(seq, "ready"),
            "2026-11-28T10:00:00.000Z",
        ))
        .await
        .unwrap();
    }
    assert_eq!(s.not_durable_from(), Some(2));
    s.flush().await.unwrap();
    assert_eq!(s.not_durable_from(), None);
    let position = std::fs::read_to_string(s.position_path()).unwrap();
    assert!(position.contains("\nsynced 3 0193-test-3\n"), "{position}");
    // `always`: every line is durable before `send` returns; `never`: the operator chose.
    for fsync in [FsyncPolicy::Always, FsyncPolicy::Never] {
        let other = sink(&dir.path().join(format!("{fsync}.jsonl")), 0, fsync);
        other
            .send(&delivery(1, &video(1, "ready"), "2026-11-28T10:00:00.000Z"))
            .await
            .unwrap();
        assert_eq!(other.not_durable_from(), None, "{fsync}");
    }
}

/// After a reboot (another boot id in the position file), a templated sink (several files)
/// trusts only the last line made durable: the kernel may have lost any line after it, in any
/// file. A sink of one file trusts that file's own last line, whatever the position says.
#[tokio::test]
async fn after_a_reboot_only_what_was_synced_counts() {
    use streamhook_core::Held;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("{type}.jsonl");
    let s = sink(&path, 0, FsyncPolicy::Batch);
    for seq in 1..=4 {
        s.send(&delivery(
            seq,
            &video(seq, "ready"),
            "2026-11-28T10:00:00.000Z",
        ))
        .await
        .unwrap();
    }
    s.flush().await.unwrap();
    s.send(&delivery(5, &video(5, "ready"), "2026-11-28T10:00:00.000Z"))
        .await
        .unwrap();
    // This boot: the file's own last line (5).
    assert_eq!(
        s.delivered_through().await.map(|h| h.seq),
        Some(5),
        "a killed process: the kernel kept every line"
    );
    // Another boot: what was synced (4), whatever the file seems to hold.
    let text = std::fs::read_to_string(s.position_path()).unwrap();
    let rebooted: String = text
        .lines()
        .map(|l| {
            if l.starts_with("boot ") {
                "boot 00000000-0000-0000-0000-000000000000".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    assert_ne!(text, rebooted, "the position file records the boot");
    std::fs::write(s.position_path(), &rebooted).unwrap();
    assert_eq!(
        s.delivered_through().await,
        Some(Held {
            seq: 4,
            id: "0193-test-4".into()
        })
    );
    // One file: its last line (5) is on disk, so it holds 5, rebooted or not; and the
    // position cannot claim more than the file holds.
    let one = dir.path().join("video.jsonl");
    let single = sink(&one, 0, FsyncPolicy::Batch);
    std::fs::write(single.position_path(), &rebooted).unwrap();
    assert_eq!(single.delivered_through().await.map(|h| h.seq), Some(5));
    let ahead = rebooted.replace("5 0193-test-5", "9 0193-test-9");
    std::fs::write(single.position_path(), ahead).unwrap();
    assert_eq!(single.delivered_through().await.map(|h| h.seq), Some(5));
}

/// A last line longer than 64 KiB is still read back whole.
#[tokio::test]
async fn a_last_line_over_64_kib_still_says_where_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let s = sink(&path, 0, FsyncPolicy::Always);
    s.send(&delivery(1, &video(1, "ready"), "2026-11-28T10:00:00.000Z"))
        .await
        .unwrap();
    let big = format!(
        r#"{{"type":"video","message":{{"video":{{"id":2,"status":"ready","name":"{}"}}}}}}"#,
        "x".repeat(200 * 1024)
    );
    s.send(&delivery(2, &big, "2026-11-28T10:00:00.000Z"))
        .await
        .unwrap();
    drop(s);
    let again = sink(&path, 0, FsyncPolicy::Always);
    assert_eq!(again.delivered_through().await.map(|h| h.seq), Some(2));
}

/// A journal error pauses the dispatcher, which starts again from its persisted cursor: what
/// the file sink wrote since is read again (its own position), so nothing is written twice.
#[tokio::test]
async fn a_journal_error_does_not_make_the_file_sink_write_twice() {
    use std::sync::{Arc, RwLock};
    use streamhook_core::{Dispatcher, Journal, JournalConfig, RetryPolicy, Router, Verified};
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(JournalConfig::new(dir.path().join("data"))).unwrap();
    journal.set_cursor("file", 1).unwrap();
    let source = Verified::trusted_local([127, 0, 0, 1].into());
    let append = |i: u64| {
        let journal = journal.clone();
        async move {
            let body = video(i, "ready");
            let webhook = streamhook_types::decode::decode(body.as_bytes())
                .unwrap()
                .webhook;
            journal
                .append(source, body.as_bytes(), webhook)
                .await
                .unwrap();
        }
    };
    for i in 0..10 {
        append(i).await;
    }
    let path = dir.path().join("events.jsonl");
    let router = Arc::new(RwLock::new(Arc::new(
        Router::new(&[], &[], &["file".to_owned()]).unwrap(),
    )));
    let sink = Arc::new(sink(&path, 0, FsyncPolicy::Always));
    let d = Dispatcher::new(journal.clone(), sink, router, RetryPolicy::default());
    let stats = d.stats();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(d.run(rx));
    for _ in 0..500 {
        if journal.cursor("file").unwrap() == 11 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The persisted cursor behind what the file holds (as 200 ms after a write), then the
    // next save fails: the dispatcher starts again from the persisted cursor.
    journal.set_cursor("file", 1).unwrap();
    journal.fail_next_cursor_saves(1);
    append(10).await;
    for _ in 0..500 {
        if stats
            .journal_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
            && journal.cursor("file").unwrap() == 12
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        stats
            .journal_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(seqs(&path), (1..=11).collect::<Vec<_>>(), "each event once");
}
