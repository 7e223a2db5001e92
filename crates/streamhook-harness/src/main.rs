//! `streamhook-harness`: fault runs and the bench against the real `streamhook-server`
//! binary, and the small programs they start (`bare`, `load`, `fill`). Driven by
//! `cargo xtask crash-test`, `outage-test`, `disk-full-test`, `slow-clients-test`,
//! `restart-test`, `ha-test` and `bench`.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a test harness reports on its terminal

mod bench;
mod faults;
mod ha;
mod load;
mod power;
mod receiver;
mod restart;
mod server;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Fault runs: every figure printed is measured in this run.
#[derive(Debug, Parser)]
#[command(name = "streamhook-harness")]
struct Cli {
    /// The streamhook-server binary to run.
    #[arg(long, default_value = "target/release/streamhook-server")]
    server_bin: PathBuf,
    #[command(subcommand)]
    run: Run,
}

#[derive(Debug, Subcommand)]
enum Run {
    /// SIGKILL the server at random moments under load; nothing acknowledged may be lost.
    Crash {
        /// How many kills.
        #[arg(long, default_value_t = 20)]
        cycles: usize,
    },
    /// Emulated power cuts: SIGKILL under strace, the file sink's archive and position file
    /// rolled back to their last sync, restart; every acknowledged event in the archive once.
    PowerLoss {
        /// How many cuts.
        #[arg(long, default_value_t = 10)]
        cycles: usize,
    },
    /// The http sink's receiver refuses, goes down, comes back, under load.
    Outage {
        /// Length of the run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// The journal's disk fills up, then space is freed (needs root; skipped otherwise).
    DiskFull,
    /// Many connections trickle headers or bodies while a good client is measured.
    SlowClients {
        /// How many trickling connections.
        #[arg(long, default_value_t = 400)]
        connections: usize,
    },
    /// Restart the server N times on a socket the harness holds (as systemd does), under load
    /// from clients opening one connection per request; nothing may fail or be lost.
    Restart {
        /// How many restarts.
        #[arg(long, default_value_t = 20)]
        restarts: usize,
        /// How many clients post at once.
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
    /// Two receivers on a 3-node NATS JetStream cluster under load, the stream recreated
    /// first, then faults in turn (receiver killed, NATS node killed, deliverer frozen 8 s,
    /// destination refusing, quorum lost 20 s); nothing refused, lost, skipped or overlapping.
    Ha {
        /// How many faults (in turn: receiver, NATS node, SIGSTOP, refusing sink, quorum).
        #[arg(long, default_value_t = 10)]
        cycles: usize,
        /// How many clients post at once.
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
    /// Measure streamhook against a bare axum server and its targets; write a report.
    Bench(bench::BenchOptions),
    /// Load a URL and report requests/s and latency (closed loop, or a fixed --rate).
    Load {
        /// Where to POST the seed video payload (its id one of 1,000 in turn).
        #[arg(long)]
        url: String,
        /// Connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Offered requests/s instead of a closed loop.
        #[arg(long)]
        rate: Option<u64>,
    },
    /// Fill a journal with N events through the real append path, leaving SINK's cursor at
    /// the start (a backlog for profiling a drain).
    Fill {
        /// The data folder.
        #[arg(long)]
        data_dir: PathBuf,
        /// How many events.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// The sink whose cursor starts before them.
        #[arg(long)]
        sink: Option<String>,
    },
    /// The bench's ceiling: an axum server that reads the body and answers 200.
    Bare {
        /// The port on 127.0.0.1.
        #[arg(long)]
        port: u16,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // reqwest is built without a default TLS provider (no C crypto): use ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.run {
        Run::Crash { cycles } => faults::crash(&cli.server_bin, cycles).await,
        Run::PowerLoss { cycles } => power::power_loss(&cli.server_bin, cycles).await,
        Run::Outage { seconds } => faults::outage(&cli.server_bin, seconds).await,
        Run::DiskFull => faults::disk_full(&cli.server_bin).await,
        Run::Restart { restarts, clients } => {
            restart::restart(&cli.server_bin, restarts, clients).await
        }
        Run::SlowClients { connections } => {
            faults::slow_clients(&cli.server_bin, connections).await
        }
        Run::Ha { cycles, clients } => ha::run(&cli.server_bin, cycles, clients).await,
        Run::Bench(mut options) => {
            options.server_bin = cli.server_bin;
            bench::run(&options).await
        }
        Run::Bare { port } => bench::bare_server(port).await,
        Run::Fill {
            data_dir,
            events,
            sink,
        } => bench::fill_journal(&data_dir, events, sink.as_deref())
            .await
            .map(|took| println!("{events} events in {:.1} s", took.as_secs_f64())),
        Run::Load {
            url,
            connections,
            seconds,
            rate,
        } => {
            let phase = match rate {
                Some(r) => load::fixed_rate(&url, r, seconds).await,
                None => load::closed_loop(&url, connections, seconds).await,
            };
            phase.map(|p| {
                println!(
                    "{:.0} requests/s, p50 {} us, p99 {} us, max {} us, {} errors",
                    p.rps, p.p50, p.p99, p.max, p.errors
                )
            })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<faults::Skipped>().is_some() => {
            println!("SKIPPED: {e}");
            std::process::ExitCode::from(faults::SKIPPED_EXIT)
        }
        Err(e) => {
            eprintln!("streamhook-harness: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
