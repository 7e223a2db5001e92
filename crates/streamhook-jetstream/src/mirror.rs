//! Opening a receiver on the replicated journal, and its mirror: every receiver copies the
//! stream, in order, into its own redb file (the same tables as a single-host journal: events
//! at the stream's seqs, the requests table, the history), through [`Journal::import`], so
//! that dispatchers, the admin API, the console and the CLI read locally, unchanged.
//!
//! A folder mirrors one stream, known by its identity (its name and creation time, recorded in
//! the folder): a folder that holds a single-host journal, or the mirror of another
//! incarnation of the stream (deleted and created again), is refused. Each receiver also
//! shares how far its mirror has copied (`<STREAM>_mirrors`), so that the stream is never
//! pruned below what a live mirror lacks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self as js};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use streamhook_core::{Cause, CauseKind, Journal, JournalConfig, JournalError};

use crate::append::{JetStreamSequencer, run_forwarder};
use crate::config::{CONNECT_WAIT, JetStreamConfig, MIRROR_STALE, SETUP_WAIT};
use crate::lease::JetStreamLeases;
use crate::message::{decode_message, imported, newest_ms};
use crate::remote::{Known, Phase, Remote, SetupError};

/// The `meta` key holding the creation time of the stream a mirror copies.
const MIRROR_OF: &str = "mirror_of_stream_created_ns";

/// The `meta` key holding this folder's receiver id (its key in `<STREAM>_mirrors`).
const RECEIVER_ID: &str = "receiver_id";

/// How often a running receiver checks the stream again (that it exists, and its settings).
const RECHECK: Duration = Duration::from_secs(10);

/// How often an idle receiver shares again how far its mirror has copied (a busy one shares
/// at most once a second).
const MIRROR_SHARE: Duration = Duration::from_secs(30);

/// What a receiver shares of its mirror.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MirrorPosition {
    /// The stream's creation time (ns since the epoch).
    pub(crate) stream: u64,
    /// The last seq the mirror holds.
    pub(crate) seq: u64,
    /// Which receiver (for people).
    pub(crate) instance: String,
}

fn task_err(e: tokio::task::JoinError) -> JournalError {
    JournalError::Write(Cause::with_source(CauseKind::Other, e.to_string(), e))
}

/// Opens a replicated journal: `config.dir` holds this receiver's mirror of the shared stream
/// and its spool. The client connects in the background: with every NATS server down the
/// receiver starts at once (after `CONNECT_WAIT`) and keeps events in its spool. Once a
/// server answers, the stream and buckets are created when missing and checked when not (a
/// server older than [`MIN_SERVER_VERSION`](crate::config::MIN_SERVER_VERSION), a setting
/// that can lose events, or a folder that mirrors another stream is refused: an error here
/// when it is found during `open`), what the mirror lacks is copied, and copying goes on in
/// the background until the journal is closed.
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
    let remote = Arc::new(Remote::new(remote).await?);
    let mut sequencer = None;
    let journal = local.with_backend(|_writer, journal| {
        let s = Arc::new(JetStreamSequencer::new(
            Arc::clone(&remote),
            journal.clone(),
        ));
        sequencer = Some(Arc::clone(&s));
        (
            s as Arc<dyn streamhook_core::backend::Sequencer>,
            Arc::new(JetStreamLeases::new(Arc::clone(&remote), journal)) as _,
        )
    });
    if let Some(sequencer) = sequencer {
        let j = journal.clone();
        let waiting = tokio::task::spawn_blocking(move || j.spool_resources())
            .await
            .map_err(task_err)??;
        sequencer.set_waiting(waiting);
        tokio::spawn(run_forwarder(sequencer));
    }
    let spooled = journal.spool_len();
    if spooled > 0 {
        tracing::info!(
            events = spooled,
            "the spool holds events from before this start: they are forwarded to the stream once it takes events"
        );
    }
    let mut phase = remote.watch_phase();
    let link = tokio::spawn(link(journal.clone(), Arc::clone(&remote)));
    // Wait, briefly, for a server; then for the stream and buckets (a cluster that just
    // started elects its leaders first); then for the mirror to copy what it lacks.
    let connect_by = Instant::now() + CONNECT_WAIT;
    while !remote.connected() && Instant::now() < connect_by {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !remote.connected() {
        tracing::warn!(
            servers = ?remote.config.urls.iter().map(|u| streamhook_core::redact_url(u)).collect::<Vec<_>>(),
            "no NATS server answers: starting without one; events are kept in the spool and forwarded once a server answers"
        );
        return Ok(journal);
    }
    let set_up = tokio::time::timeout(
        SETUP_WAIT,
        phase.wait_for(|p| !matches!(p, Phase::Connecting(_))),
    )
    .await;
    match remote.phase() {
        Phase::Ready => {}
        Phase::Refused(why) => {
            link.abort();
            journal.close().await;
            return Err(JournalError::Open {
                path: config.dir.clone(),
                source: Cause::new(CauseKind::Shared, why),
            });
        }
        Phase::Connecting(why) => {
            debug_assert!(set_up.is_err());
            tracing::warn!(
                waiting_for = %why,
                "the shared stream is not set up yet: starting without it; events are kept in the spool"
            );
            return Ok(journal);
        }
    }
    if let Some(why) = remote.mirror_refused() {
        if journal.spool_len() > 0 {
            // Its spool holds accepted events: they go to the stream (which takes them)
            // before the folder may be cleared. Start, deliver nothing, say so.
            tracing::error!(
                problem = %why,
                spooled = journal.spool_len(),
                "this data folder does not mirror the shared stream, but its spool holds accepted events: starting to forward them (nothing is delivered from here); once /readyz shows no spooling, restart with an empty data folder"
            );
            return Ok(journal);
        }
        link.abort();
        journal.close().await;
        return Err(JournalError::Open {
            path: config.dir.clone(),
            source: Cause::new(
                CauseKind::Shared,
                format!(
                    "{why}; give this receiver an empty data folder (it copies the shared journal at start)"
                ),
            ),
        });
    }
    // A stream that stops answering now (quorum lost) must not stop the start: events spool,
    // and the mirror copies in the background.
    if let Err(e) = catch_up(&journal, &remote).await {
        tracing::warn!(error = %e, "the mirror could not copy the shared journal at start; it goes on copying in the background (events are spooled meanwhile)");
    }
    Ok(journal)
}

