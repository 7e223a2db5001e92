//! The intake phase: every contender (the bare server, streamhook with a file sink and with
//! an http sink, adnanh/webhook when installed, streamhook on a 1-node and a 3-node JetStream
//! journal when nats-server is usable) runs at once and is measured in turns, round after
//! round, at a closed loop and at a fixed rate; with each one's peak memory.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::BenchOptions;
use super::servers::{
    bare_command, file_sink, http_sink, receiver_process, stop, streamhook, tool_exists,
    wait_answering, wait_caught_up, wait_listening,
};
use crate::load::{Phase, closed_loop, fixed_rate};
use crate::server::{Process, free_port};

/// The bare server's row name (the intake's first row, callgrind's first too).
pub const BARE: &str = "bare axum (reads the body, answers 200)";

/// One turn of one contender.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Round {
    /// At the closed loop's connections.
    pub closed: Phase,
    /// At the fixed rate.
    pub fixed: Phase,
    /// The server process's own CPU time (user + system, from `/proc/PID/stat`) per request
    /// of the closed loop, in µs, counted until its sinks caught up (so it includes the
    /// delivery of what it took): a figure that does not depend on the load generator sharing
    /// the cores. `None` where /proc could not be read.
    pub cpu_us: Option<f64>,
}

/// One contender's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct IntakeRow {
    /// What it is.
    pub name: String,
    /// Its turns, in order.
    pub rounds: Vec<Round>,
    /// Its peak resident memory over the phase, MiB.
    pub peak_rss: f64,
}

/// What the kernel had to write back before a turn, and how long `sync` took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Writeback {
    /// `Dirty:` + `Writeback:` in `/proc/meminfo`, MiB.
    pub dirty_mib: f64,
    /// The `sync` that wrote it, seconds.
    pub sync_seconds: f64,
}

/// What the intake phase measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Intake {
    /// The bare server first, then streamhook with a file sink, then with an http sink,
    /// then adnanh/webhook and the JetStream rows when they ran.
    pub rows: Vec<IntakeRow>,
    /// The single-host server's peak memory (the file and http sink rows), MiB.
    pub streamhook_peak_rss: f64,
    /// Before each load phase, the writeback (`None` where it could not be had).
    pub writeback: Vec<Option<Writeback>>,
    /// Why adnanh/webhook has no row, if it has none.
    pub webhook_missing: Option<String>,
    /// The JetStream rows' nats-server version (empty if it did not say), or why there are
    /// no JetStream rows.
    pub jetstream: Result<String, String>,
}

/// A server in the intake comparison, running for the whole of it.
struct Contender {
    name: String,
    url: String,
    process: Process,
    /// streamhook's admin port and its sink, to wait until the sink caught up.
    admin: Option<(u16, &'static str)>,
    /// The port that answers once it is up, and the path that answers 2xx (none: any
    /// connection accepted).
    ready: (u16, Option<&'static str>),
    rounds: Vec<Round>,
}

/// A streamhook server in the intake comparison: `config` (its sinks and journal) in `dir`,
/// the admin listener on (for its sink's lag), `sink` the sink to wait for.
fn streamhook_contender(
    o: &BenchOptions,
    name: &str,
    dir: &Path,
    config: &str,
    sink: &'static str,
) -> Result<Contender> {
    let admin = free_port()?;
    let server = streamhook(&o.server_bin, dir, config, Some(admin))?;
    Ok(Contender {
        name: name.into(),
        url: server.url(),
        process: server.spawn()?,
        admin: Some((admin, sink)),
        ready: (server.port, Some("/healthz")),
        rounds: Vec::new(),
    })
}

/// adnanh/webhook from Debian's package, with an `ip-whitelist` rule for loopback and
/// `/bin/true` as its command: the command, its URL and port; or why there is no row.
fn reference_webhook(dir: &Path) -> Result<std::result::Result<(Command, String, u16), String>> {
    if !tool_exists("webhook") {
        return Ok(Err(
            "the `webhook` program is not installed (Debian package `webhook`)".to_owned(),
        ));
    }
    let hooks = dir.join("hooks.json");
    std::fs::write(
        &hooks,
        r#"[{"id":"gcore","execute-command":"/bin/true","response-message":"ok","trigger-rule":{"match":{"type":"ip-whitelist","ip-range":"127.0.0.0/8"}}}]"#,
    )?;
    let port = free_port()?;
    let mut cmd = Command::new("webhook");
    cmd.arg("-hooks")
        .arg(&hooks)
        .args(["-ip", "127.0.0.1", "-port", &port.to_string()]);
    Ok(Ok((
        cmd,
        format!("http://127.0.0.1:{port}/hooks/gcore"),
        port,
    )))
}

/// The kernel's dirty and under-writeback data (`Dirty:` + `Writeback:` in `/proc/meminfo`),
/// then `sync`: what earlier work left for the disk, and how long writing it took. `None`
/// when either cannot be had (no /proc, `sync` failed).
fn write_back_dirty_pages() -> Option<Writeback> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        meminfo.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
    };
    let kb = field("Dirty:")? + field("Writeback:")?;
    let start = Instant::now();
    let synced = Command::new("sync").status().ok()?.success();
    synced.then(|| Writeback {
        dirty_mib: kb as f64 / 1024.0,
        sync_seconds: start.elapsed().as_secs_f64(),
    })
}

/// A process's CPU time so far (user + system), seconds, from `/proc/PID/stat` (in clock
/// ticks of `getconf CLK_TCK`).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are the 14th and 15th fields; `rest` starts at the 3rd.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if it cannot say).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// nats-server's version (`v2.15.1`), empty if it did not say.
fn nats_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace("nats-server: ", "")
        })
        .unwrap_or_default()
}

