//! Opening a receiver on the replicated journal, and its mirror: every receiver copies the
//! stream, in order, into its own redb file (the same tables as a single-host journal: events
//! at the stream's seqs, the requests table, the history), through [`Journal::import`], so
//! that dispatchers, the admin API, the console and the CLI read locally, unchanged. A
//! folder mirrors one stream: one that holds a single-host journal, or the mirror of another
//! stream of the same name, is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream;
use async_nats::jetstream::{self as js};
use futures_util::StreamExt as _;
use streamhook_core::{Cause, CauseKind, Journal, JournalConfig, JournalError};

use crate::append::JetStreamSequencer;
use crate::config::{JetStreamConfig, MIRROR_STALE};
use crate::lease::JetStreamLeases;
use crate::message::imported;
use crate::remote::Remote;

/// The `meta` key holding the creation time of the stream a mirror copies.
const MIRROR_OF: &str = "mirror_of_stream_created_ns";

fn task_err(e: tokio::task::JoinError) -> JournalError {
    JournalError::Write(Cause::with_source(CauseKind::Other, e.to_string(), e))
}

/// Opens a replicated journal: `config.dir` holds this receiver's mirror of the shared stream
/// `remote.stream`. Connects (refusing a server older than
/// [`MIN_SERVER_VERSION`](crate::config::MIN_SERVER_VERSION)), creates the stream and buckets when
/// missing, refuses a data folder that mirrors another stream (or holds a single-host
/// journal), copies what the mirror lacks, and keeps copying in the background until the
/// journal is closed.
pub async fn open(
    config: JournalConfig,
    remote: &JetStreamConfig,
) -> Result<Journal, JournalError> {
    let local = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Journal::open(config))
            .await
            .map_err(task_err)??
    };
    let remote = Arc::new(Remote::connect(remote).await?);
    let journal = local.with_backend(|writer, journal| {
        (
            Arc::new(JetStreamSequencer::new(
                Arc::clone(&remote),
                writer.subscribe(),
                journal.clone(),
            )),
            Arc::new(JetStreamLeases::new(Arc::clone(&remote), journal)),
        )
    });
    let target = remote.last_seq().await?;
    // A mirror belongs to one stream: a folder that holds a single-host journal, or the
    // mirror of a stream since deleted and created again, would skip the new stream's
    // first seqs (it holds those seqs already) and answer 2xx for events it never holds.
    let (mirror_of, local_last, local_id) = {
        let j = journal.clone();
        tokio::task::spawn_blocking(move || {
            let last = j.last_seq()?;
            let id = match j.get(last) {
                Ok(Some(event)) => event.envelope().ok().map(|e| e.id.0),
                _ => None,
            };
            Ok::<_, JournalError>((j.meta(MIRROR_OF)?, last, id))
        })
        .await
        .map_err(task_err)??
    };
    let refuse = |why: String| {
        Err(JournalError::Open {
            path: config.dir.clone(),
            source: Cause::new(
                CauseKind::Shared,
                format!(
                    "{why}; give this receiver an empty data folder (it copies the shared journal at start)"
                ),
            ),
        })
    };
    if mirror_of.is_none() && local_last > 0 {
        return refuse(format!(
            "this data folder holds a single-host journal ({local_last} events), not a mirror of stream {}",
            remote.name
        ));
    }
    if local_last > target {
        return refuse(format!(
            "this mirror holds events up to seq {local_last} but stream {} ends at {target} \
             (it mirrors an earlier stream of that name)",
            remote.name
        ));
    }
    // The same seq must hold the same event (when the stream still holds it).
    if let Some(local_id) = &local_id
        && let Some(stream_id) = remote.event_id_at(local_last).await
        && &stream_id != local_id
    {
        return refuse(format!(
            "this mirror's seq {local_last} holds another event than stream {}'s \
             (it mirrors an earlier stream of that name)",
            remote.name
        ));
    }
    if mirror_of.is_none() {
        let (j, created) = (journal.clone(), remote.created_ns);
        tokio::task::spawn_blocking(move || j.set_meta(MIRROR_OF, created.max(1)))
            .await
            .map_err(task_err)??;
    }
    let from = local_last + 1;
    let mirror = journal.clone();
    let stream = remote.stream.clone();
    let task = tokio::spawn(run_mirror(mirror, Arc::clone(&remote), stream, from));
    if target >= from {
        tracing::info!(
            from,
            to = target,
            "copying the shared journal into the local mirror"
        );
    }
    // Wait until the mirror holds what the stream held at connect, saying how far it is;
    // give up when it makes no progress for a minute.
    let mut changed = journal.subscribe();
    let mut last_seen = journal.last_committed();
    let mut stalled_since = Instant::now();
    while journal.last_committed() < target {
        // The stream's last messages may have been purged (pruning): done when it holds
        // nothing more up to the target.
        let next = remote.next_seq_from(journal.last_committed() + 1).await?;
        if next.is_none_or(|seq| seq > target) {
            break;
        }
        if task.is_finished() {
            return Err(JournalError::write(
                CauseKind::Shared,
                "the local mirror stopped copying the shared journal",
            ));
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), changed.changed()).await;
        let now = journal.last_committed();
        if now > last_seen {
            tracing::info!(at = now, to = target, "copying the shared journal");
            last_seen = now;
            stalled_since = Instant::now();
        } else if stalled_since.elapsed() > Duration::from_secs(60) {
            task.abort();
            return Err(JournalError::write(
                CauseKind::Shared,
                format!("the local mirror made no progress for a minute at seq {now} of {target}"),
            ));
        }
    }
    Ok(journal)
}

