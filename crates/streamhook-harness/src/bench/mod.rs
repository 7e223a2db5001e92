//! `streamhook-harness bench`: streamhook against its limits, side by side, in one run, with
//! the same load generator, connection count and payload; writes `docs/performance.md`.
//!
//! Every number is measured here, in this run, on this machine; targets are checked as ratios
//! or against the measured figures, never asserted in tests. This module owns the options and
//! the order of the phases: each phase (a file of its own) returns a typed result, and
//! [`report`] alone turns them into the report's text.

mod callgrind;
mod criterion;
mod drain;
mod fill;
mod intake;
mod memory;
mod report;
#[cfg(test)]
mod report_tests;
mod restart;
mod servers;
mod validate;

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result};

pub use fill::fill_journal;
pub use servers::bare_server;

/// Options of a bench run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// The release server binary (set from the harness's --server-bin).
    #[arg(skip)]
    pub server_bin: PathBuf,
    /// The streamhook CLI binary (for validate vs jq).
    #[arg(long, default_value = "target/release/streamhook")]
    pub cli_bin: PathBuf,
    /// Seconds per load phase.
    #[arg(long, default_value_t = 6)]
    pub seconds: u64,
    /// Connections of the closed-loop phase.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Offered rate of the fixed-rate phase.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Intake rounds (every server measured in turn, each round).
    #[arg(long, default_value_t = 3)]
    pub rounds: u64,
    /// Idle seconds after each server's turn.
    #[arg(long, default_value_t = 8)]
    pub gap: u64,
    /// Seconds of load with a sink down.
    #[arg(long, default_value_t = 60)]
    pub down_seconds: u64,
    /// Sequential requests counted by callgrind.
    #[arg(long, default_value_t = 1000)]
    pub callgrind_requests: u64,
    /// Journaled events to drain.
    #[arg(long, default_value_t = 100_000)]
    pub drain_events: u64,
    /// Journaled events at restart.
    #[arg(long, default_value_t = 1_000_000)]
    pub restart_events: u64,
    /// MB of NDJSON for validate vs jq.
    #[arg(long, default_value_t = 100)]
    pub validate_mb: usize,
    /// Criterion's output folder.
    #[arg(long, default_value = "target/criterion")]
    pub criterion_dir: PathBuf,
    /// The report to write.
    #[arg(long, default_value = "docs/performance.md")]
    pub out: PathBuf,
    /// The command line to record in the report.
    #[arg(long, default_value = "cargo xtask bench")]
    pub command: String,
    /// Only the callgrind phase: print its figures and where its profiles are (for
    /// `callgrind_annotate`), write no report.
    #[arg(long)]
    pub callgrind_only: bool,
}

/// The machine the run was on.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// Cores available to the harness (0: unknown).
    pub cores: usize,
    /// The CPU's model name.
    pub cpu: String,
}

impl Machine {
    /// This machine, from `/proc/cpuinfo`.
    fn this() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        Machine { cores, cpu }
    }
}

/// Everything one run measured, phase by phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Results {
    /// When the report was written.
    pub when: SystemTime,
    /// Where the run was.
    pub machine: Machine,
    /// The intake comparison.
    pub intake: intake::Intake,
    /// Intake and memory with a sink down.
    pub sink_down: memory::SinkDown,
    /// The dispatchers' drains.
    pub drains: drain::Drains,
    /// Starts with a large journal.
    pub restart: restart::Restart,
    /// `streamhook validate` against jq.
    pub validate: validate::Validate,
    /// Instructions per request.
    pub callgrind: callgrind::Callgrind,
    /// The criterion benchmarks' means.
    pub criterion: Vec<criterion::Estimate>,
}

/// Runs every phase in turn, then writes the report (keeping the old report's notes) and
/// prints it.
pub async fn run(o: &BenchOptions) -> Result<()> {
    let dir = crate::faults::temp_dir("bench")?;
    let me = std::env::current_exe()?;
    if o.callgrind_only {
        match callgrind::measure(o, &dir, &me).await? {
            callgrind::Callgrind::Measured(rows) => {
                for r in rows {
                    println!("{:>12.0}  {}", r.per_request, r.name);
                }
                println!("profiles: {}/callgrind-*", dir.display());
            }
            callgrind::Callgrind::NotMeasured(why) => println!("not measured: {why}"),
        }
        return Ok(());
    }
    let intake = intake::measure(o, &dir, &me).await?;
    let sink_down = memory::sink_down(o, &dir).await?;
    let drains = drain::measure(o, &dir, &me).await?;
    let restart = restart::measure(o, &dir).await?;
    let validate = validate::measure(o, &dir)?;
    let callgrind = callgrind::measure(o, &dir, &me).await?;
    let results = Results {
        when: SystemTime::now(),
        machine: Machine::this(),
        intake,
        sink_down,
        drains,
        restart,
        validate,
        callgrind,
        criterion: criterion::estimates(&o.criterion_dir),
    };
    let mut text = report::render(o, &results);
    // Hand-written notes after the marker survive regeneration.
    if let Ok(old) = std::fs::read_to_string(&o.out) {
        report::keep_notes(&mut text, &old);
    }
    std::fs::write(&o.out, &text).with_context(|| format!("cannot write {}", o.out.display()))?;
    print!("{text}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
