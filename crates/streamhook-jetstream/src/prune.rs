//! Retention of the shared stream, pruned like the file by one receiver at a time (a lease):
//! events every sink has passed (by the shared cursors of every sink that ever had one, and
//! the local cursors of this receiver's sinks) and older than `max_age` or beyond the newest
//! `max_events`. Each resource's last message is kept (it carries the resource's classifier
//! state) unless the resource has been idle longer than `history_max_age`.

use std::time::SystemTime;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures_util::StreamExt as _;
use streamhook_core::backend::{SharedPruned, SharedRetention};
use streamhook_core::{CauseKind, Journal, JournalError};

use crate::lease::{Position, Tied};
use crate::mirror::MirrorPosition;
use crate::remote::{Remote, read_bucket, read_err};

/// The lease key of the receiver pruning the shared stream (`=` then not two hex digits: no
/// sink name maps to it).
const PRUNER_KEY: &str = "=pruner";

/// Prunes the shared stream (see the module's docs); `None` when another receiver is pruning
/// now or there is nothing to prune by.
pub(crate) async fn prune_shared(
    remote: &Remote,
    journal: &Journal,
    retention: &SharedRetention,
) -> Result<Option<SharedPruned>, JournalError> {
    if retention.max_age.is_none()
        && retention.max_events.is_none()
        && retention.history_max_age.is_none()
    {
        return Ok(None);
    }
    // The stream deleted and created again since this receiver set up: its records and
    // mirror belong to the earlier one. It must not prune the new one.
    let (_, created) = remote.stream_state().await?;
    if created != remote.need()?.created_ns {
        crate::mirror::refuse_recreated(remote, remote.need()?.created_ns, created);
        return Ok(None);
    }
    let Some(mut revision) = remote.try_lease_key(PRUNER_KEY).await else {
        return Ok(None);
    };
    let result = prune_held(remote, journal, &mut revision, retention).await;
    remote.delete_lease_key(PRUNER_KEY, revision).await;
    result.map(Some)
}

