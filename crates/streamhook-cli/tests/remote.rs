//! `send`, `tail`, `replay`, `dead-letters` and `status` against a real streamhook-server on
//! loopback; `--bind` from a disallowed loopback address gets 403.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use streamhook_server::{Config, Server};
use streamhook_sinks::SinkConfig;
use streamhook_sinks::file::{FileConfig, FsyncPolicy};

const BIN: &str = env!("CARGO_BIN_EXE_streamhook");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Running {
    url: String,
    admin: String,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        allow: vec!["127.0.0.1/32".parse().unwrap()],
        data_dir: dir.path().join("data"),
        sinks: vec![SinkConfig::File(FileConfig {
            name: Some("archive".into()),
            path: dir.path().join("events.jsonl").to_str().unwrap().to_owned(),
            max_bytes: 0,
            fsync: FsyncPolicy::Always,
            start: None,
        })],
        ..Config::default()
    };
    config.retry.initial_backoff = Duration::from_millis(10);
    let server = Server::new(config).unwrap();
    server.admin_token().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (url, admin_url) = (
        format!("http://{}/webhook", listener.local_addr().unwrap()),
        format!("http://{}", admin.local_addr().unwrap()),
    );
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run_with(listener, Some(admin), async move {
        let _ = rx.await;
    }));
    Running {
        url,
        admin: admin_url,
        dir,
        stop: Some(stop),
    }
}

async fn cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .current_dir(root())
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

impl Running {
    fn admin_args(&self) -> Vec<String> {
        vec![
            "--admin".into(),
            self.admin.clone(),
            "--data-dir".into(),
            self.dir.path().join("data").to_str().unwrap().into(),
        ]
    }

    async fn archived(&self, n: usize) {
        for _ in 0..1000 {
            let lines = std::fs::read_to_string(self.dir.path().join("events.jsonl"))
                .unwrap_or_default()
                .lines()
                .count();
            if lines >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the archive never reached {n} lines");
    }
}

#[tokio::test]
async fn send_is_accepted_and_a_disallowed_bind_address_is_refused() {
    let mut server = start().await;
    let o = cli(vec![
        "send".into(),
        "--to".into(),
        server.url.clone(),
        "fixtures/seed".into(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = text(&o);
    assert_eq!(
        out.lines().filter(|l| l.contains("  200  ")).count(),
        15,
        "{out}"
    );
    assert!(
        out.contains("fixtures/seed/01-stream-started.json:1:1  200  {\"id\":"),
        "{out}"
    );
    assert!(out.ends_with("sent 15: 15 accepted, 0 refused\n"), "{out}");

    let o = cli(vec![
        "send".into(),
        "--to".into(),
        server.url.clone(),
        "--bind".into(),
        "127.0.0.2".into(),
        "fixtures/seed/01-stream-started.json".into(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(1));
    // A source that can never be allowed is closed at accept, without an answer.
    let out = text(&o);
    assert!(
        out.starts_with("fixtures/seed/01-stream-started.json:1:1  failed: ")
            && out
                .contains("(closed without an answer: is this source address allowed? try --bind)")
            && out.ends_with("\nsent 1: 0 accepted, 1 refused\n"),
        "{out}"
    );
    // The body arrived byte for byte: the archive's payload equals the file.
    server.archived(15).await;
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(server.dir.path().join("events.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let file: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("fixtures/seed/01-stream-started.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(first["payload"], file);
    let _ = server.stop.take().unwrap().send(());
}

#[tokio::test]
async fn tail_replay_status_and_dead_letters_drive_the_admin_api() {
    let mut server = start().await;
    let o = cli(vec![
        "send".into(),
        "--to".into(),
        server.url.clone(),
        "fixtures/seed/12-video-uploaded.json".into(),
        "fixtures/seed/15-video-processed.json".into(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    server.archived(2).await;

    let mut args = vec!["tail".into(), "--from".into(), "1".into(), "--once".into()];
    args.extend(server.admin_args());
    let o = cli(args.clone()).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines: Vec<String> = text(&o).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].ends_with(
            "  video.uploaded  video 54321 \"SampleVideo\" empty 0/0 renditions 2m50s  (upload)"
        ),
        "{}",
        lines[0]
    );
    args.extend(["--kind".into(), "video.ready".into(), "--json".into()]);
    let o = cli(args).await;
    let v: serde_json::Value = serde_json::from_str(text(&o).trim()).unwrap();
    assert_eq!(v["kinds"], serde_json::json!(["video.ready"]));

    let mut args = vec![
        "replay".into(),
        "--sink".into(),
        "archive".into(),
        "--from-seq".into(),
        "1".into(),
    ];
    args.extend(server.admin_args());
    let o = cli(args).await;
    // How many events it sends, said before sending.
    assert_eq!(
        text(&o),
        "sink \"archive\" would get again 2 journaled events from seq 1 (those routed to it)\nreplaying sink archive from seq 1\n"
    );
    server.archived(4).await;

    let mut args = vec!["status".into()];
    args.extend(server.admin_args());
    let o = cli(args).await;
    assert!(
        text(&o).starts_with("journal: 2 events held, last seq 2\narchive  cursor "),
        "{}",
        text(&o)
    );

    let mut args = vec!["dead-letters".into(), "list".into()];
    args.extend(server.admin_args());
    let o = cli(args).await;
    assert_eq!(text(&o), "no dead letters\n");
    let mut args = vec![
        "dead-letters".into(),
        "requeue".into(),
        "--sink".into(),
        "archive".into(),
        "--seq".into(),
        "9".into(),
    ];
    args.extend(server.admin_args());
    let o = cli(args).await;
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "streamhook: 404 Not Found: no dead letter for sink \"archive\" at seq 9\n"
    );

    // A wrong token is explained.
    let o = cli(vec![
        "status".into(),
        "--admin".into(),
        server.admin.clone(),
        "--token".into(),
        "nope".into(),
    ])
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("401 Unauthorized: missing or wrong admin token")
    );
    let _ = server.stop.take().unwrap().send(());
}

#[tokio::test]
async fn tail_follows_a_file_archive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let env = |seq: u64, kind: &str| {
        format!(
            r#"{{"id":"i{seq}","seq":{seq},"received_at":"2026-11-28T09:00:0{seq}.000Z","source_ip":"92.223.123.1","kinds":["{kind}"],"resource":{{"type":"stream","id":1}},"payload":{{"type":"stream","message":{{"stream":{{"id":1,"live":true}}}}}}}}"#
        )
    };
    std::fs::write(
        &path,
        format!(
            "{}\n{}\n{{\"id\":\"torn",
            env(1, "stream.started"),
            env(2, "stream.updated")
        ),
    )
    .unwrap();
    let o = cli(vec![
        "tail".into(),
        "--file".into(),
        path.to_str().unwrap().into(),
        "--once".into(),
    ])
    .await;
    assert_eq!(
        text(&o),
        "2026-11-28T09:00:01.000Z  stream.started  stream 1 live\n2026-11-28T09:00:02.000Z  stream.updated  stream 1 live\n",
        "a torn last line is skipped"
    );
}
