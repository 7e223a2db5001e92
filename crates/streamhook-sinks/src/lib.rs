//! Sinks: where accepted webhooks go.
//!
//! # Brief overview
//!
//! Each sink implements [`streamhook_core::Sink`] and sits behind a cargo feature (all on by
//! default):
//!
//! - [`stdout`]: one line per event, `pretty` for people (coloured on a terminal) or `json`
//!   (NDJSON envelopes) for pipes.
//! - [`file`](mod@file): NDJSON envelopes appended to a (templated) path, with rotation and an fsync
//!   policy; a reader only ever sees whole lines.
//! - [`nats`]: publishes each event to a NATS subject (`gcore.{type}.{id}`), acknowledged by
//!   JetStream or on core NATS.
//! - [`http`]: forwards each event to a URL (Gcore's original body byte for byte, or the
//!   envelope), signed with the Standard Webhooks scheme, with retries driven by the
//!   dispatcher.
//!
//! Sinks are chosen at run time: each is one variant of [`SinkConfig`], read from config
//! (`type = "stdout" | "file" | "http" | "nats"`), and [`SinkConfig::build`] returns it ready to use.
//!
//! # Example
//!
//! ```
//! use streamhook_sinks::SinkConfig;
//!
//! let config: SinkConfig = serde_json::from_str(
//!     r#"{"type": "file", "name": "archive", "path": "events/{date}/{type}.jsonl"}"#,
//! ).unwrap();
//! assert_eq!(config.name(), "archive");
//! let sink = config.build().unwrap();
//! assert_eq!(sink.name(), "archive");
//! ```
//!
//! ```toml
//! [dependencies]
//! streamhook-sinks = { version = "0.1", default-features = false, features = ["http"] }
//! ```

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use streamhook_core::Sink;

#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "stdout")]
pub mod stdout;

/// One sink's configuration; `type` picks the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SinkConfig {
    /// Lines on standard output.
    #[cfg(feature = "stdout")]
    Stdout(stdout::StdoutConfig),
    /// NDJSON files.
    #[cfg(feature = "file")]
    File(file::FileConfig),
    /// HTTP forwarding.
    #[cfg(feature = "http")]
    Http(http::HttpConfig),
    /// NATS publishing.
    #[cfg(feature = "nats")]
    Nats(nats::NatsConfig),
}

/// What a forwarding sink sends as the body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BodyMode {
    /// Gcore's body, byte for byte.
    #[default]
    Original,
    /// The envelope JSON.
    Envelope,
}

impl std::fmt::Display for BodyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BodyMode::Original => "original",
            BodyMode::Envelope => "envelope",
        })
    }
}

/// Where a sink starts the first time it runs (`start = "newest" | "oldest" | <time>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// What arrives next (the default).
    Newest,
    /// Everything the journal holds.
    Oldest,
    /// The first event received at or after this time.
    Time(std::time::SystemTime),
}

impl StartAt {
    /// The journal's form of it.
    pub fn to_core(self) -> streamhook_core::SinkStart {
        match self {
            StartAt::Newest => streamhook_core::SinkStart::Newest,
            StartAt::Oldest => streamhook_core::SinkStart::Oldest,
            StartAt::Time(t) => streamhook_core::SinkStart::Time(t),
        }
    }
}

impl std::fmt::Display for StartAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartAt::Newest => f.write_str("newest"),
            StartAt::Oldest => f.write_str("oldest"),
            StartAt::Time(t) => write!(f, "{}", humantime::format_rfc3339_seconds(*t)),
        }
    }
}

impl std::str::FromStr for StartAt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "newest" => Ok(StartAt::Newest),
            "oldest" => Ok(StartAt::Oldest),
            other => humantime::parse_rfc3339_weak(other)
                .map(StartAt::Time)
                .map_err(|_| {
                    format!(
                        "start {other:?}: use \"newest\", \"oldest\" or an RFC 3339 time like \"2026-12-01T00:00:00Z\""
                    )
                }),
        }
    }
}