/// Sets the stream and buckets up (retrying while no server answers, checking again now and
/// then while refused), checks the folder, then runs the mirror.
async fn link(journal: Journal, remote: Arc<Remote>) {
    let mut wait = Duration::from_millis(100);
    let since = Instant::now();
    let mut told = Instant::now();
    let ready = loop {
        if journal.is_closed() {
            return;
        }
        match remote.setup().await {
            Ok(ready) => break ready,
            Err(SetupError::Wait(why)) => {
                if told.elapsed() > Duration::from_secs(30) {
                    told = Instant::now();
                    tracing::warn!(waiting_for = %why, for_s = since.elapsed().as_secs(), spooled = journal.spool_len(), "the shared stream is not set up yet: events are kept in the spool");
                } else {
                    tracing::debug!(waiting_for = %why, "the shared stream is not set up yet");
                }
                remote.set_phase(Phase::Connecting(why));
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(SetupError::Refuse(why)) => {
                if remote.phase() != Phase::Refused(why.clone()) {
                    tracing::error!(problem = %why, "the shared journal is refused: events are kept in the spool until it is fixed (checked again every 30 s)");
                }
                remote.set_phase(Phase::Refused(why));
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    };
    let created = ready.created_ns;
    if let Err(why) = check_folder(&journal, &remote.name, created).await {
        tracing::error!(problem = %why, "this receiver's data folder does not mirror the shared stream: it takes events (into the stream) but delivers nothing; restart it with an empty data folder");
        remote.refuse_mirror(why);
    }
    remote.set_ready(ready);
    if remote.mirror_refused().is_some() {
        return;
    }
    let from = journal.last_committed() + 1;
    let share = tokio::spawn(share_position(journal.clone(), Arc::clone(&remote)));
    let watch = tokio::spawn(watch_stream(journal.clone(), Arc::clone(&remote), created));
    run_mirror(journal, Arc::clone(&remote), from, created).await;
    share.abort();
    watch.abort();
}

/// Checks the stream again now and then while the receiver runs: a stream deleted (and not
/// created again) or edited into settings that lose events stops appends (they are spooled)
/// and says so in `/readyz`; fixed, appends go on.
async fn watch_stream(journal: Journal, remote: Arc<Remote>, created: u64) {
    loop {
        tokio::time::sleep(RECHECK).await;
        if journal.is_closed() {
            return;
        }
        let Some(ready) = remote.ready() else {
            continue;
        };
        let mut stream = ready.stream.clone();
        let name = remote.name.clone();
        match stream.info().await {
            Ok(info) => {
                let now = info.created.unix_timestamp_nanos().max(0) as u64;
                if now != created {
                    // A new incarnation: the mirror stops (appends go to it); see run_mirror.
                    if remote.mirror_refused().is_none() {
                        refuse_recreated(&remote, created, now);
                    }
                    continue;
                }
                let problems =
                    crate::remote::check_stream(&name, &info.config, remote.config.replicas.max(1));
                if problems.is_empty() {
                    if matches!(remote.phase(), Phase::Refused(_)) {
                        tracing::info!(stream = %name, "the stream's settings are fixed: events go to it again");
                        remote.set_phase(Phase::Ready);
                    }
                } else {
                    let why = problems.join("; ");
                    if remote.phase() != Phase::Refused(why.clone()) {
                        tracing::error!(problem = %why, "the stream was changed into settings that lose events: events are kept in the spool until it is fixed");
                    }
                    remote.set_phase(Phase::Refused(why));
                }
            }
            Err(e) => {
                let gone = matches!(
                    e.kind(),
                    async_nats::jetstream::context::RequestErrorKind::Other
                ) && (e.to_string().contains("10059")
                    || e.to_string().contains("not found"));
                if gone {
                    let why = format!(
                        "stream {name} does not exist any more (deleted?): events are kept in the spool; to start again, stop the receivers, and start them with empty data folders (once their spools are empty) to create it"
                    );
                    if remote.phase() != Phase::Refused(why.clone()) {
                        tracing::error!(problem = %why, "the shared stream is gone");
                    }
                    remote.set_phase(Phase::Refused(why));
                }
            }
        }
    }
}

/// Refuses a folder that is not a mirror of this incarnation of the stream (by identity);
/// records the identity in a new one.
async fn check_folder(journal: &Journal, name: &str, created: u64) -> Result<(), String> {
    let j = journal.clone();
    let (mirror_of, last) = tokio::task::spawn_blocking(move || {
        Ok::<_, JournalError>((j.meta(MIRROR_OF)?, j.last_seq()?))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    match mirror_of {
        Some(of) if of == created => Ok(()),
        Some(of) => Err(format!(
            "this folder mirrors an earlier stream named {name} (created {}), not the one the servers hold (created {}): the stream was deleted and created again",
            format_ns(of),
            format_ns(created)
        )),
        None if last > 0 => Err(format!(
            "this data folder holds a single-host journal ({last} events), not a mirror of stream {name}"
        )),
        None => {
            let j = journal.clone();
            tokio::task::spawn_blocking(move || j.set_meta(MIRROR_OF, created.max(1)))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
    }
}

fn format_ns(ns: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// Waits until the mirror holds what the stream held when it was set up, saying how far it
/// is; gives up when it makes no progress for a minute.
async fn catch_up(journal: &Journal, remote: &Remote) -> Result<(), JournalError> {
    let (target, _) = remote.stream_state().await?;
    let mut changed = journal.subscribe();
    let mut last_seen = journal.last_committed();
    let mut stalled_since = Instant::now();
    if target > last_seen {
        tracing::info!(
            from = last_seen + 1,
            to = target,
            "copying the shared journal into the local mirror"
        );
    }
    while journal.last_committed() < target {
        // The stream's last messages may have been purged (pruning): done when it holds
        // nothing more up to the target.
        let next = remote.next_seq_from(journal.last_committed() + 1).await?;
        if next.is_none_or(|seq| seq > target) {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), changed.changed()).await;
        let now = journal.last_committed();
        if now > last_seen {
            tracing::info!(at = now, to = target, "copying the shared journal");
            last_seen = now;
            stalled_since = Instant::now();
        } else if stalled_since.elapsed() > Duration::from_secs(60) {
            return Err(JournalError::write(
                CauseKind::Shared,
                format!("the local mirror made no progress for a minute at seq {now} of {target}"),
            ));
        }
    }
    Ok(())
}

/// Shares how far this receiver's mirror has copied, every few seconds, so that pruning
/// never removes what it lacks (a receiver silent longer than `mirror_grace` is not waited
/// for).
async fn share_position(journal: Journal, remote: Arc<Remote>) {
    let id = {
        let j = journal.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(id) = j.meta(RECEIVER_ID)? {
                return Ok(id);
            }
            let id = fastrand::u64(1..);
            j.set_meta(RECEIVER_ID, id)?;
            Ok::<_, JournalError>(id)
        })
        .await
    };
    let id = match id {
        Ok(Ok(id)) => id,
        _ => {
            tracing::error!(
                "cannot record this receiver's id; its mirror's position is not shared (pruning does not wait for it)"
            );
            return;
        }
    };
    let key = format!("{id:016x}");
    let _ = remote.mirror_key.set(key.clone());
    let mut changed = journal.subscribe();
    let mut shared = None;
    let mut told = Instant::now() - Duration::from_secs(3600);
    loop {
        if journal.is_closed() {
            return;
        }
        // What a synced commit holds: a power cut could take the rest back.
        let seq = journal.durable_imported().min(journal.last_committed());
        if let Some(ready) = remote.ready()
            && shared != Some(seq)
        {
            let position = MirrorPosition {
                stream: ready.created_ns,
                seq,
                instance: remote.instance().to_owned(),
            };
            if let Ok(bytes) = serde_json::to_vec(&position) {
                match ready.mirrors.put(&key, Bytes::from(bytes)).await {
                    Ok(_) => shared = Some(seq),
                    Err(e) => {
                        if told.elapsed() > Duration::from_secs(60) {
                            told = Instant::now();
                            tracing::warn!(error = %e, "cannot share the mirror's position (retried): past mirror_grace, pruning stops waiting for this receiver");
                        }
                    }
                }
            }
        }
        // At most once a second; at least every MIRROR_SHARE (the entry must not expire).
        tokio::time::sleep(Duration::from_secs(1)).await;
        if tokio::time::timeout(MIRROR_SHARE, changed.changed())
            .await
            .is_err()
        {
            shared = None;
        }
    }
}

/// Copies the stream into the local mirror, in order, for as long as the journal is open and
/// the stream is the one it mirrors.
async fn run_mirror(journal: Journal, remote: Arc<Remote>, mut from: u64, created: u64) {
    let closed = |j: &Journal| j.is_closed();
    let Some(ready) = remote.ready() else {
        return;
    };
    let stream = ready.stream.clone();
    let mut wait = Duration::from_millis(100);
    loop {
        // The stream deleted and created again: this folder holds the earlier one's seqs.
        if let Ok((_, now)) = remote.stream_state().await
            && now != created
        {
            refuse_recreated(&remote, created, now);
            return;
        }
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
            // Wake up now and then to notice an idle, current mirror (and a closed journal);
            // soon when imports wait for a sync.
            let unsynced = journal.durable_imported() < journal.last_committed();
            let idle = if unsynced {
                Duration::from_millis(250)
            } else {
                Duration::from_secs(5)
            };
            let chunk = match tokio::time::timeout(idle, messages.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(_) if unsynced => {
                    // Nothing more came: sync what was imported.
                    if let Err(e) = journal.import(Vec::new()).await {
                        tracing::warn!(error = %e, "journal mirror: cannot sync the imports (retried)");
                    }
                    continue;
                }
                Err(_) => {
                    if closed(&journal) {
                        return;
                    }
                    if let Ok((_, now)) = remote.stream_state().await
                        && now != created
                    {
                        refuse_recreated(&remote, created, now);
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
            let mut learned = Vec::new();
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
                            let seq = info.stream_sequence;
                            journal
                                .stats()
                                .mirror_pending
                                .store(info.pending, std::sync::atomic::Ordering::Relaxed);
                            if let Some(known) =
                                known_of(&remote, seq, msg.headers.as_ref(), &msg.payload)
                            {
                                learned.push(known);
                            }
                            items.push(imported(seq, &msg.payload));
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
                        // What another receiver appended: this one's next append of those
                        // resources needs no read first.
                        for (key, known) in learned {
                            remote.learn(&key, known);
                        }
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

pub(crate) fn refuse_recreated(remote: &Remote, created: u64, now: u64) {
    let why = format!(
        "stream {} was deleted and created again (created {}; this mirror copies the one created {})",
        remote.name,
        format_ns(now),
        format_ns(created)
    );
    tracing::error!(problem = %why, "this receiver's mirror stops: it takes events (into the new stream) but delivers nothing; once its spool is empty, restart it with an empty data folder");
    remote.refuse_mirror(why);
    remote.forget_all();
}

/// What a copied message tells of its resource's last message (`None` when this receiver
/// knows as much already: its own appends, learned as they were acknowledged).
fn known_of(
    remote: &Remote,
    seq: u64,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Option<(String, Known)> {
    let message = decode_message(payload).ok()?;
    let key = message.key?;
    if remote.known_seq(key) >= seq {
        return None;
    }
    let state = match message.state {
        Some(bytes) => Some(serde_json::from_slice(bytes).ok()?),
        None => None,
    };
    Some((
        key.to_owned(),
        Known {
            seq,
            state,
            newest_ms: newest_ms(headers, message.record),
        },
    ))
}
