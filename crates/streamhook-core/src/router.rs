//! The router: which sinks get which events.
//!
//! Routes are checked in order. Every route that matches adds its sinks (fan-out), unless it
//! is `final`, which stops the search after it matches. An event no route matched goes to the
//! `default` sinks. With no routes at all, every event goes to every sink.
//!
//! A route matches when every condition it sets holds: `kinds` (globs such as `stream.*` or
//! `*.started`; any one of the event's kinds may match), `types` (the webhook `type`),
//! `origin` (`recording` or `upload`), `ids` (the resource id). A condition left out matches
//! everything.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use streamhook_types::{EventKind, Origin};

/// One route, as written in config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for logs and errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Event kind globs: `stream.started`, `stream.*`, `*.stopped`, `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Webhook types: `stream`, `video`, `video_delete`, ... (unknown types too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// `recording` or `upload` (videos only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Resource ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<u64>,
    /// The sinks that get matching events.
    pub sinks: Vec<String>,
    /// Stop looking at later routes once this one matches.
    #[serde(default, rename = "final", skip_serializing_if = "std::ops::Not::not")]
    pub is_final: bool,
}

/// What a route is matched against.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput<'a> {
    /// The event's kinds.
    pub kinds: &'a [EventKind],
    /// The webhook `type`.
    pub type_name: &'a str,
    /// Recording or upload, for videos.
    pub origin: Option<Origin>,
    /// The resource id.
    pub id: Option<u64>,
}

/// A route set that was checked against the sinks that exist.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
    default: Vec<usize>,
    sinks: Vec<String>,
}

#[derive(Debug, Clone)]
struct Route {
    kinds: Vec<KindPattern>,
    types: Vec<String>,
    origin: Option<Origin>,
    ids: Vec<u64>,
    sinks: Vec<usize>,
    is_final: bool,
}

/// A mistake in the routes, naming the route by position (from 1) and name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route #{position}{}: {problem}", name.as_ref().map(|n| format!(" ({n:?})")).unwrap_or_default())]
pub struct RouteError {
    /// 1-based position of the route; 0 for the `default` list.
    pub position: usize,
    /// The route's name.
    pub name: Option<String>,
    /// What is wrong.
    pub problem: String,
}

impl Router {
    /// Checks `routes` and `default` against the sink names that exist.
    ///
    /// With no routes and an empty `default`, every event goes to every sink.
    pub fn new(
        routes: &[RouteConfig],
        default: &[String],
        sinks: &[String],
    ) -> Result<Router, RouteError> {
        let index = |name: &str, position: usize, route: Option<&String>| {
            sinks
                .iter()
                .position(|s| s == name)
                .ok_or_else(|| RouteError {
                    position,
                    name: route.cloned(),
                    problem: format!(
                        "unknown sink {name:?}; configured sinks: {}",
                        if sinks.is_empty() {
                            "none".to_owned()
                        } else {
                            sinks.join(", ")
                        }
                    ),
                })
        };
        let mut compiled = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let position = i + 1;
            let err = |problem: String| RouteError {
                position,
                name: r.name.clone(),
                problem,
            };
            if r.sinks.is_empty() {
                return Err(err("names no sinks".to_owned()));
            }
            let kinds = r
                .kinds
                .iter()
                .map(|k| KindPattern::new(k).map_err(&err))
                .collect::<Result<Vec<_>, _>>()?;
            let sinks = r
                .sinks
                .iter()
                .map(|s| index(s, position, r.name.as_ref()))
                .collect::<Result<Vec<_>, _>>()?;
            compiled.push(Route {
                kinds,
                types: r.types.clone(),
                origin: r.origin,
                ids: r.ids.clone(),
                sinks,
                is_final: r.is_final,
            });
        }
        let default = if routes.is_empty() && default.is_empty() {
            (0..sinks.len()).collect()
        } else {
            default
                .iter()
                .map(|s| index(s, 0, Some(&"default".to_owned())))
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(Router {
            routes: compiled,
            default,
            sinks: sinks.to_vec(),
        })
    }

    /// The names of the sinks an event goes to, in sink order.
    pub fn sinks_for(&self, input: &RouteInput<'_>) -> Vec<&str> {
        let mut chosen = BTreeSet::new();
        let mut matched = false;
        for route in &self.routes {
            if route.matches(input) {
                matched = true;
                chosen.extend(route.sinks.iter().copied());
                if route.is_final {
                    break;
                }
            }
        }
        if !matched {
            chosen.extend(self.default.iter().copied());
        }
        chosen.into_iter().map(|i| self.sinks[i].as_str()).collect()
    }

