//! The replicated journal against real nats-server processes on loopback: the compare-and-set
//! it rests on (one of N concurrent writers wins each step), receivers that interleave writes
//! on the same resources classifying exactly as one redb journal would, mirrors that agree,
//! a 3-node cluster losing a node, and sink leases that fail over.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use common::*;
use streamhook_core::JournalConfig;
use streamhook_core::testing::{
    Behaviour, RecordingSink, append, eventually, everything, open, stream as stream_body,
};
use streamhook_jetstream::JetStreamConfig;
use streamhook_testkit::{Nats, nats_server_or_skip};
use tokio::sync::watch;

#[tokio::test]
async fn exactly_one_of_sixteen_concurrent_writers_wins_each_step() {
    let Some(bin) = nats_server_or_skip("jetstream: compare-and-set") else {
        return;
    };
    let nats = Nats::single(&bin);
    sixteen_writers(&nats, 1).await;
}

#[tokio::test]
async fn exactly_one_of_sixteen_concurrent_writers_wins_each_step_on_a_cluster() {
    let Some(bin) = nats_server_or_skip("jetstream: compare-and-set, cluster") else {
        return;
    };
    let nats = Nats::cluster(&bin, 3);
    sixteen_writers(&nats, 3).await;
}

/// 16 writers publish at once, each expecting the resource's last sequence: one must win.
async fn sixteen_writers(nats: &Nats, replicas: usize) {
    let js = jetstream::new(async_nats::connect(nats.url_list()).await.unwrap());
    let mut created = None;
    for _ in 0..80 {
        // A cluster just started may not have elected its meta leader yet.
        match js
            .create_stream(stream::Config {
                name: "CAS".into(),
                subjects: vec!["cas.>".into()],
                num_replicas: replicas,
                ..Default::default()
            })
            .await
        {
            Ok(s) => {
                created = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    created.expect("the stream is created");
    let mut last = 0;
    for step in 0..5 {
        let mut tasks = Vec::new();
        for writer in 0..16 {
            let js = js.clone();
            tasks.push(tokio::spawn(async move {
                let publish = jetstream::message::PublishMessage::build()
                    .payload(format!("step {step} writer {writer}").into())
                    .expected_last_subject_sequence(last);
                match js.send_publish("cas.resource", publish).await {
                    Ok(ack) => ack
                        .await
                        .map(|a| a.sequence)
                        .map_err(|e| (e.kind(), e.to_string())),
                    Err(e) => Err((e.kind(), e.to_string())),
                }
            }));
        }
        let mut won = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                Ok(seq) => won.push(seq),
                // A loser is told the sequence was wrong; on a cluster, also (error 10164)
                // that the subject's last sequence is being changed by another proposal.
                Err((kind, text)) => assert!(
                    kind == PublishErrorKind::WrongLastSequence || text.contains("10164"),
                    "{kind:?}: {text}"
                ),
            }
        }
        assert_eq!(
            won.len(),
            1,
            "step {step}: exactly one writer wins, got {won:?}"
        );
        last = won[0];
    }
}

#[tokio::test]
async fn interleaved_receivers_classify_as_one_journal_would() {
    let Some(bin) = nats_server_or_skip("jetstream: equivalence") else {
        return;
    };
    let nats = Nats::single(&bin);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(&nats, da.path(), 1).await;
    let b = replica(&nats, db.path(), 1).await;
    // 12 streams side by side; each one's four events in order (as Gcore sends them),
    // alternately through both receivers, so each receiver's next event of a resource
    // follows one the other stored.
    let mut tasks = Vec::new();
    for id in 1..=12u64 {
        let (a, b) = (a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for (i, body) in lifecycle(id).into_iter().enumerate() {
                let journal = if (id as usize + i) % 2 == 0 { &a } else { &b };
                acked.push(append(journal, &body).await);
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.iter().all(|a| !a.spooled),
        "with the stream up, nothing is spooled"
    );
    let total = acked.len() as u64;
    eventually("both mirrors hold every event", || {
        a.last_committed() >= total && b.last_committed() >= total
    })
    .await;
    let in_a = events(&a);
    assert_eq!(in_a, events(&b), "the mirrors agree, seq for seq");
    assert_eq!(in_a.len() as u64, total);
    // Each receiver answered with what the stream holds.
    for ack in &acked {
        let stored = in_a.iter().find(|e| e.0 == ack.seq).unwrap();
        assert_eq!(stored.1, ack.id.0);
        let kinds: Vec<String> = ack.kinds.iter().map(|k| k.to_string()).collect();
        assert_eq!(stored.2, kinds, "the kinds answered are the kinds stored");
    }
    // One redb journal fed the same bodies in the stream's order classifies the same.
    let single_dir = tempfile::tempdir().unwrap();
    let single = open(single_dir.path());
    for (seq, _, kinds, payload) in &in_a {
        let got = append(&single, payload.as_bytes()).await;
        let got: Vec<String> = got.kinds.iter().map(|k| k.to_string()).collect();
        assert_eq!(&got, kinds, "event {seq}: {payload}");
    }
    for id in [1u64, 7, 12] {
        let key = format!("stream:{id}");
        assert_eq!(a.history(&key).unwrap(), single.history(&key).unwrap());
        assert_eq!(b.history(&key).unwrap(), single.history(&key).unwrap());
    }
}

#[tokio::test]
async fn a_cluster_keeps_journaling_when_a_node_dies_and_a_new_receiver_copies_everything() {
    let Some(bin) = nats_server_or_skip("jetstream: cluster") else {
        return;
    };
    let mut nats = Nats::cluster(&bin, 3);
    let da = tempfile::tempdir().unwrap();
    let a = replica(&nats, da.path(), 3).await;
    for id in 1..=5u64 {
        append(&a, &stream_body(id, true, false)).await;
    }
    // Kill the stream's leader (the harder case: an election stalls appends).
    let js = jetstream::new(async_nats::connect(nats.url_list()).await.unwrap());
    let leader = js
        .get_stream("STREAMHOOK")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("the stream has a leader");
    let leader: usize = leader.trim_start_matches('n').parse::<usize>().unwrap() - 1;
    drop(js);
    nats.kill(leader);
    // During the election the appends are spooled (answered at once) and forwarded after.
    for id in 1..=5u64 {
        append(&a, &stream_body(id, true, true)).await;
    }
    eventually("the spool is forwarded and mirrored", || {
        a.spool_len() == 0 && a.last_committed() >= 10
    })
    .await;
    for (seq, _, kinds, _) in &events(&a)[5..] {
        assert_eq!(
            kinds,
            &["stream.recording_started"],
            "event {seq}: history survives a node's loss"
        );
    }
    nats.restart(leader);
    let db = tempfile::tempdir().unwrap();
    let b = replica(&nats, db.path(), 3).await;
    assert_eq!(
        b.last_committed(),
        10,
        "a new receiver copies the whole journal at start"
    );
    assert_eq!(events(&a), events(&b));
    let got = append(&b, &stream_body(3, true, false)).await;
    assert_eq!(
        got.kinds.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
        ["stream.recording_stopped"]
    );
}

#[tokio::test]
async fn a_sink_is_delivered_by_one_receiver_and_fails_over_with_its_cursor() {
    let Some(bin) = nats_server_or_skip("jetstream: leases") else {
        return;
    };
    let nats = Nats::single(&bin);
    let (_dirs, a, b) = two_receivers(&nats).await;
    let router = everything(&["app"]);
    let sink_a = RecordingSink::new("app", Behaviour::Accept);
    let sink_b = RecordingSink::new("app", Behaviour::Accept);
    let (stop_a, rx_a) = watch::channel(false);
    let (stop_b, rx_b) = watch::channel(false);
    let task_a = deliver(&a, &sink_a, &router, rx_a);
    wait_for_lease(&a, "app").await;
    let task_b = deliver(&b, &sink_b, &router, rx_b);
    for id in 1..=10u64 {
        append(
            if id % 2 == 0 { &a } else { &b },
            &stream_body(id, true, false),
        )
        .await;
    }
    eventually("A delivers all ten", || sink_a.count() == 10).await;
    assert_eq!(sink_b.count(), 0, "only the lease holder delivers");
    // A stops cleanly: it writes its cursor back and lets the lease go; B resumes after it.
    stop_a.send(true).unwrap();
    task_a.await.unwrap();
    for id in 11..=15u64 {
        append(&b, &stream_body(id, true, false)).await;
    }
    eventually("B delivers what came after", || sink_b.count() >= 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sink_b.seqs(),
        (11..=15).collect::<Vec<u64>>(),
        "B resumed at A's cursor: nothing twice, nothing missed"
    );
    stop_b.send(true).unwrap();
    task_b.await.unwrap();
}

#[tokio::test]
async fn an_unreadable_message_in_the_stream_stops_neither_mirrors_nor_its_resource() {
    let Some(bin) = nats_server_or_skip("jetstream: unreadable messages") else {
        return;
    };
    let nats = Nats::single(&bin);
    let da = tempfile::tempdir().unwrap();
    let a = replica(&nats, da.path(), 1).await;
    append(&a, &stream_body(5, true, false)).await;
    // Another publisher writes on the journal's subjects: on stream 5's own subject, and
    // elsewhere.
    let js = jetstream::new(async_nats::connect(nats.urls()).await.unwrap());
    let hex: String = "stream:5".bytes().map(|b| format!("{b:02x}")).collect();
    for subject in [
        format!("STREAMHOOK.ev.{hex}"),
        "STREAMHOOK.ev.zz".to_owned(),
    ] {
        js.publish(subject, "not a streamhook message".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let next = append(&a, &stream_body(5, true, true)).await;
    assert_eq!(next.seq, 4, "appends go on after the foreign messages");
    assert_eq!(
        kinds(&next),
        ["stream.started", "stream.recording_started"],
        "its unreadable last message makes the resource new, not stuck"
    );
    eventually("the mirror copies past them", || a.last_committed() >= 4).await;
    let records = a.read_records(1, 10).unwrap();
    assert_eq!(records.len(), 4);
    // Kept as a record that does not read as an event (each sink's dispatcher dead-letters
    // it as unreadable).
    let unreadable = match &records[1] {
        Err(streamhook_core::JournalError::Corrupt { seq, .. }) => *seq == 2,
        Ok(event) => event.seq == 2 && event.envelope().is_err(),
        Err(_) => false,
    };
    assert!(unreadable, "{:?}", records[1]);
    assert_eq!(
        a.stats()
            .import_unreadable
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // A new receiver copies the same, and starts.
    let db = tempfile::tempdir().unwrap();
    let b = replica(&nats, db.path(), 1).await;
    assert_eq!(b.last_committed(), 4);
}

#[tokio::test]
async fn a_folder_with_a_single_host_journal_is_refused_as_a_mirror() {
    let Some(bin) = nats_server_or_skip("jetstream: foreign folder") else {
        return;
    };
    let nats = Nats::single(&bin);
    let dir = tempfile::tempdir().unwrap();
    {
        let local = open(dir.path());
        append(&local, &stream_body(1, true, false)).await;
        local.close().await;
    }
    let mut config = JetStreamConfig::new(nats.url_list());
    config.replicas = 1;
    let err = streamhook_jetstream::open(JournalConfig::new(dir.path()), &config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("single-host journal"), "{err}");
    assert!(err.contains("empty data folder"), "{err}");
}

#[tokio::test]
async fn a_receiver_that_dies_holding_a_lease_is_replaced_when_it_expires() {
    let Some(bin) = nats_server_or_skip("jetstream: lease expiry") else {
        return;
    };
    let nats = Nats::single(&bin);
    let (_dirs, a, b) = two_receivers(&nats).await;
    let router = everything(&["app"]);
    let sink_a = RecordingSink::new("app", Behaviour::Accept);
    let sink_b = RecordingSink::new("app", Behaviour::Accept);
    let (_stop_a, rx_a) = watch::channel(false);
    let task_a = deliver(&a, &sink_a, &router, rx_a);
    wait_for_lease(&a, "app").await;
    let (stop_b, rx_b) = watch::channel(false);
    let task_b = deliver(&b, &sink_b, &router, rx_b);
    for id in 1..=5u64 {
        append(&a, &stream_body(id, true, false)).await;
    }
    eventually("A delivers", || sink_a.count() == 5).await;
    // A shares its cursor with its next renewal (twice a second).
    let js = jetstream::new(async_nats::connect(nats.url_list()).await.unwrap());
    let mut shared = None;
    for _ in 0..100 {
        shared = shared_cursor(&js, "app").await;
        if shared == Some(6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shared, Some(6), "A shared its cursor");
    // A dies without a word: no cursor written at stop, no lease released.
    task_a.abort();
    let _ = task_a.await;
    for id in 6..=8u64 {
        append(&b, &stream_body(id, true, false)).await;
    }
    // The lease lapses (6 s) and B delivers from the shared cursor (written back twice a
    // second while A held it): at least once, nothing missing.
    eventually("B delivers after A's lease lapsed", || {
        let got = sink_b.seqs();
        (6..=8).all(|s| got.contains(&s))
    })
    .await;
    let got = sink_b.seqs();
    assert_eq!(got, [6, 7, 8], "B resumed from the shared cursor, in order");
    stop_b.send(true).unwrap();
    task_b.await.unwrap();
}

#[tokio::test]
async fn pruning_the_shared_stream_keeps_what_sinks_need_and_each_resource_s_state() {
    let Some(bin) = nats_server_or_skip("jetstream: pruning") else {
        return;
    };
    let nats = Nats::single(&bin);
    let da = tempfile::tempdir().unwrap();
    let a = replica(&nats, da.path(), 1).await;
    // Stream 1: started, recording on (seqs 1, 2). Stream 2: started (3). Stream 3: started,
    // recording on, recording off (4, 5, 6). Then stream 4 (7).
    for body in [
        stream_body(1, true, false),
        stream_body(1, true, true),
        stream_body(2, true, false),
        stream_body(3, true, false),
        stream_body(3, true, true),
        stream_body(3, true, false),
        stream_body(4, true, false),
    ] {
        append(&a, &body).await;
    }
    // The sink has passed seq 5; another sink (only in the shared bucket) seq 6.
    let js = jetstream::new(async_nats::connect(nats.url_list()).await.unwrap());
    put_shared_cursor(&js, "app", 5, None).await;
    put_shared_cursor(&js, "other", 6, None).await;
    // A cursor of another incarnation of the stream holds nothing back.
    put_shared_cursor(&js, "gone", 1, Some(42)).await;
    a.set_cursor("app", 5).unwrap();
    // A configured sink that has no cursor yet has passed nothing.
    let pinned = a
        .prune_shared(
            &["app".into(), "new".into()],
            Some(Duration::ZERO),
            None,
            None,
        )
        .await
        .unwrap()
        .expect("this receiver prunes");
    assert_eq!((pinned.below, pinned.events), (0, 0));
    let pruned = a
        .prune_shared(&["app".into()], Some(Duration::ZERO), None, None)
        .await
        .unwrap()
        .expect("this receiver prunes");
    assert_eq!(pruned.below, 5, "nothing a sink has not passed");
    let stream = js.get_stream("STREAMHOOK").await.unwrap();
    let mut left = Vec::new();
    for seq in 1..=7 {
        if stream.get_raw_message(seq).await.is_ok() {
            left.push(seq);
        }
    }
    // 1 goes (stream 1 has 2 after it); 2 and 3 stay (last of their resource); 4 goes (before
    // 5, stream 3 has later ones); 5, 6, 7 are not passed by every sink.
    assert_eq!(left, [2, 3, 5, 6, 7]);
    assert_eq!(pruned.events, 2);
    // Classification goes on from the kept states, also for a new receiver.
    let db = tempfile::tempdir().unwrap();
    let b = replica(&nats, db.path(), 1).await;
    let got = append(&b, &stream_body(1, true, false)).await;
    assert_eq!(kinds(&got), ["stream.recording_stopped"]);
    // An idle resource's history goes once it is older than history_max_age (and passed).
    put_shared_cursor(&js, "app", 9, None).await;
    put_shared_cursor(&js, "other", 9, None).await;
    a.set_cursor("app", 9).unwrap();
    eventually("the mirror holds seq 8", || a.last_committed() >= 8).await;
    // Pruning waits for every live mirror: B's shares that it holds seq 8 within a second.
    let mirrors = js.get_key_value("STREAMHOOK_mirrors").await.unwrap();
    let mut at = Vec::new();
    for _ in 0..100 {
        at.clear();
        let mut keys = mirrors.keys().await.unwrap();
        while let Some(k) = futures_util::StreamExt::next(&mut keys).await {
            let v = mirrors.get(k.unwrap()).await.unwrap().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
            at.push(v["seq"].as_u64().unwrap());
        }
        if at.len() == 2 && at.iter().all(|s| *s >= 8) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(at, [8, 8], "both mirrors share their position");
    let pruned = a
        .prune_shared(
            &["app".into()],
            Some(Duration::ZERO),
            None,
            Some(Duration::ZERO),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(pruned.histories >= 4, "{pruned:?}");
    // The stream's newest messages are gone now: a new receiver still starts.
    let dc = tempfile::tempdir().unwrap();
    let c = replica(&nats, dc.path(), 1).await;
    assert!(c.read_from(1, 100).unwrap().is_empty());
    let got = append(&b, &stream_body(2, true, false)).await;
    assert_eq!(
        kinds(&got),
        ["stream.started"],
        "stream 2's history was dropped"
    );
}

#[tokio::test]
async fn dead_letters_move_with_the_sink_to_the_next_deliverer() {
    let Some(bin) = nats_server_or_skip("jetstream: shared dead letters") else {
        return;
    };
    let nats = Nats::single(&bin);
    let (_dirs, a, b) = two_receivers(&nats).await;
    let router = everything(&["app"]);
    // A's destination refuses everything: the event becomes a dead letter there.
    let refusing = RecordingSink::new("app", Behaviour::Refuse);
    let (stop_a, rx_a) = watch::channel(false);
    let task_a = deliver(&a, &refusing, &router, rx_a);
    let got = append(&a, &stream_body(1, true, false)).await;
    eventually("a dead letter on A", || {
        a.dead_letters(Some("app")).unwrap().len() == 1
    })
    .await;
    // A stops cleanly (it shares its dead letters and lets the lease go); B takes over.
    stop_a.send(true).unwrap();
    task_a.await.unwrap();
    let accepting = RecordingSink::new("app", Behaviour::Accept);
    let (stop_b, rx_b) = watch::channel(false);
    let task_b = deliver(&b, &accepting, &router, rx_b);
    eventually("B lists A's dead letter", || {
        b.dead_letters(Some("app"))
            .unwrap()
            .iter()
            .any(|l| l.id == got.id.0)
    })
    .await;
    assert_eq!(
        accepting.count(),
        0,
        "a dead letter is not delivered by itself"
    );
    // Requeued on B, it is delivered there, and stops being a dead letter everywhere.
    b.requeue("app", got.seq).unwrap();
    eventually("B delivers the requeued event", || accepting.count() == 1).await;
    stop_b.send(true).unwrap();
    task_b.await.unwrap();
    let js = jetstream::new(async_nats::connect(nats.url_list()).await.unwrap());
    let sinks = js.get_key_value("STREAMHOOK_sinks").await.unwrap();
    let mut keys = sinks.keys().await.unwrap();
    let mut left = Vec::new();
    while let Some(k) = futures_util::StreamExt::next(&mut keys).await {
        let k = k.unwrap();
        if k.starts_with("app.d.") || k.starts_with("app.q.") {
            left.push(k);
        }
    }
    assert!(left.is_empty(), "no dead letter left shared: {left:?}");
}

#[tokio::test]
async fn an_append_while_nats_is_away_is_spooled_answered_and_forwarded_in_order() {
    let Some(bin) = nats_server_or_skip("jetstream: the spool") else {
        return;
    };
    let mut nats = Nats::single(&bin);
    let dir = tempfile::tempdir().unwrap();
    let journal = replica(&nats, dir.path(), 1).await;
    append(&journal, &stream_body(1, true, false)).await;
    nats.kill(0);
    eventually("the client notices", || {
        journal.shared_status().is_some_and(|s| !s.connected)
    })
    .await;
    assert!(
        journal.health().is_writable(),
        "ready while the spool is writable: {:?}",
        journal.health()
    );
    // Before the fix every one of these was refused (503): a lost event each.
    let mut answered = Vec::new();
    for body in [
        stream_body(1, true, true),
        stream_body(2, true, false),
        stream_body(1, true, false),
    ] {
        let got = append(&journal, &body).await;
        assert!(got.spooled, "kept in the spool");
        answered.push(got);
    }
    assert_eq!(journal.spool_len(), 3);
    assert_eq!(
        kinds(&answered[0]),
        ["stream.recording_started"],
        "a spooled answer is classified by this receiver's copy of the history"
    );
    nats.restart(0);
    eventually("the spool is forwarded and mirrored", || {
        journal.spool_len() == 0 && journal.last_committed() >= 4
    })
    .await;
    let stored = events(&journal);
    let ids: Vec<&str> = stored.iter().map(|e| e.1.as_str()).collect();
    let answered_ids: Vec<&str> = answered.iter().map(|a| a.id.0.as_str()).collect();
    assert_eq!(
        &ids[1..],
        answered_ids,
        "in arrival order, with the ids answered"
    );
    assert_eq!(stored[1].2, ["stream.recording_started"]);
    assert_eq!(stored[3].2, ["stream.recording_stopped"]);
}

#[tokio::test]
async fn a_receiver_starts_and_accepts_with_every_nats_server_down() {
    let Some(bin) = nats_server_or_skip("jetstream: start without NATS") else {
        return;
    };
    let mut nats = Nats::single(&bin);
    let urls = nats.url_list();
    nats.kill(0);
    let dir = tempfile::tempdir().unwrap();
    let mut config = JetStreamConfig::new(urls);
    config.replicas = 1;
    // Before the fix: "cannot connect", and the server did not start.
    let journal = tokio::time::timeout(
        Duration::from_secs(15),
        streamhook_jetstream::open(JournalConfig::new(dir.path()), &config),
    )
    .await
    .expect("opens without waiting for a server")
    .expect("opens without a server");
    let got = append(&journal, &stream_body(9, true, false)).await;
    assert!(got.spooled);
    assert_eq!(kinds(&got), ["stream.started"]);
    nats.restart(0);
    eventually("forwarded once a server answers", || {
        journal.spool_len() == 0 && journal.last_committed() >= 1
    })
    .await;
    assert_eq!(
        events(&journal)[0].1,
        got.id.0,
        "stored with the id it was answered with"
    );
}
