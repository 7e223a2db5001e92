//! The nats sink: publishes each event to a NATS subject, with JetStream's acknowledgement
//! (at least once, retried and dead-lettered like any sink) or on core NATS (fire and forget).
//!
//! - `subject` is a template (default `gcore.{type}.{id}`): `{type}` is the webhook type,
//!   `{id}` the resource's id (`none` when the payload has none). Characters other than
//!   `A-Z a-z 0-9 _ -` in a value become `_`, so a value is always one subject token.
//! - Body: Gcore's original body byte for byte (`body = "original"`, the default) or the
//!   envelope (`body = "envelope"`).
//! - Headers: `Nats-Msg-Id` (the envelope id: JetStream's duplicate window drops a retried
//!   publish it already stored), `Streamhook-Kinds` (comma-separated), `Streamhook-Seq`,
//!   `Streamhook-Type`, `Content-Type: application/json`.
//! - `publish = "jetstream"` (default): a publish counts as delivered when a stream took it
//!   (its ack); no stream on the subject, a timeout or a lost connection are retried.
//!   `publish = "core"`: delivered once the client flushed it to the server; nobody may be
//!   listening (NATS drops it), so use it only where losing events is fine.
//! - The client connects on the first event and reconnects by itself (to any of `urls`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use streamhook_core::{Delivery, Sink, SinkError};
use tokio::sync::OnceCell;

use crate::{BodyMode, BuildError};

/// The default subject template.
pub const DEFAULT_SUBJECT: &str = "gcore.{type}.{id}";

/// `type = "nats"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The sink's name (default `nats`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Server URLs (`nats://host:4222`, `tls://...`); the client fails over between them.
    pub urls: Vec<String>,
    /// The subject template (default `gcore.{type}.{id}`).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// `original` (default) or `envelope`.
    #[serde(default)]
    pub body: BodyMode,
    /// `jetstream` (default: wait for a stream's ack) or `core`.
    #[serde(default)]
    pub publish: PublishMode,
    /// One publish's time limit, connecting included (default 5s).
    #[serde(default = "default_timeout", with = "streamhook_core::duration")]
    pub timeout: Duration,
    /// A credentials file (`.creds`: JWT and NKey seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for `tls://` servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Where the sink starts the first time it runs: `newest` (default: what arrives next),
    /// `oldest` (everything the journal holds), or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::StartAt>,
}

fn default_subject() -> String {
    DEFAULT_SUBJECT.to_owned()
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl NatsConfig {
    /// A config for `urls` with the defaults.
    pub fn new(urls: Vec<String>) -> Self {
        NatsConfig {
            name: None,
            urls,
            subject: default_subject(),
            body: BodyMode::default(),
            publish: PublishMode::default(),
            timeout: default_timeout(),
            credentials: None,
            tls_ca: None,
            start: None,
        }
    }
}

/// How events are published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishMode {
    /// JetStream publish, delivered when a stream acknowledged it.
    #[default]
    Jetstream,
    /// Core NATS publish, delivered when flushed to the server.
    Core,
}

impl fmt::Display for PublishMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishMode::Jetstream => "jetstream",
            PublishMode::Core => "core",
        })
    }
}

/// Publishes events to NATS.
pub struct NatsSink {
    name: String,
    config: NatsConfig,
    client: OnceCell<async_nats::Client>,
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("name", &self.name)
            .field(
                "urls",
                &self
                    .config
                    .urls
                    .iter()
                    .map(|u| streamhook_core::redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("subject", &self.config.subject)
            .field("publish", &self.config.publish)
            .finish_non_exhaustive()
    }
}

impl NatsSink {
    /// Checks the configuration; connects on the first event.
    pub fn new(name: String, config: &NatsConfig) -> Result<NatsSink, BuildError> {
        let fail = |message: String| BuildError {
            sink: name.clone(),
            message,
        };
        if config.urls.is_empty() {
            return Err(fail(
                "`urls` is empty: give at least one nats:// URL".into(),
            ));
        }
        for url in &config.urls {
            url.parse::<async_nats::ServerAddr>().map_err(|e| {
                fail(format!(
                    "bad server URL {:?}: {e}",
                    streamhook_core::redact_url(url)
                ))
            })?;
        }
        check_template(&config.subject).map_err(fail)?;
        if config.timeout.is_zero() {
            return Err(fail("`timeout` must be more than zero".into()));
        }
        if let Some(creds) = &config.credentials
            && let Err(e) = std::fs::read(creds)
        {
            return Err(fail(format!(
                "cannot read the credentials file {}: {e}",
                creds.display()
            )));
        }
        Ok(NatsSink {
            name,
            config: config.clone(),
            client: OnceCell::new(),
        })
    }

    /// The subject an event goes to.
    pub fn subject_for(&self, delivery: &Delivery) -> String {
        subject_for(&self.config.subject, delivery)
    }