    /// Whether the sink named `sink` gets the event.
    pub fn wants(&self, sink: &str, input: &RouteInput<'_>) -> bool {
        self.sinks_for(input).contains(&sink)
    }

    /// A one-line description per route, for startup logs.
    pub fn describe(routes: &[RouteConfig], default: &[String]) -> Vec<String> {
        let mut out: Vec<String> = routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut conds = Vec::new();
                if !r.kinds.is_empty() {
                    conds.push(format!("kinds {}", r.kinds.join("|")));
                }
                if !r.types.is_empty() {
                    conds.push(format!("types {}", r.types.join("|")));
                }
                if let Some(o) = r.origin {
                    conds.push(format!("origin {o}"));
                }
                if !r.ids.is_empty() {
                    conds.push(format!("{} ids", r.ids.len()));
                }
                let when = if conds.is_empty() {
                    "every event".to_owned()
                } else {
                    conds.join(", ")
                };
                let name = r
                    .name
                    .as_deref()
                    .map(|n| format!(" {n:?}"))
                    .unwrap_or_default();
                let fin = if r.is_final { " (final)" } else { "" };
                format!(
                    "route #{}{name}: {when} -> {}{fin}",
                    i + 1,
                    r.sinks.join(", ")
                )
            })
            .collect();
        if routes.is_empty() && default.is_empty() {
            out.push("every event -> every sink".to_owned());
        } else {
            out.push(format!(
                "unmatched -> {}",
                if default.is_empty() {
                    "dropped".to_owned()
                } else {
                    default.join(", ")
                }
            ));
        }
        out
    }
}

impl Route {
    fn matches(&self, input: &RouteInput<'_>) -> bool {
        (self.kinds.is_empty()
            || input
                .kinds
                .iter()
                .any(|k| self.kinds.iter().any(|g| g.matches(k.as_str()))))
            && (self.types.is_empty() || self.types.iter().any(|t| t == input.type_name))
            && (self.origin.is_none() || self.origin == input.origin)
            && (self.ids.is_empty() || input.id.is_some_and(|id| self.ids.contains(&id)))
    }
}

/// An event kind pattern where `*` matches any run of characters: `stream.*`, `*.stopped`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindPattern(String);

