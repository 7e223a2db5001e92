//! The dispatcher against a real on-disk journal: retries, dead letters, replay, requeue,
//! restart from the cursor, per-resource order under concurrency, routing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use streamhook_core::{Dispatcher, Journal, ReplayFrom, RouteConfig, Router, Sink};
use tokio::sync::watch;

fn start(
    journal: &Journal,
    sink: Arc<dyn Sink>,
    router: streamhook_core::dispatch::SharedRouter,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, rx) = watch::channel(false);
    let d = Dispatcher::new(journal.clone(), sink, router, fast_policy());
    let handle = tokio::spawn(async move { d.run(rx).await });
    (stop, handle)
}

#[tokio::test]
async fn a_sink_that_fails_then_recovers_gets_every_event_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sink = RecordingSink::new("flaky", Behaviour::FailTimes(3));
    let (stop, handle) = start(&journal, sink.clone(), everything(&["flaky"]));
    eventually("dispatcher registered", || {
        journal.cursors().unwrap().len() == 1
    })
    .await;
    for i in 0..20 {
        append(&journal, &video(i, "ready")).await;
    }
    eventually("20 deliveries", || sink.count() == 20).await;
    assert_eq!(sink.seqs(), (1..=20).collect::<Vec<_>>());
    assert_eq!(
        sink.attempts.load(std::sync::atomic::Ordering::SeqCst),
        20 * 4
    );
    // Each retry of one event carried the same id.
    let ids = sink.ids();
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        20
    );
    stop.send(true).unwrap();
    handle.await.unwrap();
    assert_eq!(journal.cursor("flaky").unwrap(), 21);
    assert!(journal.dead_letters(None).unwrap().is_empty());
}

#[tokio::test]
async fn a_refusing_sink_dead_letters_without_stalling_a_healthy_one() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let bad = RecordingSink::new("bad", Behaviour::Refuse);
    let good = RecordingSink::new("good", Behaviour::Accept);
    let router = everything(&["bad", "good"]);
    let (stop1, h1) = start(&journal, bad.clone(), router.clone());
    let (stop2, h2) = start(&journal, good.clone(), router);
    eventually("dispatchers registered", || {
        journal.cursors().unwrap().len() == 2
    })
    .await;
    for i in 0..10 {
        append(&journal, &video(i, "ready")).await;
    }
    eventually("good got all", || good.count() == 10).await;
    eventually("bad dead-lettered all", || {
        journal.dead_letters(Some("bad")).unwrap().len() == 10
    })
    .await;
    let letter = &journal.dead_letters(Some("bad")).unwrap()[0];
    assert_eq!(letter.error, "410 Gone");
    assert_eq!(letter.attempts, 1, "a permanent error is not retried");
    assert_eq!(bad.count(), 0);
    for s in [stop1, stop2] {
        s.send(true).unwrap();
    }
    h1.await.unwrap();
    h2.await.unwrap();
}

#[tokio::test]
async fn retryable_failures_dead_letter_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sink = RecordingSink::new("down", Behaviour::FailTimes(1000));
    let (stop, handle) = start(&journal, sink.clone(), everything(&["down"]));
    eventually("registered", || journal.cursors().unwrap().len() == 1).await;
    append(&journal, &video(1, "ready")).await;
    eventually("dead letter", || {
        journal.dead_letters(Some("down")).unwrap().len() == 1
    })
    .await;
    let letter = &journal.dead_letters(Some("down")).unwrap()[0];
    assert_eq!(letter.attempts, 5);
    assert_eq!(letter.error, "failure 5 of 1000");
    stop.send(true).unwrap();
    handle.await.unwrap();
}

#[tokio::test]
async fn requeued_dead_letters_are_delivered_again_with_the_same_id() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    // First run: the sink refuses, the event is dead-lettered.
    let bad = RecordingSink::new("app", Behaviour::Refuse);
    let (stop, handle) = start(&journal, bad, everything(&["app"]));
    eventually("registered", || journal.cursors().unwrap().len() == 1).await;
    let appended = append(&journal, &video(7, "ready")).await;
    eventually("dead letter", || {
        journal.dead_letters(Some("app")).unwrap().len() == 1
    })
    .await;
    stop.send(true).unwrap();
    handle.await.unwrap();
    // The app is fixed; requeue.
    let good = RecordingSink::new("app", Behaviour::Accept);
    let (stop, handle) = start(&journal, good.clone(), everything(&["app"]));
    journal.requeue("app", appended.seq).unwrap();
    eventually("redelivered", || good.count() == 1).await;
    assert_eq!(good.ids(), vec![appended.id.0.clone()]);
    assert!(journal.dead_letters(None).unwrap().is_empty());
    eventually("requeue emptied", || {
        journal.requeued("app", 10).unwrap().is_empty()
    })
    .await;
    assert!(matches!(
        journal.requeue("app", 999),
        Err(streamhook_core::JournalError::NoSuchDeadLetter { .. })
    ));
    stop.send(true).unwrap();
    handle.await.unwrap();
}

