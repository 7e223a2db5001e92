//! A dispatcher's lanes: each takes the jobs of its resources in order and delivers them,
//! retrying with backoff (the [`RetryPolicy`]) until the event is delivered or dead-lettered.
//! A sink that writes batches gets every job waiting at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::gate::Gate;
use super::stats::{Attempt, Retrying, SinkStats, now_ms};
use crate::journal::{AttemptRecord, DeadLetter, Journal};
use crate::sink::{Delivery, Sink, SinkError};

/// When to give up on an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first backoff.
    pub initial_backoff: Duration,
    /// The longest backoff (and the longest `retry_after` honoured).
    pub max_backoff: Duration,
    /// The most deliveries tried before dead-lettering.
    pub max_attempts: u32,
    /// The longest time spent retrying one event before dead-lettering.
    pub max_age: Duration,
    /// How long one `send` may take before it counts as a (retryable) timeout.
    pub send_timeout: Duration,
}

impl Default for RetryPolicy {
    /// 1 s doubling to 5 min, up to 30 attempts or 24 hours; 30 s per send.
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            max_attempts: 30,
            max_age: Duration::from_secs(24 * 3600),
            send_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: `initial * 2^(attempt-1)`, capped, with jitter
    /// (a random point in its upper half), or the sink's hint when it gave one.
    pub fn backoff(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        if let Some(hint) = hint {
            return hint.min(self.max_backoff);
        }
        let exp = self
            .initial_backoff
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1).min(31))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_backoff);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

pub(super) enum Done {
    Event(u64),
    Requeued(u64),
}

pub(super) struct Job {
    pub(super) seq: u64,
    pub(super) requeued: bool,
    pub(super) delivery: Delivery,
}

/// The most jobs a lane hands its sink in one [`Sink::send_batch`].
const LANE_BATCH: usize = 256;

pub(super) async fn lane(
    mut rx: mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Done>,
    sink: Arc<dyn Sink>,
    journal: Journal,
    policy: RetryPolicy,
    stats: Arc<SinkStats>,
    gate: Arc<Gate>,
) {
    let finish = |job: &Job| {
        let (done, journal, name, seq, requeued) = (
            done.clone(),
            journal.clone(),
            sink.name().to_owned(),
            job.seq,
            job.requeued,
        );
        async move {
            if requeued {
                // If this fails the letter is delivered again later: at least once.
                let _ = journal
                    .blocking(move |j| j.finish_requeued(&name, seq))
                    .await;
                let _ = done.send(Done::Requeued(seq));
            } else {
                let _ = done.send(Done::Event(seq));
            }
        }
    };
    while let Some(first) = rx.recv().await {
        // What is already waiting goes as one batch: one hand-off to the sink for many events.
        let mut jobs = vec![first];
        while jobs.len() < LANE_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // Only a sink that writes a batch at once gets one (each of its sends would be as
        // quick as the batch); others get each event on its own, under its own time limit.
        // A batching sink bounds its own time (a local write: a timeout could not say which
        // lines were written, and sending them again would write them twice).
        let (delivered, failure) = if jobs.len() == 1 || !sink.batches() {
            (0, None)
        } else {
            let batch: Vec<&Delivery> = jobs.iter().map(|j| &j.delivery).collect();
            gate.pass().await;
            let started = Instant::now();
            let result = match sink.send_batch(&batch).await {
                Ok(()) => (jobs.len(), None),
                Err((n, e)) => (n.min(jobs.len()), Some(e)),
            };
            let latency_ms = started.elapsed().as_millis() as u64;
            for job in &jobs[..result.0] {
                stats.keep_attempt(job.seq, record(1, latency_ms, "delivered", None));
            }
            result
        };
        for job in &jobs[..delivered] {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            stats.rate.add();
            finish(job).await;
        }
        let mut failure = failure;
        for job in &mut jobs[delivered..] {
            deliver(
                job,
                &*sink,
                &journal,
                &policy,
                &stats,
                &gate,
                failure.take(),
            )
            .await;
            finish(job).await;
        }
    }
}

