//! The planner's rules, one test each: what a run emits for each difference, and nothing when
//! the states agree.

use super::*;
use streamhook_types::StreamState;

const HOUR: u64 = 3_600_000;
/// 2026-12-01T00:00:00Z.
const T0: u64 = 1_764_547_200_000;

fn iso(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

fn stream(id: u64, live: bool, started: Option<u64>, finished: Option<u64>) -> Value {
    json!({
        "id": id, "name": "cam", "live": live, "backup_live": false,
        "started_at_primary": started.map(iso), "finished_at_primary": finished.map(iso),
    })
}

fn live(l: bool) -> ResourceState {
    ResourceState::Stream(StreamState {
        live: Some(l),
        recording: Some(false),
        transcoding: Some(l),
        backup_live: None,
    })
}

fn video_state(status: &str) -> ResourceState {
    ResourceState::Video {
        status: Some(status.into()),
        deleted: false,
    }
}

fn run(streams: &[Value], videos: Option<&[Value]>, known: &[(&str, ResourceState, u64)]) -> Plan {
    let known: Known = known
        .iter()
        .map(|(k, s, t)| ((*k).to_owned(), (s.clone(), *t)))
        .collect();
    plan(&Input {
        streams: Some(streams),
        videos,
        restreams: None,
        broadcasts: None,
        known: &known,
        baseline_ms: T0,
        observed_at: UNIX_EPOCH + Duration::from_millis(T0 + 10 * HOUR),
        skew: SKEW,
        listed_at_ms: u64::MAX,
        settle: Duration::ZERO,
    })
}

fn kinds(plan: &Plan) -> Vec<Vec<&'static str>> {
    plan.actions
        .iter()
        .flat_map(|a| a.steps.iter())
        .map(|s| s.kinds.iter().map(|k| k.as_str()).collect())
        .collect()
}

#[test]
fn a_stream_that_stopped_unseen_is_stream_stopped_at_its_finish_time() {
    let p = run(
        &[stream(1, false, Some(T0 + HOUR), Some(T0 + 3 * HOUR))],
        None,
        &[("stream:1", live(true), T0 + HOUR + 1_000)],
    );
    assert_eq!(kinds(&p), vec![vec!["stream.stopped"]]);
    let step = &p.actions[0].steps[0];
    assert_eq!(
        step.reconciled.happened_at.as_deref(),
        Some(&*iso(T0 + 3 * HOUR))
    );
    assert_eq!(step.payload["message"]["stream"]["recording"], json!(false));
}

#[test]
fn a_stream_that_started_unseen_is_stream_started() {
    let p = run(
        &[stream(1, true, Some(T0 + 5 * HOUR), Some(T0 + 2 * HOUR))],
        None,
        &[("stream:1", live(false), T0 + 2 * HOUR)],
    );
    assert_eq!(kinds(&p), vec![vec!["stream.started"]]);
    assert_eq!(
        p.actions[0].steps[0].reconciled.happened_at.as_deref(),
        Some(&*iso(T0 + 5 * HOUR))
    );
}

#[test]
fn a_session_inside_the_gap_is_two_transitions_with_their_times() {
    let p = run(
        &[stream(1, false, Some(T0 + 4 * HOUR), Some(T0 + 5 * HOUR))],
        None,
        &[("stream:1", live(false), T0 + 2 * HOUR)],
    );
    assert_eq!(
        kinds(&p),
        vec![vec!["stream.started"], vec!["stream.stopped"]]
    );
    let times: Vec<_> = p.actions[0]
        .steps
        .iter()
        .map(|s| s.reconciled.happened_at.clone().unwrap())
        .collect();
    assert_eq!(times, vec![iso(T0 + 4 * HOUR), iso(T0 + 5 * HOUR)]);
}

#[test]
fn a_restart_inside_the_gap_is_stopped_then_started() {
    let p = run(
        &[stream(1, true, Some(T0 + 6 * HOUR), Some(T0 + 5 * HOUR))],
        None,
        &[("stream:1", live(true), T0 + HOUR)],
    );
    assert_eq!(
        kinds(&p),
        vec![vec!["stream.stopped"], vec!["stream.started"]]
    );
}

#[test]
fn states_that_agree_emit_nothing() {
    let p = run(
        &[
            stream(1, true, Some(T0 + HOUR), None),
            stream(2, false, Some(T0 + HOUR), Some(T0 + 2 * HOUR)),
        ],
        Some(&[json!({"id": 7, "status": "ready", "created_at": iso(T0 + HOUR)})]),
        &[
            // The start webhook came a moment after the API's start time.
            ("stream:1", live(true), T0 + HOUR + 2_000),
            ("stream:2", live(false), T0 + 2 * HOUR + 500),
            ("video:7", video_state("ready"), T0 + 2 * HOUR),
        ],
    );
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(p.missing_videos.is_empty());
}

