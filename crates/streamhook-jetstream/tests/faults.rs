//! The replicated journal in the faults a multi-host deployment meets, one test per finding of
//! the hostile review (each failed before its fix): a stream deleted and created again with
//! its buckets kept, a holder that finds no shared cursor, an existing stream or bucket whose
//! settings lose events, a stale holder writing after its successor took over, an event
//! stored after a newer one of its resource, a server that stops answering, and pruning while
//! a receiver is stopped.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use common::*;
use streamhook_core::JournalConfig;
use streamhook_core::testing::{
    Behaviour, RecordingSink, append, eventually, everything, stream as stream_body,
};
use streamhook_testkit::{Nats, nats_server_or_skip};
use tokio::sync::watch;

async fn context(nats: &Nats) -> jetstream::Context {
    jetstream::new(async_nats::connect(nats.url_list()).await.unwrap())
}

/// Waits until the sink's shared cursor is `seq`.
async fn shared_cursor_reaches(js: &jetstream::Context, sink: &str, seq: u64) {
    for _ in 0..200 {
        if shared_cursor(js, sink).await == Some(seq) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the shared cursor of {sink} did not reach {seq}: {:?}",
        shared_cursor(js, sink).await
    );
}

#[tokio::test]
async fn a_stream_created_again_is_delivered_from_its_first_event_not_from_the_old_cursor() {
    let Some(bin) = nats_server_or_skip("jetstream: stream recreated") else {
        return;
    };
    let nats = Nats::single(&bin);
    let js = context(&nats).await;
    let router = everything(&["app"]);
    let da = tempfile::tempdir().unwrap();
    {
        let a = replica(&nats, da.path(), 1).await;
        a.set_cursor("app", 1).unwrap();
        let sink = RecordingSink::new("app", Behaviour::Accept);
        let (stop, rx) = watch::channel(false);
        let task = deliver(&a, &sink, &router, rx);
        for id in 1..=3u64 {
            append(&a, &stream_body(id, true, false)).await;
        }
        eventually("A delivers three", || sink.count() == 3).await;
        shared_cursor_reaches(&js, "app", 4).await;
        stop.send(true).unwrap();
        task.await.unwrap();
        a.close().await;
    }
    // What the refusal of a misconfigured stream suggests: delete it (the buckets stay).
    js.delete_stream("STREAMHOOK").await.unwrap();
    let db = tempfile::tempdir().unwrap();
    let b = replica(&nats, db.path(), 1).await;
    for id in 10..=13u64 {
        append(&b, &stream_body(id, true, false)).await;
    }
    eventually("B's mirror holds the new stream", || {
        b.last_committed() >= 4
    })
    .await;
    // The old folder mirrors the deleted stream: refused by identity, though the new stream
    // holds as many events as it does.
    let err = streamhook_jetstream::open(JournalConfig::new(da.path()), &config_for(&nats, 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("deleted and created again"), "{err}");
    // Before the fix the old cursor (4) was applied to the new stream: seqs 1-3 were never
    // delivered, and the lag showed 0.
    let sink = RecordingSink::new("app", Behaviour::Accept);
    let (stop, rx) = watch::channel(false);
    let task = deliver(&b, &sink, &router, rx);
    eventually("B delivers the new stream from its first event", || {
        sink.count() >= 4
    })
    .await;
    assert_eq!(sink.seqs(), [1, 2, 3, 4]);
    shared_cursor_reaches(&js, "app", 5).await;
    stop.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn a_holder_that_finds_no_cursor_resumes_from_where_the_sink_started() {
    let Some(bin) = nats_server_or_skip("jetstream: no cursor at takeover") else {
        return;
    };
    let nats = Nats::single(&bin);
    let js = context(&nats).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&nats, da.path(), 1).await;
    let b = replica(&nats, db.path(), 1).await;
    // A new sink: on A it starts at the oldest event.
    a.set_cursor("app", 1).unwrap();
    let router = everything(&["app"]);
    let sink_a = RecordingSink::new("app", Behaviour::Accept);
    let (_stop_a, rx_a) = watch::channel(false);
    let task_a = deliver(&a, &sink_a, &router, rx_a);
    wait_for_lease(&a, "app").await;
    for id in 1..=5u64 {
        append(&a, &stream_body(id, true, false)).await;
    }
    eventually("A delivers", || sink_a.count() == 5).await;
    // A dies; its cursor is not there (never written back, a key lost, or a replica that
    // lags answering): as far as B can see there is none.
    task_a.abort();
    let _ = task_a.await;
    let sinks = js.get_key_value("STREAMHOOK_sinks").await.unwrap();
    sinks.purge("app.cursor").await.unwrap();
    js.get_key_value("STREAMHOOK_leases")
        .await
        .unwrap()
        .purge("app")
        .await
        .unwrap();
    // B's own copy of the sink starts at its mirror's end.
    eventually("B's mirror holds five", || b.last_committed() >= 5).await;
    assert_eq!(b.cursor("app").unwrap(), 6);
    let sink_b = RecordingSink::new("app", Behaviour::Accept);
    let (stop_b, rx_b) = watch::channel(false);
    let task_b = deliver(&b, &sink_b, &router, rx_b);
    append(&b, &stream_body(6, true, false)).await;
    // Before the fix B started at its mirror's end: 1-5 were skipped.
    eventually("B delivers from the sink's recorded start", || {
        sink_b.count() >= 6
    })
    .await;
    assert_eq!(sink_b.seqs(), [1, 2, 3, 4, 5, 6], "again, not skipped");
    stop_b.send(true).unwrap();
    task_b.await.unwrap();
}

#[tokio::test]
async fn an_existing_stream_or_bucket_whose_settings_lose_events_is_refused_naming_the_fix() {
    let Some(bin) = nats_server_or_skip("jetstream: settings checked") else {
        return;
    };
    let nats = Nats::single(&bin);
    let js = context(&nats).await;
    let risky = stream::Config {
        name: "STREAMHOOK".into(),
        subjects: vec!["STREAMHOOK.ev.>".into()],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(10),
        ..Default::default()
    };
    js.create_stream(risky.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Before the fix only the replica count was compared: this stream was accepted, and
    // deleted every event after an hour whatever the sinks had had.
    let err = streamhook_jetstream::open(JournalConfig::new(dir.path()), &config_for(&nats, 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_age = 1h"), "{err}");
    assert!(
        err.contains("nats stream edit STREAMHOOK --max-age 0"),
        "{err}"
    );
    assert!(err.contains("duplicate_window = 10s"), "{err}");
    assert!(err.contains("--dupe-window 2m"), "{err}");
    js.update_stream(stream::Config {
        max_age: Duration::ZERO,
        duplicate_window: Duration::from_secs(120),
        ..risky
    })
    .await
    .unwrap();
    // A bucket that forgets cursors after a minute.
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "STREAMHOOK_sinks".into(),
        history: 1,
        max_age: Duration::from_secs(60),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = streamhook_jetstream::open(JournalConfig::new(dir.path()), &config_for(&nats, 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("bucket STREAMHOOK_sinks: ttl = 1m"), "{err}");
    assert!(
        err.contains("nats kv edit STREAMHOOK_sinks --ttl 0s"),
        "{err}"
    );
    js.delete_key_value("STREAMHOOK_sinks").await.unwrap();
    let journal = replica(&nats, dir.path(), 1).await;
    append(&journal, &stream_body(1, true, false)).await;
}

#[tokio::test]
async fn a_stale_holder_s_writes_are_refused_once_another_holds_the_sink() {
    let Some(bin) = nats_server_or_skip("jetstream: fenced writes") else {
        return;
    };
    let nats = Nats::single(&bin);
    let js = context(&nats).await;
    let (_dirs, a, b) = two_receivers(&nats).await;
    for id in 1..=10u64 {
        append(&a, &stream_body(id, true, false)).await;
    }
    let lease_a = a
        .leases()
        .acquire("app")
        .await
        .expect("A takes the free lease");
    a.set_cursor("app", 4).unwrap();
    assert!(a.leases().share("app", Duration::from_secs(2)).await);
    shared_cursor_reaches(&js, "app", 4).await;
    // A is paused past its lease (here: the key expires at once); B takes the sink over.
    js.get_key_value("STREAMHOOK_leases")
        .await
        .unwrap()
        .purge("app")
        .await
        .unwrap();
    let _lease_b = b.leases().acquire("app").await.expect("B takes it over");
    assert_eq!(b.cursor("app").unwrap(), 4, "B resumes from A's cursor");
    // A runs again and shares what it did meanwhile: refused, and it knows it lost the sink.
    // Before the fix its write landed: B's successor would resume from A's stale cursor.
    a.set_cursor("app", 9).unwrap();
    assert!(!a.leases().share("app", Duration::from_secs(2)).await);
    assert!(!a.leases().holds("app"), "A no longer delivers");
    let mut lease_a = lease_a;
    assert!(!a.leases().renew("app", &mut lease_a).await);
    assert_eq!(
        shared_cursor(&js, "app").await,
        Some(4),
        "the cursor is B's"
    );
    // B's writes go on.
    b.set_cursor("app", 6).unwrap();
    assert!(b.leases().share("app", Duration::from_secs(2)).await);
    shared_cursor_reaches(&js, "app", 6).await;
}

#[tokio::test]
async fn an_event_stored_after_a_newer_one_of_its_resource_is_late_and_changes_no_state() {
    let Some(bin) = nats_server_or_skip("jetstream: late events") else {
        return;
    };
    let nats = Nats::single(&bin);
    let (_dirs, a, b) = two_receivers(&nats).await;
    append(&b, &stream_body(7, true, false)).await; // stream 7 starts
    let stopped = append(&b, &stream_body(7, false, false)).await; // and stops
    eventually("B's mirror holds both", || b.last_committed() >= 2).await;
    // A kept "recording on", received a second before the stop, in its spool (its stream
    // was away, or slow); it forwards it now, after the stop was stored.
    let stop_ms = b
        .read_from(stopped.seq, 1)
        .unwrap()
        .remove(0)
        .received_at_ms;
    let id = streamhook_core::testing::spool_received_at(
        &a,
        &stream_body(7, true, true),
        stop_ms - 1000,
    )
    .await;
    eventually("A forwards its spool", || a.spool_len() == 0).await;
    eventually("B's mirror holds it", || b.last_committed() >= 3).await;
    let late = b.read_from(3, 1).unwrap().remove(0).envelope().unwrap();
    assert_eq!(late.id, id, "stored after the newer event");
    assert!(late.late, "flagged late");
    assert_eq!(
        late.received_at,
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(stop_ms - 1000)
        )
        .to_string(),
        "it keeps the time it was received"
    );
    // The resource stays stopped: its next start is a start. Before the fix the late event
    // was classified against "stopped" and moved the state to "live, recording", so this
    // start read as "recording stopped".
    let next = append(&b, &stream_body(7, true, false)).await;
    assert_eq!(kinds(&next), ["stream.started"]);
}

#[tokio::test]
async fn a_server_that_stops_answering_is_noticed_in_seconds_and_events_spool_meanwhile() {
    let Some(bin) = nats_server_or_skip("jetstream: a blackholed server") else {
        return;
    };
    let mut nats = Nats::single(&bin);
    let dir = tempfile::tempdir().unwrap();
    let journal = replica(&nats, dir.path(), 1).await;
    append(&journal, &stream_body(1, true, false)).await;
    // Frozen: the connection stays open and nothing is answered (a silent partition).
    nats.pause(0);
    // Before the fix this waited for `timeout` (10 s) and was refused with 503.
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        append(&journal, &stream_body(1, true, true)),
    )
    .await
    .expect("answered well before a sender gives up");
    assert!(got.spooled);
    // Noticed by the client's pings (every 2 s), not after minutes.
    eventually("the client notices the silent server", || {
        journal.shared_status().is_some_and(|s| !s.connected)
    })
    .await;
    assert!(journal.health().is_writable());
    nats.resume(0);
    eventually("forwarded once it answers again", || {
        journal.spool_len() == 0 && journal.last_committed() >= 2
    })
    .await;
    // The publish that was on its way when the server froze and the forwarded one have one
    // id: the stream stores it once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut stream = context(&nats).await.get_stream("STREAMHOOK").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
    let stored = events(&journal);
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[1].1, got.id.0);
}

#[tokio::test]
async fn pruning_waits_for_a_stopped_receiver_s_mirror_until_its_grace_ends() {
    let Some(bin) = nats_server_or_skip("jetstream: pruning and mirrors") else {
        return;
    };
    let nats = Nats::single(&bin);
    let mut config = config_for(&nats, 1);
    config.mirror_grace = Duration::from_secs(3);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica_with(da.path(), &config).await;
    let b = replica_with(db.path(), &config).await;
    append(&a, &stream_body(1, true, false)).await;
    eventually("B copies it", || b.last_committed() >= 1).await;
    // B shares that it holds seq 1, then stops.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.close().await;
    drop(b);
    // Stream 1 goes on: each event makes the one before it prunable.
    for recording in [true, false, true, false, true] {
        append(&a, &stream_body(1, true, recording)).await;
    }
    eventually("A's mirror holds six", || a.last_committed() >= 6).await;
    a.set_cursor("app", 7).unwrap();
    let pruned = a
        .prune_shared(&["app".into()], Some(Duration::ZERO), None, None)
        .await
        .unwrap()
        .expect("A prunes");
    // Before the fix: below 7 (everything the sinks had passed), and B, started again,
    // would find seqs 2-5 gone from the stream: holes in its mirror.
    assert_eq!(
        pruned.below, 2,
        "nothing the stopped mirror lacks: {pruned:?}"
    );
    let b = replica_with(db.path(), &config).await;
    eventually("B catches up", || b.last_committed() >= 6).await;
    assert_eq!(events(&b), events(&a), "no holes");
    b.close().await;
    drop(b);
    // Gone longer than its grace, it holds nothing back.
    let mut below = 0;
    for _ in 0..100 {
        below = a
            .prune_shared(&["app".into()], Some(Duration::ZERO), None, None)
            .await
            .unwrap()
            .map_or(0, |p| p.below);
        if below == 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        below, 7,
        "a receiver silent past mirror_grace no longer holds pruning back"
    );
}

#[tokio::test]
async fn a_receiver_started_while_the_cluster_has_no_quorum_spools_and_forwards_after() {
    let Some(bin) = nats_server_or_skip("jetstream: start without quorum") else {
        return;
    };
    let mut nats = Nats::cluster(&bin, 3);
    let da = tempfile::tempdir().unwrap();
    let a = replica(&nats, da.path(), 3).await;
    append(&a, &stream_body(1, true, false)).await;
    a.close().await;
    drop(a);
    // Two of three nodes down: the stream has no quorum, the third node answers.
    nats.kill(0);
    nats.kill(1);
    let db = tempfile::tempdir().unwrap();
    let b = tokio::time::timeout(
        Duration::from_secs(40),
        streamhook_jetstream::open(JournalConfig::new(db.path()), &config_for(&nats, 3)),
    )
    .await
    .expect("opens without waiting for the quorum")
    .expect("opens without a quorum");
    let got = append(&b, &stream_body(1, true, true)).await;
    assert!(got.spooled);
    nats.restart(0);
    nats.restart(1);
    eventually("forwarded once the quorum is back", || {
        b.spool_len() == 0 && b.last_committed() >= 2
    })
    .await;
}

#[tokio::test]
async fn a_receiver_running_when_its_stream_is_created_again_stops_delivering_and_never_prunes_it()
{
    let Some(bin) = nats_server_or_skip("jetstream: stream recreated under a running receiver")
    else {
        return;
    };
    let nats = Nats::single(&bin);
    let js = context(&nats).await;
    let da = tempfile::tempdir().unwrap();
    let a = replica(&nats, da.path(), 1).await;
    for id in 1..=3u64 {
        append(&a, &stream_body(id, true, false)).await;
    }
    eventually("A's mirror holds three", || a.last_committed() >= 3).await;
    js.delete_stream("STREAMHOOK").await.unwrap();
    let db = tempfile::tempdir().unwrap();
    let b = replica(&nats, db.path(), 1).await;
    for recording in [false, true, false] {
        append(&b, &stream_body(9, true, recording)).await;
    }
    // A notices it mirrors the earlier stream: it says so, and still takes events (into the
    // new stream): nothing is refused.
    eventually("A notices the stream was created again", || {
        a.shared_status()
            .and_then(|s| s.problem)
            .is_some_and(|p| p.contains("deleted and created again"))
    })
    .await;
    assert!(a.health().is_writable(), "{:?}", a.health());
    let got = append(&a, &stream_body(9, true, true)).await;
    eventually("B's mirror holds A's event", || b.last_committed() >= 4).await;
    assert_eq!(b.read_from(4, 1).unwrap()[0].envelope().unwrap().id, got.id);
    // Before the fix A, with its earlier stream's cursors and its mirror's seqs, could prune
    // the new stream down to each resource's last message before anything was delivered.
    a.set_cursor("app", 100).unwrap();
    let pruned = a
        .prune_shared(&["app".into()], Some(Duration::ZERO), None, None)
        .await
        .unwrap();
    assert!(pruned.is_none(), "A pruned the new stream: {pruned:?}");
    let stream = js.get_stream("STREAMHOOK").await.unwrap();
    for seq in 1..=4 {
        assert!(
            stream.get_raw_message(seq).await.is_ok(),
            "seq {seq} pruned"
        );
    }
}

#[tokio::test]
async fn a_stream_edited_into_losing_settings_while_running_is_refused_and_events_spool() {
    let Some(bin) = nats_server_or_skip("jetstream: settings checked while running") else {
        return;
    };
    let nats = Nats::single(&bin);
    let js = context(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let journal = replica(&nats, dir.path(), 1).await;
    append(&journal, &stream_body(1, true, false)).await;
    // Someone runs `nats stream edit STREAMHOOK --max-age 1h` on the running stream.
    let mut config = js
        .get_stream("STREAMHOOK")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.max_age = Duration::from_secs(3600);
    js.update_stream(config.clone()).await.unwrap();
    // Before the fix it was seen only at the next start.
    eventually("the running receiver sees it", || {
        journal
            .shared_status()
            .and_then(|s| s.problem)
            .is_some_and(|p| p.contains("max_age = 1h"))
    })
    .await;
    let got = append(&journal, &stream_body(1, true, true)).await;
    assert!(
        got.spooled,
        "kept in the spool while the stream would lose it"
    );
    config.max_age = Duration::ZERO;
    js.update_stream(config).await.unwrap();
    eventually("forwarded once the stream is fixed", || {
        journal.spool_len() == 0 && journal.last_committed() >= 2
    })
    .await;
}

#[tokio::test]
async fn a_reconciled_event_is_not_stored_over_a_newer_webhook_the_mirror_has_not_seen() {
    let Some(bin) = nats_server_or_skip("jetstream: conditional append") else {
        return;
    };
    let nats = Nats::single(&bin);
    let (_dirs, a, b) = two_receivers(&nats).await;
    append(&a, &stream_body(9, true, false)).await; // A learns: stream 9 is live
    eventually("B's mirror holds it", || b.last_committed() >= 1).await;
    let live = b.history("stream:9").unwrap();
    // A webhook to B says the stream restarted (still live); A's reconciler read the API
    // before it, compared against "live", and wants to journal "stopped". A's mirror may
    // not hold B's webhook yet: the stream's own last message decides.
    append(&b, &stream_body(9, true, true)).await;
    let body = br#"{"type":"stream","message":{"stream":{"id":9,"live":false,"recording":false,"transcoding":false}}}"#;
    let webhook = streamhook_types::decode::decode(body).unwrap().webhook;
    let reconciled = streamhook_types::Reconciled {
        observed_at: "2026-12-02T00:00:00.000Z".into(),
        happened_at: None,
        reason: "test".into(),
    };
    let refused = a
        .append_reconciled(body, webhook.clone(), reconciled.clone(), live.clone())
        .await;
    assert!(
        matches!(
            refused,
            Err(streamhook_core::JournalError::NotAsExpected { .. })
        ),
        "{refused:?}"
    );
    eventually("both mirrors hold the two webhooks", || {
        a.last_committed() >= 2 && b.last_committed() >= 2
    })
    .await;
    assert_eq!(a.last_seq().unwrap(), 2, "nothing stored");
    // Against the state the stream holds, it is stored.
    let now = b.history("stream:9").unwrap();
    let stored = a
        .append_reconciled(body, webhook, reconciled, now)
        .await
        .unwrap();
    assert_eq!(
        kinds(&stored),
        ["stream.recording_stopped", "stream.stopped"]
    );
}
