//! `streamhook validate` and `streamhook inspect`: what each payload is, and whether it is one.

use std::collections::HashMap;
use std::io::Write;

use serde_json::json;
use streamhook_core::KindPattern;
use streamhook_types::classify::{classify_with, resource_of};
use streamhook_types::decode::{self, Decoded};
use streamhook_types::{EventKind, Payload, ResourceState};

use crate::input::{self, Found, InputError, Item};
use crate::style::Style;

/// Exit codes: all good, some payload invalid, usage or I/O error.
pub const OK: u8 = 0;
/// Some payload is invalid (or has warnings under `--deny-warnings`).
pub const INVALID: u8 = 1;
/// A usage or I/O error.
pub const TROUBLE: u8 = 2;

/// `validate`'s options.
#[derive(Debug, Clone, Default)]
pub struct ValidateOptions {
    /// Show what the lenient decoder tolerated.
    pub strict: bool,
    /// Treat tolerated oddities as failures (exit 1).
    pub deny_warnings: bool,
    /// NDJSON results instead of text.
    pub json: bool,
}

#[derive(Debug, Default)]
struct Counts {
    files: usize,
    payloads: usize,
    valid: usize,
    invalid: usize,
    warnings: usize,
    io_errors: usize,
}

fn input_error(
    out: &mut dyn Write,
    style: Style,
    json: bool,
    e: &InputError,
) -> std::io::Result<()> {
    let at = e.at.map_or_else(
        || e.file.clone(),
        |l| format!("{}:{}:{}", e.file, l.line, l.column),
    );
    if json {
        writeln!(
            out,
            "{}",
            json!({ "file": e.file, "error": { "message": e.message } })
        )
    } else {
        writeln!(
            out,
            "{}: {} {}",
            style.bold(&at),
            style.error("error:"),
            e.message
        )
    }
}

/// Validates every payload in `paths`; returns the exit code.
pub fn validate(
    paths: &[String],
    options: &ValidateOptions,
    out: &mut dyn Write,
    style: Style,
) -> std::io::Result<u8> {
    let mut counts = Counts::default();
    let files = match input::expand(paths) {
        Ok(f) => f,
        Err(e) => {
            input_error(out, style, options.json, &e)?;
            return Ok(TROUBLE);
        }
    };
    let mut io_result = Ok(());
    for file in &files {
        counts.files += 1;
        input::read(file, &mut |found| {
            if io_result.is_err() {
                return;
            }
            io_result = match found {
                Found::Item(item) => validate_item(&item, options, out, style, &mut counts),
                Found::Error(e) => {
                    if e.io {
                        counts.io_errors += 1;
                    } else {
                        counts.invalid += 1;
                    }
                    input_error(out, style, options.json, &e)
                }
            };
        });
        io_result
            .as_ref()
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
    }
    let c = &counts;
    if options.json {
        writeln!(
            out,
            "{}",
            json!({ "summary": { "files": c.files, "payloads": c.payloads, "valid": c.valid, "invalid": c.invalid, "warnings": c.warnings, "io_errors": c.io_errors } })
        )?;
    } else {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut line = format!(
            "{}, {}: {} valid, {} invalid, {}",
            plural(c.files, "file", "files"),
            plural(c.payloads, "payload", "payloads"),
            c.valid,
            c.invalid,
            plural(c.warnings, "warning", "warnings"),
        );
        if c.warnings > 0 && !options.strict {
            line.push_str(" (--strict shows them)");
        }
        let line = if c.invalid > 0 || c.io_errors > 0 {
            style.error(&line)
        } else {
            style.ok(&line)
        };
        writeln!(out, "{line}")?;
    }
    Ok(if c.io_errors > 0 {
        TROUBLE
    } else if c.invalid > 0 || (options.deny_warnings && c.warnings > 0) {
        INVALID
    } else {
        OK
    })
}

