//! Configuration: a TOML file, `STREAMHOOK_*` variables and flags, in that order of precedence
//! (flags win), over embedded defaults that run with nothing configured.
//!
//! `docs/streamhook.example.toml` lists every key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Serialize};
use streamhook_core::source::gcore_ranges;
use streamhook_core::{Cidr, RetryPolicy, RouteConfig, Router, SourceFilter};
use streamhook_sinks::SinkConfig;
use streamhook_sinks::file::FileConfig;
use streamhook_sinks::http::HttpConfig;
use streamhook_sinks::stdout::StdoutConfig;

const EXAMPLES: &str = "\
Examples:
  # Defaults: listen on 0.0.0.0:8080, allow Gcore's ranges, journal in ./streamhook-data,
  # print each event to stdout.
  streamhook-server

  # Behind nginx on the same host, archiving to files and forwarding to the app, signed.
  streamhook-server --trusted-proxy 127.0.0.1 --file 'events/{date}.jsonl' \\
      --forward http://127.0.0.1:3000/gcore --forward-secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw

  # Everything from a file; show what it amounts to, or check it and exit.
  streamhook-server --config streamhook.toml --print-config
  streamhook-server --config streamhook.toml --check-config

Signals: SIGTERM or ctrl-c drain and exit 0; SIGHUP reloads the config file (sinks, routes,
allowlist, trusted proxies, path token, retry), keeping the old one if the new one is bad.

Every flag is also a STREAMHOOK_* variable (shown with each) and a key of the config file.";

