//! Lenient decoding of webhook bytes into the typed model, with errors and warnings that name
//! the JSON path, line and column of what was wrong.
//!
//! The decoder accepts what a tolerant receiver should: unknown fields, unknown statuses and
//! types, `null` for any optional field, and values of a wrong but losslessly coercible type
//! (`"12345"` for an id, `1` for `true`, `19580.0` for a duration). Everything it tolerated is
//! reported as a [`Warning`], so `streamhook validate --strict` can show it; nothing is rejected
//! for it. What cannot be read is a [`DecodeError`]: [`DecodeError::Syntax`] when the bytes are
//! not JSON, [`DecodeError::Shape`] when the JSON is not a webhook.

use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::model::{
    Broadcast, BroadcastStatus, ClientUserId, DeletedVideo, Extra, KNOWN_TYPES, Payload, Rendition,
    RenditionStatus, Restream, Stream, StreamSourceType, UnknownPayload, Video, VideoStatus,
    Webhook,
};

/// A webhook and what the lenient decoder tolerated to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The typed webhook.
    pub webhook: Webhook,
    /// What a strict reader would object to, in document order.
    pub warnings: Vec<Warning>,
}

/// Decodes one webhook from its raw bytes.
///
/// Errors and warnings carry the line and column of the value they are about.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let value = parse_json(bytes)?;
    match decode_value(&value) {
        Ok(mut decoded) => {
            for w in &mut decoded.warnings {
                w.location = locate(bytes, &w.path.0);
            }
            decoded
                .warnings
                .sort_by_key(|w| w.location.map(|l| (l.line, l.column)));
            Ok(decoded)
        }
        Err(DecodeError::Shape(mut shape)) => {
            shape.location = locate(bytes, &shape.path.0);
            Err(DecodeError::Shape(shape))
        }
        Err(e) => Err(e),
    }
}

/// Parses bytes as JSON, with a clear message for the mistakes people make by hand.
pub fn parse_json(bytes: &[u8]) -> Result<Value, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| syntax_error(bytes, &e))
}

fn syntax_error(bytes: &[u8], e: &serde_json::Error) -> DecodeError {
    let (line, column) = (e.line(), e.column());
    let mut message = e.to_string();
    // serde_json appends " at line L column C"; we report the position separately.
    if let Some(cut) = message.rfind(" at line ") {
        message.truncate(cut);
    }
    let (mut line, mut column) = (line, column);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        message = "empty input: expected a JSON object".to_owned();
        (line, column) = (1, 1);
    } else if message.contains("hex escape") || message.contains("surrogate") {
        message = format!(
            "{message}: a \\u escape of half a surrogate pair; JSON text must be valid Unicode"
        );
    } else if let Some(what) = message.strip_prefix("EOF while parsing ") {
        message = format!("the input ends in the middle of {what}; is it truncated?");
    } else if message == "expected ident" || message == "expected value" {
        message = "expected a JSON value (an object, array, string, number, true, false or null)"
            .to_owned();
    } else if std::str::from_utf8(bytes).is_err() && message.contains("invalid unicode") {
        message = "the input is not valid UTF-8".to_owned();
    } else if let Some(offset) = offset_of(bytes, line, column) {
        // A column points at (or just after) the offending character.
        let around = &bytes[offset.saturating_sub(2)..bytes.len().min(offset + 2)];
        if around.windows(2).any(|w| w == [0xC2, 0xA0]) {
            message = "found a non-breaking space (U+00A0), which JSON does not allow as \
                       whitespace; was this copied from a web page?"
                .to_owned();
        }
    }
    DecodeError::Syntax(SyntaxError {
        message,
        line,
        column,
    })
}

/// The byte offset of a 1-based line and column (serde_json counts columns in bytes).
fn offset_of(bytes: &[u8], line: usize, column: usize) -> Option<usize> {
    let mut start = 0;
    for _ in 1..line {
        start += bytes[start..].iter().position(|&b| b == b'\n')? + 1;
    }
    Some((start + column.saturating_sub(1)).min(bytes.len()))
}

/// Decodes one webhook from a parsed JSON value. Errors and warnings carry no location.
pub fn decode_value(value: &Value) -> Result<Decoded, DecodeError> {
    let mut cx = Cx::default();
    let webhook = decode_webhook(&mut cx, value)?;
    Ok(Decoded {
        webhook,
        warnings: cx.warnings,
    })
}