impl KindPattern {
    /// Checks the pattern: only lowercase letters, `.`, `_` and `*`, matching some kind.
    pub fn new(pattern: &str) -> Result<KindPattern, String> {
        if pattern.is_empty()
            || !pattern
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_' || b == b'*')
        {
            return Err(format!(
                "bad kind pattern {pattern:?}: use event kinds like \"stream.started\", with * as a wildcard"
            ));
        }
        let glob = KindPattern(pattern.to_owned());
        if !EventKind::ALL.iter().any(|k| glob.matches(k.as_str())) {
            return Err(format!(
                "kind pattern {pattern:?} matches no event kind; kinds are: {}",
                EventKind::ALL
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(glob)
    }

    /// Whether `text` (a kind's name) matches.
    pub fn matches(&self, text: &str) -> bool {
        let parts: Vec<&str> = self.0.split('*').collect();
        let (first, rest) = parts.split_first().unwrap_or((&"", &[]));
        let Some(mut remaining) = text.strip_prefix(first) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return remaining.is_empty();
        };
        for part in middle {
            match remaining.find(part) {
                Some(at) => remaining = &remaining[at + part.len()..],
                None => return false,
            }
        }
        remaining.len() >= last.len() && remaining.ends_with(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(kinds: &[&str], sinks: &[&str]) -> RouteConfig {
        RouteConfig {
            kinds: kinds.iter().map(|s| s.to_string()).collect(),
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn input(
        kinds: &[EventKind],
        type_name: &'static str,
        origin: Option<Origin>,
        id: u64,
    ) -> RouteInput<'static> {
        RouteInput {
            kinds: kinds.to_vec().leak(),
            type_name,
            origin,
            id: Some(id),
        }
    }

    #[test]
    fn globs() {
        for (pattern, text, expect) in [
            ("stream.*", "stream.started", true),
            ("stream.*", "video.ready", false),
            ("*.started", "restream.started", true),
            ("*", "unknown", true),
            ("video.ready", "video.ready", true),
            ("video.ready", "video.ready2", false),
            ("*recording*", "stream.recording_stopped", true),
            ("s*d", "stream.started", true),
            ("s*d", "stream.started_x", false),
        ] {
            assert_eq!(
                KindPattern(pattern.to_owned()).matches(text),
                expect,
                "{pattern} ~ {text}"
            );
        }
    }

    #[test]
    fn fan_out_is_the_default_and_final_stops() {
        let sinks = names(&["stdout", "archive", "app"]);
        let mut routes = vec![route(&["video.*"], &["app"]), route(&["*"], &["archive"])];
        let r = Router::new(&routes, &names(&["stdout"]), &sinks).unwrap();
        let ready = input(&[EventKind::VideoReady], "video", Some(Origin::Upload), 1);
        assert_eq!(r.sinks_for(&ready), ["archive", "app"]);
        routes[0].is_final = true;
        let r = Router::new(&routes, &names(&["stdout"]), &sinks).unwrap();
        assert_eq!(r.sinks_for(&ready), ["app"]);
        let started = input(&[EventKind::StreamStarted], "stream", None, 1);
        assert_eq!(r.sinks_for(&started), ["archive"]);
    }

    #[test]
    fn unmatched_events_go_to_the_default() {
        let sinks = names(&["stdout", "app"]);
        let routes = vec![route(&["video.ready"], &["app"])];
        let r = Router::new(&routes, &names(&["stdout"]), &sinks).unwrap();
        assert_eq!(
            r.sinks_for(&input(&[EventKind::Unknown], "ai_task", None, 1)),
            ["stdout"]
        );
        // No default: unmatched events reach no sink (they stay in the journal).
        let r = Router::new(&routes, &[], &sinks).unwrap();
        assert!(
            r.sinks_for(&input(&[EventKind::Unknown], "ai_task", None, 1))
                .is_empty()
        );
        // No routes at all: everything to every sink.
        let r = Router::new(&[], &[], &sinks).unwrap();
        assert_eq!(
            r.sinks_for(&input(&[EventKind::Unknown], "ai_task", None, 1)),
            ["stdout", "app"]
        );
    }

    #[test]
    fn conditions_combine() {
        let sinks = names(&["publish"]);
        let routes = vec![RouteConfig {
            kinds: names(&["video.ready"]),
            types: names(&["video"]),
            origin: Some(Origin::Upload),
            ids: vec![784280],
            sinks: names(&["publish"]),
            ..Default::default()
        }];
        let r = Router::new(&routes, &[], &sinks).unwrap();
        assert!(r.wants(
            "publish",
            &input(
                &[EventKind::VideoReady],
                "video",
                Some(Origin::Upload),
                784280
            )
        ));
        assert!(!r.wants(
            "publish",
            &input(
                &[EventKind::VideoReady],
                "video",
                Some(Origin::Recording),
                784280
            )
        ));
        assert!(!r.wants(
            "publish",
            &input(&[EventKind::VideoReady], "video", Some(Origin::Upload), 1)
        ));
        // Any one of several kinds may match.
        let r = Router::new(
            &[route(&["stream.recording_started"], &["publish"])],
            &[],
            &sinks,
        )
        .unwrap();
        assert!(r.wants(
            "publish",
            &input(
                &[EventKind::StreamStarted, EventKind::StreamRecordingStarted],
                "stream",
                None,
                1
            )
        ));
    }

    #[test]
    fn config_errors_name_the_route() {
        let sinks = names(&["stdout"]);
        let mut bad = route(&["video.*"], &["s3"]);
        bad.name = Some("archive videos".into());
        let e = Router::new(&[route(&["*"], &["stdout"]), bad], &[], &sinks).unwrap_err();
        assert_eq!(
            e.to_string(),
            "route #2 (\"archive videos\"): unknown sink \"s3\"; configured sinks: stdout"
        );
        let e = Router::new(&[route(&["stream.start"], &["stdout"])], &[], &sinks).unwrap_err();
        assert!(e.to_string().starts_with("route #1: kind pattern \"stream.start\" matches no event kind; kinds are: stream.started,"), "{e}");
        let e = Router::new(&[route(&["Stream.*"], &["stdout"])], &[], &sinks).unwrap_err();
        assert!(
            e.to_string().contains("bad kind pattern \"Stream.*\""),
            "{e}"
        );
        let e = Router::new(&[route(&["*"], &[])], &[], &sinks).unwrap_err();
        assert_eq!(e.to_string(), "route #1: names no sinks");
        let e = Router::new(&[], &names(&["nope"]), &sinks).unwrap_err();
        assert_eq!(
            e.to_string(),
            "route #0 (\"default\"): unknown sink \"nope\"; configured sinks: stdout"
        );
    }
}
