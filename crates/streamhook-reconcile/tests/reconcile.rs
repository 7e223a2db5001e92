//! Reconciliation end to end: a real journal (redb on disk), Gcore's API stood in for on
//! loopback, and the transitions a receiver that was down missed, journaled once.

use std::time::{Duration, SystemTime};

use serde_json::json;
use streamhook_core::testing::{append, open, stream, video};
use streamhook_reconcile::plan::rfc3339;
use streamhook_reconcile::{ApiKey, Outcome, ReconcileConfig, Reconciler, State};
use streamhook_testkit::gcore::{self, Failure, FakeGcore};

const KEY: &str = "test-key-0123456789";

fn config(fake: &FakeGcore) -> ReconcileConfig {
    let mut c = ReconcileConfig::new(&fake.url(), ApiKey::new(KEY));
    c.rate = 50.0;
    // The stand-in shares this host's clock, and nothing is on its way.
    c.clock_skew = Duration::ZERO;
    c.settle = Duration::ZERO;
    c
}

fn at(from_now: i64) -> String {
    let now = SystemTime::now();
    let t = if from_now >= 0 {
        now + Duration::from_secs(from_now as u64)
    } else {
        now - Duration::from_secs((-from_now) as u64)
    };
    rfc3339(t)
}

/// A video as the API lists it, changed just now (after what the journal heard of it).
async fn changed(id: u64, status: &str, created_at: &str) -> serde_json::Value {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut v = gcore::video(id, status, created_at);
    v["updated_at"] = json!(at(0));
    v
}

