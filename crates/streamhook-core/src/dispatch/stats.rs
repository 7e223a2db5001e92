//! What a sink's dispatcher shows: counters and gauges for metrics ([`SinkStats`]), its
//! progress, its recent attempts and retries for the console ([`Activity`]), and deliveries
//! per minute ([`Rate`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters and gauges of one sink, for metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events delivered.
    pub delivered: AtomicU64,
    /// Failed attempts (each retry counts).
    pub failed_attempts: AtomicU64,
    /// Events waiting for a retry now.
    pub retrying: AtomicU64,
    /// Events dead-lettered.
    pub dead_lettered: AtomicU64,
    /// The persisted cursor: the first seq not yet passed.
    pub cursor: AtomicU64,
    /// Events the sink never had because they were pruned before it reached them (a sink
    /// out of the configuration past its grace): logged as errors, counted here.
    pub skipped: AtomicU64,
    /// Journal errors that paused delivery (each is retried with backoff).
    pub journal_errors: AtomicU64,
    /// 1 while delivery is paused by a journal error, else 0.
    pub paused: AtomicU64,
    /// On a replicated journal: 1 while this receiver holds the sink's lease (delivers it).
    pub leased: AtomicU64,
    /// Recent attempts, events waiting for a retry, the last error: what the console shows.
    pub activity: Mutex<Activity>,
    /// Deliveries per minute over the last hour.
    pub rate: Rate,
    /// What the dispatcher has read and still has in flight (refreshed at most every
    /// 200 ms while busy): events below `next` and not in flight have been passed, even
    /// while the persisted cursor waits behind one slow event.
    pub progress: Mutex<Progress>,
    /// Attempts not yet written to the journal (written with the cursor; at most
    /// [`UNSAVED_MAX`], the oldest dropped past it).
    pub unsaved: Mutex<Vec<(u64, crate::journal::AttemptRecord)>>,
}

/// The most attempts waiting to be written.
pub const UNSAVED_MAX: usize = 20_000;

/// A dispatcher's progress, as [`SinkStats::progress`] shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The next seq it will read (0: not started).
    pub next: u64,
    /// Seqs handed to the sink and not yet done (delivered or dead-lettered), in order.
    pub in_flight: Vec<u64>,
}

impl SinkStats {
    /// The progress, even if a panicking holder poisoned its lock.
    pub fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The activity, even if a panicking holder poisoned its lock.
    pub fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps an attempt for the journal (written with the next cursor save).
    pub(crate) fn keep_attempt(&self, seq: u64, attempt: crate::journal::AttemptRecord) {
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner());
        if unsaved.len() >= UNSAVED_MAX {
            unsaved.remove(0);
        }
        unsaved.push((seq, attempt));
    }

    /// The attempts not yet written (taken).
    pub(crate) fn take_unsaved(&self) -> Vec<(u64, crate::journal::AttemptRecord)> {
        std::mem::take(&mut *self.unsaved.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts back attempts whose write failed (before newer ones).
    pub(crate) fn put_back(&self, mut attempts: Vec<(u64, crate::journal::AttemptRecord)>) {
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|e| e.into_inner());
        attempts.append(&mut unsaved);
        if attempts.len() > UNSAVED_MAX {
            attempts.drain(..attempts.len() - UNSAVED_MAX);
        }
        *unsaved = attempts;
    }
}

/// How many attempts [`Activity::attempts`] keeps.
pub const ATTEMPT_LOG: usize = 2048;

/// A sink's recent history, in memory (bounded; lost on restart, unlike dead letters).
#[derive(Debug, Default)]
pub struct Activity {
    /// The latest failed attempts, and deliveries and dead letters that followed a failure,
    /// oldest first; at most [`ATTEMPT_LOG`].
    pub attempts: VecDeque<Attempt>,
    /// Events waiting for their next attempt, by seq.
    pub retrying: BTreeMap<u64, Retrying>,
    /// The last failed attempt.
    pub last_error: Option<Attempt>,
}

impl Activity {
    pub(crate) fn record(&mut self, attempt: Attempt) {
        if attempt.error.is_some() {
            self.last_error = Some(attempt.clone());
        }
        if self.attempts.len() >= ATTEMPT_LOG {
            self.attempts.pop_front();
        }
        self.attempts.push_back(attempt);
    }
}

/// One delivery attempt worth remembering.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attempt {
    /// The event.
    pub seq: u64,
    /// Which attempt, from 1.
    pub attempt: u32,
    /// When it ended, in ms since the Unix epoch.
    pub at_ms: u64,
    /// `failed`, `delivered` or `dead`.
    pub outcome: &'static str,
    /// The sink's error (with the status code, for HTTP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An event waiting for its next attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Retrying {
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next one starts, in ms since the Unix epoch.
    pub next_at_ms: u64,
    /// The last error.
    pub error: String,
}

/// Events per minute over the last hour, lock-free: slot `minute % 60` holds, in one word,
/// the minute it counts (high 32 bits) and its count (low 32 bits), updated by compare-and-swap
/// so a count is never lost to a concurrent new minute.
#[derive(Debug)]
pub struct Rate {
    slots: [AtomicU64; 60],
}

impl Default for Rate {
    fn default() -> Self {
        Rate {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Rate {
    /// Counts one event now.
    pub fn add(&self) {
        self.add_at(now_ms() / 60_000);
    }

    /// Counts one event in `minute` (minutes since the Unix epoch).
    pub fn add_at(&self, minute: u64) {
        let slot = &self.slots[(minute % 60) as usize];
        let stamp = (minute & 0xffff_ffff) << 32;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let next = if current & !0xffff_ffff == stamp {
                current.saturating_add(1).min(stamp | 0xffff_ffff)
            } else {
                stamp | 1
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// The last 60 minutes' counts, oldest first, the current minute last.
    pub fn last_hour(&self) -> Vec<u64> {
        self.hour_before(now_ms() / 60_000)
    }

    /// The 60 minutes up to `now` (minutes since the Unix epoch), oldest first.
    pub fn hour_before(&self, now: u64) -> Vec<u64> {
        (0..60u64)
            .rev()
            .map(|back| {
                let minute = now.saturating_sub(back);
                let word = self.slots[(minute % 60) as usize].load(Ordering::Relaxed);
                if word >> 32 == minute & 0xffff_ffff {
                    word & 0xffff_ffff
                } else {
                    0
                }
            })
            .collect()
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