async fn prune_held(
    remote: &Remote,
    journal: &Journal,
    lease: &mut u64,
    retention: &SharedRetention,
) -> Result<SharedPruned, JournalError> {
    let (sinks, max_age, max_events, history_max_age) = (
        &retention.sinks,
        retention.max_age,
        retention.max_events,
        retention.history_max_age,
    );
    {
        // What every sink has passed, and what every live mirror holds: the lowest shared
        // cursor of any sink (its start record while it has none), and the lowest position
        // of any receiver's mirror that shared one within `mirror_grace` (the bucket's
        // entries expire after it); then the local cursors of this receiver's sinks.
        let mut floor = shared_floor(remote).await?;
        let (journal, names) = (journal.clone(), sinks.to_vec());
        let (local_floor, last, by_age) = tokio::task::spawn_blocking(move || {
            // Read without creating: a configured sink without a cursor yet has passed
            // nothing.
            let cursors = journal.cursors()?;
            let mut floor = u64::MAX;
            for name in &names {
                let cursor = cursors.iter().find(|(n, _)| n == name).map_or(0, |c| c.1);
                floor = floor.min(cursor);
            }
            let by_age = match max_age {
                Some(age) => Some(journal.seq_at(SystemTime::now() - age)?),
                None => None,
            };
            Ok::<_, JournalError>((floor, journal.last_seq()?, by_age))
        })
        .await
        .map_err(|e| {
            JournalError::Write(streamhook_core::Cause::with_source(
                CauseKind::Other,
                e.to_string(),
                e,
            ))
        })??;
        floor = floor.min(local_floor);
        let by_count = max_events.map(|keep| (last + 1).saturating_sub(keep));
        let wanted = match (by_age, by_count) {
            (Some(a), Some(c)) => a.max(c),
            (Some(a), None) => a,
            (None, Some(c)) => c,
            (None, None) => 0,
        };
        let below = wanted.min(floor);
        let idle_before = history_max_age.map(|age| SystemTime::now() - age);
        let mut pruned = SharedPruned {
            below,
            ..SharedPruned::default()
        };
        let events_subject = format!("{}.ev.>", remote.name);
        let none_subject = format!("{}.ev._", remote.name);
        let mut n_subjects = 0u64;
        let mut subjects = Vec::new();
        let ready = remote.need()?;
        let mut listed = ready
            .stream
            .info_with_subjects(&events_subject)
            .await
            .map_err(read_err)?;
        while let Some(entry) = listed.next().await {
            subjects.push(entry.map_err(read_err)?);
        }
        for (subject, count) in subjects {
            let purge = ready.stream.purge().filter(subject.clone());
            let purged = if subject == none_subject {
                // Invalid events carry no state: cut like any event.
                if below <= 1 {
                    continue;
                }
                purge.sequence(below).await
            } else {
                if count <= 1 && idle_before.is_none() {
                    continue; // only its last message: nothing to purge
                }
                if (n_subjects % 100) == 99 {
                    // A long pass keeps the pruner's lease (else another receiver starts one).
                    match remote.renew_lease_key(PRUNER_KEY, *lease).await {
                        Some(r) => *lease = r,
                        None => {
                            return Err(JournalError::write(
                                CauseKind::Shared,
                                "lost the pruner's lease during a pass; stopped",
                            ));
                        }
                    }
                }
                n_subjects += 1;
                let last = match ready.stream.get_last_raw_message_by_subject(&subject).await {
                    Ok(msg) => msg,
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
                    Err(e) => return Err(read_err(e)),
                };
                if last.sequence < below {
                    let idle = idle_before.is_some_and(|t| SystemTime::from(last.time) < t);
                    if idle {
                        // The resource's history goes too: its next event is new, as when
                        // a single-host journal drops an idle resource's history.
                        pruned.histories += 1;
                        // Up to and including that message, not "the subject": an event
                        // appended meanwhile stays.
                        purge.sequence(last.sequence + 1).await
                    } else if count > 1 {
                        // Everything before that message (never one appended meanwhile).
                        purge.sequence(last.sequence).await
                    } else {
                        continue;
                    }
                } else if count > 1 && below > 1 {
                    purge.sequence(below).await
                } else {
                    continue;
                }
            };
            pruned.events += purged
                .map_err(|e| {
                    JournalError::write(CauseKind::Shared, format!("JetStream purge: {e}"))
                })?
                .purged;
        }
        Ok(pruned)
    }
}

/// The lowest seq some sink or some other live mirror still needs (`u64::MAX`: none), by
/// the records of this incarnation of the stream. (This receiver's mirror holds what it
/// copied: the local pruning floor covers it.)
pub(crate) async fn shared_floor(remote: &Remote) -> Result<u64, JournalError> {
    let ready = remote.need()?;
    let created = ready.created_ns;
    let mut floor = u64::MAX;
    let mut cursors: std::collections::HashMap<String, u64> = Default::default();
    let mut starts: std::collections::HashMap<String, u64> = Default::default();
    // From the buckets' leaders: a replica that lags could hide a cursor or a start.
    let (records, _) = read_bucket(&ready.sinks, ">").await?;
    for record in records {
        let Ok(position) = serde_json::from_slice::<Tied<Position>>(&record.value) else {
            continue;
        };
        if position.stream != created {
            continue;
        }
        if let Some(sink) = record.key.strip_suffix(".cursor") {
            cursors.insert(sink.to_owned(), position.value.seq);
        } else if let Some(sink) = record.key.strip_suffix(".start") {
            starts.insert(sink.to_owned(), position.value.seq);
        }
    }
    for (sink, start) in &starts {
        floor = floor.min(cursors.get(sink).copied().unwrap_or(*start));
    }
    for cursor in cursors.values() {
        floor = floor.min(*cursor);
    }
    let (mirrors, _) = read_bucket(&ready.mirrors, ">").await?;
    for mirror in mirrors {
        // This receiver's own mirror counts by what it holds now (its shared entry lags).
        if remote.mirror_key.get() == Some(&mirror.key) {
            continue;
        }
        if let Ok(position) = serde_json::from_slice::<MirrorPosition>(&mirror.value)
            && position.stream == created
        {
            floor = floor.min(position.seq + 1);
        }
    }
    Ok(floor)
}
