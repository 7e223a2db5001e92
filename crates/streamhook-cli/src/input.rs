//! Reading payloads from files, folders and stdin.
//!
//! A file holds one payload, a JSON array of payloads, or NDJSON (one per line, the file
//! sink's archive of envelopes included). `.jsonl` and `.ndjson` files are read as NDJSON, line
//! by line in constant memory; other files are sniffed: a first line that is a whole JSON value
//! followed by more lines means NDJSON. Folders are walked for `*.json`, `*.jsonl`, `*.ndjson`.
//! Every payload comes with where it is (file, line, column), so messages point at it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;
use streamhook_types::decode::Location;

/// One payload found in the input.
#[derive(Debug)]
pub struct Item<'a> {
    /// The file's name as given (`-` for stdin).
    pub file: &'a str,
    /// Where the payload's JSON starts.
    pub at: Location,
    /// The payload's bytes, exactly as in the input.
    pub bytes: &'a [u8],
    /// For archive lines: the envelope around the payload.
    pub envelope: Option<&'a ArchivedEnvelope>,
}

impl Item<'_> {
    /// Maps a location inside the payload to one in the file.
    pub fn absolute(&self, inner: Location) -> Location {
        if inner.line <= 1 {
            Location {
                line: self.at.line,
                column: self.at.column + inner.column.saturating_sub(1),
            }
        } else {
            Location {
                line: self.at.line + inner.line - 1,
                column: inner.column,
            }
        }
    }

    /// `file:line:column`.
    pub fn position(&self, inner: Option<Location>) -> String {
        let loc = inner.map_or(self.at, |l| self.absolute(l));
        format!("{}:{}:{}", self.file, loc.line, loc.column)
    }
}

/// What the file sink writes around a payload.
#[derive(Debug, Deserialize)]
pub struct ArchivedEnvelope {
    /// The event id.
    pub id: String,
    /// Journal position.
    pub seq: u64,
    /// When it was received.
    pub received_at: String,
    /// The kinds the server worked out (with history).
    pub kinds: Vec<streamhook_types::EventKind>,
    /// What the event is about, as the server read it.
    #[serde(default)]
    pub resource: Option<streamhook_types::Resource>,
    /// For `invalid` events: what does not fit the model.
    #[serde(default)]
    pub problems: Vec<streamhook_types::Problem>,
}

#[derive(Deserialize)]
struct EnvelopeLine<'a> {
    #[serde(flatten)]
    envelope: ArchivedEnvelope,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// A problem with an input as a whole (the payloads in it are not reached).
#[derive(Debug)]
pub struct InputError {
    /// The file.
    pub file: String,
    /// Where, when known.
    pub at: Option<Location>,
    /// What.
    pub message: String,
    /// An I/O error (exit 2) rather than bad content (exit 1).
    pub io: bool,
}

/// What the caller does with each thing found.
pub enum Found<'a> {
    /// A payload.
    Item(Item<'a>),
    /// A whole input (or NDJSON line) that could not be read as payloads.
    Error(InputError),
}