/// Delivers one job, retrying with backoff; `first` is the error of a first attempt already
/// made (in a batch), if any.
async fn deliver(
    job: &mut Job,
    sink: &dyn Sink,
    journal: &Journal,
    policy: &RetryPolicy,
    stats: &SinkStats,
    gate: &Gate,
    mut first_error: Option<SinkError>,
) {
    let first = Instant::now();
    let mut attempt = 1;
    loop {
        job.delivery.attempt = attempt;
        let mut latency_ms = 0;
        let result = match first_error.take() {
            Some(e) => Err(e),
            None => {
                // Never a send once the sink's lease may have lapsed (after a pause too).
                gate.pass().await;
                let started = Instant::now();
                let sent = match tokio::time::timeout(policy.send_timeout, sink.send(&job.delivery))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(SinkError::retryable(format!(
                        "timed out after {:?}",
                        policy.send_timeout
                    ))),
                };
                latency_ms = started.elapsed().as_millis() as u64;
                sent
            }
        };
        let error = match result {
            Ok(()) => {
                stats.keep_attempt(job.seq, record(attempt, latency_ms, "delivered", None));
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                stats.rate.add();
                if attempt > 1 {
                    stats.activity().record(Attempt {
                        seq: job.seq,
                        attempt,
                        at_ms: now_ms(),
                        outcome: "delivered",
                        error: None,
                    });
                }
                return;
            }
            Err(e) => e,
        };
        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
        let give_up = !error.is_retryable()
            || attempt >= policy.max_attempts
            || first.elapsed() >= policy.max_age;
        stats.activity().record(Attempt {
            seq: job.seq,
            attempt,
            at_ms: now_ms(),
            outcome: if give_up { "dead" } else { "failed" },
            error: Some(error.to_string()),
        });
        stats.keep_attempt(
            job.seq,
            record(
                attempt,
                latency_ms,
                if give_up { "dead" } else { "failed" },
                Some(error.to_string()),
            ),
        );
        if give_up {
            tracing::warn!(sink = %sink.name(), seq = job.seq, id = %job.delivery.envelope.id, attempts = attempt, error = %error, "dead-lettered");
            let letter = DeadLetter {
                sink: sink.name().to_owned(),
                seq: job.seq,
                id: job.delivery.envelope.id.0.clone(),
                error: error.to_string(),
                attempts: attempt,
                failed_at: humantime::format_rfc3339_millis(std::time::SystemTime::now())
                    .to_string(),
                envelope: serde_json::to_string(&job.delivery.envelope).unwrap_or_default(),
                body: job.delivery.body.clone(),
            };
            // The dead letter must be stored before the event counts as passed.
            let mut wait = policy.initial_backoff;
            loop {
                let l = letter.clone();
                match journal.blocking(move |j| j.dead_letter(&l)).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(sink = %sink.name(), seq = job.seq, error = %e, "cannot store a dead letter; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(policy.max_backoff);
                    }
                }
            }
            stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let hint = match &error {
            SinkError::Retryable { retry_after, .. } => *retry_after,
            _ => None,
        };
        let wait = policy.backoff(attempt, hint);
        tracing::debug!(sink = %sink.name(), seq = job.seq, attempt, error = %error, retry_in = ?wait, "delivery failed; will retry");
        {
            let _retrying = Gauge::up(&stats.retrying);
            let _shown = Waiting::new(
                stats,
                job.seq,
                Retrying {
                    attempts: attempt,
                    next_at_ms: now_ms() + wait.as_millis() as u64,
                    error: error.to_string(),
                },
            );
            tokio::time::sleep(wait).await;
        }
        attempt += 1;
    }
}

/// An attempt as the journal keeps it, ended now.
fn record(attempt: u32, latency_ms: u64, outcome: &str, error: Option<String>) -> AttemptRecord {
    AttemptRecord {
        attempt,
        at_ms: now_ms(),
        latency_ms,
        outcome: outcome.to_owned(),
        error,
    }
}

/// Shows an event as waiting for a retry while alive (so a cancelled wait leaves nothing).
struct Waiting<'a> {
    stats: &'a SinkStats,
    seq: u64,
}

impl<'a> Waiting<'a> {
    fn new(stats: &'a SinkStats, seq: u64, retrying: Retrying) -> Self {
        stats.activity().retrying.insert(seq, retrying);
        Waiting { stats, seq }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.stats.activity().retrying.remove(&self.seq);
    }
}

/// Holds a gauge up while alive, so a cancelled wait cannot leave it counted.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
