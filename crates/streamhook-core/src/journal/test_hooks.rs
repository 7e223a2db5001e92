//! Test-only hooks (feature `test-hooks`, which only the workspace's tests enable): failures
//! and corruption injected as a broken disk or a bug would cause them.

use std::sync::atomic::Ordering;

use super::Journal;
use super::error::{JournalError, write_err};
use super::record::{EVENTS, HISTORY};

impl Journal {
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