fn validate_item(
    item: &Item<'_>,
    options: &ValidateOptions,
    out: &mut dyn Write,
    style: Style,
    counts: &mut Counts,
) -> std::io::Result<()> {
    counts.payloads += 1;
    let loc = |l: Option<decode::Location>| {
        let abs = item.absolute(l.unwrap_or(decode::Location { line: 1, column: 1 }));
        (abs.line, abs.column)
    };
    match decode::decode(item.bytes) {
        Ok(decoded) => {
            counts.valid += 1;
            counts.warnings += decoded.warnings.len();
            if !options.strict || decoded.warnings.is_empty() {
                return Ok(());
            }
            if options.json {
                let warnings: Vec<serde_json::Value> = decoded
                    .warnings
                    .iter()
                    .map(|w| {
                        let (line, column) = loc(w.location);
                        json!({ "path": w.path.to_string(), "message": w.message(), "line": line, "column": column })
                    })
                    .collect();
                let (line, column) = loc(None);
                writeln!(
                    out,
                    "{}",
                    json!({ "file": item.file, "line": line, "column": column, "valid": true, "warnings": warnings })
                )?;
            } else {
                for w in &decoded.warnings {
                    writeln!(
                        out,
                        "{}: {} {}",
                        style.bold(&item.position(w.location)),
                        style.warning("warning:"),
                        w.message()
                    )?;
                }
            }
        }
        Err(e) => {
            counts.invalid += 1;
            if options.json {
                let (line, column) = loc(e.location());
                writeln!(
                    out,
                    "{}",
                    json!({ "file": item.file, "line": line, "column": column, "valid": false,
                            "error": { "path": e.path(), "message": e.message(), "line": line, "column": column } })
                )?;
            } else {
                writeln!(
                    out,
                    "{}: {} {}",
                    style.bold(&item.position(e.location())),
                    style.error("error:"),
                    e.message()
                )?;
            }
        }
    }
    Ok(())
}

/// `inspect`'s options.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// NDJSON instead of text.
    pub json: bool,
    /// Group by resource, in order, with times.
    pub timeline: bool,
    /// Classify each payload alone instead of with what came before it.
    pub no_history: bool,
    /// Only these webhook types.
    pub types: Vec<String>,
    /// Only events with a kind matching one of these patterns.
    pub kinds: Vec<KindPattern>,
    /// Only these resource ids.
    pub ids: Vec<u64>,
}

struct Meaning {
    kinds: Vec<EventKind>,
    origin: Option<streamhook_types::Origin>,
    resource: streamhook_types::Resource,
    summary: String,
    type_name: String,
    status: Option<String>,
    renditions: Option<(usize, usize)>,
}

fn meaning(
    decoded: &Decoded,
    item: &Item<'_>,
    history: &mut HashMap<String, ResourceState>,
    no_history: bool,
) -> Meaning {
    let webhook = &decoded.webhook;
    let resource = resource_of(&webhook.payload);
    let key = resource.id.map(|id| format!("{}:{id}", resource.kind));
    let prior = if no_history {
        None
    } else {
        key.as_ref().and_then(|k| history.get(k))
    };
    let (classification, state) = classify_with(webhook, prior);
    if let (Some(k), Some(s)) = (key, state) {
        history.insert(k, s);
    }
    // An archived envelope says what the server decided, with its own history.
    let kinds = item
        .envelope
        .map_or(classification.kinds, |e| e.kinds.clone());
    let (status, renditions) = match &webhook.payload {
        Payload::Video(v) => (
            v.status.as_ref().map(|s| s.to_string()),
            v.converted_videos.as_ref().map(|_| v.rendition_progress()),
        ),
        Payload::VideoDelete(v) => (v.status.as_ref().map(|s| s.to_string()), None),
        Payload::Broadcast(b) => (b.status.as_ref().map(|s| s.to_string()), None),
        _ => (None, None),
    };
    Meaning {
        kinds,
        origin: classification.origin,
        resource: classification.resource,
        summary: streamhook_types::summary::summary(webhook),
        type_name: webhook.payload.type_name().to_owned(),
        status,
        renditions,
    }
}

impl InspectOptions {
    fn keeps(&self, m: &Meaning) -> bool {
        (self.types.is_empty() || self.types.contains(&m.type_name))
            && (self.kinds.is_empty()
                || m.kinds
                    .iter()
                    .any(|k| self.kinds.iter().any(|p| p.matches(k.as_str()))))
            && (self.ids.is_empty() || m.resource.id.is_some_and(|id| self.ids.contains(&id)))
    }
}

