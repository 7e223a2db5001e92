//! The restart run: the harness holds the listening socket, as systemd does with a `.socket`
//! unit, and passes it to the real server (`LISTEN_FDS`); it then restarts the server N
//! times (SIGTERM, wait for exit 0, start the next on the same socket) under load from clients
//! that open one connection per request. Connections that arrive between two processes wait
//! in the kernel's backlog: no request may fail and no acknowledged event may be lost.

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::faults::{journal_ids, temp_dir};
use crate::server::{self, Poll, Probe, Process, free_port};

/// A listening socket the harness holds and lends to each server process.
#[derive(Debug)]
pub struct HeldSocket {
    listener: std::net::TcpListener,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl HeldSocket {
    /// Binds 127.0.0.1 on a free port with a backlog of 4096 (systemd's `Backlog=` in our
    /// unit), and lets child processes inherit it.
    pub fn bind() -> Result<HeldSocket> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let listener = socket.listen(4096)?.into_std()?;
        let port = listener.local_addr()?.port();
        // Inheritable across exec (Rust opens every descriptor close-on-exec).
        rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty())
            .context("cannot make the socket inheritable")?;
        Ok(HeldSocket { listener, port })
    }

    /// A command that runs `program args...` with this socket as descriptor 3 and the
    /// socket-activation variables set, as systemd would (`LISTEN_PID` is the child's own pid:
    /// the shell (bash: dash takes no descriptor above 9) `exec`s the program, which keeps it).
    pub fn command(&self, program: &Path, name: &str) -> Command {
        let fd = self.listener.as_raw_fd();
        let dup = if fd == 3 {
            String::new()
        } else {
            format!("exec 3<&{fd} {fd}<&-; ")
        };
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!(
                "{dup}export LISTEN_FDS=1 LISTEN_PID=$$ LISTEN_FDNAMES={name}; exec \"$0\" \"$@\""
            ))
            .arg(program);
        cmd
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Seen {
    acked: Mutex<HashSet<String>>,
    failures: Mutex<Vec<String>>,
    sent: AtomicU64,
    max_latency_us: AtomicU64,
}

fn start_server(socket: &HeldSocket, bin: &Path, config: &Path, log: &Path) -> Result<Process> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Process::spawn(
        socket
            .command(bin, "webhook")
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log),
    )
    .with_context(|| format!("cannot start {}", bin.display()))
}

/// How the run looks at the server: every 5 ms, for up to 60 s.
const POLL: Poll = Poll {
    every: Duration::from_millis(5),
    within: Duration::from_secs(60),
};

/// Waits until the server answers `/readyz` on its admin port.
async fn wait_ready(admin: u16, server: &mut Process, log: &Path) -> Result<()> {
    server::wait_ready(admin, Probe::Get("/readyz"), POLL, Some(server))
        .await
        .with_context(|| format!("the server did not become ready; see {}", log.display()))?;
    Ok(())
}

/// SIGTERM, then waits; anything but exit 0 is an error.
fn terminate(server: Process, log: &Path) -> Result<()> {
    let status = server
        .terminate(POLL)
        .with_context(|| format!("see {}", log.display()))?;
    if !status.success() {
        bail!(
            "the server exited with {status} on SIGTERM; see {}",
            log.display()
        );
    }
    Ok(())
}

/// Restarts the server `restarts` times under load; see the module docs.
pub async fn restart(server_bin: &Path, restarts: usize, clients: usize) -> Result<()> {
    let dir = temp_dir("restart")?;
    let socket = HeldSocket::bind()?;
    let admin = free_port()?;
    let config: PathBuf = dir.join("streamhook.toml");
    std::fs::write(
        &config,
        format!(
            "allow = [\"127.0.0.1/32\"]\ndata_dir = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"restart-test-token-0123456789abcdef\"\n[[sinks]]\ntype = \"file\"\nname = \"archive\"\npath = \"{}\"\n",
            dir.join("data").display(),
            dir.join("events.jsonl").display()
        ),
    )?;
    let log = dir.join("server.log");
    let mut child = start_server(&socket, server_bin, &config, &log)?;
    wait_ready(admin, &mut child, &log).await?;

    let url = format!("http://127.0.0.1:{}/webhook", socket.port);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    // One connection per request: no keep-alive pool.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()?;
    let tasks: Vec<_> = (0..clients as u64)
        .map(|c| {
            let (stop, seen, http, url) = (stop.clone(), seen.clone(), http.clone(), url.clone());
            tokio::spawn(async move {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    let (body, _) = crate::load::payload(c * 1_000_000 + round % 50, round / 50, 0);
                    seen.sent.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    let outcome = match http.post(&url).body(body).send().await {
                        Ok(r) if r.status().as_u16() == 200 => r
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_owned))
                            .ok_or_else(|| "a 200 without an id".to_owned()),
                        Ok(r) => Err(format!("HTTP {}", r.status())),
                        Err(e) => Err(streamhook_core::error_chain(&e)),
                    };
                    seen.max_latency_us
                        .fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                    match outcome {
                        Ok(id) => {
                            seen.acked
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(id);
                        }
                        Err(e) => seen
                            .failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(e),
                    }
                }
            })
        })
        .collect();

    let mut downs = Vec::with_capacity(restarts);
    for i in 1..=restarts {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(150..400))).await;
        let t = Instant::now();
        terminate(child, &log)?;
        child = start_server(&socket, server_bin, &config, &log)?;
        wait_ready(admin, &mut child, &log).await?;
        downs.push(t.elapsed());
        eprintln!(
            "restart-test: restart {i}/{restarts}: {} ms from SIGTERM to the next process ready",
            t.elapsed().as_millis()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    terminate(child, &log)?;
    let journal = journal_ids(&dir.join("data"))?;
    let acked = seen.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let failures = seen.failures.lock().map(|f| f.clone()).unwrap_or_default();
    let lost = acked.iter().filter(|id| !journal.contains(*id)).count();
    downs.sort();
    println!(
        "restart-test: {restarts} restarts (SIGTERM, then the next process on the same socket) under load from {clients} clients, one connection per request"
    );
    println!(
        "  requests            {}",
        seen.sent.load(Ordering::Relaxed)
    );
    println!("  acknowledged        {}", acked.len());
    println!("  failed requests     {}", failures.len());
    println!("  lost events         {lost}");
    println!(
        "  max request latency {} ms (a request that arrived during a restart waits in the backlog)",
        seen.max_latency_us.load(Ordering::Relaxed) / 1000
    );
    if let (Some(best), Some(worst)) = (downs.first(), downs.last()) {
        println!(
            "  SIGTERM to next ready: median {} ms, best {} ms, worst {} ms",
            downs[downs.len() / 2].as_millis(),
            best.as_millis(),
            worst.as_millis()
        );
    }
    for f in failures.iter().take(5) {
        println!("  failure: {f}");
    }
    if !failures.is_empty() || lost > 0 {
        bail!(
            "restart-test: {} failed requests, {lost} lost events; the data is kept in {}",
            failures.len(),
            dir.display()
        );
    }
    if acked.is_empty() {
        bail!("restart-test: nothing was acknowledged; the run proves nothing");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