/// A durable, source-checked inbox for Gcore Video Streaming webhooks.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "streamhook-server", version, about, after_long_help = EXAMPLES, after_help = "Run with --help for examples.")]
pub struct Args {
    /// TOML config file (see docs/streamhook.example.toml); flags and variables override it.
    #[arg(long, env = "STREAMHOOK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on for webhooks [default: 0.0.0.0:8080].
    #[arg(long, env = "STREAMHOOK_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Allowed source range; repeat or comma-separate. Replaces the default (Gcore's
    /// 92.223.112.0/24 and 92.223.123.0/24).
    #[arg(
        long = "allow",
        env = "STREAMHOOK_ALLOW",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow: Vec<Cidr>,
    /// A proxy in front of streamhook whose Forwarded / X-Forwarded-For / X-Real-IP headers are
    /// believed; repeat or comma-separate. Without it those headers are ignored.
    #[arg(
        long = "trusted-proxy",
        env = "STREAMHOOK_TRUSTED_PROXY",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<Cidr>,
    /// Folder of the journal [default: ./streamhook-data].
    #[arg(long, env = "STREAMHOOK_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Journal in a NATS JetStream cluster shared by several receivers (high availability),
    /// with the `[journal]` defaults: stream STREAMHOOK, 3 replicas. Comma-separated URLs.
    #[arg(
        long,
        env = "STREAMHOOK_NATS",
        value_name = "URL[,URL...]",
        value_delimiter = ','
    )]
    pub nats: Vec<String>,
    /// Adds a file sink writing NDJSON envelopes to PATH ({date} and {type} allowed); repeatable.
    #[arg(long = "file", env = "STREAMHOOK_FILE", value_name = "PATH")]
    pub file: Vec<String>,
    /// Adds an http sink forwarding each webhook to URL, with retries; repeatable.
    #[arg(long = "forward", env = "STREAMHOOK_FORWARD", value_name = "URL")]
    pub forward: Vec<String>,
    /// Signs what --forward sends (Standard Webhooks); repeat to sign with several (rotation).
    #[arg(
        long = "forward-secret",
        env = "STREAMHOOK_FORWARD_SECRET",
        value_name = "whsec_...",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub forward_secret: Vec<String>,
    /// Require this secret in the path: `POST /webhook/<TOKEN>` (16-128 of A-Z a-z 0-9 - _).
    /// Give two (`--path-token NEW --path-token OLD`, or `NEW,OLD`) while Gcore's URL is being
    /// changed: both are accepted until you drop the old one.
    #[arg(
        long,
        env = "STREAMHOOK_PATH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub path_token: Vec<String>,
    /// Refuse JSON that does not fit the model with 422, instead of keeping it as an `invalid`
    /// event (the default: Gcore never resends, so a refusal loses the event for good).
    #[arg(long, env = "STREAMHOOK_STRICT")]
    pub strict: bool,
    /// Without a config file's sinks, events go to stdout; this drops that default sink.
    #[arg(long, env = "STREAMHOOK_NO_STDOUT")]
    pub no_stdout: bool,
    /// Log format on stderr [default: text].
    #[arg(long, env = "STREAMHOOK_LOG_FORMAT", value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Address of the admin API (replay, dead letters) [default: 127.0.0.1:8081].
    #[arg(long, env = "STREAMHOOK_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token of the admin API, at least 32 characters [default: generated, in
    /// DATA_DIR/admin.token].
    #[arg(
        long,
        env = "STREAMHOOK_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Terminate TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        env = "STREAMHOOK_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(
        long,
        env = "STREAMHOOK_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Gcore's API, for reconciliation [default: api.gcore.com, over HTTPS].
    #[arg(long, env = "STREAMHOOK_GCORE_API_URL", value_name = "URL")]
    pub gcore_api_url: Option<String>,
    /// A file holding a Gcore API key (read-only is enough): turns reconciliation on, which
    /// recovers the transitions Gcore never sent from its Streaming API. The key can also come
    /// from STREAMHOOK_GCORE_API_KEY (never from a flag: it would show in `ps`).
    #[arg(long, env = "STREAMHOOK_GCORE_API_KEY_FILE", value_name = "FILE")]
    pub gcore_api_key_file: Option<PathBuf>,
    /// The key itself, from STREAMHOOK_GCORE_API_KEY only.
    #[arg(skip = std::env::var("STREAMHOOK_GCORE_API_KEY").ok().filter(|k| !k.trim().is_empty()).map(|k| streamhook_reconcile::ApiKey::new(&k)))]
    pub gcore_api_key: Option<streamhook_reconcile::ApiKey>,
    /// Print the effective configuration (secrets redacted) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Check the configuration and exit: 0 if it is valid, 1 with the reason if not.
    #[arg(long)]
    pub check_config: bool,
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where webhooks are received.
    pub listen: SocketAddr,
    /// The webhook path.
    pub path: String,
    /// A secret required as the last path segment (`/webhook/<token>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_token: Option<String>,
    /// Secrets accepted as the last path segment, during a rotation: the new one first, then
    /// the old (with `path_token`, all of them are accepted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub path_tokens: Vec<String>,
    /// The journal's folder.
    pub data_dir: PathBuf,
    /// Allowed source ranges.
    pub allow: Vec<Cidr>,
    /// Refuse (422) JSON that does not fit the model instead of keeping it as `invalid`.
    pub strict: bool,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Log format.
    pub log_format: LogFormat,
    /// Request limits.
    pub limits: Limits,
    /// Delivery retries.
    pub retry: RetryConfig,
    /// Where events are journaled: this host's redb file (default) or a JetStream cluster.
    pub journal: JournalSection,
    /// How long the journal keeps delivered events.
    pub retention: Retention,
    /// The admin API.
    pub admin: AdminConfig,
    /// Gcore's Streaming API (for reconciliation).
    pub gcore: GcoreSection,
    /// Reconciliation with Gcore's API: on when a key is given.
    pub reconcile: ReconcileSection,
    /// TLS termination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Sinks unmatched events go to (empty with no routes: every sink).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub default_sinks: Vec<String>,
    /// Routes, checked in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// Sinks.
    pub sinks: Vec<SinkConfig>,
    /// Flag-made sinks' names before they were named by what they write to (new, old): an
    /// upgrade gives each the place its old name had.
    #[serde(skip)]
    pub sink_aliases: Vec<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            path: "/webhook".into(),
            path_token: None,
            path_tokens: Vec::new(),
            data_dir: PathBuf::from("./streamhook-data"),
            allow: gcore_ranges(),
            strict: false,
            trusted_proxies: Vec::new(),
            log_format: LogFormat::Text,
            limits: Limits::default(),
            retry: RetryConfig::default(),
            journal: JournalSection::default(),
            retention: Retention::default(),
            admin: AdminConfig::default(),
            gcore: GcoreSection::default(),
            reconcile: ReconcileSection::default(),
            tls: None,
            default_sinks: Vec::new(),
            routes: Vec::new(),
            sinks: Vec::new(),
            sink_aliases: Vec::new(),
        }
    }
}

