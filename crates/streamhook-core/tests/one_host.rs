//! One host, round three: nothing acknowledged is skipped by an operator's hand (a replay), a
//! configuration change (a sink taken out and put back), the clock (jumping ahead, set back)
//! or pruning (racing a replay, holding appends behind a whole backlog).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use streamhook_core::{
    Dispatcher, Journal, PRUNE_CHUNK, PrunePolicy, ReplayFrom, SinkStart, SinkStats,
};
use tokio::sync::watch;

fn start(
    journal: &Journal,
    sink: Arc<RecordingSink>,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
    Arc<SinkStats>,
) {
    // Quick retries, and enough of them that a destination that is down keeps its events.
    let policy = streamhook_core::RetryPolicy {
        max_attempts: 100_000,
        ..fast_policy()
    };
    let dispatcher = Dispatcher::new(
        journal.clone(),
        sink.clone(),
        everything(&[&sink.name]),
        policy,
    );
    let stats = dispatcher.stats();
    let (stop, rx) = watch::channel(false);
    (stop, tokio::spawn(dispatcher.run(rx)), stats)
}

fn keep_none() -> PrunePolicy {
    PrunePolicy {
        max_events: Some(0),
        removed_sink_grace: Duration::from_secs(7 * 24 * 3600),
        ..PrunePolicy::default()
    }
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// A destination that is down: the sink's cursor stays at its first event while five wait.
/// A replay asked from the fifth must not move it there: when the destination comes back it
/// gets all five, in order.
#[tokio::test]
async fn a_replay_past_the_cursor_never_skips_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("forward", 1).unwrap();
    for i in 0..5 {
        append(&journal, &video(i, "ready")).await;
    }
    let down = Arc::new(AtomicBool::new(true));
    let sink = RecordingSink::new("forward", Behaviour::DownWhile(Arc::clone(&down)));
    let (stop, task, _) = start(&journal, sink.clone());
    eventually("the sink is trying", || {
        sink.attempts.load(Ordering::SeqCst) > 0
    })
    .await;
    let replayed = journal.replay("forward", ReplayFrom::Seq(5)).await.unwrap();
    assert_eq!(replayed.asked_seq, 5);
    assert_eq!(replayed.from_seq, 1, "{replayed:?}");
    assert!(!replayed.moved);
    assert_eq!(replayed.events, 5);
    // By time too: `--since` a point after the second event.
    let third = journal.get(3).unwrap().unwrap().received_at_ms;
    let since = UNIX_EPOCH + Duration::from_millis(third);
    let replayed = journal
        .replay("forward", ReplayFrom::Time(since))
        .await
        .unwrap();
    assert_eq!((replayed.from_seq, replayed.moved), (1, false));
    down.store(false, Ordering::SeqCst);
    eventually("all five delivered", || sink.count() == 5).await;
    assert_eq!(sink.seqs(), [1, 2, 3, 4, 5]);
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(journal.cursor("forward").unwrap(), 6);
}