#[tokio::test]
async fn replay_redelivers_from_a_seq_and_from_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sink = RecordingSink::new("app", Behaviour::Accept);
    let (stop, handle) = start(&journal, sink.clone(), everything(&["app"]));
    eventually("registered", || journal.cursors().unwrap().len() == 1).await;
    for i in 0..5 {
        append(&journal, &video(i, "ready")).await;
    }
    eventually("5", || sink.count() == 5).await;
    assert_eq!(
        journal
            .replay("app", ReplayFrom::Seq(3))
            .await
            .unwrap()
            .from_seq,
        3
    );
    eventually("8", || sink.count() == 8).await;
    assert_eq!(sink.seqs(), [1, 2, 3, 4, 5, 3, 4, 5]);
    journal
        .replay("app", ReplayFrom::Time(std::time::UNIX_EPOCH))
        .await
        .unwrap();
    eventually("13", || sink.count() == 13).await;
    stop.send(true).unwrap();
    handle.await.unwrap();
    // Without a running dispatcher, replay moves the cursor.
    assert_eq!(
        journal
            .replay("app", ReplayFrom::Seq(2))
            .await
            .unwrap()
            .from_seq,
        2
    );
    assert_eq!(journal.cursor("app").unwrap(), 2);
}

#[tokio::test]
async fn a_restart_resumes_from_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = open(dir.path());
        let sink = RecordingSink::new("app", Behaviour::Accept);
        let (stop, handle) = start(&journal, sink.clone(), everything(&["app"]));
        eventually("registered", || journal.cursors().unwrap().len() == 1).await;
        for i in 0..3 {
            append(&journal, &video(i, "ready")).await;
        }
        eventually("3", || sink.count() == 3).await;
        stop.send(true).unwrap();
        handle.await.unwrap();
        // Appended while the sink was not running.
        for i in 3..6 {
            append(&journal, &video(i, "ready")).await;
        }
        journal.close().await;
    }
    let journal = open(dir.path());
    let sink = RecordingSink::new("app", Behaviour::Accept);
    let (stop, handle) = start(&journal, sink.clone(), everything(&["app"]));
    eventually("the 3 missed", || sink.count() == 3).await;
    assert_eq!(sink.seqs(), [4, 5, 6]);
    stop.send(true).unwrap();
    handle.await.unwrap();
}

#[tokio::test]
async fn per_resource_order_holds_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let sink = RecordingSink::with_concurrency("app", Behaviour::Slow(Duration::from_millis(5)), 8);
    // A backlog of 100 events over 25 videos, waiting for the sink.
    journal.set_cursor("app", 1).unwrap();
    let statuses = ["empty", "pending", "viewable", "ready"];
    for round in statuses {
        for id in 0..25 {
            append(&journal, &video(id, round)).await;
        }
    }
    let (stop, handle) = start(&journal, sink.clone(), everything(&["app"]));
    eventually("100", || sink.count() == 100).await;
    let got = sink.got.lock().unwrap().clone();
    for id in 0..25u64 {
        let order: Vec<u64> = got
            .iter()
            .filter(|d| d.envelope.resource.id == Some(id))
            .map(|d| d.envelope.seq)
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "video {id} out of order");
    }
    // And it did deliver several at once.
    let peak = sink.max_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert!(peak > 1, "8 lanes never overlapped (peak {peak})");
    assert!(peak <= 8, "more than 8 sends at once (peak {peak})");
    stop.send(true).unwrap();
    handle.await.unwrap();
}

