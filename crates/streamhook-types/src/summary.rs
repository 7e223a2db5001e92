//! One-line, human-readable summaries of payloads: what `streamhook inspect` prints and the
//! stdout sink's `pretty` format shows, such as
//! `video 784280 "SampleVideo" viewable 1/4 renditions`.

use std::fmt::Write;

use crate::model::{Payload, Webhook};

/// A summary of what a webhook says about its resource (no kinds, no time).
pub fn summary(webhook: &Webhook) -> String {
    let mut out = String::new();
    match &webhook.payload {
        Payload::Stream(s) => {
            let _ = write!(out, "stream {}", s.id);
            let flags = [
                ("live", s.live),
                ("recording", s.recording),
                ("transcoding", s.transcoding),
                ("backup", s.backup_live),
            ];
            for (name, value) in flags {
                match value {
                    Some(true) => {
                        let _ = write!(out, " {name}");
                    }
                    Some(false) => {
                        let _ = write!(out, " not-{name}");
                    }
                    None => {}
                }
            }
            if let Some(t) = &s.stream_source_type {
                let _ = write!(out, " via {t}");
            }
        }
        Payload::Video(v) => {
            let _ = write!(out, "video {}", v.id);
            if let Some(name) = &v.name {
                let _ = write!(out, " {name:?}");
            }
            if let Some(status) = &v.status {
                let _ = write!(out, " {status}");
            }
            if v.converted_videos.is_some() {
                let (done, total) = v.rendition_progress();
                let _ = write!(out, " {done}/{total} renditions");
            }
            if let Some(ms) = v.duration {
                let _ = write!(out, " {}", duration(ms));
            }
            if let Some(error) = &v.error {
                let _ = write!(out, " error: {error}");
            }
        }
        Payload::VideoDelete(v) => {
            let _ = write!(out, "video {}", v.id);
            if let Some(name) = &v.name {
                let _ = write!(out, " {name:?}");
            }
            out.push_str(" deleted");
            if let Some(at) = &v.deleted_at {
                let _ = write!(out, " at {at}");
            }
        }
        Payload::Restream(r) => {
            let _ = write!(out, "restream {}", r.id);
            if let Some(name) = &r.name {
                let _ = write!(out, " {name:?}");
            }
            match r.is_live() {
                Some(true) => out.push_str(" live"),
                Some(false) => out.push_str(" stopped"),
                None => {}
            }
            if let Some(stream) = r.stream_id {
                let _ = write!(out, " of stream {stream}");
            }
        }
        Payload::Broadcast(b) => {
            let _ = write!(out, "broadcast {}", b.id);
            if let Some(status) = &b.status {
                let _ = write!(out, " {status}");
            }
        }
        Payload::Unknown(u) => {
            let resource = crate::classify::resource_of(&webhook.payload);
            let _ = write!(out, "{}", u.type_name);
            if let Some(id) = resource.id {
                let _ = write!(out, " {id}");
            }
            out.push_str(" (unknown type)");
        }
    }
    out
}

/// Milliseconds as `2h47m50s`, `19.58s`, `850ms`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    if secs < 60 {
        return format!("{}.{:02}s", secs, (ms % 1000) / 10);
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else {
        format!("{m}m{s:02}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str, expect: &str) {
        let webhook = crate::decode::decode(json.as_bytes()).unwrap().webhook;
        assert_eq!(summary(&webhook), expect);
    }

    #[test]
    fn summaries() {
        check(
            r#"{"type":"video","message":{"video":{"id":784280,"name":"SampleVideo","status":"viewable","duration":170859,
                "converted_videos":[{"status":"complete"},{"status":"processing"},{"status":"processing"},{"status":"processing"}]}}}"#,
            r#"video 784280 "SampleVideo" viewable 1/4 renditions 2m50s"#,
        );
        check(
            r#"{"type":"stream","message":{"stream":{"id":12345,"live":true,"recording":false}}}"#,
            "stream 12345 live not-recording",
        );
        check(
            r#"{"type":"video_delete","message":{"video":{"id":1,"deleted_at":"2025-06-02T11:27:43.512Z"}}}"#,
            "video 1 deleted at 2025-06-02T11:27:43.512Z",
        );
        check(
            r#"{"type":"restream","message":{"restream":{"id":3,"name":"yt","stream_id":9,"active":false}}}"#,
            r#"restream 3 "yt" stopped of stream 9"#,
        );
        check(
            r#"{"type":"broadcast","message":{"broadcast":{"id":5,"status":"paused"}}}"#,
            "broadcast 5 paused",
        );
        check(
            r#"{"type":"ai_task","message":{"ai_task":{"id":8}}}"#,
            "ai_task 8 (unknown type)",
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(19580), "19.58s");
        assert_eq!(duration(170859), "2m50s");
        assert_eq!(duration(3605120), "1h00m05s");
    }
}
