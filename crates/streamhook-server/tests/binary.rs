//! The real `streamhook-server` binary: defaults with no arguments, `--check-config`,
//! `--print-config`, SIGHUP reload (good and bad configs, without failing a request), SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_streamhook-server");

/// Starts the binary; returns it, its webhook address (read from its log) and its log lines.
fn spawn(cmd: &mut Command) -> (Child, String, Arc<Mutex<Vec<String>>>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split('/').next().unwrap_or_default().to_owned());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server did not say where it listens");
    (child, addr, log)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

#[tokio::test]
async fn with_no_arguments_it_runs_on_the_embedded_defaults() {
    let dir = tempfile::tempdir().unwrap();
    // Only the ports are moved (to free ones), by variable: everything else is default.
    let (mut child, addr, log) = spawn(
        Command::new(BIN)
            .current_dir(dir.path())
            .env("STREAMHOOK_LISTEN", "127.0.0.1:0")
            .env("STREAMHOOK_ADMIN_LISTEN", "127.0.0.1:0"),
    );
    // The default allowlist is Gcore's ranges: loopback is closed at accept.
    assert!(refused_at_accept(&client(), &format!("http://{addr}/webhook")).await);
    assert!(dir.path().join("streamhook-data/journal.redb").exists());
    let text = log.lock().unwrap().join("\n");
    for expected in [
        "allowing 92.223.112.0/24, 92.223.123.0/24",
        "no path token: Gcore's ranges send the webhooks of every Gcore customer",
        "sink stdout: stdout (pretty)",
        "journal ./streamhook-data/journal.redb",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success(), "SIGTERM should exit 0");
}

#[test]
fn check_config_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "allow = [\"127.0.0.1\"]\n[[sinks]]\ntype = \"stdout\"\n[[routes]]\nkinds = [\"video.*\"]\nsinks = [\"stdout\"]\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", good.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configuration OK: listen 0.0.0.0:8080, 1 allowed ranges, 1 sinks (stdout), 1 routes\n"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[sinks]]\ntype = \"stdout\"\n[[routes]]\nname = \"videos\"\nkinds = [\"video.*\"]\nsinks = [\"app\"]\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", bad.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "streamhook-server: invalid configuration: route #1 (\"videos\"): unknown sink \"app\"; configured sinks: stdout\n"
    );

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "listen = \"0.0.0.0:8080\"\nalow = [\"127.0.0.1\"]\n").unwrap();
    let out = Command::new(BIN)
        .args(["--config", typo.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typo.toml: TOML parse error at line 2, column 1")
            && err.contains("unknown field `alow`"),
        "{err}"
    );
}

#[test]
fn print_config_shows_the_effective_config_with_secrets_redacted() {
    let out = Command::new(BIN)
        .args([
            "--print-config",
            "--forward",
            "http://127.0.0.1:3000/hook",
            "--forward-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "--allow",
            "10.0.0.0/8",
        ])
        .env("STREAMHOOK_LISTEN", "127.0.0.1:9999")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let config: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(
        config["listen"].as_str(),
        Some("127.0.0.1:9999"),
        "variables apply"
    );
    assert_eq!(
        config["allow"].as_array().unwrap().len(),
        1,
        "--allow replaces the default"
    );
    assert_eq!(config["sinks"][0]["type"].as_str(), Some("stdout"));
    assert_eq!(config["sinks"][1]["type"].as_str(), Some("http"));
    assert_eq!(
        config["sinks"][1]["secrets"][0].as_str(),
        Some("<redacted>")
    );
    assert!(!text.contains("MfKQ9r8"), "a secret leaked:\n{text}");
    assert_eq!(config["limits"]["max_body_bytes"].as_integer(), Some(65536));
}

#[tokio::test]
async fn sighup_reloads_the_allowlist_without_failing_a_request_and_keeps_the_old_config_if_the_new_is_bad()
 {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("streamhook.toml");
    let write_config = |allow: &str| {
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nallow = [{allow}]\n[admin]\nenabled = false\n[[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
            dir.path().join("data").display(),
            dir.path().join("events.jsonl").display()
        );
        std::fs::write(&config_path, text).unwrap();
    };
    write_config("\"127.0.0.1/32\"");
    let (mut child, addr, log) =
        spawn(Command::new(BIN).args(["--config", config_path.to_str().unwrap()]));
    let url = format!("http://{addr}/webhook");
    let body = fixture("seed/01-stream-started.json");
    assert!(refused_at_accept(&client_from("127.0.0.2"), &url).await);

    // A client keeps sending through the reloads; every request must succeed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let steady = tokio::spawn({
        let (url, body, stop) = (url.clone(), body.clone(), stop.clone());
        async move {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let (status, err) = post(&client(), &url, body.clone()).await;
                assert_eq!(status, 200, "a request failed during reload: {err}");
                sent += 1;
            }
            sent
        }
    });

    write_config("\"127.0.0.1/32\", \"127.0.0.2/32\"");
    signal(&child, "HUP");
    eventually("reloaded", || {
        log.lock().unwrap().iter().any(|l| l.contains("reloaded:"))
    })
    .await;
    assert_eq!(
        post(&client_from("127.0.0.2"), &url, body.clone()).await.0,
        200
    );

    std::fs::write(&config_path, "allow = [\"not a cidr\"]\n").unwrap();
    signal(&child, "HUP");
    eventually("refused", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("reload refused, keeping the old config"))
    })
    .await;
    assert_eq!(
        post(&client_from("127.0.0.2"), &url, body.clone()).await.0,
        200,
        "the old config stays"
    );

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = steady.await.unwrap();
    assert!(sent > 0);
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let text = log.lock().unwrap().join("\n");
    assert!(text.contains("not a cidr"), "the reason is logged:\n{text}");
}

#[tokio::test]
async fn an_admin_listener_off_loopback_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _addr, log) = spawn(
        Command::new(BIN)
            .current_dir(dir.path())
            .env("STREAMHOOK_LISTEN", "127.0.0.1:0")
            .env("STREAMHOOK_ADMIN_LISTEN", "0.0.0.0:0")
            .env("STREAMHOOK_PATH_TOKEN", "k7Qm2xVb9PzR4tLw8NcY"),
    );
    eventually("the admin line", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("admin API on"))
    })
    .await;
    signal(&child, "TERM");
    assert!(child.wait().unwrap().success());
    let text = log.lock().unwrap().join("\n");
    assert!(
        text.contains("the admin listener 0.0.0.0:") && text.contains("is not on loopback"),
        "{text}"
    );
    // With a path token, no warning about it.
    assert!(!text.contains("no path token"), "{text}");
}