/// A JSON path such as `$.message.video.converted_videos[2].status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonPath(pub Vec<Segment>);

/// One step of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// An object member.
    Key(String),
    /// An array element.
    Index(usize),
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for seg in &self.0 {
            match seg {
                Segment::Key(k)
                    if !k.is_empty()
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    write!(f, ".{k}")?
                }
                Segment::Key(k) => write!(f, "[{}]", Value::String(k.clone()))?,
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// A 1-based line and column in the decoded text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

/// Why bytes could not be decoded as a webhook.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not JSON.
    Syntax(SyntaxError),
    /// The JSON is not a webhook: a member is missing or of the wrong type.
    Shape(ShapeError),
}

impl DecodeError {
    /// Where the problem is, when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            DecodeError::Syntax(s) => Some(Location {
                line: s.line,
                column: s.column,
            }),
            DecodeError::Shape(s) => s.location,
        }
    }

    /// The JSON path of the problem (`$` for syntax errors).
    pub fn path(&self) -> String {
        match self {
            DecodeError::Syntax(_) => "$".to_owned(),
            DecodeError::Shape(s) => s.path.to_string(),
        }
    }

    /// The message without the location.
    pub fn message(&self) -> String {
        match self {
            DecodeError::Syntax(s) => format!("invalid JSON: {}", s.message),
            DecodeError::Shape(s) if s.found == MISSING => {
                format!("{}: missing; expected {}", s.path, s.expected)
            }
            DecodeError::Shape(s) => {
                format!("{}: expected {}, found {}", s.path, s.expected, s.found)
            }
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())?;
        if let Some(loc) = self.location() {
            write!(f, " (line {}, column {})", loc.line, loc.column)?;
        }
        Ok(())
    }
}

impl std::error::Error for DecodeError {}

/// Bytes that are not JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// What the parser met, in plain words.
    pub message: String,
    /// Line of the problem, from 1.
    pub line: usize,
    /// Column of the problem, from 1 (0 when the input ended first).
    pub column: usize,
}

/// JSON that is not a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError {
    /// Where in the document.
    pub path: JsonPath,
    /// What was expected there.
    pub expected: String,
    /// What was found there (`missing` when the member is absent).
    pub found: String,
    /// Line and column of the value (or of the object missing a member), when decoded from text.
    pub location: Option<Location>,
}

/// Something the lenient decoder tolerated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where in the document.
    pub path: JsonPath,
    /// What was tolerated.
    pub kind: WarningKind,
    /// Line and column, when decoded from text.
    pub location: Option<Location>,
}

/// The kinds of [`Warning`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WarningKind {
    /// A member the model does not know; kept in `extra`.
    UnknownField,
    /// A status (or other enumerated string) the model does not know; kept as sent.
    UnknownValue {
        /// The string as sent.
        value: String,
        /// The values the model knows.
        known: &'static [&'static str],
    },
    /// A webhook `type` the model does not know; the document is kept whole.
    UnknownType {
        /// The `type` as sent.
        name: String,
    },
    /// A value of the wrong type that was read losslessly as the right one.
    Coerced {
        /// What was found.
        found: String,
        /// What it was read as.
        read_as: String,
    },
    /// `null` for a member that is not documented as nullable; read as absent.
    Null {
        /// What was expected.
        expected: &'static str,
    },
}

impl Warning {
    /// What was tolerated, without the location: `$.message.video.poster_url: unknown field, kept as sent`.
    pub fn message(&self) -> String {
        let mut s = String::new();
        let _ = self.write_message(&mut s);
        s
    }

    fn write_message(&self, f: &mut dyn fmt::Write) -> fmt::Result {
        write!(f, "{}: ", self.path)?;
        match &self.kind {
            WarningKind::UnknownField => f.write_str("unknown field, kept as sent")?,
            WarningKind::UnknownValue { value, known } => write!(
                f,
                "unknown value {} (known: {}), kept as sent",
                Value::String(value.clone()),
                known.join(", ")
            )?,
            WarningKind::UnknownType { name } => write!(
                f,
                "unknown webhook type {} (known: {}), kept whole and classified as unknown",
                Value::String(name.clone()),
                KNOWN_TYPES
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            )?,
            WarningKind::Coerced { found, read_as } => write!(f, "{found} read as {read_as}")?,
            WarningKind::Null { expected } => {
                write!(f, "null where {expected} was expected, read as absent")?
            }
        }
        Ok(())
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_message(f)?;
        if let Some(loc) = self.location {
            write!(f, " (line {}, column {})", loc.line, loc.column)?;
        }
        Ok(())
    }
}