/// The same with no dispatcher running (the replay is recorded durably): the cursor stays,
/// and the next start delivers the backlog once, from its start.
#[tokio::test]
async fn a_recorded_replay_past_the_cursor_never_skips_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("forward", 1).unwrap();
    for i in 0..5 {
        append(&journal, &video(i, "ready")).await;
    }
    let replayed = journal.replay("forward", ReplayFrom::Seq(5)).await.unwrap();
    assert_eq!((replayed.from_seq, replayed.moved), (1, false));
    assert_eq!(journal.cursor("forward").unwrap(), 1);
    let sink = RecordingSink::new("forward", Behaviour::Accept);
    let (stop, task, _) = start(&journal, sink.clone());
    eventually("all five delivered", || sink.count() == 5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.seqs(), [1, 2, 3, 4, 5], "each once, from the first");
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// A sink taken out of the configuration (or a receiver restarted without it) keeps holding
/// its events for the grace period: put back, it gets everything it missed.
#[tokio::test]
async fn a_sink_out_of_the_configuration_keeps_its_backlog_for_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let both = [
        ("archive".to_owned(), SinkStart::Newest),
        ("forward".to_owned(), SinkStart::Newest),
    ];
    journal.configure_sinks(&both).unwrap();
    for i in 0..20 {
        append(&journal, &video(i, "ready")).await;
    }
    journal.set_cursor("archive", 21).unwrap();
    journal.set_cursor("forward", 11).unwrap();
    // "forward" goes out of the configuration.
    journal.configure_sinks(&both[..1]).unwrap();
    let removed = journal.removed_sinks(Duration::from_secs(3600)).unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(
        (removed[0].name.as_str(), removed[0].cursor),
        ("forward", 11)
    );
    // Pruning runs with only "archive" configured: forward's ten events stay.
    let pruned = journal
        .prune(&["archive".to_owned()], &keep_none())
        .unwrap();
    assert_eq!(pruned.events, 10, "only what every sink passed");
    assert_eq!(journal.first_seq().unwrap(), Some(11));
    // Back in the configuration: it resumes where it stood and gets the ten.
    journal.configure_sinks(&both).unwrap();
    assert!(journal.removed_sinks(Duration::ZERO).unwrap().is_empty());
    let sink = RecordingSink::new("forward", Behaviour::Accept);
    let (stop, task, stats) = start(&journal, sink.clone());
    eventually("the ten it missed", || sink.count() == 10).await;
    assert_eq!(sink.seqs(), (11..=20).collect::<Vec<_>>());
    assert_eq!(stats.skipped.load(Ordering::Relaxed), 0);
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// Past the grace, the removed sink's events may go; when it comes back, the jump over them is
/// counted and logged, never silent. `forget_sink` ends the grace at once.
#[tokio::test]
async fn a_jump_over_pruned_events_is_counted_and_forgetting_ends_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let both = [
        ("archive".to_owned(), SinkStart::Newest),
        ("forward".to_owned(), SinkStart::Newest),
    ];
    journal.configure_sinks(&both).unwrap();
    for i in 0..10 {
        append(&journal, &video(i, "ready")).await;
    }
    journal.set_cursor("archive", 11).unwrap();
    journal.configure_sinks(&both[..1]).unwrap();
    let expired = PrunePolicy {
        removed_sink_grace: Duration::ZERO,
        ..keep_none()
    };
    assert_eq!(
        journal
            .prune(&["archive".to_owned()], &expired)
            .unwrap()
            .events,
        10
    );
    journal.configure_sinks(&both).unwrap();
    append(&journal, &video(99, "ready")).await;
    let sink = RecordingSink::new("forward", Behaviour::Accept);
    let (stop, task, stats) = start(&journal, sink.clone());
    eventually("the new event", || sink.count() == 1).await;
    assert_eq!(sink.seqs(), [11]);
    assert_eq!(stats.skipped.load(Ordering::Relaxed), 10, "counted");
    stop.send(true).unwrap();
    task.await.unwrap();

    // Forgotten: the cursor, its start and its dead letters go; it no longer holds anything.
    journal.configure_sinks(&both[..1]).unwrap();
    let forgotten = journal.forget_sink("forward").unwrap();
    assert_eq!(forgotten.dead_letters, 0);
    assert!(
        journal
            .cursors()
            .unwrap()
            .iter()
            .all(|(n, _)| n != "forward")
    );
    assert!(journal.forget_sink("forward").is_err(), "unknown now");
}

#[tokio::test]
async fn a_new_sink_starts_where_its_configuration_says() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    for i in 0..6 {
        append(&journal, &video(i, "ready")).await;
    }
    let fourth = journal.get(4).unwrap().unwrap().received_at_ms;
    let sinks = [
        ("new".to_owned(), SinkStart::Newest),
        ("all".to_owned(), SinkStart::Oldest),
        (
            "since".to_owned(),
            SinkStart::Time(UNIX_EPOCH + Duration::from_millis(fourth)),
        ),
    ];
    let set = journal.configure_sinks(&sinks).unwrap();
    assert_eq!(
        set,
        [
            ("new".to_owned(), 7, true),
            ("all".to_owned(), 1, true),
            ("since".to_owned(), 4, true),
        ]
    );
    // Only a new sink is placed: the next configure keeps where they are.
    journal.set_cursor("all", 3).unwrap();
    let again = journal.configure_sinks(&sinks).unwrap();
    assert_eq!(again[1], ("all".to_owned(), 3, false));
}

/// A clock that jumps 30 days ahead ages nothing: histories age by the journal's clock (the
/// newest receive time), so the next `recording: false` is still "recording stopped".
#[tokio::test]
async fn history_ages_by_the_journal_clock_not_the_wall_clock() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    append(&journal, &stream(7, true, true)).await;
    journal.set_clock_offset(30 * DAY_MS + 60_000);
    let month = PrunePolicy {
        history_max_age: Some(Duration::from_secs(30 * 24 * 3600)),
        ..PrunePolicy::default()
    };
    assert_eq!(journal.prune(&[], &month).unwrap().histories, 0);
    assert!(journal.history("stream:7").unwrap().is_some());
    let stopped = append(&journal, &stream(7, true, false)).await;
    let kinds: Vec<String> = stopped.kinds.iter().map(|k| k.to_string()).collect();
    assert_eq!(kinds, ["stream.recording_stopped"]);
}

/// A clock set back a month: receive times stay where they were (never backwards), so
/// `replay --since` still finds the right events.
#[tokio::test]
async fn receive_times_never_go_back_when_the_clock_is_set_back() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    for i in 0..3 {
        append(&journal, &video(i, "ready")).await;
    }
    let third = journal.get(3).unwrap().unwrap().received_at_ms;
    journal.set_clock_offset(-30 * DAY_MS);
    for i in 3..6 {
        append(&journal, &video(i, "ready")).await;
    }
    let times: Vec<u64> = journal
        .read_from(1, 10)
        .unwrap()
        .iter()
        .map(|e| e.received_at_ms)
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert_eq!(
        journal
            .seq_at(UNIX_EPOCH + Duration::from_millis(third))
            .unwrap(),
        3
    );
    assert_eq!(journal.stats().clock_behind.load(Ordering::Relaxed), 3);
    let _ = SystemTime::now();
}

