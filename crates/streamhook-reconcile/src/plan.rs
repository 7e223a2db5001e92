//! What a run would emit: the API's state of each resource against the last state the journal
//! knows of it, as the webhooks Gcore would have sent for the difference. Pure: no I/O, so
//! every rule is tested on its own.
//!
//! The rules:
//! - **Streams**: `live` (and `backup_live`) against the journal's. A session that started
//!   after the journal last heard of the stream (`started_at_primary` later than that, by more
//!   than [`SKEW`]) and has ended (`finished_at_primary` after it) is two missed transitions:
//!   started, then stopped, each with its time. A stream live in both whose session started
//!   since is a restart: stopped, then started. A stopped stream's payload carries `recording:
//!   false` and `transcoding: false`, as Gcore's own stop webhook does; a started one carries
//!   only `live` (the API does not show recording or transcoding).
//! - **Videos**: `status` against the journal's; a video the journal knows and the list lacks
//!   is a deletion only once `GET /videos/{id}` answers 404 (the caller asks); a video the
//!   journal does not know is emitted with its current state only if created after the
//!   baseline (what the journal covers), so a first run does not replay a library.
//! - **Restreams** (`live`) and **broadcasts** (`status`): only items the API gives an `id`
//!   (the published schema has none; newer answers may), and only those the journal knows.
//! - Nothing is emitted when the classifier, given the journal's state, would call the payload
//!   no transition (`*.updated`): a second run emits nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use streamhook_types::classify::{ResourceState, classify_with};
use streamhook_types::decode::decode_value;
use streamhook_types::{EventKind, Reconciled};

/// How far Gcore's clock may be ahead of this host's, by default: a session is "after the
/// journal last heard of the stream" only if it started this much later (a webhook arrives a
/// moment after the change it reports). A larger skew would make every run emit a session
/// again; keep both clocks on NTP.
pub const SKEW: Duration = Duration::from_secs(30);

/// The journal's knowledge of one resource: its state and when it was last written (ms).
pub type Known = BTreeMap<String, (ResourceState, u64)>;

/// One payload to journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The webhook Gcore would have sent (`{"type", "message"}`).
    pub payload: Value,
    /// How it was found.
    pub reconciled: Reconciled,
    /// What the classifier will call it, given the state before.
    pub kinds: Vec<EventKind>,
    /// The resource's state this step was planned against: it is journaled only if the
    /// journal's state is still this at the write.
    pub before: Option<ResourceState>,
}

/// What to journal for one resource, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// The history key (`stream:12345`).
    pub resource: String,
    /// What the journal knew when planned (the run checks it again right before appending).
    pub prior: Option<(ResourceState, u64)>,
    /// The payloads.
    pub steps: Vec<Step>,
}

/// A plan: the actions, and what the caller must look up before a deletion is known.
#[derive(Debug, Default)]
pub struct Plan {
    /// Differences found.
    pub actions: Vec<Action>,
    /// Videos the journal knows (not deleted) that the list lacks: ask for each by id.
    pub missing_videos: Vec<u64>,
    /// Items the API listed that could not be compared (no id, or a shape not understood).
    pub not_comparable: u64,
    /// Resources compared, by type.
    pub compared: BTreeMap<&'static str, u64>,
    /// Resources a webhook told the journal of after the API was read: not compared (the
    /// journal's state is the newer).
    pub newer_in_journal: u64,
    /// Differences left to the next run: the API dates them within `settle` of its reading.
    pub settling: u64,
}

/// What the planner is given.
#[derive(Debug)]
pub struct Input<'a> {
    /// `GET /streaming/streams` (`None`: not read this run).
    pub streams: Option<&'a [Value]>,
    /// `GET /streaming/videos`.
    pub videos: Option<&'a [Value]>,
    /// `GET /streaming/restreams`.
    pub restreams: Option<&'a [Value]>,
    /// `GET /streaming/broadcasts`.
    pub broadcasts: Option<&'a [Value]>,
    /// What the journal knows, by history key.
    pub known: &'a Known,
    /// Resources the journal does not know are emitted only if they changed after this (ms).
    pub baseline_ms: u64,
    /// When the API was read.
    pub observed_at: SystemTime,
    /// How far Gcore's clock may be ahead of this host's ([`SKEW`] by default).
    pub skew: Duration,
    /// When reading the API began (ms): a resource the journal heard of since is newer in the
    /// journal than in the lists, and is not compared this run.
    pub listed_at_ms: u64,
    /// A change the API dates within this of `observed_at` waits for the next run: its webhook
    /// may still be on its way.
    pub settle: Duration,
}