/// Lists an archived `invalid` event: kept by the server with its problems, not a failure of
/// the archive.
fn archived_invalid(
    out: &mut dyn Write,
    style: Style,
    options: &InspectOptions,
    item: &Item<'_>,
    e: &input::ArchivedEnvelope,
) -> std::io::Result<()> {
    let resource = e.resource.clone().unwrap_or(streamhook_types::Resource {
        kind: "invalid".into(),
        id: None,
    });
    let wanted_kind = options.kinds.is_empty()
        || options
            .kinds
            .iter()
            .any(|p| p.matches(EventKind::Invalid.as_str()));
    let wanted_id =
        options.ids.is_empty() || resource.id.is_some_and(|id| options.ids.contains(&id));
    let wanted_type = options.types.is_empty() || options.types.contains(&resource.kind);
    if !(wanted_kind && wanted_id && wanted_type) {
        return Ok(());
    }
    let problem = e
        .problems
        .first()
        .map_or_else(|| "does not fit the model".to_owned(), ToString::to_string);
    if options.json {
        let v = json!({
            "file": item.file, "line": item.at.line, "kinds": ["invalid"], "resource": resource,
            "problems": e.problems, "id": e.id, "seq": e.seq, "received_at": e.received_at,
        });
        return writeln!(out, "{v}");
    }
    writeln!(
        out,
        "{}  {}  {}  {resource}  {}",
        style.dim(&item.position(None)),
        e.received_at,
        style.error("invalid"),
        style.error(&format!("does not fit the model: {problem}"))
    )
}

/// Says what each payload in `paths` means; returns the exit code.
pub fn inspect(
    paths: &[String],
    options: &InspectOptions,
    out: &mut dyn Write,
    style: Style,
) -> std::io::Result<u8> {
    let files = match input::expand(paths) {
        Ok(f) => f,
        Err(e) => {
            input_error(out, style, options.json, &e)?;
            return Ok(TROUBLE);
        }
    };
    let mut history = HashMap::new();
    let mut timeline: Vec<(String, Vec<String>)> = Vec::new();
    let mut code = OK;
    let mut io_result = Ok(());
    for file in &files {
        input::read(file, &mut |found| {
            if io_result.is_err() {
                return;
            }
            io_result = (|| {
                let item = match found {
                    Found::Item(item) => item,
                    Found::Error(e) => {
                        code = code.max(if e.io { TROUBLE } else { INVALID });
                        return input_error(out, style, options.json, &e);
                    }
                };
                let decoded = match decode::decode(item.bytes) {
                    Ok(d) => d,
                    // An archived event the server kept as `invalid`: listed as such.
                    Err(_)
                        if item
                            .envelope
                            .is_some_and(|e| e.kinds.contains(&EventKind::Invalid)) =>
                    {
                        let Some(e) = item.envelope else {
                            return Ok(());
                        };
                        return archived_invalid(out, style, options, &item, e);
                    }
                    Err(e) => {
                        code = code.max(INVALID);
                        return writeln!(
                            out,
                            "{}: {} {}",
                            style.bold(&item.position(e.location())),
                            style.error("error:"),
                            e.message()
                        );
                    }
                };
                let m = meaning(&decoded, &item, &mut history, options.no_history);
                if !options.keeps(&m) {
                    return Ok(());
                }
                let kinds: Vec<&str> = m.kinds.iter().map(|k| k.as_str()).collect();
                let when = item.envelope.map(|e| e.received_at.clone());
                if options.json {
                    let mut v = json!({
                        "file": item.file, "line": item.at.line, "type": m.type_name, "kinds": kinds,
                        "resource": m.resource, "summary": m.summary,
                    });
                    if let Some(o) = m.origin {
                        v["origin"] = json!(o);
                    }
                    if let Some(s) = &m.status {
                        v["status"] = json!(s);
                    }
                    if let Some((done, total)) = m.renditions {
                        v["renditions"] = json!({ "done": done, "total": total });
                    }
                    if let Some(e) = item.envelope {
                        v["id"] = json!(e.id);
                        v["seq"] = json!(e.seq);
                        v["received_at"] = json!(e.received_at);
                    }
                    return writeln!(out, "{v}");
                }
                let origin = m
                    .origin
                    .map(|o| style.dim(&format!("  ({o})")))
                    .unwrap_or_default();
                if options.timeline {
                    let key = m.resource.to_string();
                    let label = when.unwrap_or_else(|| item.position(None));
                    let entry = format!(
                        "  {}  {}  {}{origin}",
                        style.dim(&label),
                        style.bold(&kinds.join(",")),
                        m.summary
                    );
                    match timeline.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, lines)) => lines.push(entry),
                        None => timeline.push((key, vec![entry])),
                    }
                    return Ok(());
                }
                let label = when.map(|w| format!("  {w}")).unwrap_or_default();
                writeln!(
                    out,
                    "{}{label}  {}  {}{origin}",
                    style.dim(&item.position(None)),
                    style.bold(&kinds.join(",")),
                    m.summary
                )
            })();
        });
        io_result
            .as_ref()
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
    }
    for (resource, lines) in timeline {
        writeln!(out, "{}", style.bold(&resource))?;
        for line in lines {
            writeln!(out, "{line}")?;
        }
    }
    Ok(code)
}
