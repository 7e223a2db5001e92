//! `cargo xtask demo`: the whole product in a minute, on loopback, leaving nothing behind.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a demo prints

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, project_root};

/// A free port on 127.0.0.1 (the OS picks it; a race with another process is unlikely).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A fresh folder under the system's temporary folder.
pub fn temp_dir(name: &str) -> Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let dir =
        std::env::temp_dir().join(format!("streamhook-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Waits until `GET /healthz` answers 200.
pub fn wait_healthy(port: u16, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ =
                s.write_all(b"GET /healthz HTTP/1.1\r\nhost: demo\r\nconnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the server did not become healthy on port {port} within {within:?}")
}

/// Sends SIGTERM and waits for the exit.
pub fn terminate(child: &mut Child) -> Result<std::process::ExitStatus> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .context("cannot run kill")?;
    Ok(child.wait()?)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = crate::files_under(dir).unwrap_or_default();
    out.sort();
    out
}

pub fn run() -> Result<()> {
    let root = project_root();
    cargo(
        &[
            "build",
            "--quiet",
            "-p",
            "streamhook-server",
            "-p",
            "streamhook-cli",
        ],
        &[],
    )?;
    let bin = root.join("target/debug");
    let dir = temp_dir("demo")?;
    let (port, admin_port) = (free_port()?, free_port()?);
    let events = dir.join("events");
    let template = format!("{}/{{date}}/{{type}}.jsonl", events.display());
    eprintln!("demo: data and sinks in {}", dir.display());

    let mut server = Command::new(bin.join("streamhook-server"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
        ])
        .args(["--allow", "127.0.0.0/8", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--file", &template])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start streamhook-server")?;
    let stdout = server.stdout.take().context("no stdout")?;
    let printed = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let stderr = server.stderr.take().context("no stderr")?;
    let logged = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let result = (|| -> Result<()> {
        wait_healthy(port, Duration::from_secs(30))?;
        println!(
            "== streamhook send: every fixture, valid and invalid, as Gcore would POST them\n"
        );
        let status = Command::new(bin.join("streamhook"))
            .args(["send", "--to", &format!("http://127.0.0.1:{port}/webhook")])
            .args([
                "fixtures/seed",
                "fixtures/upstream",
                "fixtures/lenient",
                "fixtures/invalid",
            ])
            .current_dir(&root)
            .status()?;
        println!(
            "\n(exit {}: the payloads that do not fit the model, JSON or not, were kept as `invalid` events, flagged with their problem)",
            status.code().unwrap_or(-1)
        );
        // Let the sinks catch up.
        let deadline = Instant::now() + Duration::from_secs(20);
        let count = || {
            files_under(&events)
                .iter()
                .map(|f| {
                    std::fs::read_to_string(f)
                        .map(|t| t.lines().count())
                        .unwrap_or(0)
                })
                .sum::<usize>()
        };
        // 37 valid fixtures and the 16 invalid ones that are JSON (kept as `invalid`).
        while count() < 53 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    })();
    // The console: open it while the server still runs (a terminal only; a script goes on).
    let token = std::fs::read_to_string(dir.join("data/admin.token")).unwrap_or_default();
    let console = format!("http://127.0.0.1:{admin_port}/?token={}", token.trim());
    if result.is_ok() && std::io::stdin().is_terminal() {
        println!("\n== the console: every event above, live, with timelines and sinks\n");
        println!("  open {console}");
        println!(
            "  (in a browser on this machine; press Enter here to stop the server and see the rest)"
        );
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    } else if result.is_ok() {
        println!(
            "\n(not a terminal, so no pause: run `cargo xtask demo` in one to open the console)"
        );
    }
    let exit = terminate(&mut server)?;
    let printed = printed.join().unwrap_or_default();
    let logged = logged.join().unwrap_or_default();
    result?;

    println!("\n== the stdout sink printed {} events\n", printed.len());
    for line in &printed {
        println!("{line}");
    }
    println!("\n== the file sink wrote");
    for file in files_under(&events) {
        let lines = std::fs::read_to_string(&file)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        println!(
            "  {} ({lines} events)",
            file.strip_prefix(&dir).unwrap_or(&file).display()
        );
    }
    println!("\n== streamhook inspect --timeline over the archive\n");
    Command::new(bin.join("streamhook"))
        .arg("inspect")
        .arg("--timeline")
        .args(files_under(&events))
        .status()?;
    println!("\n== the server's log (stderr)\n");
    for line in logged.iter().filter(|l| !l.contains(" accepted id=")) {
        println!("  {line}");
    }
    println!(
        "\nserver stopped with {exit}; everything is in {}",
        dir.display()
    );
    if !exit.success() {
        bail!("the server did not exit cleanly");
    }
    Ok(())
}