/// Copies the stream into the local mirror, in order, for as long as the journal is open.
async fn run_mirror(journal: Journal, remote: Arc<Remote>, stream: stream::Stream, mut from: u64) {
    let closed = |j: &Journal| j.is_closed();
    let mut wait = Duration::from_millis(100);
    loop {
        let consumer = stream
            .create_consumer(js::consumer::pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(c) => c.messages().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut messages = match messages {
            Ok(m) => m.ready_chunks(512),
            Err(e) => {
                if closed(&journal) {
                    return;
                }
                tracing::warn!(error = %e, retry_in = ?wait, "journal mirror: cannot read the shared stream");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        // Nothing to copy is progress too: the mirror is current.
        if remote
            .next_seq_from(from)
            .await
            .is_ok_and(|next| next.is_none())
        {
            remote.mirror_progressed();
        }
        loop {
            // Wake up now and then to notice an idle, current mirror (and a closed journal).
            let chunk = match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) => {
                    if closed(&journal) {
                        return;
                    }
                    match remote.next_seq_from(from).await {
                        Ok(None) => {
                            remote.mirror_progressed();
                            journal
                                .stats()
                                .mirror_pending
                                .store(0, std::sync::atomic::Ordering::Relaxed);
                        }
                        // Messages wait and the consumer delivers none: recreate it.
                        Ok(Some(_)) if !remote.mirror_current(MIRROR_STALE / 2) => break,
                        _ => {}
                    }
                    continue;
                }
            };
            let mut items = Vec::with_capacity(chunk.len());
            let mut restart = false;
            for msg in chunk {
                match msg {
                    Ok(msg) => match msg.info() {
                        Ok(info) if info.stream_sequence < from => {
                            // An ordered consumer recreated from the stream's start (after
                            // a blip before it delivered anything): start again from here.
                            restart = true;
                            break;
                        }
                        Ok(info) => {
                            journal
                                .stats()
                                .mirror_pending
                                .store(info.pending, std::sync::atomic::Ordering::Relaxed);
                            items.push(imported(info.stream_sequence, &msg.payload));
                        }
                        Err(_) => restart = true,
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "journal mirror: stream read failed; resuming");
                        restart = true;
                    }
                }
            }
            if !items.is_empty() {
                match journal.import(items).await {
                    Ok(last) => {
                        from = last + 1;
                        wait = Duration::from_millis(100);
                        remote.mirror_progressed();
                    }
                    Err(JournalError::Closed) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "journal mirror: cannot record; retrying");
                        restart = true;
                    }
                }
            }
            if restart {
                break;
            }
        }
        if closed(&journal) {
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}
