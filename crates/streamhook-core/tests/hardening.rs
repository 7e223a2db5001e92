//! Regression tests from the hardening review: delivery and health never die or lie silently,
//! replays cannot skip, receive times never go back, histories age out, and `invalid` events
//! are kept without touching any history.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use streamhook_core::{
    Dispatcher, Health, Journal, JournalError, Parsed, PrunePolicy, ReplayFrom, Sink, Verified,
};
use streamhook_types::{EventKind, Problem, Resource};
use tokio::sync::watch;

fn start(
    journal: &Journal,
    sink: Arc<dyn Sink>,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, rx) = watch::channel(false);
    let names = [sink.name().to_owned()];
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let d = Dispatcher::new(journal.clone(), sink, everything(&names), fast_policy());
    (stop, tokio::spawn(d.run(rx)))
}

#[tokio::test]
async fn a_dispatcher_survives_journal_errors_and_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("app", 1).unwrap();
    for i in 0..5 {
        append(&journal, &video(i, "ready")).await;
    }
    // The next commits fail, as on a full disk: the dispatcher cannot persist its cursor.
    journal.inject_commit_failures(3);
    let sink = RecordingSink::new("app", Behaviour::Accept);
    let (stop, task) = start(&journal, sink.clone());
    eventually("the cursor persisted once the journal recovered", || {
        journal.cursor("app").unwrap() == 6
    })
    .await;
    assert!(!task.is_finished(), "the dispatcher must keep running");
    let mut seqs = sink.seqs();
    seqs.dedup();
    seqs.sort();
    seqs.dedup();
    assert_eq!(
        seqs,
        [1, 2, 3, 4, 5],
        "every event delivered (at least once)"
    );
    // And it keeps delivering what comes next.
    let before = sink.count();
    append(&journal, &video(9, "ready")).await;
    eventually("a later event delivered", || sink.count() == before + 1).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(sink.seqs().last(), Some(&6));
}

#[tokio::test]
async fn an_unreadable_record_becomes_a_dead_letter_and_delivery_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("app", 1).unwrap();
    for i in 0..3 {
        append(&journal, &video(i, "ready")).await;
    }
    journal.overwrite_record(2, b"\x00\x01garbage").unwrap();
    let sink = RecordingSink::new("app", Behaviour::Accept);
    let (stop, task) = start(&journal, sink.clone());
    eventually("the readable events delivered", || sink.count() == 2).await;
    eventually("a dead letter for the unreadable one", || {
        journal.dead_letters(Some("app")).unwrap().len() == 1
    })
    .await;
    let letter = &journal.dead_letters(Some("app")).unwrap()[0];
    assert_eq!(letter.seq, 2);
    assert!(
        letter.error.starts_with("unreadable journal record: "),
        "{}",
        letter.error
    );
    assert_eq!(sink.seqs(), [1, 3]);
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn health_sees_a_failed_commit_at_once_and_recovers_on_a_probe() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    assert_eq!(journal.health(), Health::Writable);
    journal.inject_commit_failures(1);
    let body = video(1, "ready");
    let webhook = streamhook_types::decode::decode(&body).unwrap().webhook;
    let source = Verified::trusted_local([127, 0, 0, 1].into());
    let failed = journal.append(source, &body, webhook).await;
    assert!(matches!(failed, Err(JournalError::Write(_))), "{failed:?}");
    assert!(
        matches!(journal.health(), Health::CannotWrite(ref e) if e.contains("injected")),
        "{:?}",
        journal.health()
    );
    // No traffic: a probe is what brings health back.
    journal.probe();
    eventually("writable again after a probe", || {
        journal.health().is_writable()
    })
    .await;
}

#[tokio::test]
async fn health_sees_a_dead_writer() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.inject_writer_panic();
    eventually("the writer is seen dead", || {
        journal.health() == Health::WriterDead
    })
    .await;
}