/// Plans a run.
pub fn plan(input: &Input<'_>) -> Plan {
    let mut plan = Plan::default();
    let observed_ms = input
        .observed_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let settled_before = observed_ms.saturating_sub(input.settle.as_millis() as u64);
    let fresh = |key: &str| {
        input
            .known
            .get(key)
            .is_some_and(|(_, at)| *at >= input.listed_at_ms)
    };
    let observed = rfc3339(input.observed_at);
    if let Some(streams) = input.streams {
        for item in streams {
            let Some(id) = item.get("id").and_then(Value::as_u64) else {
                plan.not_comparable += 1;
                continue;
            };
            *plan.compared.entry("streams").or_default() += 1;
            let key = format!("stream:{id}");
            if fresh(&key) {
                plan.newer_in_journal += 1;
                continue;
            }
            let prior = input.known.get(&key).cloned();
            let payloads = stream_steps(item, id, prior.as_ref(), input.baseline_ms, input.skew);
            push(&mut plan, key, prior, payloads, &observed, settled_before);
        }
    }
    if let Some(videos) = input.videos {
        let mut listed = BTreeSet::new();
        for item in videos {
            let Some(id) = item.get("id").and_then(Value::as_u64) else {
                plan.not_comparable += 1;
                continue;
            };
            listed.insert(id);
            *plan.compared.entry("videos").or_default() += 1;
            let key = format!("video:{id}");
            if fresh(&key) {
                plan.newer_in_journal += 1;
                continue;
            }
            let prior = input.known.get(&key).cloned();
            let payloads = video_steps(item, prior.as_ref(), input.baseline_ms, input.skew);
            push(&mut plan, key, prior, payloads, &observed, settled_before);
        }
        for (key, (state, at)) in input.known.range("video:".to_owned()..) {
            let Some(id) = key.strip_prefix("video:") else {
                break;
            };
            let Ok(id) = id.parse::<u64>() else { continue };
            if matches!(state, ResourceState::Video { deleted: false, .. })
                && !listed.contains(&id)
                && *at < input.listed_at_ms
            {
                plan.missing_videos.push(id);
            }
        }
    }
    for (what, list) in [
        ("restreams", input.restreams),
        ("broadcasts", input.broadcasts),
    ] {
        let Some(list) = list else { continue };
        for item in list {
            let Some(id) = item.get("id").and_then(Value::as_u64) else {
                plan.not_comparable += 1;
                continue;
            };
            let (kind, field) = if what == "restreams" {
                ("restream", "live")
            } else {
                ("broadcast", "status")
            };
            let key = format!("{kind}:{id}");
            if fresh(&key) {
                plan.newer_in_journal += 1;
                continue;
            }
            // Only resources the journal knows: the API gives no time to tell a new one by.
            let Some(prior) = input.known.get(&key).cloned() else {
                continue;
            };
            *plan.compared.entry(what).or_default() += 1;
            let Some(value) = item.get(field) else {
                plan.not_comparable += 1;
                continue;
            };
            let value = match value {
                Value::String(s) => Value::String(s.to_ascii_lowercase()),
                other => other.clone(),
            };
            let mut message = Map::new();
            message.insert("id".into(), json!(id));
            for extra in ["name", "stream_id"] {
                if let Some(v) = item.get(extra) {
                    message.insert(extra.into(), v.clone());
                }
            }
            message.insert(field.into(), value.clone());
            let payload = json!({"type": kind, "message": {kind: message}});
            let reason = format!("{field}: {value} in the API");
            push(
                &mut plan,
                key,
                Some(prior),
                vec![(payload, None, reason)],
                &observed,
                settled_before,
            );
        }
    }
    plan
}

/// The payload that records a deletion the API shows (`GET /videos/{id}` answered 404).
pub fn video_deleted(id: u64, prior: &(ResourceState, u64), observed_at: SystemTime) -> Action {
    let status = match &prior.0 {
        ResourceState::Video { status, .. } => status.clone(),
        _ => None,
    };
    let mut video = Map::new();
    video.insert("id".into(), json!(id));
    if let Some(s) = status {
        video.insert("status".into(), json!(s));
    }
    let payload = json!({"type": "video_delete", "message": {"video": video}});
    let mut plan = Plan::default();
    push(
        &mut plan,
        format!("video:{id}"),
        Some(prior.clone()),
        vec![(
            payload,
            None,
            "the API no longer has the video (404)".to_owned(),
        )],
        &rfc3339(observed_at),
        u64::MAX,
    );
    plan.actions.pop().unwrap_or(Action {
        resource: format!("video:{id}"),
        prior: Some(prior.clone()),
        steps: Vec::new(),
    })
}

/// Plans one video the list lacked but `GET /videos/{id}` still returned.
pub fn video_found(
    item: &Value,
    prior: &(ResourceState, u64),
    observed_at: SystemTime,
) -> Option<Action> {
    let id = item.get("id").and_then(Value::as_u64)?;
    let mut plan = Plan::default();
    let payloads = video_steps(item, Some(prior), 0, Duration::ZERO);
    push(
        &mut plan,
        format!("video:{id}"),
        Some(prior.clone()),
        payloads,
        &rfc3339(observed_at),
        u64::MAX,
    );
    plan.actions.pop()
}

