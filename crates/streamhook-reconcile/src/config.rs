//! What a reconciler needs: where Gcore's API is, its key, how often to run, how fast to ask.

use std::time::Duration;

/// Gcore's API key: never printed (its `Debug` says `(redacted)`).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key (surrounding whitespace, such as a file's last newline, is dropped).
    pub fn new(key: &str) -> ApiKey {
        ApiKey(key.trim().to_owned())
    }

    /// The key itself, for the `Authorization` header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it holds whitespace inside (two lines pasted into the file).
    pub fn has_whitespace(&self) -> bool {
        self.0.chars().any(char::is_whitespace)
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(redacted)")
    }
}

/// How to reconcile.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// The API's base URL (`https://api.gcore.com`).
    pub api_url: String,
    /// The key (`Authorization: APIKey <key>`); read-only is enough.
    pub api_key: ApiKey,
    /// The file the key came from, read again before each run (a rotated key is used
    /// without a restart).
    pub api_key_file: Option<std::path::PathBuf>,
    /// Time between runs (default 10 min).
    pub interval: Duration,
    /// Run once at start (default true).
    pub on_start: bool,
    /// The most requests per second (default 2).
    pub rate: f64,
    /// How long one request may take (default 30 s).
    pub timeout: Duration,
    /// Videos per page (default 100).
    pub per_page: usize,
    /// How far Gcore's clock may be ahead of this host's (default 30 s): a stream session
    /// counts as unseen only if it started this long after the journal last heard of it.
    pub clock_skew: Duration,
    /// A change the API dates within this of its reading waits for the next run (default 2
    /// min): its webhook may be on its way, and a reconciled event before it would make the
    /// late webhook look like a second transition.
    pub settle: Duration,
}

impl ReconcileConfig {
    /// The defaults for `api_url` and `api_key`.
    pub fn new(api_url: &str, api_key: ApiKey) -> ReconcileConfig {
        ReconcileConfig {
            api_url: api_url.to_owned(),
            api_key,
            api_key_file: None,
            interval: Duration::from_secs(600),
            on_start: true,
            rate: 2.0,
            timeout: Duration::from_secs(30),
            per_page: 100,
            clock_skew: crate::plan::SKEW,
            settle: Duration::from_secs(120),
        }
    }
}
