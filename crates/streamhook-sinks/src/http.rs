//! The http sink: forwards each event to a URL, signed, with at-least-once delivery.
//!
//! - Body: Gcore's original body byte for byte (`body = "original"`, the default: an app that
//!   parses Gcore payloads works unchanged, now with retries), or the envelope
//!   (`body = "envelope"`).
//! - Headers: `content-type: application/json`, `webhook-id` (the envelope id, the same on
//!   every retry), `webhook-timestamp` (Unix seconds of this attempt), `x-streamhook-kinds`
//!   (comma-separated), `x-streamhook-seq`, `x-streamhook-lease` (on a replicated journal:
//!   the delivering lease, which only grows from one holder to the next), plus the configured
//!   static `headers`.
//! - Signature (Standard Webhooks) when `secrets` are set: `webhook-signature: v1,<base64 of
//!   HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, one space-separated entry per secret, so
//!   a receiver can rotate keys. Secrets are `whsec_` + base64 of the key.
//! - Outcomes: 2xx delivered; 408, 429, 5xx, timeouts and connection errors retryable
//!   (`Retry-After` honoured); redirects are not followed; other statuses are permanent.
//! - Up to `concurrency` requests at once; events of one resource are never concurrent.
//! - HTTPS uses rustls with the platform's roots: no OpenSSL needed.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use streamhook_core::{Delivery, Sink, SinkError};

use crate::BuildError;

/// `type = "http"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The sink's name (default `http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where to POST (`http://` or `https://`).
    pub url: String,
    /// `original` (default) or `envelope`.
    #[serde(default)]
    pub body: BodyMode,
    /// Signing secrets, `whsec_...`; several at once for rotation. None: unsigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Static headers added to every request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The whole request's time limit (default 10s).
    #[serde(default = "default_timeout", with = "streamhook_core::duration")]
    pub timeout: Duration,
    /// The connection's time limit (default 5s).
    #[serde(
        default = "default_connect_timeout",
        with = "streamhook_core::duration"
    )]
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept (default 90s).
    #[serde(default = "default_pool_idle", with = "streamhook_core::duration")]
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per host (default 8).
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// Requests in flight at once (default 4; 1 delivers strictly in journal order).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// A PEM file of CA certificates to trust besides the platform's (an internal CA, or a
    /// self-signed receiver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Where the sink starts the first time it runs: `newest` (default: what arrives next),
    /// `oldest` (everything the journal holds), or an RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::StartAt>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_pool_idle() -> Duration {
    Duration::from_secs(90)
}
fn default_pool_max_idle() -> usize {
    8
}
fn default_concurrency() -> usize {
    4
}

impl HttpConfig {
    /// A config for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        HttpConfig {
            name: None,
            url: url.into(),
            body: BodyMode::default(),
            secrets: Vec::new(),
            headers: BTreeMap::new(),
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            pool_idle_timeout: default_pool_idle(),
            pool_max_idle: default_pool_max_idle(),
            concurrency: default_concurrency(),
            tls_ca: None,
            start: None,
        }
    }

    /// The same with secrets, a password in the URL and static header values replaced by
    /// `"<redacted>"`.
    pub fn redacted(&self) -> HttpConfig {
        let mut c = self.clone();
        c.secrets = c.secrets.iter().map(|_| "<redacted>".to_owned()).collect();
        c.url = redact_url(&c.url);
        for value in c.headers.values_mut() {
            *value = "<redacted>".to_owned();
        }
        c
    }
}

/// A URL fit for logs: a password in it is replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        // Not a URL (the sink refuses it): show nothing after a possible `user:password@`.
        Err(_) => match url.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => url.to_owned(),
        },
    }
}

/// Headers the sink computes per request; a configured value would break verification.
const COMPUTED_HEADERS: [&str; 3] = ["webhook-id", "webhook-timestamp", "webhook-signature"];

/// How much of an error answer's body is read (and quoted in the error).
const ERROR_BODY_LIMIT: usize = 4096;

pub use crate::BodyMode;

/// Forwards events over HTTP.
#[derive(Debug)]
pub struct HttpSink {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
    body: BodyMode,
    headers: HeaderMap,
    keys: Vec<Vec<u8>>,
    concurrency: usize,
}

/// Decodes a `whsec_...` secret (the prefix is optional) into the HMAC key.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret
        .trim()
        .strip_prefix("whsec_")
        .unwrap_or(secret.trim());
    let key = BASE64
        .decode(b64)
        .map_err(|e| format!("not base64 after `whsec_` ({e})"))?;
    if key.len() < 16 {
        return Err(format!(
            "too short: {} bytes; use 24 to 64 random bytes",
            key.len()
        ));
    }
    Ok(key)
}

/// The `v1,<base64>` signature of one message with one key.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// Why [`verify`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A `webhook-*` header is missing or unreadable.
    #[error("missing or malformed {0} header")]
    Header(&'static str),
    /// The timestamp is further from now than the tolerance (a replay, or a skewed clock).
    #[error("timestamp outside the tolerance")]
    Stale,
    /// No signature matches.
    #[error("no matching signature")]
    Mismatch,
}

