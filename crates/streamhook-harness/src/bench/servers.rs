//! The processes the bench runs and how it talks to them: the bare server (the ceiling, and
//! the http sink's receiver in a process of its own), streamhook servers from the bench's
//! config, the bench's waits (for a port, a path, a sink's lag) and its stop, and the sink
//! counts it reads from `/readyz`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::body::Bytes;

use crate::server::{Poll, Probe, Process, ServerProcess, admin_client, free_port, wait_ready};

/// The ceiling: an axum server that reads the body and answers 200.
pub async fn bare_server(port: u16) -> Result<()> {
    let app = axum::Router::new().route(
        "/webhook",
        axum::routing::post(|body: Bytes| async move {
            std::hint::black_box(body.len());
            "{}"
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The command that runs the bare server (this program's `bare`) on `port`.
pub fn bare_command(me: &Path, port: u16) -> Command {
    let mut cmd = Command::new(me);
    cmd.args(["bare", "--port", &port.to_string()]);
    cmd
}

/// The http sink's receiver: the bare server in a process of its own (not on the bench's
/// runtime, where the load generator's clients would share its threads). Its port.
pub async fn receiver_process(me: &Path) -> Result<(u16, Process)> {
    let port = free_port()?;
    let mut process = Process::spawn_quiet(&mut bare_command(me, port))?;
    wait_listening(port, &mut process).await?;
    Ok((port, process))
}

/// A streamhook server for the bench: `sinks` (and any journal settings) in `dir`, quick
/// retries, no log written; with `admin`, the admin listener on at `127.0.0.1:admin`.
pub fn streamhook(
    bin: &Path,
    dir: &Path,
    sinks: &str,
    admin: Option<u16>,
) -> Result<ServerProcess> {
    let config = format!(
        "allow = [\"127.0.0.1/32\"]\ndata_dir = \"{}\"\n[admin]\nenabled = {}\n[retry]\ninitial_backoff = \"100ms\"\nmax_backoff = \"500ms\"\n{sinks}",
        dir.join("data").display(),
        admin.is_some()
    );
    let server = ServerProcess::new(bin, dir, &config)?.quiet();
    Ok(match admin {
        Some(port) => server.env("STREAMHOOK_ADMIN_LISTEN", format!("127.0.0.1:{port}")),
        None => server,
    })
}

/// A file sink named `archive` writing `events.jsonl` in `dir`.
pub fn file_sink(dir: &Path) -> String {
    format!(
        "[[sinks]]\ntype = \"file\"\nname = \"archive\"\npath = \"{}\"\n",
        dir.join("events.jsonl").display()
    )
}

/// An http sink named `app` delivering to the bare server's `/webhook` on `port`.
pub fn http_sink(port: u16) -> String {
    format!(
        "[[sinks]]\ntype = \"http\"\nname = \"app\"\nurl = \"http://127.0.0.1:{port}/webhook\"\n"
    )
}

/// Waits (up to 120 s, every 10 ms) until something accepts connections on the port.
pub async fn wait_listening(port: u16, process: &mut Process) -> Result<()> {
    let poll = Poll {
        every: Duration::from_millis(10),
        within: Duration::from_secs(120),
    };
    wait_ready(port, Probe::Listening, poll, Some(process)).await?;
    Ok(())
}

/// Waits (up to 120 s, every 2 ms) until `GET path` on the port answers 2xx.
pub async fn wait_answering(port: u16, path: &str, process: &mut Process) -> Result<()> {
    let poll = Poll {
        every: Duration::from_millis(2),
        within: Duration::from_secs(120),
    };
    wait_ready(port, Probe::Get(path), poll, Some(process)).await?;
    Ok(())
}

/// SIGTERM, and up to 30 s for the process to exit (however it exits).
pub fn stop(process: Process) -> Result<()> {
    let poll = Poll {
        every: Duration::from_millis(20),
        within: Duration::from_secs(30),
    };
    process.terminate(poll)?;
    Ok(())
}

/// The journal's own count of events `sink` has not passed, from `/readyz`.
pub async fn sink_lag(admin: u16, sink: &str) -> Result<u64> {
    readyz_sink_count(admin, sink, "lag").await
}

/// How many events `sink` delivered since the server started, from `/readyz`.
pub async fn sink_delivered(admin: u16, sink: &str) -> Result<u64> {
    readyz_sink_count(admin, sink, "delivered").await
}

/// One of `sink`'s counts in the server's `/readyz` (on its admin listener).
async fn readyz_sink_count(admin: u16, sink: &str, field: &str) -> Result<u64> {
    let ready: serde_json::Value = admin_client()
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await?
        .json()
        .await?;
    ready["sinks"][sink][field]
        .as_u64()
        .with_context(|| format!("no {field} for sink {sink} in /readyz: {ready}"))
}

/// Waits until `sink` has passed every journaled event (its lag in `/readyz` is 0).
pub async fn wait_caught_up(admin: u16, sink: &str, within: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if sink_lag(admin, sink).await.ok() == Some(0) {
            return Ok(());
        }
        if start.elapsed() > within {
            bail!("sink {sink} did not catch up within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Whether a program of that name is on the `PATH`.
pub fn tool_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()))
}