#[test]
fn a_session_within_the_clock_skew_of_the_last_webhook_is_not_a_new_one() {
    let p = run(
        &[stream(1, true, Some(T0 + HOUR + 20_000), None)],
        None,
        &[("stream:1", live(true), T0 + HOUR)],
    );
    assert!(p.actions.is_empty());
}

#[test]
fn unknown_streams_count_only_from_the_baseline() {
    let p = run(
        &[
            stream(1, true, Some(T0 - HOUR), None),
            stream(2, true, Some(T0 + HOUR), None),
            stream(3, false, Some(T0 - 3 * HOUR), Some(T0 - 2 * HOUR)),
            stream(4, false, None, None),
        ],
        None,
        &[],
    );
    assert_eq!(kinds(&p), vec![vec!["stream.started"]]);
    assert_eq!(p.actions[0].resource, "stream:2");
}

#[test]
fn a_video_status_change_is_its_transition() {
    let p = run(
        &[],
        Some(&[
            json!({"id": 7, "name": "a", "status": "ready", "duration": 61000,
            "converted_videos": [{"id": 1, "name": "vod720n", "status": "complete", "progress": 100,
            "mp4_url": "https://x/1.mp4"}]}),
        ]),
        &[("video:7", video_state("pending"), T0)],
    );
    assert_eq!(kinds(&p), vec![vec!["video.ready"]]);
    let video = &p.actions[0].steps[0].payload["message"]["video"];
    assert_eq!(
        video["converted_videos"][0],
        json!({"name": "vod720n", "status": "complete", "mp4_url": "https://x/1.mp4"})
    );
}

#[test]
fn a_video_created_after_the_baseline_appears_with_its_state_and_an_old_one_does_not() {
    let p = run(
        &[],
        Some(&[
            json!({"id": 8, "status": "viewable", "created_at": iso(T0 + HOUR), "stream_id": 1,
                "name": "Stream Record: cam, 2026-12-01"}),
            json!({"id": 9, "status": "ready", "created_at": iso(T0 - HOUR)}),
        ]),
        &[],
    );
    assert_eq!(kinds(&p), vec![vec!["video.viewable"]]);
    assert_eq!(p.actions[0].resource, "video:8");
}

#[test]
fn a_known_video_the_list_lacks_is_looked_up_and_a_404_is_a_deletion() {
    let p = run(
        &[],
        Some(&[]),
        &[
            ("video:7", video_state("ready"), T0),
            (
                "video:8",
                ResourceState::Video {
                    status: Some("ready".into()),
                    deleted: true,
                },
                T0,
            ),
        ],
    );
    assert!(p.actions.is_empty());
    assert_eq!(p.missing_videos, vec![7]);
    let action = video_deleted(7, &(video_state("ready"), T0), UNIX_EPOCH);
    let kinds: Vec<_> = action.steps[0].kinds.iter().map(|k| k.as_str()).collect();
    assert_eq!(kinds, vec!["video.deleted"]);
}

#[test]
fn videos_are_not_looked_up_when_the_list_was_not_read() {
    let p = run(&[], None, &[("video:7", video_state("ready"), T0)]);
    assert!(p.missing_videos.is_empty());
}

#[test]
fn restreams_and_broadcasts_need_an_id_and_a_known_resource() {
    let known: Known = [
        (
            "restream:3".to_owned(),
            (ResourceState::Restream { live: Some(true) }, T0),
        ),
        (
            "broadcast:4".to_owned(),
            (
                ResourceState::Broadcast {
                    status: Some("live".into()),
                },
                T0,
            ),
        ),
    ]
    .into_iter()
    .collect();
    let restreams = [
        json!({"id": 3, "live": false, "stream_id": 1}),
        json!({"name": "no id", "live": true}),
        json!({"id": 5, "live": true}),
    ];
    let broadcasts = [json!({"id": 4, "status": "Finished"})];
    let p = plan(&Input {
        streams: None,
        videos: None,
        restreams: Some(&restreams),
        broadcasts: Some(&broadcasts),
        known: &known,
        baseline_ms: T0,
        observed_at: UNIX_EPOCH,
        skew: SKEW,
        listed_at_ms: u64::MAX,
        settle: Duration::ZERO,
    });
    assert_eq!(
        kinds(&p),
        vec![vec!["restream.stopped"], vec!["broadcast.finished"]]
    );
    assert_eq!(p.not_comparable, 1);
}

#[test]
fn api_times_are_read_with_and_without_a_zone() {
    assert_eq!(
        time_ms(Some(&json!("2023-10-01T00:01:01.000Z"))),
        Some(1_696_118_461_000)
    );
    assert_eq!(
        time_ms(Some(&json!("2023-10-01T00:01:01+00:00"))),
        Some(1_696_118_461_000)
    );
    assert_eq!(
        time_ms(Some(&json!("2023-10-01T00:01:01"))),
        Some(1_696_118_461_000)
    );
    assert_eq!(time_ms(Some(&json!(null))), None);
    assert_eq!(time_ms(Some(&json!("yesterday"))), None);
}