#[tokio::test]
async fn routes_decide_which_sink_gets_what() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    let names = vec!["streams".to_owned(), "videos".to_owned()];
    let routes = vec![
        RouteConfig {
            kinds: vec!["stream.*".into()],
            sinks: vec!["streams".into()],
            ..Default::default()
        },
        RouteConfig {
            types: vec!["video".into()],
            sinks: vec!["videos".into()],
            ..Default::default()
        },
    ];
    let router = Arc::new(std::sync::RwLock::new(Arc::new(
        Router::new(&routes, &[], &names).unwrap(),
    )));
    let streams = RecordingSink::new("streams", Behaviour::Accept);
    let videos = RecordingSink::new("videos", Behaviour::Accept);
    let (s1, h1) = start(&journal, streams.clone(), router.clone());
    let (s2, h2) = start(&journal, videos.clone(), router);
    eventually("registered", || journal.cursors().unwrap().len() == 2).await;
    append(&journal, &stream(1, true, false)).await;
    append(&journal, &video(2, "ready")).await;
    append(&journal, &stream(1, false, false)).await;
    eventually("delivered", || streams.count() == 2 && videos.count() == 1).await;
    // Cursors pass events not routed to the sink.
    eventually("cursors", || {
        journal.cursor("videos").unwrap() == 4 && journal.cursor("streams").unwrap() == 4
    })
    .await;
    for s in [s1, s2] {
        s.send(true).unwrap();
    }
    h1.await.unwrap();
    h2.await.unwrap();
}

#[test]
fn backoff_doubles_with_jitter_and_honours_hints() {
    let p = streamhook_core::RetryPolicy {
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(60),
        ..Default::default()
    };
    for attempt in 1..=10u32 {
        let full = Duration::from_secs(1 << (attempt - 1)).min(Duration::from_secs(60));
        let b = p.backoff(attempt, None);
        assert!(b >= full / 2 && b <= full, "attempt {attempt}: {b:?}");
    }
    assert_eq!(
        p.backoff(1, Some(Duration::from_secs(7))),
        Duration::from_secs(7)
    );
    assert_eq!(
        p.backoff(1, Some(Duration::from_secs(7200))),
        Duration::from_secs(60)
    );
    // Huge attempt numbers do not overflow.
    assert!(p.backoff(u32::MAX, None) <= Duration::from_secs(60));
}

/// A sink that writes batches, and fails the first batch part-way (the 4th of it, once).
#[derive(Debug, Default)]
struct BatchingSink {
    got: std::sync::Mutex<Vec<u64>>,
    batches: std::sync::Mutex<Vec<usize>>,
    failed_once: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Sink for BatchingSink {
    fn name(&self) -> &str {
        "batching"
    }

    fn batches(&self) -> bool {
        true
    }

    async fn send(&self, d: &streamhook_core::Delivery) -> Result<(), streamhook_core::SinkError> {
        self.got.lock().unwrap().push(d.envelope.seq);
        Ok(())
    }

    async fn send_batch(
        &self,
        deliveries: &[&streamhook_core::Delivery],
    ) -> Result<(), (usize, streamhook_core::SinkError)> {
        self.batches.lock().unwrap().push(deliveries.len());
        for (i, d) in deliveries.iter().enumerate() {
            if i == 3
                && !self
                    .failed_once
                    .swap(true, std::sync::atomic::Ordering::SeqCst)
            {
                return Err((i, streamhook_core::SinkError::retryable("disk hiccup")));
            }
            self.got.lock().unwrap().push(d.envelope.seq);
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_batch_that_fails_part_way_is_retried_from_the_failed_event_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    // A backlog, so the lane finds many events waiting at once.
    journal.set_cursor("batching", 1).unwrap();
    for i in 0..200 {
        append(&journal, &video(i, "ready")).await;
    }
    let sink = Arc::new(BatchingSink::default());
    let (stop, rx) = watch::channel(false);
    let d = Dispatcher::new(
        journal.clone(),
        sink.clone(),
        everything(&["batching"]),
        fast_policy(),
    );
    let stats = d.stats();
    let handle = tokio::spawn(async move { d.run(rx).await });
    eventually("200 deliveries", || sink.got.lock().unwrap().len() == 200).await;
    assert_eq!(
        *sink.got.lock().unwrap(),
        (1..=200).collect::<Vec<u64>>(),
        "every event once, in order, the failed one retried where it failed"
    );
    assert!(
        sink.batches.lock().unwrap().iter().any(|&n| n > 1),
        "events went in batches: {:?}",
        sink.batches.lock().unwrap()
    );
    assert_eq!(
        stats
            .failed_attempts
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        stats.delivered.load(std::sync::atomic::Ordering::SeqCst),
        200
    );
    stop.send(true).unwrap();
    handle.await.unwrap();
    assert_eq!(
        journal.cursor("batching").unwrap(),
        201,
        "the cursor after the last"
    );
}