/// Limits that protect intake from slow, large or too many requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest body accepted; larger gets 413.
    pub max_body_bytes: usize,
    /// Requests handled at once; more get 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// Open connections at once; further connections wait in the listen backlog.
    pub max_connections: usize,
    /// Open connections one peer address may hold (0: no cap); more are closed at accept.
    /// Behind a proxy, the proxy is one peer: raise it to the proxy's upstream connections.
    pub max_connections_per_peer: usize,
    /// Time to receive a request's headers (also bounds an idle keep-alive connection).
    #[serde(with = "streamhook_core::duration")]
    pub header_timeout: Duration,
    /// Time to receive a request's body; slower gets 408.
    #[serde(with = "streamhook_core::duration")]
    pub body_timeout: Duration,
    /// A connection is closed (gracefully) after this long, however busy.
    #[serde(with = "streamhook_core::duration")]
    pub max_connection_age: Duration,
    /// On shutdown, how long in-flight requests may take to finish.
    #[serde(with = "streamhook_core::duration")]
    pub shutdown_timeout: Duration,
    /// Appends waiting for the journal beyond which requests get 503.
    pub journal_queue: usize,
    /// Memory the journal may use to cache its pages, in MiB.
    pub journal_cache_mb: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            max_concurrent_requests: 512,
            max_connections: 1024,
            max_connections_per_peer: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(10),
            journal_queue: 4096,
            journal_cache_mb: 16,
        }
    }
}

/// When a sink gives up on an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// The first backoff.
    #[serde(with = "streamhook_core::duration")]
    pub initial_backoff: Duration,
    /// The longest backoff (and the longest `Retry-After` honoured).
    #[serde(with = "streamhook_core::duration")]
    pub max_backoff: Duration,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// Time spent retrying one event before dead-lettering.
    #[serde(with = "streamhook_core::duration")]
    pub max_age: Duration,
    /// Time one delivery may take.
    #[serde(with = "streamhook_core::duration")]
    pub send_timeout: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let p = RetryPolicy::default();
        RetryConfig {
            initial_backoff: p.initial_backoff,
            max_backoff: p.max_backoff,
            max_attempts: p.max_attempts,
            max_age: p.max_age,
            send_timeout: p.send_timeout,
        }
    }
}

impl RetryConfig {
    /// As the dispatcher's policy.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            max_attempts: self.max_attempts.max(1),
            max_age: self.max_age,
            send_timeout: self.send_timeout,
        }
    }
}