#[test]
fn a_resource_the_journal_heard_of_after_the_api_was_read_is_not_compared() {
    let known: Known = [
        (
            "video:7".to_owned(),
            (video_state("pending"), T0 + 2 * HOUR),
        ),
        (
            "video:8".to_owned(),
            (video_state("pending"), T0 + 2 * HOUR),
        ),
        ("stream:1".to_owned(), (live(true), T0 + 2 * HOUR)),
    ]
    .into_iter()
    .collect();
    let streams = [stream(1, false, Some(T0), Some(T0 + HOUR))];
    // The lists were read at T0 + 1 h, before the webhooks: they show older states, and
    // video 8 not yet.
    let videos = [json!({"id": 7, "status": "empty"})];
    let p = plan(&Input {
        streams: Some(&streams),
        videos: Some(&videos),
        restreams: None,
        broadcasts: None,
        known: &known,
        baseline_ms: T0,
        observed_at: UNIX_EPOCH,
        skew: SKEW,
        listed_at_ms: T0 + HOUR,
        settle: Duration::ZERO,
    });
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert!(
        p.missing_videos.is_empty(),
        "not a deletion: {:?}",
        p.missing_videos
    );
    assert_eq!(p.newer_in_journal, 2);
}

#[test]
fn a_history_without_a_time_infers_no_session() {
    let p = run(
        &[stream(1, false, Some(T0 + 4 * HOUR), Some(T0 + 5 * HOUR))],
        None,
        &[("stream:1", live(false), 0)],
    );
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn a_stop_a_session_and_a_stop_are_planned_against_each_state_in_turn() {
    // Live when last heard of; since then that session ended and another started and ended.
    let p = run(
        &[stream(1, false, Some(T0 + 4 * HOUR), Some(T0 + 5 * HOUR))],
        None,
        &[("stream:1", live(true), T0 + HOUR)],
    );
    assert_eq!(
        kinds(&p),
        vec![
            vec!["stream.stopped"],
            vec!["stream.started"],
            vec!["stream.stopped"]
        ]
    );
    let steps = &p.actions[0].steps;
    assert_eq!(steps[0].before, Some(live(true)));
    // Each later step expects what the one before it leaves.
    for pair in steps.windows(2) {
        assert_ne!(pair[1].before, pair[0].before);
    }
    assert!(matches!(
        steps[1].before,
        Some(ResourceState::Stream(StreamState {
            live: Some(false),
            ..
        }))
    ));
}

fn planned_with(streams: &[Value], videos: &[Value], known: &Known, settle: Duration) -> Plan {
    plan(&Input {
        streams: Some(streams),
        videos: Some(videos),
        restreams: None,
        broadcasts: None,
        known,
        baseline_ms: T0,
        observed_at: UNIX_EPOCH + Duration::from_millis(T0 + 10 * HOUR),
        skew: SKEW,
        listed_at_ms: u64::MAX,
        settle,
    })
}

#[test]
fn a_change_dated_within_the_settle_time_waits_for_the_next_run() {
    let known: Known = [
        ("stream:1".to_owned(), (live(true), T0 + HOUR)),
        ("video:7".to_owned(), (video_state("pending"), T0 + HOUR)),
    ]
    .into_iter()
    .collect();
    // The stream stopped and the video became ready a minute before the API was read: their
    // webhooks may be on their way.
    let recent = T0 + 10 * HOUR - 60_000;
    let streams = [stream(1, false, Some(T0 + HOUR), Some(recent))];
    let videos = [json!({"id": 7, "status": "ready", "updated_at": iso(recent)})];
    let p = planned_with(&streams, &videos, &known, Duration::from_secs(120));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.settling, 2);
    // A run after the settle time emits both.
    let p = planned_with(&streams, &videos, &known, Duration::from_secs(30));
    assert_eq!(kinds(&p), vec![vec!["stream.stopped"], vec!["video.ready"]]);
}

#[test]
fn a_video_the_journal_heard_of_after_the_api_last_changed_it_is_left_alone() {
    // The journal got `ready` at 2 h; the list, from a lagging replica, still says `pending`
    // as of 1 h.
    let known: Known = [("video:7".to_owned(), (video_state("ready"), T0 + 2 * HOUR))]
        .into_iter()
        .collect();
    let videos = [json!({"id": 7, "status": "pending", "updated_at": iso(T0 + HOUR)})];
    let p = planned_with(&[], &videos, &known, Duration::ZERO);
    assert!(
        p.actions.is_empty(),
        "no step back to pending: {:?}",
        p.actions
    );
}
