//! The stdout sink: one line per event.
//!
//! `format = "pretty"` (the default) prints a line a person reads at a glance,
//!
//! ```text
//! 2026-11-28T09:15:02.123Z  video.viewable  video 784280 "SampleVideo" viewable 1/4 renditions 2m50s  (upload)
//! ```
//!
//! coloured when stdout is a terminal (and `NO_COLOR` is unset). `format = "json"` prints one
//! envelope per line (NDJSON) for pipes and log collectors.

use std::fmt;
use std::io::IsTerminal;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use streamhook_core::{Delivery, Sink, SinkError};
use streamhook_types::{Envelope, EventKind};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

/// `type = "stdout"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// The sink's name (default `stdout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `pretty` (default) or `json`.
    #[serde(default)]
    pub format: Format,
    /// `auto` (default: when stdout is a terminal and `NO_COLOR` is unset), `always`, `never`.
    #[serde(default)]
    pub color: ColorChoice,
    /// Where the sink starts the first time it runs: `newest` (default: what arrives next),
    /// `oldest` (everything the journal holds), or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::StartAt>,
}

/// How events are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One readable line per event.
    #[default]
    Pretty,
    /// One envelope per line (NDJSON).
    Json,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Pretty => "pretty",
            Format::Json => "json",
        })
    }
}

/// When to colour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColorChoice {
    /// When stdout is a terminal and `NO_COLOR` is unset.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether to colour output going to stdout.
    pub fn for_stdout(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

/// Prints events to standard output (or any writer, for tests and embedding).
pub struct StdoutSink {
    name: String,
    format: Format,
    color: bool,
    out: Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
}

impl fmt::Debug for StdoutSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StdoutSink")
            .field("name", &self.name)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl StdoutSink {
    /// A sink printing to the process's stdout.
    pub fn new(name: String, config: &StdoutConfig) -> Self {
        let color = config.color.for_stdout();
        Self::with_writer(name, config.format, color, Box::new(tokio::io::stdout()))
    }

    /// A sink printing to `out`.
    pub fn with_writer(
        name: String,
        format: Format,
        color: bool,
        out: Box<dyn AsyncWrite + Send + Unpin>,
    ) -> Self {
        StdoutSink {
            name,
            format,
            color,
            out: Mutex::new(out),
        }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let mut line = match self.format {
            Format::Json => delivery.json.clone(),
            Format::Pretty => pretty_line(&delivery.envelope, self.color),
        };
        line.push('\n');
        let mut out = self.out.lock().await;
        out.write_all(line.as_bytes())
            .await
            .map_err(|e| SinkError::retryable(format!("cannot write to stdout: {e}")))?;
        out.flush()
            .await
            .map_err(|e| SinkError::retryable(format!("cannot flush stdout: {e}")))
    }
}

const DIM: &str = "\x1b[2m";
const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const CYAN: &str = "\x1b[36m";
const YELLOW: &str = "\x1b[33m";
const MAGENTA: &str = "\x1b[35m";
const RESET: &str = "\x1b[0m";

fn kind_color(kind: EventKind) -> &'static str {
    let name = kind.as_str();
    if kind == EventKind::Unknown {
        YELLOW
    } else if kind == EventKind::Invalid
        || name.ends_with("stopped")
        || name == "video.failed"
        || name == "video.deleted"
        || name == "broadcast.finished"
    {
        RED
    } else if name.starts_with("video.") {
        CYAN
    } else if name.starts_with("restream.") || name.starts_with("broadcast.") {
        MAGENTA
    } else {
        GREEN
    }
}

/// The `pretty` line for an envelope: time, kinds, summary, origin; for an `invalid` event,
/// its first problem, in red.
pub fn pretty_line(envelope: &Envelope, color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("{code}{text}{RESET}")
        } else {
            text.to_owned()
        }
    };
    let kinds: Vec<String> = envelope
        .kinds
        .iter()
        .map(|k| paint(kind_color(*k), k.as_str()))
        .collect();
    let summary = match streamhook_types::decode::decode(envelope.payload.get().as_bytes()) {
        Ok(decoded) => streamhook_types::summary::summary(&decoded.webhook),
        Err(_) => envelope.resource.to_string(),
    };
    let mut line = format!(
        "{}  {}  {summary}",
        paint(DIM, &envelope.received_at),
        kinds.join(",")
    );
    if let Some(origin) = envelope.origin {
        line.push_str(&paint(DIM, &format!("  ({origin})")));
    }
    if let Some(problem) = envelope.problems.first() {
        line.push_str("  ");
        line.push_str(&paint(RED, &format!("does not fit the model: {problem}")));
        if envelope.problems.len() > 1 {
            line.push_str(&format!(" (+{} more)", envelope.problems.len() - 1));
        }
    }
    line
}