/// Describes a JSON value for messages: `the string "yes"`, `an array`, ...
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => {
            let shown: String = s.chars().take(40).collect();
            let ellipsis = if shown.len() < s.len() { "..." } else { "" };
            format!("the string {}{ellipsis}", Value::String(shown))
        }
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// What [`ShapeError::found`] says of an absent member.
const MISSING: &str = "missing";

/// The decoder's state: where it is, and what it tolerated so far.
#[derive(Default)]
struct Cx {
    path: Vec<Segment>,
    warnings: Vec<Warning>,
}

type Result<T, E = DecodeError> = std::result::Result<T, E>;

impl Cx {
    fn at(&self, key: Option<&str>) -> JsonPath {
        let mut path = self.path.clone();
        if let Some(k) = key {
            path.push(Segment::Key(k.to_owned()));
        }
        JsonPath(path)
    }

    fn error(&self, key: Option<&str>, expected: &str, found: Option<&Value>) -> DecodeError {
        DecodeError::Shape(ShapeError {
            path: self.at(key),
            expected: expected.to_owned(),
            found: found.map_or_else(|| MISSING.to_owned(), describe),
            location: None,
        })
    }

    fn warn(&mut self, key: Option<&str>, kind: WarningKind) {
        let path = self.at(key);
        self.warnings.push(Warning {
            path,
            kind,
            location: None,
        });
    }

    fn object<'v>(&self, value: &'v Value, expected: &str) -> Result<&'v Map<String, Value>> {
        value
            .as_object()
            .ok_or_else(|| self.error(None, expected, Some(value)))
    }

    /// Runs `f` with `seg` pushed onto the path.
    fn within<T>(&mut self, seg: Segment, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.path.push(seg);
        let out = f(self);
        self.path.pop();
        out
    }
}

/// Reads the members of one object, remembering which were typed so the rest go to `extra`.
struct Fields<'v> {
    map: &'v Map<String, Value>,
    typed: Vec<&'static str>,
    nulls: Vec<&'static str>,
}

impl<'v> Fields<'v> {
    fn new(map: &'v Map<String, Value>) -> Self {
        Fields {
            map,
            typed: Vec::new(),
            nulls: Vec::new(),
        }
    }