    async fn client(&self) -> Result<&async_nats::Client, SinkError> {
        self.client
            .get_or_try_init(|| async {
                let mut options = async_nats::ConnectOptions::new()
                    .name(format!("streamhook sink {}", self.name))
                    .connection_timeout(self.config.timeout)
                    .retry_on_initial_connect();
                if let Some(creds) = &self.config.credentials {
                    // Retried: a secret mount late at boot, or a rotation in progress.
                    options = options.credentials_file(creds).await.map_err(|e| {
                        SinkError::retryable(format!(
                            "cannot read credentials {}: {e}",
                            creds.display()
                        ))
                    })?;
                }
                if let Some(ca) = &self.config.tls_ca {
                    options = options.add_root_certificates(ca.clone());
                }
                let addrs: Vec<async_nats::ServerAddr> = self
                    .config
                    .urls
                    .iter()
                    .filter_map(|u| u.parse().ok())
                    .collect();
                // With retry_on_initial_connect the client is returned at once and connects
                // in the background; publishes wait for it within their timeout.
                options
                    .connect(addrs)
                    .await
                    .map_err(|e| SinkError::retryable(format!("cannot connect to NATS: {e}")))
            })
            .await
    }

    async fn publish(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let client = self.client().await?;
        let subject = self.subject_for(delivery);
        let envelope = &delivery.envelope;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", envelope.id.0.as_str());
        let kinds: Vec<&str> = envelope.kinds.iter().map(|k| k.as_str()).collect();
        headers.insert("Streamhook-Kinds", kinds.join(",").as_str());
        headers.insert("Streamhook-Seq", envelope.seq.to_string().as_str());
        headers.insert(
            "Streamhook-Type",
            streamhook_core::dispatch::payload_type(envelope).as_str(),
        );
        headers.insert("Content-Type", "application/json");
        let body = match self.config.body {
            BodyMode::Original => bytes::Bytes::from(delivery.body.clone()),
            BodyMode::Envelope => bytes::Bytes::from(delivery.json.clone()),
        };
        match self.config.publish {
            PublishMode::Core => {
                client
                    .publish_with_headers(subject, headers, body)
                    .await
                    .map_err(|e| SinkError::retryable(format!("NATS publish failed: {e}")))?;
                client
                    .flush()
                    .await
                    .map_err(|e| SinkError::retryable(format!("NATS flush failed: {e}")))
            }
            PublishMode::Jetstream => {
                let js = async_nats::jetstream::ContextBuilder::new()
                    .timeout(self.config.timeout)
                    .build(client.clone());
                let ack = js
                    .publish_with_headers(subject.clone(), headers, body)
                    .await
                    .map_err(|e| publish_error(&subject, e.kind(), &e))?;
                let ack = ack
                    .await
                    .map_err(|e| publish_error(&subject, e.kind(), &e))?;
                tracing::trace!(sink = %self.name, stream = %ack.stream, seq = ack.sequence, duplicate = ack.duplicate, "published");
                Ok(())
            }
        }
    }
}

fn publish_error(subject: &str, kind: PublishErrorKind, e: &dyn fmt::Display) -> SinkError {
    match kind {
        PublishErrorKind::StreamNotFound => SinkError::retryable(format!(
            "no JetStream stream takes subject {subject:?} (create one, or use publish = \"core\")"
        )),
        _ => SinkError::retryable(format!("JetStream publish to {subject:?} failed: {e}")),
    }
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, delivery: &Delivery) -> Result<(), SinkError> {
        match tokio::time::timeout(self.config.timeout, self.publish(delivery)).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::retryable(format!(
                "NATS publish timed out after {}",
                humantime::format_duration(self.config.timeout)
            ))),
        }
    }

    fn concurrency(&self) -> usize {
        // One at a time: a stream then stores events in journal order.
        1
    }
}

/// Checks a subject template: tokens separated by `.`, none empty, no wildcards or
/// whitespace, placeholders `{type}` and `{id}` only.
pub fn check_template(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Err("`subject` is empty".into());
    }
    for token in template.split('.') {
        if token.is_empty() {
            return Err(format!(
                "subject {template:?} has an empty token (two dots, or a dot at an end)"
            ));
        }
        if token.contains(['*', '>']) || token.chars().any(char::is_whitespace) {
            return Err(format!(
                "subject {template:?} may not hold wildcards or whitespace"
            ));
        }
        let mut rest = token;
        while let Some(open) = rest.find('{') {
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("subject {template:?} has an unclosed `{{`"))?;
            let var = &rest[open + 1..open + close];
            if var != "type" && var != "id" {
                return Err(format!(
                    "unknown placeholder `{{{var}}}` in subject {template:?}; use {{type}} or {{id}}"
                ));
            }
            rest = &rest[open + close + 1..];
        }
    }
    Ok(())
}

/// The subject for an event: the template with `{type}` and `{id}` filled in, each value
/// reduced to one safe token.
pub fn subject_for(template: &str, delivery: &Delivery) -> String {
    let envelope = &delivery.envelope;
    let type_name = token(
        &streamhook_core::dispatch::payload_type(envelope),
        "unknown",
    );
    let id = envelope
        .resource
        .id
        .map_or_else(|| "none".to_owned(), |id| id.to_string());
    template
        .replace("{type}", &type_name)
        .replace("{id}", &token(&id, "none"))
}

fn token(value: &str, empty: &str) -> String {
    if value.is_empty() {
        return empty.to_owned();
    }
    value
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_checked() {
        assert!(check_template(DEFAULT_SUBJECT).is_ok());
        assert!(check_template("a.{type}-x.{id}").is_ok());
        for bad in [
            "", "a..b", ".a", "a.", "a.*", "a.>", "a b", "a.{kind}", "a.{type",
        ] {
            assert!(check_template(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn values_become_one_token() {
        assert_eq!(token("video.ready *>", "x"), "video_ready___");
        assert_eq!(token("", "none"), "none");
    }
}
