//! The drain phase: a backlog already journaled, drained by the file sink, then by the http
//! sink (concurrency 4, keep-alive) to the bare server in a process of its own, each timed
//! from the server's start until the sink has passed every event (its own lag, from
//! `/readyz`); the http sink's delivered count checked against the backlog.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::BenchOptions;
use super::fill::fill_journal;
use super::servers::{
    file_sink, http_sink, receiver_process, sink_delivered, stop, streamhook, wait_answering,
    wait_caught_up,
};
use crate::server::{Process, free_port};

/// What the drain phase measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drains {
    /// Events journaled before each drain.
    pub events: u64,
    /// The file sink's drain, from the server's start.
    pub file: Duration,
    /// The http sink's drain, from the server's start.
    pub http: Duration,
    /// Events the http sink delivered (every one: the phase fails otherwise).
    pub http_delivered: u64,
}

impl Drains {
    /// The file sink's events per second.
    pub fn file_rate(&self) -> f64 {
        self.events as f64 / self.file.as_secs_f64()
    }

    /// The http sink's events per second.
    pub fn http_rate(&self) -> f64 {
        self.http_delivered as f64 / self.http.as_secs_f64()
    }
}

/// Both drains of `drain_events` journaled events.
pub async fn measure(o: &BenchOptions, dir: &Path, me: &Path) -> Result<Drains> {
    eprintln!(
        "bench: draining {} journaled events (file sink)",
        o.drain_events
    );
    let d5 = dir.join("drain-file");
    std::fs::create_dir_all(&d5)?;
    fill_journal(&d5.join("data"), o.drain_events, Some("archive")).await?;
    let admin = free_port()?;
    let mut cmd = streamhook(&o.server_bin, &d5, &file_sink(&d5), Some(admin))?.command();
    // Timed from the process's start (its command and config already written).
    let start = Instant::now();
    let mut process = Process::spawn_quiet(&mut cmd)?;
    wait_answering(admin, "/readyz", &mut process).await?;
    wait_caught_up(admin, "archive", Duration::from_secs(600)).await?;
    let file = start.elapsed();
    stop(process)?;

    eprintln!(
        "bench: draining {} journaled events (http sink)",
        o.drain_events
    );
    let d5 = dir.join("drain-http");
    std::fs::create_dir_all(&d5)?;
    fill_journal(&d5.join("data"), o.drain_events, Some("app")).await?;
    let (receiver_port, receiver) = receiver_process(me).await?;
    let admin = free_port()?;
    let mut cmd = streamhook(&o.server_bin, &d5, &http_sink(receiver_port), Some(admin))?.command();
    let start = Instant::now();
    let mut process = Process::spawn_quiet(&mut cmd)?;
    wait_answering(admin, "/readyz", &mut process).await?;
    wait_caught_up(admin, "app", Duration::from_secs(600)).await?;
    let http = start.elapsed();
    // Passed means delivered: a receiver that refused would have dead-lettered them as fast.
    let http_delivered = sink_delivered(admin, "app").await?;
    stop(process)?;
    let _ = stop(receiver);
    if http_delivered != o.drain_events {
        bail!(
            "the http sink delivered {http_delivered} of {} events (the rest dead-lettered?)",
            o.drain_events
        );
    }
    Ok(Drains {
        events: o.drain_events,
        file,
        http,
        http_delivered,
    })
}