    /// The member's value, `None` when absent or null (null is kept for `extra`).
    fn get(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        nullable: bool,
        expected: &'static str,
    ) -> Option<&'v Value> {
        self.typed.push(key);
        match self.map.get(key) {
            None => None,
            Some(Value::Null) => {
                self.nulls.push(key);
                if !nullable {
                    cx.warn(Some(key), WarningKind::Null { expected });
                }
                None
            }
            Some(v) => Some(v),
        }
    }

    fn id(&mut self, cx: &mut Cx, key: &'static str) -> Result<u64> {
        self.typed.push(key);
        match self.map.get(key) {
            Some(v) => read_u64(cx, key, v, "a non-negative integer id"),
            None => Err(cx.error(Some(key), "a non-negative integer id", None)),
        }
    }

    fn u64(&mut self, cx: &mut Cx, key: &'static str, nullable: bool) -> Result<Option<u64>> {
        const WHAT: &str = "a non-negative integer";
        self.get(cx, key, nullable, WHAT)
            .map(|v| read_u64(cx, key, v, WHAT))
            .transpose()
    }

    fn bool(&mut self, cx: &mut Cx, key: &'static str) -> Result<Option<bool>> {
        let Some(v) = self.get(cx, key, false, "a boolean") else {
            return Ok(None);
        };
        let read = match v {
            Value::Bool(b) => return Ok(Some(*b)),
            Value::Number(n) if n.as_u64() == Some(0) => false,
            Value::Number(n) if n.as_u64() == Some(1) => true,
            Value::String(s) if s == "true" => true,
            Value::String(s) if s == "false" => false,
            _ => return Err(cx.error(Some(key), "a boolean", Some(v))),
        };
        cx.warn(
            Some(key),
            WarningKind::Coerced {
                found: describe(v),
                read_as: format!("the boolean {read}"),
            },
        );
        Ok(Some(read))
    }

    fn string(&mut self, cx: &mut Cx, key: &'static str, nullable: bool) -> Result<Option<String>> {
        let Some(v) = self.get(cx, key, nullable, "a string") else {
            return Ok(None);
        };
        match v {
            Value::String(s) => Ok(Some(s.clone())),
            Value::Number(n) => {
                let read = n.to_string();
                cx.warn(
                    Some(key),
                    WarningKind::Coerced {
                        found: describe(v),
                        read_as: format!("the string {}", Value::String(read.clone())),
                    },
                );
                Ok(Some(read))
            }
            _ => Err(cx.error(Some(key), "a string", Some(v))),
        }
    }

    fn status<T>(&mut self, cx: &mut Cx, key: &'static str) -> Result<Option<T>>
    where
        T: for<'a> From<&'a str> + Known,
    {
        let Some(v) = self.get(cx, key, false, "a string") else {
            return Ok(None);
        };
        let Value::String(s) = v else {
            return Err(cx.error(Some(key), "a string", Some(v)));
        };
        let status = T::from(s.as_str());
        if !status.is_known_value() {
            cx.warn(
                Some(key),
                WarningKind::UnknownValue {
                    value: s.clone(),
                    known: T::known_values(),
                },
            );
        }
        Ok(Some(status))
    }

    /// Collects the members that were not typed (and typed members sent as null) into `extra`.
    fn rest(self, cx: &mut Cx) -> Extra {
        let mut extra = Extra::new();
        for (k, v) in self.map {
            if self.nulls.contains(&k.as_str()) {
                extra.insert(k.clone(), v.clone());
            } else if !self.typed.contains(&k.as_str()) {
                cx.warn(Some(k), WarningKind::UnknownField);
                extra.insert(k.clone(), v.clone());
            }
        }
        extra
    }
}

/// The open enums' view of themselves, for the decoder's warnings.
trait Known {
    fn is_known_value(&self) -> bool;
    fn known_values() -> &'static [&'static str];
}

macro_rules! impl_known {
    ($($t:ty),*) => {$(
        impl Known for $t {
            fn is_known_value(&self) -> bool { self.is_known() }
            fn known_values() -> &'static [&'static str] { <$t>::KNOWN }
        }
    )*};
}
impl_known!(
    VideoStatus,
    RenditionStatus,
    BroadcastStatus,
    StreamSourceType
);

/// The largest integer an `f64` holds exactly.
const MAX_EXACT_F64: f64 = 9_007_199_254_740_992.0;

fn read_u64(cx: &mut Cx, key: &str, v: &Value, expected: &str) -> Result<u64> {
    let read = match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                return Ok(u);
            }
            match n.as_f64() {
                Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= MAX_EXACT_F64 => f as u64,
                _ => return Err(cx.error(Some(key), expected, Some(v))),
            }
        }
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            match s.parse::<u64>() {
                Ok(u) => u,
                Err(_) => return Err(cx.error(Some(key), expected, Some(v))),
            }
        }
        _ => return Err(cx.error(Some(key), expected, Some(v))),
    };
    cx.warn(
        Some(key),
        WarningKind::Coerced {
            found: describe(v),
            read_as: format!("the integer {read}"),
        },
    );
    Ok(read)
}

