//! Socket activation with the real binary: the test holds listening sockets, as systemd does,
//! and passes them as descriptors 3 and 4 with `LISTEN_FDS`, `LISTEN_PID` and
//! `LISTEN_FDNAMES`; the server serves them (with TLS too) instead of binding its own, and a
//! restart on the same socket refuses nothing. Also: the systemd units pass
//! `systemd-analyze verify`.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_streamhook-server");

/// A listening socket on 127.0.0.1 that children inherit.
fn held_socket() -> std::net::TcpListener {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    rustix::io::fcntl_setfd(&l, rustix::io::FdFlags::empty()).unwrap();
    l
}

/// A server process, killed if a test fails before stopping it.
struct Server(Child);

impl std::ops::Deref for Server {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the server with `sockets` as descriptors 3, 4, ... named `names`.
fn activated(
    sockets: &[&std::net::TcpListener],
    names: &str,
    config: &std::path::Path,
) -> (Server, Arc<Mutex<Vec<String>>>) {
    let mut script = String::new();
    // Move each socket to its place from a high number first, so no move clobbers another.
    for (i, s) in sockets.iter().enumerate() {
        script.push_str(&format!("exec {}<&{}; ", 20 + i, s.as_raw_fd()));
    }
    for (i, _) in sockets.iter().enumerate() {
        script.push_str(&format!("exec {}<&{}; exec {}<&-; ", 3 + i, 20 + i, 20 + i));
    }
    script.push_str(&format!(
        "export LISTEN_FDS={} LISTEN_PID=$$ LISTEN_FDNAMES={names}; exec \"$0\" \"$@\"",
        sockets.len()
    ));
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(BIN)
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&log);
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    (Server(child), log)
}

fn config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("streamhook.toml");
    // `listen` names a port nothing could bind twice: the inherited socket must be used.
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:1\"\nallow = [\"127.0.0.1/32\"]\ndata_dir = \"{}\"\n{extra}[admin]\nlisten = \"127.0.0.1:1\"\ntoken = \"activation-test-token-0123456789abcdef\"\n[[sinks]]\ntype = \"file\"\nname = \"archive\"\npath = \"{}\"\n",
            dir.join("data").display(),
            dir.join("events.jsonl").display()
        ),
    )
    .unwrap();
    path
}

fn stop(child: &mut Server) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    // A server that does not stop fails the test (and is killed by `Server`'s drop).
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "SIGTERM should exit 0, not {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not stop within 30 s of SIGTERM");
}

#[tokio::test]
async fn the_server_serves_the_sockets_it_is_given_and_a_restart_refuses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let webhook = held_socket();
    let admin = held_socket();
    let config = config(dir.path(), "");
    let port = webhook.local_addr().unwrap().port();
    let admin_port = admin.local_addr().unwrap().port();
    let (mut child, log) = activated(&[&admin, &webhook], "admin:webhook", &config);
    let url = format!("http://127.0.0.1:{port}/webhook");
    let body = fixture("seed/01-stream-started.json");
    eventually_async(
        "served on the inherited socket",
        || {
            let (url, body) = (url.clone(), body.clone());
            async move {
                client()
                    .post(url)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        },
        200,
    )
    .await;
    let ready = client()
        .get(format!("http://127.0.0.1:{admin_port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "the admin socket is the one named `admin`"
    );
    // The restart: stop this process; while none runs, a client connects (the socket is
    // held here, so it waits in the backlog); the next process answers it.
    stop(&mut child);
    let waiting = tokio::spawn({
        let (url, body) = (url.clone(), body.clone());
        async move { post(&client(), &url, body).await.0 }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "answered with no server running?");
    let (mut next, _) = activated(&[&admin, &webhook], "admin:webhook", &config);
    assert_eq!(
        waiting.await.unwrap(),
        200,
        "the waiting request was served"
    );
    stop(&mut next);
    let text = log.lock().unwrap().join("\n");
    assert!(
        text.contains(&format!(
            "webhook listener 127.0.0.1:{port} inherited from the service manager"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn tls_works_on_an_inherited_socket() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
    let webhook = held_socket();
    let port = webhook.local_addr().unwrap().port();
    let config = config(
        dir.path(),
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        ),
    );
    // One socket, unnamed (systemd names it after its unit): it is the webhook listener.
    let (mut child, log) = activated(&[&webhook], "streamhook.socket", &config);
    let _ = &log;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(key.cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/webhook");
    let body = fixture("seed/15-video-processed.json");
    eventually_async(
        "served over TLS on the inherited socket",
        || {
            let (c, url, body) = (trusting.clone(), url.clone(), body.clone());
            async move {
                c.post(url)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        },
        200,
    )
    .await;
    stop(&mut child);
}

#[test]
fn badly_named_sockets_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let a = held_socket();
    let b = held_socket();
    let config = config(dir.path(), "");
    let (mut child, log) = activated(&[&a, &b], "webhook:metrics", &config);
    let status = child.wait().unwrap();
    assert!(!status.success());
    // The log reader may still be draining the pipe.
    for _ in 0..100 {
        if log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("socket activation"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = log.lock().unwrap().join("\n");
    assert!(
        text.contains("socket activation: socket 1 is named \"metrics\""),
        "{text}"
    );
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("SKIPPED: systemd-analyze is not installed (CI installs it: Debian's `systemd`)");
        return;
    };
    assert!(out.status.success());
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/systemd");
    let dir = tempfile::tempdir().unwrap();
    for unit in [
        "streamhook.service",
        "streamhook.socket",
        "streamhook-admin.socket",
    ] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        // The package installs the binary at /usr/bin; here it is the one cargo built.
        let text = text.replace("/usr/bin/streamhook-server", BIN);
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(
            [
                "streamhook.service",
                "streamhook.socket",
                "streamhook-admin.socket",
            ]
            .map(|u| dir.path().join(u)),
        )
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // systemd-analyze prints nothing about units it accepts.
    let about_ours: Vec<&str> = said.lines().filter(|l| l.contains("streamhook")).collect();
    assert!(
        out.status.success() && about_ours.is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
}

#[tokio::test]
async fn it_tells_systemd_when_it_is_ready_pings_the_watchdog_and_says_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let webhook = held_socket();
    let port = webhook.local_addr().unwrap().port();
    let config = config(dir.path(), "");
    // What systemd sets for a Type=notify service with WatchdogSec=.
    let mut script = format!("exec 3<&{}; ", webhook.as_raw_fd());
    script.push_str("export LISTEN_FDS=1 LISTEN_PID=$$ WATCHDOG_PID=$$; exec \"$0\" \"$@\"");
    let child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(BIN)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Server(child);
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = notify.recv(&mut buf).expect("no notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1\n");
    // Ready means serving: a request is answered now.
    let (status, _) = post(
        &client(),
        &format!("http://127.0.0.1:{port}/webhook"),
        fixture("seed/01-stream-started.json"),
    )
    .await;
    assert_eq!(status, 200);
    // Pings at half the watchdog timeout.
    assert_eq!(next(), "WATCHDOG=1\n");
    assert_eq!(next(), "WATCHDOG=1\n");
    stop(&mut child);
    let mut rest = Vec::new();
    notify.set_nonblocking(true).unwrap();
    while let Ok(n) = notify.recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(rest.contains(&"STOPPING=1\n".to_owned()), "{rest:?}");
}
