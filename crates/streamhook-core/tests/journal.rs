//! The journal against a real redb file: history-aware classification across reopens,
//! byte-exact bodies, group commit, time lookups and pruning.

mod common;

use common::*;
use streamhook_core::PrunePolicy;
use streamhook_types::EventKind::{self, *};

fn kinds(list: &[EventKind]) -> Vec<EventKind> {
    list.to_vec()
}

#[tokio::test]
async fn seed_stream_sequence_classifies_with_history() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let steps = [
        ("seed/01-stream-started.json", kinds(&[StreamStarted])),
        (
            "seed/03-stream-recording-started.json",
            kinds(&[StreamRecordingStarted]),
        ),
        (
            "seed/04-stream-recording-finished.json",
            kinds(&[StreamRecordingStopped]),
        ),
        ("seed/02-stream-paused.json", kinds(&[StreamStopped])),
    ];
    for (file, expect) in steps {
        assert_eq!(
            append(&journal, &fixture(file)).await.kinds,
            expect,
            "{file}"
        );
    }
    // The same payload twice changes nothing.
    assert_eq!(
        append(&journal, &fixture("seed/02-stream-paused.json"))
            .await
            .kinds,
        [StreamUpdated]
    );
}

#[tokio::test]
async fn history_survives_closing_and_reopening_between_any_two_events() {
    let dir = tempfile::tempdir().unwrap();
    let steps = [
        ("seed/01-stream-started.json", StreamStarted),
        (
            "seed/03-stream-recording-started.json",
            StreamRecordingStarted,
        ),
        (
            "seed/04-stream-recording-finished.json",
            StreamRecordingStopped,
        ),
        ("seed/02-stream-paused.json", StreamStopped),
    ];
    for (file, expect) in steps {
        let journal = open(dir.path());
        assert_eq!(
            append(&journal, &fixture(file)).await.kinds,
            [expect],
            "{file}"
        );
        journal.close().await;
        drop(journal);
    }
    let journal = open(dir.path());
    assert_eq!(journal.len().unwrap(), 4);
    assert_eq!(journal.last_seq().unwrap(), 4);
}

#[tokio::test]
async fn streams_have_separate_histories() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    assert_eq!(
        append(&journal, &stream(1, true, false)).await.kinds,
        [StreamStarted]
    );
    assert_eq!(
        append(&journal, &stream(2, true, true)).await.kinds,
        [StreamStarted, StreamRecordingStarted]
    );
    assert_eq!(
        append(&journal, &stream(1, true, true)).await.kinds,
        [StreamRecordingStarted]
    );
    assert_eq!(
        append(&journal, &stream(2, false, false)).await.kinds,
        [StreamRecordingStopped, StreamStopped]
    );
}

#[tokio::test]
async fn the_body_is_kept_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let body = fixture("seed/06-recording-partially-processed.json");
    let appended = append(&journal, &body).await;
    let stored = journal.get(appended.seq).unwrap().unwrap();
    let envelope = stored.envelope().unwrap();
    assert_eq!(stored.body(&envelope).as_bytes(), body.as_slice());
    assert_eq!(envelope.id, appended.id);
    assert_eq!(envelope.kinds, [VideoViewable]);
    assert_eq!(envelope.source_ip.to_string(), "92.223.123.1");
    // The one-line form is one line and the same JSON value.
    let line = stored.json_line();
    assert!(!line.contains('\n'));
    let a: serde_json::Value = serde_json::from_str(&line).unwrap();
    let b: serde_json::Value = serde_json::from_str(&stored.json).unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn concurrent_appends_are_group_committed_and_all_stored() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..400u64 {
        let j = journal.clone();
        tasks.push(tokio::spawn(
            async move { append(&j, &video(i, "ready")).await },
        ));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().seq);
    }
    seqs.sort();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    let commits = journal
        .stats()
        .commits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        commits < 400,
        "{commits} commits for 400 concurrent appends: no batching"
    );
}

#[tokio::test]
async fn a_full_queue_answers_busy_instead_of_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = streamhook_core::JournalConfig::new(dir.path());
    config.queue = 1;
    config.max_batch = 1;
    let journal = streamhook_core::Journal::open(config).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let j = journal.clone();
        let body = video(i, "ready");
        tasks.push(tokio::spawn(async move {
            let webhook = streamhook_types::decode::decode(&body).unwrap().webhook;
            j.append(
                streamhook_core::Verified::trusted_local([127, 0, 0, 1].into()),
                &body,
                webhook,
            )
            .await
        }));
    }
    let mut busy = 0;
    let mut stored = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => stored += 1,
            Err(streamhook_core::JournalError::Busy) => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(busy > 0, "no append was shed");
    assert_eq!(journal.len().unwrap(), stored);
}