type Payloads = Vec<(Value, Option<String>, String)>;

/// Adds an action for `payloads` (each: the payload, when it happened, why), dropping those the
/// classifier would call no transition.
fn push(
    plan: &mut Plan,
    resource: String,
    prior: Option<(ResourceState, u64)>,
    payloads: Payloads,
    observed: &str,
    settled_before: u64,
) {
    // A change dated within `settle` of the API's reading waits for the next run (its
    // webhook may be on its way): the whole resource, so its steps stay in order.
    if payloads.iter().any(|(_, happened, _)| {
        happened
            .as_ref()
            .and_then(|h| time_ms(Some(&Value::String(h.clone()))))
            .is_some_and(|t| t >= settled_before)
    }) {
        plan.settling += 1;
        return;
    }
    let mut state = prior.as_ref().map(|p| p.0.clone());
    let mut steps = Vec::new();
    for (payload, happened_at, reason) in payloads {
        let Ok(decoded) = decode_value(&payload) else {
            plan.not_comparable += 1;
            continue;
        };
        let (meaning, next) = classify_with(&decoded.webhook, state.as_ref());
        let moves = meaning.kinds.iter().any(|k| !no_transition(*k));
        if !moves {
            continue;
        }
        let before = std::mem::replace(&mut state, next);
        steps.push(Step {
            payload,
            reconciled: Reconciled {
                observed_at: observed.to_owned(),
                happened_at,
                reason,
            },
            kinds: meaning.kinds,
            before,
        });
    }
    if !steps.is_empty() {
        plan.actions.push(Action {
            resource,
            prior,
            steps,
        });
    }
}

/// Kinds that say nothing changed.
fn no_transition(kind: EventKind) -> bool {
    use EventKind as K;
    matches!(
        kind,
        K::StreamUpdated | K::VideoUpdated | K::RestreamUpdated | K::BroadcastUpdated | K::Unknown
    )
}

fn stream_steps(
    item: &Value,
    id: u64,
    prior: Option<&(ResourceState, u64)>,
    baseline_ms: u64,
    skew: Duration,
) -> Payloads {
    let Some(live) = item.get("live").and_then(Value::as_bool) else {
        return Vec::new();
    };
    let backup = item.get("backup_live").and_then(Value::as_bool);
    let started = time_ms(item.get("started_at_primary"));
    let finished = time_ms(item.get("finished_at_primary"));
    let (was_live, since) = match prior {
        Some((ResourceState::Stream(s), at)) => (s.live, *at),
        Some(_) => return Vec::new(),
        None => (None, baseline_ms),
    };
    let skew = skew.as_millis() as u64;
    // A session that started after the journal last heard of the stream (a history record
    // from before histories carried a time says nothing of when: no session is inferred).
    let new_session = started.filter(|s| since > 0 && *s > since.saturating_add(skew));
    let ended = |s: u64| finished.filter(|f| *f >= s);
    let name = item.get("name").cloned();
    let message = |live: bool, backup: Option<bool>| {
        let mut m = Map::new();
        m.insert("id".into(), json!(id));
        if let Some(n) = &name {
            m.insert("name".into(), n.clone());
        }
        m.insert("live".into(), json!(live));
        if let Some(b) = backup {
            m.insert("backup_live".into(), json!(b));
        }
        if !live {
            m.insert("recording".into(), json!(false));
            m.insert("transcoding".into(), json!(false));
        }
        json!({"type": "stream", "message": {"stream": m}})
    };
    let at = |ms: Option<u64>| ms.map(|ms| rfc3339(UNIX_EPOCH + Duration::from_millis(ms)));
    // A session that started (at `s`) and ended unseen: its start, then its stop.
    let session = |s: u64| {
        [
            (
                message(true, None),
                at(Some(s)),
                "a session that started and ended unseen (started_at_primary)".to_owned(),
            ),
            (
                message(false, backup),
                at(ended(s)),
                "a session that started and ended unseen (finished_at_primary)".to_owned(),
            ),
        ]
    };
    let mut out = Vec::new();
    if prior.is_none() {
        // Unknown to the journal: only a session since the baseline.
        match (live, new_session) {
            (true, Some(s)) => out.push((
                message(true, backup),
                at(Some(s)),
                "live in the API since after the journal's oldest event; unknown to the journal"
                    .to_owned(),
            )),
            (false, Some(s)) if ended(s).is_some() => {
                out.extend(session(s));
            }
            _ => {}
        }
        return out;
    }
    match (was_live, live, new_session) {
        (Some(true), true, Some(s)) => {
            // Live before and now, but this session started since: the one known ended.
            let stop_at = finished.filter(|f| *f > since && *f <= s);
            out.push((
                message(false, None),
                at(stop_at),
                "a new session started since the journal last heard of the stream: the one it knew ended"
                    .to_owned(),
            ));
            out.push((
                message(true, backup),
                at(Some(s)),
                "live: true in the API, in a session started since (started_at_primary)".to_owned(),
            ));
        }
        (_, true, _) if was_live != Some(true) => out.push((
            message(true, backup),
            at(started),
            "live: true in the API, not in the journal".to_owned(),
        )),
        (_, false, Some(s)) if was_live != Some(true) && ended(s).is_some() => {
            out.extend(session(s));
        }
        (Some(true), false, Some(s)) if ended(s).is_some() => {
            // The session the journal knew ended, another started and ended unseen.
            out.push((
                message(false, None),
                None,
                "a new session started since the journal last heard of the stream: the one it knew ended"
                    .to_owned(),
            ));
            out.extend(session(s));
        }
        (Some(true), false, _) => out.push((
            message(false, backup),
            at(finished.filter(|f| Some(*f) >= started)),
            "live: false in the API, true in the journal".to_owned(),
        )),
        _ => {
            // `live` agrees: the backup ingest may not.
            if let (Some(b), Some(ResourceState::Stream(s))) = (backup, prior.map(|p| &p.0))
                && s.backup_live != Some(b)
                && (b || s.backup_live.is_some())
            {
                out.push((
                    message(live, Some(b)),
                    None,
                    format!("backup_live: {b} in the API, not in the journal"),
                ));
            }
        }
    }
    out
}