/// Intake: every server up at once, measured in turns, `rounds` times over, with an idle gap
/// after each turn (and, for streamhook, its sinks caught up first), so no server drains its
/// backlog during another's turn.
pub async fn measure(o: &BenchOptions, dir: &Path, me: &Path) -> Result<Intake> {
    let mut contenders: Vec<Contender> = Vec::new();
    let port = free_port()?;
    contenders.push(Contender {
        name: BARE.into(),
        url: format!("http://127.0.0.1:{port}/webhook"),
        process: Process::spawn_quiet(&mut bare_command(me, port))?,
        admin: None,
        ready: (port, None),
        rounds: Vec::new(),
    });
    let (receiver_port, receiver) = receiver_process(me).await?;
    for (key, name, sinks) in [
        ("file", "streamhook-server + file sink", None),
        ("http", "streamhook-server + http sink", Some(receiver_port)),
    ] {
        let d = dir.join(key);
        std::fs::create_dir_all(&d)?;
        let (config, sink) = match sinks {
            None => (file_sink(&d), "archive"),
            Some(p) => (http_sink(p), "app"),
        };
        contenders.push(streamhook_contender(o, name, &d, &config, sink)?);
    }
    let webhook_missing = match reference_webhook(dir)? {
        Ok((mut cmd, url, port)) => {
            contenders.push(Contender {
                name: "adnanh/webhook 2.8 (`ip-whitelist` rule, runs /bin/true; stores nothing)"
                    .into(),
                url,
                process: Process::spawn_quiet(&mut cmd)?,
                admin: None,
                ready: (port, None),
                rounds: Vec::new(),
            });
            None
        }
        Err(why) => Some(why),
    };
    // streamhook on the JetStream journal (the file sink): a 1-node server (replicas 1) and
    // a 3-node cluster (replicas 3), all on this machine's two cores with everything else.
    let mut clusters = Vec::new();
    let nats = match streamhook_testkit::nats_server() {
        Ok(bin) => {
            for (key, name, nodes) in [
                (
                    "js1",
                    "streamhook-server + file sink, JetStream journal (1 node, replicas 1)",
                    1,
                ),
                (
                    "js3",
                    "streamhook-server + file sink, JetStream journal (3-node cluster, replicas 3)",
                    3,
                ),
            ] {
                let nats = streamhook_testkit::Nats::cluster(&bin, nodes);
                let urls: Vec<String> = nats.url_list().iter().map(|u| format!("{u:?}")).collect();
                let d = dir.join(key);
                std::fs::create_dir_all(&d)?;
                let config = format!(
                    "[journal]\nbackend = \"jetstream\"\nnats_urls = [{}]\nreplicas = {nodes}\n{}",
                    urls.join(", "),
                    file_sink(&d)
                );
                contenders.push(streamhook_contender(o, name, &d, &config, "archive")?);
                clusters.push(nats);
            }
            Ok(bin)
        }
        Err(why) => Err(why),
    };
    for c in &mut contenders {
        wait_listening(c.ready.0, &mut c.process).await?;
        if let Some(path) = c.ready.1 {
            wait_answering(c.ready.0, path, &mut c.process).await?;
        }
    }
    let mut writeback = Vec::new();
    for round in 1..=o.rounds {
        for c in &mut contenders {
            eprintln!("bench: intake round {round}/{}: {}", o.rounds, c.name);
            // Earlier turns' data goes to the disk now, not during this turn (the kernel
            // writes dirty pages back some 30 s later; one server's writeback slowed the next).
            writeback.push(write_back_dirty_pages());
            let cpu_before = cpu_seconds(c.process.id());
            let closed = closed_loop(&c.url, o.connections, o.seconds).await?;
            // The fixed rate measures a steady state: the closed loop's backlog drained and
            // its data written out first.
            if let Some((admin, sink)) = c.admin {
                wait_caught_up(admin, sink, Duration::from_secs(300)).await?;
            }
            let requests = closed.rps * o.seconds as f64;
            let cpu_us = match (cpu_before, cpu_seconds(c.process.id())) {
                (Some(a), Some(b)) if requests > 0.0 => Some((b - a) * 1e6 / requests),
                _ => None,
            };
            writeback.push(write_back_dirty_pages());
            let fixed = fixed_rate(&c.url, o.rate, o.seconds).await?;
            c.rounds.push(Round {
                closed,
                fixed,
                cpu_us,
            });
            if let Some((admin, sink)) = c.admin {
                wait_caught_up(admin, sink, Duration::from_secs(300)).await?;
            }
            tokio::time::sleep(Duration::from_secs(o.gap)).await;
        }
    }
    // The RSS target is the single-host server's (the file and http rows).
    let streamhook_peak_rss = contenders
        .iter()
        .skip(1)
        .take(2)
        .filter(|c| c.admin.is_some())
        .map(|c| c.process.peak_rss_mib())
        .fold(0.0, f64::max);
    let rows = contenders
        .into_iter()
        .map(|c| {
            let peak_rss = c.process.peak_rss_mib();
            let _ = stop(c.process);
            IntakeRow {
                name: c.name,
                rounds: c.rounds,
                peak_rss,
            }
        })
        .collect();
    let _ = stop(receiver);
    drop(clusters);
    Ok(Intake {
        rows,
        streamhook_peak_rss,
        writeback,
        webhook_missing,
        jetstream: nats.map(|bin| nats_version(&bin)),
    })
}