/// `[journal]`: which backend journals events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalSection {
    /// `redb` (default: a file in `data_dir`, one receiver) or `jetstream` (a stream in a NATS
    /// cluster shared by every receiver; `data_dir` then holds this receiver's mirror).
    pub backend: JournalBackend,
    /// The NATS servers (`nats://host:4222`, `tls://...`), for `jetstream`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nats_urls: Vec<String>,
    /// The stream's name (default `STREAMHOOK`).
    pub stream: String,
    /// Replicas of the stream and its buckets (default 3; 1 for a single NATS server).
    pub replicas: usize,
    /// A NATS credentials file (JWT and NKey seed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<PathBuf>,
    /// A PEM file of CA certificates for `tls://` NATS servers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// How long one publish to JetStream may take before it is tried again (default 10s).
    #[serde(with = "streamhook_core::duration")]
    pub timeout: Duration,
    /// How long a request waits for the stream to store its event before the event is kept
    /// in this receiver's spool instead (synced, answered 200, forwarded to the stream in
    /// arrival order once it takes events again). Default 500ms.
    #[serde(with = "streamhook_core::duration")]
    pub spool_after: Duration,
    /// How often the NATS client pings its server: a dead or silent connection is noticed
    /// after two unanswered pings (default 2s).
    #[serde(with = "streamhook_core::duration")]
    pub ping_interval: Duration,
    /// How long a receiver that stopped (or lost touch) still holds the stream's pruning back
    /// for what its mirror lacks (default 1day).
    #[serde(with = "streamhook_core::duration")]
    pub mirror_grace: Duration,
}

impl Default for JournalSection {
    fn default() -> Self {
        JournalSection {
            backend: JournalBackend::Redb,
            nats_urls: Vec::new(),
            stream: "STREAMHOOK".into(),
            replicas: 3,
            credentials: None,
            tls_ca: None,
            timeout: Duration::from_secs(10),
            spool_after: Duration::from_millis(500),
            ping_interval: Duration::from_secs(2),
            mirror_grace: Duration::from_secs(24 * 3600),
        }
    }
}

/// The journal's backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalBackend {
    /// A redb file in `data_dir`.
    #[default]
    Redb,
    /// A NATS JetStream stream shared by several receivers.
    Jetstream,
}

impl JournalSection {
    /// The JetStream settings, when that is the backend.
    #[cfg(feature = "jetstream")]
    pub fn jetstream(&self) -> Option<streamhook_jetstream::JetStreamConfig> {
        if self.backend != JournalBackend::Jetstream {
            return None;
        }
        let mut c = streamhook_jetstream::JetStreamConfig::new(self.nats_urls.clone());
        c.stream = self.stream.clone();
        c.replicas = self.replicas;
        c.credentials = self.credentials.clone();
        c.tls_ca = self.tls_ca.clone();
        c.timeout = self.timeout;
        c.spool_after = self.spool_after;
        c.ping_interval = self.ping_interval;
        c.mirror_grace = self.mirror_grace;
        Some(c)
    }
}

/// What the journal keeps once every sink has passed an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Delete passed events older than this (default 7 days).
    #[serde(
        with = "streamhook_core::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Keep at most this many passed events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_events: Option<u64>,
    /// Drop a resource's classifier history once no event came for it this long (default 30
    /// days); its next event is then classified as if it were new.
    #[serde(
        with = "streamhook_core::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub history_max_age: Option<Duration>,
    /// How often to prune.
    #[serde(with = "streamhook_core::duration")]
    pub interval: Duration,
    /// How long a sink taken out of the configuration keeps its place: its cursor keeps
    /// holding the events it has not had (default 7 days; `streamhook sinks forget NAME` ends
    /// it sooner). Back within it, it resumes where it stood.
    #[serde(with = "streamhook_core::duration")]
    pub removed_sink_grace: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_events: None,
            history_max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            interval: Duration::from_secs(60),
            removed_sink_grace: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The admin API: replay, dead letters, tail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve it at all.
    pub enabled: bool,
    /// Where (loopback by default: it is not for the internet).
    pub listen: SocketAddr,
    /// The bearer token, at least 32 characters; generated into `DATA_DIR/admin.token` when
    /// unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token: None,
        }
    }
}

/// Gcore's Streaming API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcoreSection {
    /// The API's base URL.
    pub api_url: String,
    /// A file holding the API key (a read-only key is enough); with it (or
    /// `STREAMHOOK_GCORE_API_KEY`), reconciliation runs. The key itself is never a config key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// The key from `STREAMHOOK_GCORE_API_KEY` (never printed: its `Debug` is redacted).
    #[serde(skip)]
    pub api_key_env: Option<streamhook_reconcile::ApiKey>,
}