#[tokio::test]
async fn replay_past_the_end_is_refused_not_silently_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    for i in 0..3 {
        append(&journal, &video(i, "ready")).await;
    }
    journal.set_cursor("app", 2).unwrap();
    let err = journal
        .replay("app", ReplayFrom::Seq(100))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot replay from seq 100: the newest event is seq 3"
    );
    assert_eq!(journal.cursor("app").unwrap(), 2, "the cursor did not move");
    // Right after the newest is not refused, but the sink has not had seqs 2 and 3 yet: it
    // keeps its place (a replay never skips what a sink has not had).
    let replayed = journal.replay("app", ReplayFrom::Seq(4)).await.unwrap();
    assert_eq!((replayed.from_seq, replayed.moved), (2, false));
    assert_eq!(journal.cursor("app").unwrap(), 2, "the cursor did not move");
}

#[tokio::test]
async fn receive_times_never_go_back_even_when_the_clock_does() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    append(&journal, &video(1, "ready")).await;
    // The first event was stamped by a clock an hour ahead, which then stepped back.
    let record = journal.read_records(1, 1).unwrap().remove(0).unwrap();
    let ahead = SystemTime::now() + Duration::from_secs(3600);
    let ahead_ms = ahead.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut bytes = ahead_ms.to_be_bytes().to_vec();
    bytes.extend_from_slice(&0u32.to_be_bytes());
    bytes.extend_from_slice(&0u32.to_be_bytes());
    bytes.extend_from_slice(record.json.as_bytes());
    journal.overwrite_record(1, &bytes).unwrap();
    journal.close().await;
    let journal = open(dir.path());
    let second = append(&journal, &video(2, "ready")).await;
    let events = journal.read_from(1, 10).unwrap();
    assert!(
        events[1].received_at_ms >= events[0].received_at_ms,
        "seq {} received at {} before seq 1 at {}",
        second.seq,
        events[1].received_at_ms,
        events[0].received_at_ms
    );
    // So a replay from a time between them still finds the second event.
    let between = ahead - Duration::from_secs(1);
    assert_eq!(journal.seq_at(between).unwrap(), 1);
    assert!(journal.seq_at(ahead).unwrap() <= second.seq);
}

#[tokio::test]
async fn a_replay_is_not_undone_by_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("app", 1).unwrap();
    for i in 0..10 {
        append(&journal, &video(i, "ready")).await;
    }
    let sink = RecordingSink::new("app", Behaviour::Accept);
    let (stop, task) = start(&journal, sink.clone());
    eventually("all delivered", || sink.count() == 10).await;
    eventually("cursor persisted", || journal.cursor("app").unwrap() == 11).await;
    journal.replay("app", ReplayFrom::Seq(1)).await.unwrap();
    // Retention that would delete everything passed: the replayed events are not passed.
    let pruned = journal
        .prune(
            &["app".to_owned()],
            &PrunePolicy {
                max_events: Some(0),
                ..PrunePolicy::default()
            },
        )
        .unwrap();
    assert_eq!(pruned.events, 0, "pruned what the replay is delivering");
    eventually("replayed", || sink.count() == 20).await;
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn a_stopping_dispatcher_does_not_unregister_its_successor() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("app", 1).unwrap();
    for i in 0..3 {
        append(&journal, &video(i, "ready")).await;
    }
    // A reload: the old dispatcher stops after the new one has started.
    let old = RecordingSink::new("app", Behaviour::Accept);
    let (stop_old, old_task) = start(&journal, old.clone());
    eventually("old delivered", || old.count() == 3).await;
    eventually("cursor persisted", || journal.cursor("app").unwrap() == 4).await;
    let new = RecordingSink::new("app", Behaviour::Accept);
    let (stop_new, new_task) = start(&journal, new.clone());
    stop_old.send(true).unwrap();
    old_task.await.unwrap();
    // The replay must go through the running (new) dispatcher.
    journal.replay("app", ReplayFrom::Seq(1)).await.unwrap();
    eventually("the new dispatcher replayed", || new.count() == 3).await;
    stop_new.send(true).unwrap();
    new_task.await.unwrap();
}