impl Serialize for StartAt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StartAt {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A sink that cannot be built from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sink {sink:?}: {message}")]
pub struct BuildError {
    /// The sink's name.
    pub sink: String,
    /// What is wrong.
    pub message: String,
}

impl SinkConfig {
    /// The sink's name: the configured one, or its type.
    pub fn name(&self) -> &str {
        match self {
            #[cfg(feature = "stdout")]
            SinkConfig::Stdout(c) => c.name.as_deref().unwrap_or("stdout"),
            #[cfg(feature = "file")]
            SinkConfig::File(c) => c.name.as_deref().unwrap_or("file"),
            #[cfg(feature = "http")]
            SinkConfig::Http(c) => c.name.as_deref().unwrap_or("http"),
            #[cfg(feature = "nats")]
            SinkConfig::Nats(c) => c.name.as_deref().unwrap_or("nats"),
        }
    }

    /// Where the sink starts the first time it runs (default: what arrives next).
    pub fn start(&self) -> StartAt {
        let start = match self {
            #[cfg(feature = "stdout")]
            SinkConfig::Stdout(c) => c.start,
            #[cfg(feature = "file")]
            SinkConfig::File(c) => c.start,
            #[cfg(feature = "http")]
            SinkConfig::Http(c) => c.start,
            #[cfg(feature = "nats")]
            SinkConfig::Nats(c) => c.start,
        };
        start.unwrap_or(StartAt::Newest)
    }

    /// Builds the sink.
    pub fn build(&self) -> Result<Arc<dyn Sink>, BuildError> {
        let name = self.name().to_owned();
        match self {
            #[cfg(feature = "stdout")]
            SinkConfig::Stdout(c) => Ok(Arc::new(stdout::StdoutSink::new(name, c))),
            #[cfg(feature = "file")]
            SinkConfig::File(c) => Ok(Arc::new(file::FileSink::new(name, c)?)),
            #[cfg(feature = "http")]
            SinkConfig::Http(c) => Ok(Arc::new(http::HttpSink::new(name, c)?)),
            #[cfg(feature = "nats")]
            SinkConfig::Nats(c) => Ok(Arc::new(nats::NatsSink::new(name, c)?)),
        }
    }

    /// The same configuration with secrets replaced by `"<redacted>"`.
    pub fn redacted(&self) -> SinkConfig {
        match self {
            #[cfg(feature = "http")]
            SinkConfig::Http(c) => SinkConfig::Http(c.redacted()),
            #[cfg(feature = "nats")]
            SinkConfig::Nats(c) => {
                let mut c = c.clone();
                c.urls = c
                    .urls
                    .iter()
                    .map(|u| streamhook_core::redact_url(u))
                    .collect();
                SinkConfig::Nats(c)
            }
            #[allow(unreachable_patterns)]
            other => other.clone(),
        }
    }

    /// One line for startup logs: `archive: file events/{date}.jsonl (fsync batch)`.
    pub fn describe(&self) -> String {
        let what = match self {
            #[cfg(feature = "stdout")]
            SinkConfig::Stdout(c) => format!("stdout ({})", c.format),
            #[cfg(feature = "file")]
            SinkConfig::File(c) => format!("file {} (fsync {})", c.path, c.fsync),
            #[cfg(feature = "http")]
            SinkConfig::Http(c) => format!(
                "http {} ({} body{})",
                http::redact_url(&c.url),
                c.body,
                if c.secrets.is_empty() {
                    ", unsigned"
                } else {
                    ", signed"
                }
            ),
            #[cfg(feature = "nats")]
            SinkConfig::Nats(c) => format!(
                "nats {} subject {} ({} publish, {} body)",
                c.urls
                    .iter()
                    .map(|u| streamhook_core::redact_url(u))
                    .collect::<Vec<_>>()
                    .join(","),
                c.subject,
                c.publish,
                c.body
            ),
        };
        format!("{}: {what}", self.name())
    }
}