fn kinds_of(report: &streamhook_reconcile::Report) -> Vec<(String, Vec<String>)> {
    report
        .emitted
        .iter()
        .map(|e| (e.resource.clone(), e.kinds.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_receiver_missed_while_down_is_journaled_once_and_a_second_run_emits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    // Known before the outage: stream 1 live and recording, stream 2 off, videos 7 and 9.
    append(&journal, &stream(1, true, true)).await;
    append(&journal, &stream(2, false, false)).await;
    append(&journal, &video(7, "pending")).await;
    append(&journal, &video(9, "ready")).await;
    let before = journal.last_seq().unwrap();
    let (session_start, session_end) = (at(1), at(2));
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    // During the outage: stream 1 stopped, stream 2 went live and stopped again, video 7
    // became ready, video 9 was deleted, a recording (video 10) was made.
    let fake = FakeGcore::start(KEY).await;
    fake.set_streams(vec![
        gcore::stream(1, false, Some(&at(-3600)), Some(&at(0))),
        gcore::stream(2, false, Some(&session_start), Some(&session_end)),
    ]);
    let mut recording = gcore::video(10, "viewable", &at(0));
    recording["stream_id"] = json!(2);
    fake.set_videos(vec![changed(7, "ready", &at(-7200)).await, recording]);

    let reconciler = Reconciler::new(journal.clone(), config(&fake)).unwrap();
    let dry = reconciler.run_once(true).await.unwrap();
    assert_eq!(dry.outcome, Outcome::Ok, "{:?}", dry.errors);
    assert_eq!(
        journal.last_seq().unwrap(),
        before,
        "a dry run journals nothing"
    );

    let report = reconciler.run_once(false).await.unwrap();
    assert_eq!(report.outcome, Outcome::Ok, "{:?}", report.errors);
    assert_eq!(
        kinds_of(&report),
        kinds_of(&dry),
        "the dry run said what the run did"
    );
    let mut got = kinds_of(&report);
    got.sort();
    let k = |r: &str, ks: &[&str]| (r.to_owned(), ks.iter().map(|s| (*s).to_owned()).collect());
    assert_eq!(
        got,
        vec![
            k("stream:1", &["stream.recording_stopped", "stream.stopped"]),
            k("stream:2", &["stream.started"]),
            k("stream:2", &["stream.stopped"]),
            k("video:10", &["video.viewable"]),
            k("video:7", &["video.ready"]),
            k("video:9", &["video.deleted"]),
        ]
    );
    assert_eq!(report.differences, 5);
    assert!(
        report.requests >= 5,
        "four lists and one lookup: {}",
        report.requests
    );

    // In the journal: envelopes marked reconciled, with the API's times where it gave them.
    let events = journal.read_from(before + 1, 100).unwrap();
    assert_eq!(events.len(), 6);
    for e in &events {
        let env = e.envelope().unwrap();
        let r = env.reconciled.expect("marked reconciled");
        assert!(!r.reason.is_empty());
        assert!(r.observed_at.ends_with('Z'));
    }
    let session: Vec<_> = events
        .iter()
        .map(|e| e.envelope().unwrap())
        .filter(|e| e.resource.kind == "stream" && e.resource.id == Some(2))
        .map(|e| e.reconciled.unwrap().happened_at.unwrap())
        .collect();
    assert_eq!(session.len(), 2, "started then stopped, each with its time");
    assert!(session[0] < session[1]);

    let again = reconciler.run_once(false).await.unwrap();
    assert_eq!(again.outcome, Outcome::Ok);
    assert!(again.emitted.is_empty(), "{:?}", kinds_of(&again));
    assert_eq!(journal.last_seq().unwrap(), before + 6);

    // The webhook Gcore sends late for a transition already reconciled is no new transition.
    let late = append(&journal, &video(7, "ready")).await;
    let kinds: Vec<_> = late.kinds.iter().map(|k| k.as_str()).collect();
    assert_eq!(kinds, vec!["video.updated"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_pauses_reconciliation_and_a_fixed_one_resumes_it() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    append(&journal, &video(7, "pending")).await;
    let fake = FakeGcore::start(KEY).await;
    fake.set_videos(vec![changed(7, "ready", &at(-60)).await]);
    fake.set_unauthorized(true);
    let reconciler = Reconciler::new(journal.clone(), config(&fake)).unwrap();
    let report = reconciler.run_once(false).await.unwrap();
    assert_eq!(report.outcome, Outcome::Unauthorized);
    assert!(
        report.errors[0].contains("refused the key (401)"),
        "{:?}",
        report.errors
    );
    assert!(!report.errors[0].contains(KEY), "the key never appears");
    assert!(matches!(reconciler.status().state, State::Paused { .. }));
    assert_eq!(journal.last_seq().unwrap(), 1, "nothing emitted");
    // One request, not retried: a wrong key does not get better.
    assert_eq!(fake.requests().len(), 1);

    fake.set_unauthorized(false);
    let report = reconciler.run_once(false).await.unwrap();
    assert_eq!(report.outcome, Outcome::Ok);
    assert_eq!(reconciler.status().state, State::Idle);
    assert_eq!(report.emitted.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_waited_out_and_malformed_answers_reported() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    append(&journal, &video(7, "pending")).await;
    let fake = FakeGcore::start(KEY).await;
    fake.set_videos(vec![changed(7, "ready", &at(-60)).await]);
    fake.fail_next([Failure::TooMany { retry_after_s: 2 }, Failure::Server(503)]);
    let reconciler = Reconciler::new(journal.clone(), config(&fake)).unwrap();
    let report = reconciler.run_once(false).await.unwrap();
    assert_eq!(report.outcome, Outcome::Ok, "{:?}", report.errors);
    assert_eq!(report.emitted.len(), 1);
    let requests = fake.requests();
    assert_eq!(requests[0].status, 429);
    assert_eq!(requests[1].status, 503);
    assert!(
        requests[1].at.duration_since(requests[0].at) >= Duration::from_secs(2),
        "Retry-After honoured"
    );
    let counted = reconciler.api().by_status.lock().unwrap().clone();
    assert_eq!(counted.get(&429), Some(&1));
    assert_eq!(counted.get(&503), Some(&1));

    // A malformed answer: counted, the list not compared, the run goes on with the others.
    fake.set_streams(vec![gcore::stream(1, true, Some(&at(60)), None)]);
    fake.fail_next([Failure::Malformed]);
    let report = reconciler.run_once(false).await.unwrap();
    assert_eq!(report.outcome, Outcome::Partial);
    assert!(report.errors[0].contains("not JSON"), "{:?}", report.errors);
    assert!(report.errors[0].contains("streams were not compared"));
    assert_eq!(
        reconciler
            .api()
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_videos_are_paged_under_the_rate_cap() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    append(&journal, &video(4_999, "pending")).await;
    let fake = FakeGcore::start(KEY).await;
    let mut videos: Vec<_> = (0..4_999)
        .map(|i| gcore::video(i, "ready", &at(-86_400)))
        .collect();
    videos.push(changed(4_999, "ready", &at(-86_400)).await);
    fake.set_videos(videos);
    let mut c = config(&fake);
    c.rate = 25.0;
    let reconciler = Reconciler::new(journal.clone(), c).unwrap();
    let report = reconciler.run_once(false).await.unwrap();
    assert_eq!(report.outcome, Outcome::Ok, "{:?}", report.errors);
    assert_eq!(report.compared.get("videos"), Some(&5_000));
    // The one known video changed; none of the 4,999 older unknown ones is emitted.
    assert_eq!(kinds_of(&report).len(), 1);
    let requests = fake.requests();
    // 50 full pages and the empty one that ends the list, and the other three lists.
    assert_eq!(requests.len(), 54, "{}", requests.len());
    // Never more than the cap (25/s) in any second.
    for (i, r) in requests.iter().enumerate() {
        let within = requests[i..]
            .iter()
            .take_while(|o| o.at.duration_since(r.at) < Duration::from_secs(1))
            .count();
        assert!(within <= 26, "{within} requests within a second");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_account_journals_nothing_and_mass_deletions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    for id in 1..=10 {
        append(&journal, &video(id, "ready")).await;
    }
    let fake = FakeGcore::start(KEY).await;
    // Another account: none of the ten, and videos of its own created just now.
    fake.set_videos(
        (100..110)
            .map(|i| gcore::video(i, "ready", &at(0)))
            .collect(),
    );
    let reconciler = Reconciler::new(journal.clone(), config(&fake)).unwrap();
    let report = reconciler.run_once(false).await.unwrap();
    assert_eq!(report.outcome, Outcome::Failed, "{:?}", report.errors);
    assert!(
        report.errors[0].contains("another account"),
        "{:?}",
        report.errors
    );
    assert_eq!(journal.last_seq().unwrap(), 10, "nothing journaled");
    assert!(
        fake.requests()
            .iter()
            .all(|r| !r.uri.starts_with("/streaming/videos/")),
        "no lookups of the known videos"
    );

    // The same account, but the list lacks six of the ten: too many to be deletions.
    fake.set_videos(
        (1..=4)
            .map(|i| gcore::video(i, "ready", &at(-3600)))
            .collect(),
    );
    let report = reconciler.run_once(false).await.unwrap();
    assert_eq!(report.outcome, Outcome::Partial);
    assert!(
        report.errors[0].contains("too many to be deletions"),
        "{:?}",
        report.errors
    );
    assert_eq!(journal.last_seq().unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_in_its_file_is_used_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    append(&journal, &video(7, "pending")).await;
    let fake = FakeGcore::start(KEY).await;
    fake.set_videos(vec![changed(7, "ready", &at(-60)).await]);
    let file = dir.path().join("gcore.key");
    std::fs::write(&file, "the-old-revoked-key\n").unwrap();
    let mut c = config(&fake);
    c.api_key = ApiKey::new("the-old-revoked-key");
    c.api_key_file = Some(file.clone());
    let reconciler = Reconciler::new(journal.clone(), c).unwrap();
    assert_eq!(
        reconciler.run_once(false).await.unwrap().outcome,
        Outcome::Unauthorized
    );
    std::fs::write(&file, format!("{KEY}\n")).unwrap();
    let report = reconciler.run_once(false).await.unwrap();
    assert_eq!(report.outcome, Outcome::Ok, "{:?}", report.errors);
    assert_eq!(report.emitted.len(), 1);
    // Nothing that holds the key prints it.
    assert!(!format!("{reconciler:?}").contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_ignores_paging_or_refuses_a_request_ends_that_list_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(dir.path());
    append(&journal, &video(7, "pending")).await;
    let fake = FakeGcore::start(KEY).await;
    fake.set_videos(
        (0..100)
            .map(|i| gcore::video(i, "ready", &at(-60)))
            .collect(),
    );
    fake.set_streams(
        (0..25)
            .map(|i| gcore::stream(i, false, None, None))
            .collect(),
    );
    fake.set_ignore_paging(true);
    let reconciler = Reconciler::new(journal.clone(), config(&fake)).unwrap();
    let report = reconciler.run_once(true).await.unwrap();
    assert_eq!(report.outcome, Outcome::Partial);
    assert!(
        report.errors.iter().any(|e| e.contains("repeats page 1")),
        "{:?}",
        report.errors
    );
    assert!(report.requests < 20, "{} requests", report.requests);

    // A 400 is not asked again (the same question gets the same answer).
    fake.set_ignore_paging(false);
    fake.fail_next([Failure::Server(400)]);
    let before = fake.requests().len();
    let report = reconciler.run_once(true).await.unwrap();
    assert_eq!(report.outcome, Outcome::Partial);
    let requests = fake.requests();
    assert_eq!(requests[before].status, 400);
    assert_eq!(
        requests[before + 1].status,
        200,
        "the next list, not the same page again"
    );
    assert!(requests[before + 1].uri.starts_with("/streaming/videos"));
}