/// Expands folders into their JSON files (sorted), keeping `-` and files as given.
pub fn expand(paths: &[String]) -> Result<Vec<String>, InputError> {
    let mut out = Vec::new();
    for p in paths {
        let path = Path::new(p);
        if p != "-" && path.is_dir() {
            let mut found = Vec::new();
            walk(path, &mut found).map_err(|e| InputError {
                file: p.clone(),
                at: None,
                message: e.to_string(),
                io: true,
            })?;
            found.sort();
            out.extend(found.into_iter().map(|f| f.to_string_lossy().into_owned()));
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("json" | "jsonl" | "ndjson")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_ndjson_name(name: &str) -> bool {
    name.ends_with(".jsonl") || name.ends_with(".ndjson")
}

/// Reads every payload of `file`, calling `visit` for each (and for each problem).
pub fn read(file: &str, visit: &mut dyn FnMut(Found<'_>)) {
    let io_error = |e: std::io::Error| InputError {
        file: file.to_owned(),
        at: None,
        message: format!("cannot read: {e}"),
        io: true,
    };
    let reader: Box<dyn Read> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match File::open(file) {
            Ok(f) => Box::new(f),
            Err(e) => return visit(Found::Error(io_error(e))),
        }
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    if is_ndjson_name(file) {
        return ndjson(file, &mut reader, Vec::new(), 1, visit);
    }
    // Sniff: read the first line; if it is a whole JSON value and more follows, it is NDJSON.
    let mut first = Vec::new();
    if let Err(e) = reader.read_until(b'\n', &mut first) {
        return visit(Found::Error(io_error(e)));
    }
    let first_is_value = serde_json::from_slice::<&RawValue>(trim(&first)).is_ok();
    if first_is_value {
        let mut rest_peek = Vec::new();
        if let Err(e) = reader.read_until(b'\n', &mut rest_peek) {
            return visit(Found::Error(io_error(e)));
        }
        if !trim(&rest_peek).is_empty() || reader.fill_buf().is_ok_and(|b| !b.is_empty()) {
            // NDJSON: hand over the two lines read and go on streaming.
            visit_line(file, 1, &first, visit);
            return ndjson(file, &mut reader, rest_peek, 2, visit);
        }
        first.extend_from_slice(&rest_peek);
    }
    let mut all = first;
    if let Err(e) = reader.read_to_end(&mut all) {
        return visit(Found::Error(io_error(e)));
    }
    document(file, &all, visit);
}

fn ndjson(
    file: &str,
    reader: &mut dyn BufRead,
    pending: Vec<u8>,
    first_line: usize,
    visit: &mut dyn FnMut(Found<'_>),
) {
    let mut line_no = first_line;
    let mut buf = pending;
    loop {
        if buf.is_empty() {
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    return visit(Found::Error(InputError {
                        file: file.to_owned(),
                        at: None,
                        message: format!("cannot read: {e}"),
                        io: true,
                    }));
                }
            }
        }
        visit_line(file, line_no, &buf, visit);
        buf.clear();
        line_no += 1;
    }
}

/// One NDJSON line: a payload, or an archived envelope around one.
fn visit_line(file: &str, line_no: usize, line: &[u8], visit: &mut dyn FnMut(Found<'_>)) {
    let text = trim_end(line);
    let start = text.iter().take_while(|b| b.is_ascii_whitespace()).count();
    let json = &text[start..];
    if json.is_empty() {
        return;
    }
    let at = Location {
        line: line_no,
        column: start + 1,
    };
    if json.starts_with(br#"{"id""#)
        && let Ok(env) = serde_json::from_slice::<EnvelopeLine<'_>>(json)
    {
        let payload = env.payload.get().as_bytes();
        let offset = payload.as_ptr() as usize - json.as_ptr() as usize;
        let at = Location {
            line: line_no,
            column: start + offset + 1,
        };
        return visit(Found::Item(Item {
            file,
            at,
            bytes: payload,
            envelope: Some(&env.envelope),
        }));
    }
    visit(Found::Item(Item {
        file,
        at,
        bytes: json,
        envelope: None,
    }));
}

/// A whole document: one payload, or an array of them.
fn document(file: &str, all: &[u8], visit: &mut dyn FnMut(Found<'_>)) {
    let body = trim(all);
    if body.first() == Some(&b'[') {
        match serde_json::from_slice::<Vec<&RawValue>>(body) {
            Ok(items) => {
                for raw in items {
                    let bytes = raw.get().as_bytes();
                    let offset = bytes.as_ptr() as usize - all.as_ptr() as usize;
                    let at = streamhook_types::decode::locate_offset(all, offset);
                    visit(Found::Item(Item {
                        file,
                        at,
                        bytes,
                        envelope: None,
                    }));
                }
                return;
            }
            Err(_) => {
                // Not an array of values after all: let the decoder explain.
            }
        }
    }
    // One payload: the whole input, outer whitespace included (`send` posts it as it is).
    visit(Found::Item(Item {
        file,
        at: Location { line: 1, column: 1 },
        bytes: all,
        envelope: None,
    }));
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    trim_end(&b[start..])
}

fn trim_end(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |p| p + 1);
    &b[..end]
}
