//! The callgrind phase: instructions per accepted request, counted by valgrind's callgrind
//! over sequential requests on one connection (server side only, every thread), for the bare
//! server, streamhook with its journal only, and streamhook with a file sink: a figure that
//! does not move with the machine's load.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};
use axum::body::Bytes;

use super::BenchOptions;
use super::intake::BARE;
use super::servers::{
    bare_command, file_sink, streamhook, tool_exists, wait_answering, wait_listening,
};
use crate::load::{MEASURED_TIMEOUT, PAYLOAD, Poster};
use crate::server::{Process, free_port};

/// One server's count.
#[derive(Debug, Clone, PartialEq)]
pub struct Instructions {
    /// What it is.
    pub name: String,
    /// Instructions (every thread) per request.
    pub per_request: f64,
}

/// What the callgrind phase measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Callgrind {
    /// The bare server first, then each streamhook configuration.
    Measured(Vec<Instructions>),
    /// Why it was not measured.
    NotMeasured(String),
}

/// `n` requests one after another on one connection (a new one), all naming the same video.
async fn sequential(url: &str, n: u64) -> Result<()> {
    let poster = Poster::new(url, 1, MEASURED_TIMEOUT)?;
    for _ in 0..n {
        if !poster.post_ok(Bytes::from_static(PAYLOAD.as_bytes())).await {
            bail!("a request to {url} failed");
        }
    }
    Ok(())
}

/// The server `cmd` starts, run under callgrind: instructions (all threads) per request over
/// `n` sequential requests, counted between a zeroing and a dump of the counters. It is up
/// once `port` accepts connections, and `ready_path` (if any) answers 2xx.
async fn instructions_per_request(
    dir: &Path,
    cmd: Command,
    port: u16,
    ready_path: Option<&str>,
    n: u64,
) -> Result<f64> {
    let out = dir.join(format!("callgrind-{port}"));
    std::fs::create_dir_all(&out)?;
    let mut valgrind = Command::new("valgrind");
    valgrind
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.join("cg").display()))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => valgrind.env(k, v),
            None => valgrind.env_remove(k),
        };
    }
    let mut process = Process::spawn_quiet(&mut valgrind)?;
    let pid = process.id().to_string();
    let result = async {
        match ready_path {
            None => wait_listening(port, &mut process).await?,
            Some(path) => wait_answering(port, path, &mut process).await?,
        }
        let url = format!("http://127.0.0.1:{port}/webhook");
        sequential(&url, 100).await?;
        let zeroed = Command::new("callgrind_control")
            .args(["-z", &pid])
            .output()?;
        if !zeroed.status.success() {
            bail!(
                "callgrind_control -z failed: {}",
                String::from_utf8_lossy(&zeroed.stderr)
            );
        }
        sequential(&url, n).await?;
        let dumped = Command::new("callgrind_control")
            .args(["-d", &pid])
            .output()?;
        if !dumped.status.success() {
            bail!(
                "callgrind_control -d failed: {}",
                String::from_utf8_lossy(&dumped.stderr)
            );
        }
        // The dump is `cg.1` (or `cg.<pid>.1`): its `summary:` (or `totals:`) line.
        for entry in std::fs::read_dir(&out)? {
            let text = std::fs::read_to_string(entry?.path()).unwrap_or_default();
            if let Some(total) = text.lines().find_map(|l| {
                l.strip_prefix("summary: ")
                    .or_else(|| l.strip_prefix("totals: "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            }) {
                return Ok(total / n as f64);
            }
        }
        bail!("no callgrind dump in {}", out.display())
    }
    .await;
    // Killed (and reaped) by Process's Drop.
    drop(process);
    result
}

/// Instructions per accepted request, counted by valgrind's callgrind (server side only):
/// repeatable whatever else the machine does.
pub async fn measure(o: &BenchOptions, dir: &Path, me: &Path) -> Result<Callgrind> {
    if !(tool_exists("valgrind") && tool_exists("callgrind_control")) {
        return Ok(Callgrind::NotMeasured(
            "valgrind (with callgrind_control) is not installed".to_owned(),
        ));
    }
    eprintln!(
        "bench: callgrind over {} sequential requests each",
        o.callgrind_requests
    );
    let mut out = Vec::new();
    let port = free_port()?;
    out.push(Instructions {
        name: BARE.to_owned(),
        per_request: instructions_per_request(
            dir,
            bare_command(me, port),
            port,
            None,
            o.callgrind_requests,
        )
        .await?,
    });
    for (key, name, sink) in [
        (
            "cg-journal",
            "streamhook-server, journal only (no sink)",
            false,
        ),
        ("cg-file", "streamhook-server + file sink", true),
    ] {
        let d = dir.join(key);
        std::fs::create_dir_all(&d)?;
        let sinks = if sink { file_sink(&d) } else { String::new() };
        let mut server = streamhook(&o.server_bin, &d, &sinks, None)?;
        if !sink {
            server = server.arg("--no-stdout");
        }
        out.push(Instructions {
            name: name.to_owned(),
            per_request: instructions_per_request(
                dir,
                server.command(),
                server.port,
                Some("/healthz"),
                o.callgrind_requests,
            )
            .await?,
        });
    }
    Ok(Callgrind::Measured(out))
}