fn video_steps(
    item: &Value,
    prior: Option<&(ResourceState, u64)>,
    baseline_ms: u64,
    skew: Duration,
) -> Payloads {
    let Some(status) = item.get("status").and_then(Value::as_str) else {
        return Vec::new();
    };
    let updated = time_ms(item.get("updated_at"));
    if let (Some(u), Some((_, at))) = (updated, prior)
        && *at > 0
        && u <= at.saturating_add(skew.as_millis() as u64)
    {
        // The journal heard of the video after the API's last change of it: the journal's
        // state is the newer (a list read from a lagging replica).
        return Vec::new();
    }
    match prior {
        Some((ResourceState::Video { deleted: true, .. }, _)) => return Vec::new(),
        Some((ResourceState::Video { status: known, .. }, _))
            if known.as_deref() == Some(status) =>
        {
            return Vec::new();
        }
        Some((ResourceState::Video { .. }, _)) => {}
        Some(_) => return Vec::new(),
        None => {
            let created = time_ms(item.get("created_at"));
            if created.is_none_or(|c| c <= baseline_ms) {
                return Vec::new();
            }
        }
    }
    let mut video = Map::new();
    for field in [
        "id",
        "name",
        "slug",
        "status",
        "error",
        "duration",
        "stream_id",
        "client_user_id",
    ] {
        if let Some(v) = item.get(field).filter(|v| !v.is_null()) {
            video.insert(field.into(), v.clone());
        }
    }
    if let Some(Value::Array(renditions)) = item.get("converted_videos") {
        let renditions: Vec<Value> = renditions
            .iter()
            .map(|r| {
                let mut out = Map::new();
                for field in ["name", "status", "mp4_url"] {
                    if let Some(v) = r.get(field).filter(|v| !v.is_null()) {
                        out.insert(field.into(), v.clone());
                    }
                }
                Value::Object(out)
            })
            .collect();
        video.insert("converted_videos".into(), Value::Array(renditions));
    }
    let reason = match prior {
        Some((
            ResourceState::Video {
                status: Some(k), ..
            },
            _,
        )) => {
            format!("status: {status} in the API, {k} in the journal")
        }
        _ => format!(
            "status: {status} in the API; created after the journal's oldest event, unknown to it"
        ),
    };
    let at = |ms: u64| rfc3339(UNIX_EPOCH + Duration::from_millis(ms));
    let happened = if prior.is_none() {
        time_ms(item.get("created_at")).map(at)
    } else {
        updated.map(at)
    };
    vec![(
        json!({"type": "video", "message": {"video": video}}),
        happened,
        reason,
    )]
}

/// An ISO 8601 time from the API (`2023-10-01T00:01:01.000Z`, with or without a zone, or
/// `+00:00`) in ms since the Unix epoch.
pub fn time_ms(value: Option<&Value>) -> Option<u64> {
    let text = value?.as_str()?.trim();
    let text = text
        .strip_suffix("+00:00")
        .or_else(|| text.strip_suffix('Z'))
        .unwrap_or(text);
    let at = humantime::parse_rfc3339_weak(text).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests;
