//! The sink-down phase: streamhook with its http sink's receiver down, under the closed loop
//! for `down_seconds`, its intake, backlog and memory read every 10 s.

use std::path::Path;

use anyhow::Result;

use super::BenchOptions;
use super::servers::{http_sink, sink_lag, stop, streamhook, wait_answering};
use crate::load::closed_loop;
use crate::server::free_port;

/// One 10 s period with the sink down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DownPeriod {
    /// Seconds since the load started, at the period's end.
    pub at: u64,
    /// Successful requests per second over the period.
    pub rps: f64,
    /// Events the sink has not passed, from `/readyz`, at the period's end.
    pub backlog: u64,
    /// Resident memory at the period's end, MiB.
    pub rss: f64,
}

/// What the sink-down phase measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkDown {
    /// Every period, in order.
    pub periods: Vec<DownPeriod>,
    /// Peak resident memory over the run, MiB.
    pub peak_rss: f64,
}

/// Memory and intake while a sink is down for `down_seconds`.
pub async fn sink_down(o: &BenchOptions, dir: &Path) -> Result<SinkDown> {
    eprintln!(
        "bench: {} s with the http sink's receiver down",
        o.down_seconds
    );
    let d4 = dir.join("down");
    std::fs::create_dir_all(&d4)?;
    let admin = free_port()?;
    let server = streamhook(&o.server_bin, &d4, &http_sink(free_port()?), Some(admin))?;
    let mut process = server.spawn()?;
    wait_answering(server.port, "/healthz", &mut process).await?;
    let url = server.url();
    let mut periods = Vec::new();
    for i in 1..=(o.down_seconds / 10).max(1) {
        let phase = closed_loop(&url, o.connections, 10).await?;
        periods.push(DownPeriod {
            at: i * 10,
            rps: phase.rps,
            backlog: sink_lag(admin, "app").await?,
            rss: process.rss_mib(),
        });
    }
    let peak_rss = process.peak_rss_mib();
    stop(process)?;
    Ok(SinkDown { periods, peak_rss })
}