/// A replay recorded while no dispatcher runs, then a cursor saved later (a dispatcher that
/// was stopping): the replay stands, and pruning keeps its range.
#[tokio::test]
async fn a_recorded_replay_holds_pruning_and_a_later_cursor_save() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("app", 1).unwrap();
    for i in 0..10 {
        append(&journal, &video(i, "ready")).await;
    }
    journal.set_cursor("app", 11).unwrap();
    let replayed = journal.replay("app", ReplayFrom::Seq(3)).await.unwrap();
    assert!(replayed.moved);
    journal.set_cursor("app", 11).unwrap();
    assert_eq!(
        journal.cursor("app").unwrap(),
        3,
        "the save did not pass the replay"
    );
    let pruned = journal.prune(&["app".to_owned()], &keep_none()).unwrap();
    assert_eq!(pruned.events, 2);
    assert_eq!(journal.first_seq().unwrap(), Some(3));
}

/// A long backlog is pruned in chunks, and an append goes through between two of them.
#[tokio::test]
async fn pruning_a_backlog_goes_in_chunks_that_let_appends_through() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let total = PRUNE_CHUNK * 2 + PRUNE_CHUNK / 2;
    let mut appends = tokio::task::JoinSet::new();
    for i in 0..total {
        let journal = journal.clone();
        appends.spawn(async move { append(&journal, &video(i as u64, "ready")).await });
    }
    while appends.join_next().await.is_some() {}
    journal.set_cursor("app", total as u64 + 1).unwrap();
    let (paused_tx, paused) = std::sync::mpsc::channel();
    let (go, go_rx) = std::sync::mpsc::channel();
    journal.pause_pruning_between_chunks(paused_tx, go_rx);
    let pruning = {
        let journal = journal.clone();
        tokio::task::spawn_blocking(move || journal.prune(&["app".to_owned()], &keep_none()))
    };
    // Between the first and the second chunk: an append does not wait for the rest.
    tokio::task::spawn_blocking(move || paused.recv().unwrap())
        .await
        .unwrap();
    let appended = tokio::time::timeout(
        Duration::from_secs(30),
        append(&journal, &video(10_000, "ready")),
    )
    .await
    .expect("the append waited behind the whole prune");
    assert_eq!(appended.seq, total as u64 + 1);
    assert!(!pruning.is_finished());
    go.send(()).unwrap();
    go.send(()).unwrap();
    let pruned = pruning.await.unwrap().unwrap();
    assert_eq!(pruned.events, total as u64);
    assert_eq!(journal.stats().prune_commits.load(Ordering::Relaxed), 3);
}

/// A sink that accepts at once but makes what it accepted durable only when allowed (a file
/// sink between two syncs).
#[derive(Debug)]
struct Unsynced {
    got: std::sync::Mutex<Vec<u64>>,
    unsynced_from: std::sync::Mutex<Option<u64>>,
    may_sync: AtomicBool,
}

#[async_trait::async_trait]
impl streamhook_core::Sink for Unsynced {
    fn name(&self) -> &str {
        "archive"
    }

    async fn send(&self, d: &streamhook_core::Delivery) -> Result<(), streamhook_core::SinkError> {
        self.got.lock().unwrap().push(d.envelope.seq);
        self.unsynced_from
            .lock()
            .unwrap()
            .get_or_insert(d.envelope.seq);
        Ok(())
    }

    async fn flush(&self) -> Result<(), streamhook_core::SinkError> {
        if self.may_sync.load(Ordering::SeqCst) {
            *self.unsynced_from.lock().unwrap() = None;
        }
        Ok(())
    }

    fn not_durable_from(&self) -> Option<u64> {
        *self.unsynced_from.lock().unwrap()
    }
}

/// The cursor never passes what the sink has not made durable: a power cut then costs the
/// sink nothing the journal does not deliver again.
#[tokio::test]
async fn the_cursor_waits_for_what_the_sink_has_not_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    journal.set_cursor("archive", 1).unwrap();
    for i in 0..5 {
        append(&journal, &video(i, "ready")).await;
    }
    let sink = Arc::new(Unsynced {
        got: std::sync::Mutex::default(),
        unsynced_from: std::sync::Mutex::default(),
        may_sync: AtomicBool::new(false),
    });
    let dispatcher = Dispatcher::new(
        journal.clone(),
        sink.clone(),
        everything(&["archive"]),
        fast_policy(),
    );
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(dispatcher.run(rx));
    eventually("all delivered", || sink.got.lock().unwrap().len() == 5).await;
    // Several persist periods: the cursor stays before the first line not durable.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(journal.cursor("archive").unwrap(), 1);
    sink.may_sync.store(true, Ordering::SeqCst);
    append(&journal, &video(9, "ready")).await;
    eventually("durable, the cursor passes them", || {
        journal.cursor("archive").unwrap() == 7
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
}
