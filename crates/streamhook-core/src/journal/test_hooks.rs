//! Test-only hooks (feature `test-hooks`, which only the workspace's tests enable): failures
//! and corruption injected as a broken disk or a bug would cause them.

use std::sync::atomic::Ordering;

use super::Journal;
use super::error::{JournalError, write_err};
use super::record::{EVENTS, HISTORY};

impl Journal {
    /// Test only: the wall clock as the journal sees it moves by `offset_ms` (a clock that
    /// jumped ahead, or was set back).
    pub fn set_clock_offset(&self, offset_ms: i64) {
        self.inner
            .clock_offset_ms
            .store(offset_ms, Ordering::SeqCst);
    }

    /// Test only: between two chunks of event pruning, [`Journal::prune`] says so on `paused`
    /// and waits for `go`.
    pub fn pause_pruning_between_chunks(
        &self,
        paused: std::sync::mpsc::Sender<()>,
        go: std::sync::mpsc::Receiver<()>,
    ) {
        if let Ok(mut hook) = self.inner.prune_pause.lock() {
            *hook = Some((paused, go));
        }
    }

    /// Test only: the next `n` cursor saves fail as an I/O error would (appends go on).
    pub fn fail_next_cursor_saves(&self, n: u64) {
        self.inner.fail_cursor_saves.store(n, Ordering::SeqCst);
    }

    /// Test only: the next `n` commits fail as an I/O error would.
    pub fn inject_commit_failures(&self, n: u64) {
        self.inner.health.inject_failures.store(n, Ordering::SeqCst);
    }

    /// Test only: the writer thread panics, as a bug in it would make it.
    pub fn inject_writer_panic(&self) {
        self.inner.writer.panic();
    }

    /// Test only: stores raw bytes as the record of `seq`, as a corrupted file would hold.
    pub fn overwrite_record(&self, seq: u64, bytes: &[u8]) -> Result<(), JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(EVENTS)
            .map_err(write_err)?
            .insert(seq, bytes)
            .map_err(write_err)?;
        self.inner.health.commit(txn)
    }

    /// Test only: stores raw bytes as a resource's history, as a corrupted file would hold.
    pub fn overwrite_history(&self, resource: &str, bytes: &[u8]) -> Result<(), JournalError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(write_err)?;
        txn.open_table(HISTORY)
            .map_err(write_err)?
            .insert(resource, bytes)
            .map_err(write_err)?;
        self.inner.health.commit(txn)
    }
}