/// Verifies a signed request as a receiving app should: the timestamp is within `tolerance`
/// of now and one of the `v1` signatures matches one of `keys` (compared in constant time).
pub fn verify(
    keys: &[Vec<u8>],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::Header("webhook-timestamp"))?;
    // abs_diff: a hostile timestamp (i64::MIN) must not overflow.
    if unix_now().abs_diff(ts) > tolerance.as_secs() {
        return Err(VerifyError::Stale);
    }
    for key in keys {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| VerifyError::Mismatch)?;
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        for sig in signatures.split(' ') {
            let Some(b64) = sig.strip_prefix("v1,") else {
                continue;
            };
            let Ok(bytes) = BASE64.decode(b64) else {
                continue;
            };
            if mac.clone().verify_slice(&bytes).is_ok() {
                return Ok(());
            }
        }
    }
    Err(VerifyError::Mismatch)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl HttpSink {
    /// Builds the client; checks the URL, secrets and headers.
    pub fn new(name: String, config: &HttpConfig) -> Result<Self, BuildError> {
        let err = |message: String| BuildError {
            sink: name.clone(),
            message,
        };
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| err(format!("bad url {:?}: {e}", config.url)))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(err(format!(
                "url {:?} must start with http:// or https://",
                config.url
            )));
        }
        let keys = config
            .secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                decode_secret(s)
                    .map_err(|m| err(format!("secret #{} is not a whsec_ secret: {m}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| err(format!("bad header name {k:?}")))?;
            if COMPUTED_HEADERS.contains(&name.as_str()) {
                return Err(err(format!(
                    "header {k:?} is set by the sink on every request (for signatures); remove it from `headers`"
                )));
            }
            let value =
                HeaderValue::from_str(v).map_err(|_| err(format!("bad value for header {k:?}")))?;
            headers.insert(name, value);
        }
        // rustls with the ring provider: no C toolchain or OpenSSL headers needed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &config.tls_ca {
            let pem = std::fs::read(path)
                .map_err(|e| err(format!("cannot read tls_ca {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                err(format!(
                    "tls_ca {} is not PEM certificates: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(err(format!(
                    "tls_ca {} holds no certificate",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .user_agent(concat!("streamhook/", env!("CARGO_PKG_VERSION")))
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| err(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpSink {
            name,
            url,
            client,
            body: config.body,
            headers,
            keys,
            concurrency: config.concurrency.max(1),
        })
    }
}

#[async_trait]
impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }

    async fn send(&self, delivery: &Delivery) -> Result<(), SinkError> {
        let body = match self.body {
            BodyMode::Original => delivery.body.clone(),
            BodyMode::Envelope => delivery.json.clone(),
        };
        let id = &delivery.envelope.id.0;
        let timestamp = unix_now();
        let kinds: Vec<&str> = delivery.envelope.kinds.iter().map(|k| k.as_str()).collect();
        // Our headers, then the configured ones replacing any of the same name (one value
        // each, never a duplicate).
        let mut headers = HeaderMap::with_capacity(6 + self.headers.len());
        let set = |h: &mut HeaderMap, name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        };
        set(&mut headers, "content-type", "application/json".into());
        set(&mut headers, "webhook-id", id.clone());
        set(&mut headers, "webhook-timestamp", timestamp.to_string());
        set(&mut headers, "x-streamhook-kinds", kinds.join(","));
        set(
            &mut headers,
            "x-streamhook-seq",
            delivery.envelope.seq.to_string(),
        );
        if let Some(lease) = delivery.lease {
            set(&mut headers, "x-streamhook-lease", lease.to_string());
        }
        if !self.keys.is_empty() {
            let signatures: Vec<String> = self
                .keys
                .iter()
                .map(|k| sign(k, id, timestamp, body.as_bytes()))
                .collect();
            set(&mut headers, "webhook-signature", signatures.join(" "));
        }
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        let request = self.client.post(self.url.clone()).headers(headers);
        let response = request.body(body).send().await.map_err(|e| {
            // The URL may hold a password: errors name the sink, not the URL.
            let e = e.without_url();
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "request failed"
            };
            SinkError::retryable(format!("{what}: {}", streamhook_core::error_chain(&e)))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // An error answer's body is read up to a limit: a receiver cannot make us buffer a
        // gigabyte to quote 200 characters of it.
        let mut response = response;
        let mut bytes = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while bytes.len() < ERROR_BODY_LIMIT {
            match tokio::time::timeout_at(deadline, response.chunk()).await {
                Ok(Ok(Some(chunk))) => bytes.extend_from_slice(&chunk),
                _ => break,
            }
        }
        bytes.truncate(ERROR_BODY_LIMIT);
        let text = String::from_utf8_lossy(&bytes);
        let excerpt: String = text.chars().take(200).collect();
        let message = if excerpt.trim().is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {}", excerpt.trim())
        };
        let code = status.as_u16();
        if code == 408 || code == 429 || status.is_server_error() {
            Err(SinkError::retryable(message).with_retry_after(retry_after))
        } else if status.is_redirection() {
            Err(SinkError::permanent(format!(
                "{message} (redirect to {} not followed)",
                location.as_deref().unwrap_or("?")
            )))
        } else {
            Err(SinkError::permanent(message))
        }
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}