#[tokio::test]
async fn histories_age_out_and_corrupt_ones_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    append(&journal, &stream(1, true, false)).await;
    append(&journal, &stream(2, true, false)).await;
    // Stream 1 was last seen 40 days ago.
    let old = SystemTime::now() - Duration::from_secs(40 * 24 * 3600);
    let old_ms = old.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut value = old_ms.to_be_bytes().to_vec();
    value.extend_from_slice(
        br#"{"type":"stream","live":true,"recording":false,"transcoding":null,"backup_live":null}"#,
    );
    journal.overwrite_history("stream:1", &value).unwrap();
    let month = Duration::from_secs(30 * 24 * 3600);
    let pruned = journal
        .prune(
            &[],
            &PrunePolicy {
                history_max_age: Some(month),
                ..PrunePolicy::default()
            },
        )
        .unwrap();
    assert_eq!(pruned.histories, 1);
    assert!(journal.history("stream:1").unwrap().is_none());
    assert!(journal.history("stream:2").unwrap().is_some());

    // A corrupt record is logged and counted, and the resource classified as new.
    journal
        .overwrite_history("stream:2", b"\x00\x00\x01\x00\x00\x00\x00\x00not json")
        .unwrap();
    let again = append(&journal, &stream(2, true, false)).await;
    assert_eq!(again.kinds, [EventKind::StreamStarted]);
    assert_eq!(journal.stats().history_corrupt.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn invalid_events_are_kept_with_their_problems_and_touch_no_history() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    append(&journal, &stream(7, true, false)).await;
    let before = journal.history("stream:7").unwrap();
    let body = br#"{"type":"stream","message":{"stream":{"id":7,"live":"yes"}}}"#;
    let problem = Problem {
        path: "$.message.stream.live".into(),
        line: Some(1),
        column: Some(48),
        message: "$.message.stream.live: expected a boolean, found the string \"yes\"".into(),
    };
    let parsed = Parsed::Invalid {
        resource: Resource {
            kind: "stream".into(),
            id: Some(7),
        },
        problems: vec![problem.clone()],
    };
    let source = Verified::trusted_local([127, 0, 0, 1].into());
    let appended = journal.append(source, body, parsed).await.unwrap();
    assert_eq!(appended.kinds, [EventKind::Invalid]);
    let envelope = journal
        .get(appended.seq)
        .unwrap()
        .unwrap()
        .envelope()
        .unwrap();
    assert_eq!(envelope.kinds, [EventKind::Invalid]);
    assert_eq!(envelope.problems, [problem]);
    assert_eq!(envelope.resource.to_string(), "stream 7");
    assert_eq!(envelope.payload.get().as_bytes(), body);
    assert_eq!(journal.history("stream:7").unwrap(), before);
    // The next good payload is classified against the history before the invalid one.
    let next = append(&journal, &stream(7, false, false)).await;
    assert_eq!(next.kinds, [EventKind::StreamStopped]);
}

#[tokio::test]
async fn an_aborted_dispatcher_is_unregistered() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("app", 1).unwrap();
    append(&journal, &video(1, "ready")).await;
    let sink = RecordingSink::new("app", Behaviour::Accept);
    let (_stop, task) = start(&journal, sink.clone());
    eventually("delivered", || sink.count() == 1).await;
    task.abort();
    let _ = task.await;
    // Not registered any more: the replay moves the cursor at once instead of waiting 30 s
    // for a dispatcher that is gone.
    let replayed = tokio::time::timeout(
        Duration::from_secs(10),
        journal.replay("app", ReplayFrom::Seq(1)),
    )
    .await
    .expect("the replay waited for an aborted dispatcher");
    assert_eq!(replayed.unwrap().from_seq, 1);
    assert_eq!(journal.cursor("app").unwrap(), 1);
}

