//! What the console reads from the journal: requests kept beside events (and pruned with
//! exactly them), backward reads, sink starts, dead-letter flags, resend, and the rate ring.

mod common;

use common::*;
use streamhook_core::{Journal, JournalError, Rate, Verified};

async fn append_received(journal: &Journal, body: &[u8], header: &str) -> u64 {
    let webhook = streamhook_types::decode::decode(body).unwrap().webhook;
    journal
        .append_received(
            Verified::trusted_local([127, 0, 0, 1].into()),
            body,
            webhook,
            vec![("x-test".to_owned(), header.to_owned())],
        )
        .await
        .unwrap()
        .seq
}

#[tokio::test]
async fn requests_are_kept_with_their_events_and_pruned_with_exactly_them() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("a", 1).unwrap();
    for i in 0..6 {
        append_received(&journal, &video(i, "ready"), &format!("h{i}")).await;
    }
    // One appended without a request record.
    append(&journal, &video(99, "ready")).await;
    let kept = journal.received(3).unwrap().unwrap();
    assert_eq!(kept.headers, vec![("x-test".to_owned(), "h2".to_owned())]);
    assert_eq!(kept.peer.to_string(), "127.0.0.1");
    assert_eq!(kept.rule, None, "trusted_local has no allowlist rule");
    assert_eq!(journal.received(7).unwrap(), None);

    journal.set_cursor("a", 5).unwrap();
    let pruned = journal
        .prune(
            &["a".to_owned()],
            &streamhook_core::PrunePolicy {
                max_events: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(pruned.events, 4);
    for seq in 1..=4 {
        assert_eq!(journal.received(seq).unwrap(), None, "seq {seq} pruned");
    }
    for seq in 5..=6 {
        assert!(journal.received(seq).unwrap().is_some(), "seq {seq} kept");
    }
}

#[tokio::test]
async fn read_back_pages_newest_first_and_reports_corrupt_records_with_their_seq() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    for i in 0..5 {
        append(&journal, &video(i, "ready")).await;
    }
    let seqs = |records: Vec<Result<streamhook_core::StoredEvent, JournalError>>| -> Vec<u64> {
        records
            .into_iter()
            .map(|r| match r {
                Ok(e) => e.seq,
                Err(JournalError::Corrupt { seq, .. }) => seq + 1000,
                Err(e) => panic!("{e}"),
            })
            .collect()
    };
    assert_eq!(seqs(journal.read_back(u64::MAX, 3).unwrap()), vec![5, 4, 3]);
    assert_eq!(seqs(journal.read_back(3, 10).unwrap()), vec![2, 1]);
    journal.overwrite_record(4, b"\x00").unwrap();
    assert_eq!(seqs(journal.read_back(6, 3).unwrap()), vec![5, 1004, 3]);
}

#[tokio::test]
async fn a_sink_starts_where_it_was_created_and_a_replay_moves_its_start_back() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    for i in 0..3 {
        append(&journal, &video(i, "ready")).await;
    }
    assert_eq!(journal.cursor("late").unwrap(), 4);
    assert_eq!(journal.sink_start("late").unwrap(), Some(4));
    assert_eq!(journal.sink_start("unknown").unwrap(), None);
    journal
        .replay("late", streamhook_core::ReplayFrom::Seq(2))
        .await
        .unwrap();
    assert_eq!(journal.sink_start("late").unwrap(), Some(2));
}

#[tokio::test]
async fn resend_requeues_a_dead_letter_and_refuses_one_already_queued() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    for i in 0..3 {
        append(&journal, &video(i, "ready")).await;
    }
    let event = journal.get(2).unwrap().unwrap();
    journal
        .dead_letter(&streamhook_core::DeadLetter {
            sink: "app".into(),
            seq: 2,
            id: "x".into(),
            error: "HTTP 400".into(),
            attempts: 1,
            failed_at: "2026-11-28T00:00:00Z".into(),
            envelope: event.json.clone(),
            body: String::new(),
        })
        .unwrap();
    assert_eq!(
        journal.letter_flags("app", &[1, 2, 3]).unwrap(),
        vec![(false, false), (true, false), (false, false)]
    );
    // A dead letter is requeued: no longer dead, queued once.
    journal.resend("app", 2).unwrap();
    assert_eq!(
        journal.letter_flags("app", &[2]).unwrap(),
        vec![(false, true)]
    );
    assert!(matches!(
        journal.resend("app", 2),
        Err(JournalError::AlreadyQueued { seq: 2, .. })
    ));
    // Any other event is queued as it is stored.
    journal.resend("app", 3).unwrap();
    let queued = journal.requeued("app", 10).unwrap();
    assert_eq!(queued.iter().map(|l| l.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(queued[1].envelope, journal.get(3).unwrap().unwrap().json);
    assert!(matches!(
        journal.resend("app", 42),
        Err(JournalError::NoSuchEvent { seq: 42 })
    ));
}

#[test]
fn the_rate_ring_counts_per_minute_and_forgets_after_an_hour() {
    let rate = Rate::default();
    let now = 29_000_000;
    for _ in 0..3 {
        rate.add_at(now);
    }
    rate.add_at(now - 1);
    rate.add_at(now - 59);
    let hour = rate.hour_before(now);
    assert_eq!(hour.len(), 60);
    assert_eq!(hour[59], 3, "this minute, last");
    assert_eq!(hour[58], 1);
    assert_eq!(hour[0], 1, "59 minutes ago, first");
    // An hour later the same slots count new minutes from zero.
    rate.add_at(now + 60);
    assert_eq!(rate.hour_before(now + 60)[59], 1);
    assert_eq!(rate.hour_before(now + 60).iter().sum::<u64>(), 1);
}

#[test]
fn the_rate_ring_loses_no_count_under_concurrent_adds() {
    let rate = std::sync::Arc::new(Rate::default());
    let minute = 29_000_000;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let r = std::sync::Arc::clone(&rate);
            std::thread::spawn(move || {
                for _ in 0..10_000 {
                    r.add_at(minute);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(rate.hour_before(minute)[59], 40_000);
}
