//! A journal filled through the real append path (group commit): the backlog of the drain and
//! restart phases, and the `streamhook-harness fill` subcommand.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use streamhook_core::{Journal, JournalConfig, Verified};

/// Fills a journal with `n` events through the real append path (group commit), and leaves
/// the cursor of `sink` (if any) at the start, so a server finds them all as a backlog.
pub async fn fill_journal(data: &Path, n: u64, sink: Option<&str>) -> Result<Duration> {
    let journal = Journal::open(JournalConfig::new(data))?;
    if let Some(s) = sink {
        journal.set_cursor(s, journal.last_seq()? + 1)?;
    }
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..256)
        .map(|_| {
            let (journal, next) = (journal.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let body = format!(r#"{{"type":"video","message":{{"video":{{"id":{},"name":"clip","status":"ready","duration":19580}}}}}}"#, i % 5000);
                    let webhook = streamhook_types::decode::decode(body.as_bytes())?.webhook;
                    loop {
                        match journal.append(Verified::trusted_local([127, 0, 0, 1].into()), body.as_bytes(), webhook.clone()).await {
                            Err(streamhook_core::JournalError::Busy) => tokio::task::yield_now().await,
                            other => {
                                other?;
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let took = start.elapsed();
    journal.close().await;
    Ok(took)
}
