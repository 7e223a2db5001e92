//! The restart phase: a journal of `restart_events` events filled through the real append
//! path, then three clean starts of a server on it, each timed from process start to
//! `/readyz` answering 200.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::BenchOptions;
use super::fill::fill_journal;
use super::servers::{file_sink, stop, streamhook, wait_answering};
use crate::server::free_port;

/// What the restart phase measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Restart {
    /// Events in the journal.
    pub events: u64,
    /// The journal file's size, MB.
    pub size_mb: f64,
    /// How long filling it took.
    pub fill: Duration,
    /// Each start until `/readyz` answered 200, fastest first.
    pub ready: Vec<Duration>,
}

/// Restart with a large journal.
pub async fn measure(o: &BenchOptions, dir: &Path) -> Result<Restart> {
    eprintln!("bench: filling a journal with {} events", o.restart_events);
    let d6 = dir.join("restart");
    std::fs::create_dir_all(&d6)?;
    let fill = fill_journal(&d6.join("data"), o.restart_events, None).await?;
    let size_mb = std::fs::metadata(d6.join("data").join(streamhook_core::journal::JOURNAL_FILE))
        .map(|m| m.len())
        .unwrap_or(0) as f64
        / 1e6;
    let mut ready = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        // `/readyz` is on the admin listener.
        let admin = free_port()?;
        let server = streamhook(&o.server_bin, &d6, &file_sink(&d6), Some(admin))?;
        let mut process = server.spawn()?;
        wait_answering(admin, "/readyz", &mut process).await?;
        ready.push(start.elapsed());
        stop(process)?;
    }
    ready.sort();
    Ok(Restart {
        events: o.restart_events,
        size_mb,
        fill,
        ready,
    })
}