#[tokio::test]
async fn seq_at_finds_the_first_event_at_or_after_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    append(&journal, &video(1, "ready")).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mark = std::time::SystemTime::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    append(&journal, &video(2, "ready")).await;
    append(&journal, &video(3, "ready")).await;
    assert_eq!(journal.seq_at(mark).unwrap(), 2);
    assert_eq!(journal.seq_at(std::time::UNIX_EPOCH).unwrap(), 1);
    assert_eq!(
        journal
            .seq_at(mark + std::time::Duration::from_secs(3600))
            .unwrap(),
        4
    );
}

#[tokio::test]
async fn prune_deletes_only_what_every_sink_passed() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("a", 1).unwrap();
    journal.set_cursor("b", 1).unwrap();
    for i in 0..10 {
        append(&journal, &video(i, "ready")).await;
    }
    journal.set_cursor("a", 8).unwrap();
    journal.set_cursor("b", 5).unwrap();
    let sinks = vec!["a".to_owned(), "b".to_owned()];
    // Keep at most 2 events: only seqs below 5 (b's cursor) may go.
    assert_eq!(
        journal
            .prune(
                &sinks,
                &PrunePolicy {
                    max_events: Some(2),
                    ..PrunePolicy::default()
                }
            )
            .unwrap()
            .events,
        4
    );
    assert_eq!(journal.read_from(0, 100).unwrap().first().unwrap().seq, 5);
    // Age: nothing is a day old.
    assert_eq!(
        journal
            .prune(
                &sinks,
                &PrunePolicy {
                    max_age: Some(std::time::Duration::from_secs(86400)),
                    ..PrunePolicy::default()
                }
            )
            .unwrap()
            .events,
        0
    );
    // Seqs keep growing after pruning.
    assert_eq!(append(&journal, &video(99, "ready")).await.seq, 11);
}

#[tokio::test]
async fn a_reconciled_event_is_journaled_only_over_the_state_it_was_compared_with() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    append(&journal, &stream(5, true, false)).await;
    let compared = journal.history("stream:5").unwrap();
    // A webhook arrives after the comparison (recording started).
    append(&journal, &stream(5, true, true)).await;
    let body = br#"{"type":"stream","message":{"stream":{"id":5,"live":false,"recording":false,"transcoding":false}}}"#;
    let webhook = streamhook_types::decode::decode(body).unwrap().webhook;
    let reconciled = streamhook_types::Reconciled {
        observed_at: "2026-12-02T00:00:00.000Z".into(),
        happened_at: None,
        reason: "test".into(),
    };
    let refused = journal
        .append_reconciled(body, webhook.clone(), reconciled.clone(), compared)
        .await;
    assert!(
        matches!(
            refused,
            Err(streamhook_core::JournalError::NotAsExpected { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(journal.last_seq().unwrap(), 2, "nothing written");
    let now = journal.history("stream:5").unwrap();
    let stored = journal
        .append_reconciled(body, webhook, reconciled, now)
        .await
        .unwrap();
    let kinds: Vec<_> = stored.kinds.iter().map(|k| k.as_str()).collect();
    assert_eq!(kinds, ["stream.recording_stopped", "stream.stopped"]);
    let envelope = journal
        .get(stored.seq)
        .unwrap()
        .unwrap()
        .envelope()
        .unwrap();
    assert!(envelope.reconciled.is_some());
}

#[tokio::test]
async fn a_seq_is_never_given_twice_even_after_every_event_is_pruned_and_the_journal_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("a", 1).unwrap();
    for i in 0..5 {
        append(&journal, &video(i, "ready")).await;
    }
    journal.set_cursor("a", 6).unwrap();
    let policy = PrunePolicy {
        max_events: Some(0),
        ..PrunePolicy::default()
    };
    assert_eq!(journal.prune(&["a".to_owned()], &policy).unwrap().events, 5);
    assert!(journal.is_empty().unwrap());
    assert_eq!(
        journal.last_seq().unwrap(),
        5,
        "the last seq given stays known"
    );
    journal.close().await;
    drop(journal);
    let journal = open(dir.path());
    assert_eq!(journal.last_seq().unwrap(), 5);
    let next = append(&journal, &video(9, "ready")).await;
    assert_eq!(next.seq, 6);
}