impl Default for GcoreSection {
    fn default() -> Self {
        GcoreSection {
            api_url: "https://api.gcore.com".into(),
            api_key_file: None,
            api_key_env: None,
        }
    }
}

/// How reconciliation runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileSection {
    /// Time between runs.
    #[serde(with = "streamhook_core::duration")]
    pub interval: Duration,
    /// Run once at start.
    pub on_start: bool,
    /// The most requests a second to Gcore's API.
    pub rate: f64,
    /// How long one request may take.
    #[serde(with = "streamhook_core::duration")]
    pub timeout: Duration,
    /// How far Gcore's clock may be ahead of this host's: a stream session counts as unseen
    /// only if it started this long after the journal last heard of the stream.
    #[serde(with = "streamhook_core::duration")]
    pub clock_skew: Duration,
    /// A change the API dates within this of its reading waits for the next run (its webhook
    /// may be on its way).
    #[serde(with = "streamhook_core::duration")]
    pub settle: Duration,
}

impl Default for ReconcileSection {
    fn default() -> Self {
        ReconcileSection {
            interval: Duration::from_secs(600),
            on_start: true,
            rate: 2.0,
            timeout: Duration::from_secs(30),
            clock_skew: Duration::from_secs(30),
            settle: Duration::from_secs(120),
        }
    }
}

/// TLS termination, for deployments without a proxy in front.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
}

/// A configuration that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// The values do not work together.
    #[error("{0}")]
    Invalid(String),
}

/// The shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 32;