fn decode_webhook(cx: &mut Cx, value: &Value) -> Result<Webhook> {
    let top = cx.object(value, "a JSON object with `type` and `message`")?;
    let type_name = match top.get("type") {
        Some(Value::String(s)) => s.as_str(),
        found => {
            return Err(cx.error(
                Some("type"),
                "a string naming the webhook type (stream, video, video_delete, restream, broadcast, ...)",
                found,
            ));
        }
    };
    let mut extra = Extra::new();
    for (k, v) in top {
        if k != "type" && k != "message" {
            cx.warn(Some(k), WarningKind::UnknownField);
            extra.insert(k.clone(), v.clone());
        }
    }

    let Some(&(_, key)) = KNOWN_TYPES.iter().find(|(t, _)| *t == type_name) else {
        cx.warn(
            Some("type"),
            WarningKind::UnknownType {
                name: type_name.to_owned(),
            },
        );
        return Ok(Webhook {
            payload: Payload::Unknown(UnknownPayload {
                type_name: type_name.to_owned(),
                message: top.get("message").cloned(),
            }),
            extra,
            message_extra: Extra::new(),
        });
    };

    let expected_message = format!("an object with a `{key}` member");
    let message = match top.get("message") {
        Some(m) => m,
        None => return Err(cx.error(Some("message"), &expected_message, None)),
    };
    cx.within(Segment::Key("message".into()), |cx| {
        let message = cx.object(message, &expected_message)?;
        let Some(inner) = message.get(key) else {
            let mut expected = format!("a {type_name} object");
            if !message.is_empty() {
                let present: Vec<String> = message.keys().map(|k| format!("`{k}`")).collect();
                expected += &format!(" (`message` has only {})", present.join(", "));
            }
            return Err(cx.error(Some(key), &expected, None));
        };
        let mut message_extra = Extra::new();
        for (k, v) in message {
            if k != key {
                cx.warn(Some(k), WarningKind::UnknownField);
                message_extra.insert(k.clone(), v.clone());
            }
        }
        let payload = cx.within(Segment::Key(key.into()), |cx| match type_name {
            "stream" => decode_stream(cx, inner).map(Payload::Stream),
            "video" => decode_video(cx, inner).map(Payload::Video),
            "video_delete" => decode_deleted_video(cx, inner).map(Payload::VideoDelete),
            "restream" => decode_restream(cx, inner).map(Payload::Restream),
            _ => decode_broadcast(cx, inner).map(Payload::Broadcast),
        })?;
        Ok(Webhook {
            payload,
            extra,
            message_extra,
        })
    })
}

fn decode_stream(cx: &mut Cx, v: &Value) -> Result<Stream> {
    let mut f = Fields::new(cx.object(v, "a stream object")?);
    Ok(Stream {
        id: f.id(cx, "id")?,
        live: f.bool(cx, "live")?,
        backup_live: f.bool(cx, "backup_live")?,
        recording: f.bool(cx, "recording")?,
        transcoding: f.bool(cx, "transcoding")?,
        client_user_id: client_user_id(cx, &mut f)?,
        client_entity_data: f.string(cx, "client_entity_data", true)?,
        pull: f.bool(cx, "pull")?,
        uri: f.string(cx, "uri", false)?,
        stream_source_type: f.status(cx, "stream_source_type")?,
        extra: f.rest(cx),
    })
}

fn client_user_id(cx: &mut Cx, f: &mut Fields<'_>) -> Result<Option<ClientUserId>> {
    const KEY: &str = "client_user_id";
    const WHAT: &str = "an integer or a string";
    let Some(v) = f.get(cx, KEY, true, WHAT) else {
        return Ok(None);
    };
    match v {
        Value::String(s) => Ok(Some(ClientUserId::Text(s.clone()))),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(Some(ClientUserId::Number(i))),
            None => Err(cx.error(Some(KEY), WHAT, Some(v))),
        },
        _ => Err(cx.error(Some(KEY), WHAT, Some(v))),
    }
}

fn decode_video(cx: &mut Cx, v: &Value) -> Result<Video> {
    let mut f = Fields::new(cx.object(v, "a video object")?);
    Ok(Video {
        id: f.id(cx, "id")?,
        slug: f.string(cx, "slug", false)?,
        name: f.string(cx, "name", false)?,
        duration: f.u64(cx, "duration", false)?,
        stream_id: f.u64(cx, "stream_id", true)?,
        status: f.status(cx, "status")?,
        error: f.string(cx, "error", true)?,
        converted_videos: renditions(cx, &mut f)?,
        extra: f.rest(cx),
    })
}

fn renditions(cx: &mut Cx, f: &mut Fields<'_>) -> Result<Option<Vec<Rendition>>> {
    const KEY: &str = "converted_videos";
    let Some(v) = f.get(cx, KEY, false, "an array of renditions") else {
        return Ok(None);
    };
    let Value::Array(items) = v else {
        return Err(cx.error(Some(KEY), "an array of renditions", Some(v)));
    };
    cx.within(Segment::Key(KEY.into()), |cx| {
        items
            .iter()
            .enumerate()
            .map(|(i, item)| cx.within(Segment::Index(i), |cx| decode_rendition(cx, item)))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    })
}