#[tokio::test]
async fn a_receive_time_far_in_the_future_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    append(&journal, &video(1, "ready")).await;
    // A corrupt header (or a clock that had jumped years ahead): past what can be formatted.
    let record = journal.read_records(1, 1).unwrap().remove(0).unwrap();
    let mut bytes = (u64::MAX / 2).to_be_bytes().to_vec();
    bytes.extend_from_slice(&0u32.to_be_bytes());
    bytes.extend_from_slice(&0u32.to_be_bytes());
    bytes.extend_from_slice(record.json.as_bytes());
    journal.overwrite_record(1, &bytes).unwrap();
    journal.close().await;
    let journal = open(dir.path());
    let second = append(&journal, &video(2, "ready")).await;
    let event = journal.get(second.seq).unwrap().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        event.received_at_ms <= now,
        "stamped {} > now {now}",
        event.received_at_ms
    );
    assert_eq!(journal.stats().clock_reset.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn pruning_keeps_what_a_sink_without_a_position_has_not_passed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("a", 1).unwrap();
    for i in 0..5 {
        append(&journal, &video(i, "ready")).await;
    }
    journal.set_cursor("a", 6).unwrap();
    // Sink "b" is being started: its position does not exist yet. Pruning must not create
    // one at the end (passing everything) nor delete what "b" will deliver.
    let sinks = ["a".to_owned(), "b".to_owned()];
    let pruned = journal
        .prune(
            &sinks,
            &PrunePolicy {
                max_events: Some(0),
                ..PrunePolicy::default()
            },
        )
        .unwrap();
    assert_eq!(pruned.events, 0);
    assert_eq!(journal.len().unwrap(), 5);
    assert!(journal.cursors().unwrap().iter().all(|(n, _)| n != "b"));
}

#[tokio::test]
async fn a_replay_is_applied_even_while_a_lane_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("app", 1).unwrap();
    for _ in 0..6 {
        append(&journal, &video(5, "ready")).await;
    }
    // Requeued dead letters of the same resource, on top of a full window: the lane's queue
    // fills and handing over blocks while the sink hangs.
    for seq in 1..=6 {
        journal
            .dead_letter(&streamhook_core::DeadLetter {
                sink: "app".into(),
                seq,
                id: format!("id-{seq}"),
                error: "old".into(),
                attempts: 1,
                failed_at: "2026-11-28T00:00:00Z".into(),
                envelope: journal.get(seq).unwrap().unwrap().json,
                body: String::new(),
            })
            .unwrap();
        journal.requeue("app", seq).unwrap();
    }
    let sink = RecordingSink::new("app", Behaviour::Slow(Duration::from_secs(3600)));
    let (stop, rx) = watch::channel(false);
    let d = Dispatcher::new(
        journal.clone(),
        sink.clone(),
        everything(&["app"]),
        fast_policy(),
    )
    .with_window(2);
    let task = tokio::spawn(d.run(rx));
    eventually("the sink hangs on its first event", || {
        sink.attempts.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let applied = tokio::time::timeout(
        Duration::from_secs(10),
        journal.replay("app", ReplayFrom::Seq(1)),
    )
    .await;
    assert!(applied.is_ok(), "the replay waited for the stuck lane");
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the dispatcher did not stop")
        .unwrap();
}

#[tokio::test]
async fn a_replay_survives_a_cursor_saved_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("app", 1).unwrap();
    for i in 0..5 {
        append(&journal, &video(i, "ready")).await;
    }
    // Asked while no dispatcher runs; then a dispatcher that had not seen it saves its own,
    // later position (as one that was stuck would).
    journal.replay("app", ReplayFrom::Seq(2)).await.unwrap();
    journal.set_cursor("app", 6).unwrap();
    let sink = RecordingSink::new("app", Behaviour::Accept);
    let (stop, task) = start(&journal, sink.clone());
    eventually("the replay happened", || sink.count() == 4).await;
    assert_eq!(sink.seqs(), [2, 3, 4, 5]);
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        journal.rewind("app").unwrap(),
        None,
        "the rewind was applied and cleared"
    );
}