/// The file name of the generated admin token in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// The effective configuration: the file (if any), then variables and flags, then the
    /// default stdout sink when no sink is configured. Checked with [`Config::validate`].
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply(args);
        config.validate()?;
        Ok(config)
    }

    fn apply(&mut self, args: &Args) {
        if let Some(listen) = args.listen {
            self.listen = listen;
        }
        if !args.allow.is_empty() {
            self.allow = args.allow.clone();
        }
        if !args.trusted_proxy.is_empty() {
            self.trusted_proxies = args.trusted_proxy.clone();
        }
        if let Some(dir) = &args.data_dir {
            self.data_dir = dir.clone();
        }
        if !args.nats.is_empty() {
            self.journal.backend = JournalBackend::Jetstream;
            self.journal.nats_urls = args.nats.clone();
        }
        match args.path_token.as_slice() {
            [] => {}
            [one] => self.path_token = Some(one.clone()),
            many => {
                self.path_token = None;
                self.path_tokens = many.to_vec();
            }
        }
        if args.strict {
            self.strict = true;
        }
        if let Some(format) = args.log_format {
            self.log_format = format;
        }
        if let Some(listen) = args.admin_listen {
            self.admin.listen = listen;
        }
        if let Some(token) = &args.admin_token {
            self.admin.token = Some(token.clone());
        }
        if let Some(url) = &args.gcore_api_url {
            self.gcore.api_url = url.clone();
        }
        if let Some(file) = &args.gcore_api_key_file {
            self.gcore.api_key_file = Some(file.clone());
        }
        if let Some(key) = &args.gcore_api_key {
            self.gcore.api_key_env = Some(key.clone());
        }
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            self.tls = Some(TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        if self.sinks.is_empty() && !args.no_stdout {
            self.sinks.push(SinkConfig::Stdout(StdoutConfig::default()));
        }
        // Flag-made sinks are named by what they write to, so adding or dropping a flag never
        // hands one sink's place to another; their names before that (by flag order) are kept
        // as aliases, so an upgrade keeps each sink's place.
        for (i, path) in args.file.iter().enumerate() {
            let mut file = FileConfig::new(path.clone());
            let name = format!("file:{path}");
            self.sink_aliases.push((name.clone(), numbered("file", i)));
            file.name = Some(name);
            self.sinks.push(SinkConfig::File(file));
        }
        for (i, url) in args.forward.iter().enumerate() {
            let mut http = HttpConfig::new(url.clone());
            let name = format!("forward:{}", stable_url(url));
            self.sink_aliases
                .push((name.clone(), numbered("forward", i)));
            http.name = Some(name);
            http.secrets = args.forward_secret.clone();
            self.sinks.push(SinkConfig::Http(http));
        }
    }

    /// Checks that the values work together: unique sink names, routes naming real sinks,
    /// sinks that build, a usable allowlist and path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !self.path.starts_with('/') || self.path.len() < 2 || self.path.ends_with('/') {
            return invalid(format!(
                "path {:?} must start with / and not end with one, like \"/webhook\"",
                self.path
            ));
        }
        if self.journal.backend == JournalBackend::Jetstream {
            if !cfg!(feature = "jetstream") {
                return invalid(
                    "[journal] backend = \"jetstream\": this build of streamhook-server has no \
                     JetStream support (it was built without the `jetstream` feature); build it \
                     with default features, or use backend = \"redb\""
                        .into(),
                );
            }
            if self.journal.nats_urls.is_empty() {
                return invalid(
                    "[journal] backend = \"jetstream\" needs nats_urls (or --nats URL)".into(),
                );
            }
            #[cfg(feature = "jetstream")]
            for url in &self.journal.nats_urls {
                if streamhook_jetstream::check_url(url).is_err() {
                    return invalid(format!(
                        "[journal] nats_urls: {:?} is not a NATS URL",
                        streamhook_core::redact_url(url)
                    ));
                }
            }
            let name_ok = !self.journal.stream.is_empty()
                && self
                    .journal
                    .stream
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !name_ok {
                return invalid(format!(
                    "[journal] stream {:?}: use letters, digits, _ and - only",
                    self.journal.stream
                ));
            }
            if self.journal.timeout < Duration::from_secs(1)
                || self.journal.timeout > Duration::from_secs(110)
            {
                return invalid(format!(
                    "[journal] timeout = {}: use 1s to 110s (a retried publish must fall inside \
                     the stream's 2-minute duplicate window, or it is journaled twice)",
                    humantime::format_duration(self.journal.timeout)
                ));
            }
            if !(1..=5).contains(&self.journal.replicas) {
                return invalid(format!(
                    "[journal] replicas = {}: JetStream allows 1 to 5",
                    self.journal.replicas
                ));
            }
            if self.journal.spool_after < Duration::from_millis(50)
                || self.journal.spool_after > Duration::from_secs(30)
            {
                return invalid(format!(
                    "[journal] spool_after = {}: use 50ms to 30s (Gcore's request is held \
                     that long before the event is kept in the spool)",
                    humantime::format_duration(self.journal.spool_after)
                ));
            }
            if self.journal.ping_interval < Duration::from_millis(500)
                || self.journal.ping_interval > Duration::from_secs(60)
            {
                return invalid(format!(
                    "[journal] ping_interval = {}: use 500ms to 60s (a silent connection is \
                     noticed after two unanswered pings)",
                    humantime::format_duration(self.journal.ping_interval)
                ));
            }
            if self.journal.mirror_grace < Duration::from_secs(60) {
                return invalid(format!(
                    "[journal] mirror_grace = {}: use at least 1m (a receiver restarting must \
                     not lose its place in the stream)",
                    humantime::format_duration(self.journal.mirror_grace)
                ));
            }
        }
        if self.allow.is_empty() {
            return invalid("the allowlist is empty: no request could ever be accepted".into());
        }
        self.source_filter()?;
        let names = self.sink_names();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return invalid(format!(
                    "two sinks are named {name:?}; give each a unique `name`"
                ));
            }
        }
        let mut files: Vec<PathBuf> = Vec::new();
        for sink in &self.sinks {
            if let SinkConfig::File(f) = sink {
                // `a.jsonl`, `./a.jsonl` and `/here/a.jsonl` are one file.
                let path = normal_path(&f.path);
                if files.contains(&path) {
                    return invalid(format!(
                        "two file sinks write {:?}; give each its own path (each records what it wrote, and must not read the other's lines as its own)",
                        f.path
                    ));
                }
                files.push(path);
            }
        }
        for token in self.path_tokens.iter().chain(&self.path_token) {
            if self
                .path_tokens
                .iter()
                .chain(&self.path_token)
                .filter(|t| *t == token)
                .count()
                > 1
            {
                return invalid("path_tokens: the same token is given twice".into());
            }
        }
        self.router()?;
        for sink in &self.sinks {
            sink.build()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        if let Some(tls) = &self.tls {
            for (what, path) in [("certificate", &tls.cert), ("key", &tls.key)] {
                if std::fs::metadata(path).is_err() {
                    return invalid(format!("TLS {what} {} cannot be read", path.display()));
                }
            }
        }
        if let Some(token) = &self.admin.token {
            if token.trim().is_empty() {
                return invalid(
                    "admin.token (--admin-token, STREAMHOOK_ADMIN_TOKEN) is empty, which would leave the admin API open; \
                     set at least 32 characters, or remove it to have one generated into DATA_DIR/admin.token"
                        .into(),
                );
            }
            if token.chars().count() < MIN_ADMIN_TOKEN {
                return invalid(format!(
                    "admin.token (--admin-token, STREAMHOOK_ADMIN_TOKEN) has {} characters; use at least {MIN_ADMIN_TOKEN} \
                     (for example: openssl rand -hex 32), or remove it to have one generated",
                    token.chars().count()
                ));
            }
        }
        if self.admin.token.is_none()
            && let Ok(t) = std::fs::read_to_string(self.data_dir.join(ADMIN_TOKEN_FILE))
            && !t.trim().is_empty()
            && t.trim().chars().count() < MIN_ADMIN_TOKEN
        {
            return invalid(format!(
                "{} holds a token of {} characters; use at least {MIN_ADMIN_TOKEN} (or delete the file to have one generated)",
                self.data_dir.join(ADMIN_TOKEN_FILE).display(),
                t.trim().chars().count()
            ));
        }
        self.reconcile_config()?;
        if self.limits.max_body_bytes == 0
            || self.limits.max_concurrent_requests == 0
            || self.limits.max_connections == 0
        {
            return invalid("limits.max_body_bytes, max_concurrent_requests and max_connections must be above 0".into());
        }
        Ok(())
    }

    /// Reconciliation's settings, with the key read (`None`: no key, reconciliation is off).
    pub fn reconcile_config(
        &self,
    ) -> Result<Option<streamhook_reconcile::ReconcileConfig>, ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let url = &self.gcore.api_url;
        let loopback = url
            .strip_prefix("http://")
            .map(|rest| rest.split(['/', '?']).next().unwrap_or(""))
            .is_some_and(|host| {
                let host = host.rsplit_once(':').map_or(host, |(h, port)| {
                    if port.chars().all(|c| c.is_ascii_digit()) {
                        h
                    } else {
                        host
                    }
                });
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
        if !(url.starts_with("https://") || loopback) {
            return invalid(format!(
                "[gcore] api_url {url:?} must start with https:// (http:// only on loopback, for a local stand-in: the key would cross the network in clear)"
            ));
        }
        let r = &self.reconcile;
        if r.interval < Duration::from_secs(10) {
            return invalid(format!(
                "[reconcile] interval = {}: use at least 10s",
                humantime::format_duration(r.interval)
            ));
        }
        if !(0.1..=50.0).contains(&r.rate) {
            return invalid(format!(
                "[reconcile] rate = {}: use 0.1 to 50 requests a second",
                r.rate
            ));
        }
        if r.timeout < Duration::from_secs(1) || r.timeout > Duration::from_secs(300) {
            return invalid(format!(
                "[reconcile] timeout = {}: use 1s to 5m",
                humantime::format_duration(r.timeout)
            ));
        }
        if r.clock_skew > Duration::from_secs(600) {
            return invalid(format!(
                "[reconcile] clock_skew = {}: at most 10m (keep both clocks on NTP)",
                humantime::format_duration(r.clock_skew)
            ));
        }
        let key = match (&self.gcore.api_key_file, &self.gcore.api_key_env) {
            (Some(file), _) => match std::fs::read_to_string(file) {
                Ok(text) if !text.trim().is_empty() => streamhook_reconcile::ApiKey::new(&text),
                Ok(_) => {
                    return invalid(format!(
                        "[gcore] api_key_file {} is empty; put the API key in it",
                        file.display()
                    ));
                }
                Err(e) => {
                    return invalid(format!(
                        "[gcore] api_key_file {} cannot be read: {e}",
                        file.display()
                    ));
                }
            },
            (None, Some(key)) => key.clone(),
            (None, None) => return Ok(None),
        };
        if key.is_empty() || key.has_whitespace() {
            return invalid(
                "the Gcore API key holds spaces or line breaks inside it; put only the key in the file"
                    .into(),
            );
        }
        if r.settle > Duration::from_secs(3600) {
            return invalid(format!(
                "[reconcile] settle = {}: at most 1h",
                humantime::format_duration(r.settle)
            ));
        }
        let mut config = streamhook_reconcile::ReconcileConfig::new(url, key);
        config.settle = r.settle;
        config.interval = r.interval;
        config.on_start = r.on_start;
        config.rate = r.rate;
        config.timeout = r.timeout;
        config.clock_skew = r.clock_skew;
        config.api_key_file = self.gcore.api_key_file.clone();
        Ok(Some(config))
    }

    /// Every path token accepted: `path_tokens` (the new one first), then `path_token`.
    pub fn path_tokens(&self) -> Vec<String> {
        let mut tokens = self.path_tokens.clone();
        tokens.extend(self.path_token.iter().cloned());
        tokens
    }

    /// The sinks' names, in order.
    pub fn sink_names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.name().to_owned()).collect()
    }

    /// The router of these routes and sinks.
    pub fn router(&self) -> Result<Router, ConfigError> {
        Router::new(&self.routes, &self.default_sinks, &self.sink_names())
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The source filter of this allowlist, proxies and token.
    pub fn source_filter(&self) -> Result<SourceFilter, ConfigError> {
        SourceFilter::new(self.allow.clone(), self.trusted_proxies.clone())
            .with_tokens(self.path_tokens())
            .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The same configuration with every secret replaced by `"<redacted>"`.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        let redact = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some("<redacted>".into());
            }
        };
        redact(&mut c.path_token);
        for token in &mut c.path_tokens {
            *token = "<redacted>".into();
        }
        redact(&mut c.admin.token);
        c.sinks = c.sinks.iter().map(SinkConfig::redacted).collect();
        c.journal.nats_urls = c
            .journal
            .nats_urls
            .iter()
            .map(|u| streamhook_core::redact_url(u))
            .collect();
        c
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot show the config as TOML: {e}\n"))
    }
}

/// A path made absolute (from the current folder) with `.` and `..` resolved by its text, to
/// tell whether two sinks write one file.
fn normal_path(path: &str) -> PathBuf {
    use std::path::Component;
    let path = std::path::Path::new(path);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A URL as a sink's name: scheme, host, port and path (no credentials, query or fragment).
fn stable_url(url: &str) -> String {
    let without_fragment = url.split('#').next().unwrap_or(url);
    let without_query = without_fragment
        .split('?')
        .next()
        .unwrap_or(without_fragment);
    match without_query.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => without_query.to_owned(),
    }
}

fn numbered(base: &str, i: usize) -> String {
    if i == 0 {
        base.to_owned()
    } else {
        format!("{base}-{}", i + 1)
    }
}