fn decode_rendition(cx: &mut Cx, v: &Value) -> Result<Rendition> {
    let mut f = Fields::new(cx.object(v, "a rendition object ({name, status, mp4_url})")?);
    Ok(Rendition {
        name: f.string(cx, "name", false)?,
        status: f.status(cx, "status")?,
        mp4_url: f.string(cx, "mp4_url", true)?,
        extra: f.rest(cx),
    })
}

fn decode_deleted_video(cx: &mut Cx, v: &Value) -> Result<DeletedVideo> {
    let mut f = Fields::new(cx.object(v, "a video object")?);
    Ok(DeletedVideo {
        id: f.id(cx, "id")?,
        slug: f.string(cx, "slug", false)?,
        name: f.string(cx, "name", false)?,
        status: f.status(cx, "status")?,
        deleted_at: f.string(cx, "deleted_at", false)?,
        stream_id: f.u64(cx, "stream_id", true)?,
        extra: f.rest(cx),
    })
}

fn decode_restream(cx: &mut Cx, v: &Value) -> Result<Restream> {
    let mut f = Fields::new(cx.object(v, "a restream object")?);
    Ok(Restream {
        id: f.id(cx, "id")?,
        name: f.string(cx, "name", false)?,
        stream_id: f.u64(cx, "stream_id", true)?,
        live: f.bool(cx, "live")?,
        active: f.bool(cx, "active")?,
        extra: f.rest(cx),
    })
}

fn decode_broadcast(cx: &mut Cx, v: &Value) -> Result<Broadcast> {
    let mut f = Fields::new(cx.object(v, "a broadcast object")?);
    Ok(Broadcast {
        id: f.id(cx, "id")?,
        status: f.status(cx, "status")?,
        extra: f.rest(cx),
    })
}

/// Finds the line and column of the value at `path` in JSON text, or of its nearest ancestor
/// that exists. The text must be valid JSON (it was parsed already); on anything unexpected
/// the answer is `None`, never a panic.
pub fn locate(text: &[u8], path: &[Segment]) -> Option<Location> {
    let mut scan = Scanner { b: text, i: 0 };
    scan.ws();
    let mut at = scan.i;
    for seg in path {
        scan.i = at;
        match scan.child(seg) {
            Some(child) => at = child,
            None => break,
        }
    }
    Some(line_col(text, at))
}

/// The line and column (1-based, columns in characters) of a byte offset in `text`.
pub fn locate_offset(text: &[u8], offset: usize) -> Location {
    line_col(text, offset)
}

fn line_col(text: &[u8], offset: usize) -> Location {
    let before = &text[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    Location { line, column }
}

/// A minimal scanner over valid JSON text, to find where a path's value starts.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// The offset where the child `seg` of the value at the cursor starts. For duplicate
    /// keys, the last one (as the parser keeps the last).
    fn child(&mut self, seg: &Segment) -> Option<usize> {
        match seg {
            Segment::Key(key) => {
                self.eat(b'{')?;
                let mut found = None;
                self.ws();
                if self.peek()? == b'}' {
                    return None;
                }
                loop {
                    self.ws();
                    let name = self.string()?;
                    self.eat(b':')?;
                    self.ws();
                    if name == *key {
                        found = Some(self.i);
                    }
                    self.skip_value()?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        _ => return found,
                    }
                }
            }
            Segment::Index(n) => {
                self.eat(b'[')?;
                for _ in 0..*n {
                    self.ws();
                    self.skip_value()?;
                    self.eat(b',')?;
                }
                self.ws();
                (self.peek()? != b']').then_some(self.i)
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        let start = self.i;
        self.skip_string()?;
        serde_json::from_slice(&self.b[start..self.i]).ok()
    }

    fn skip_string(&mut self) -> Option<()> {
        (self.peek()? == b'"').then_some(())?;
        self.i += 1;
        loop {
            match self.peek()? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                _ => self.i += 1,
            }
        }
    }

    fn skip_value(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.i += 1;
                }
                Some(())
            }
        }
    }
}

/// The typed model from any serde source (`serde_json::from_str::<Webhook>`): decoded leniently,
/// here beside the decoder it calls, so the model itself stays a leaf.
impl<'de> Deserialize<'de> for Webhook {
    /// Decodes leniently, as [`decode_value`] does; tolerated oddities are
    /// not reported here (use the `decode` module to see them).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        decode_value(&value)
            .map(|decoded| decoded.webhook)
            .map_err(serde::de::Error::custom)
    }
}
