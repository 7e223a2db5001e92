//! Gcore's Streaming API, as a reconciler reads it: the lists of streams, videos, restreams and
//! broadcasts (bare JSON arrays, paged by `page` until a page comes back empty or short), one
//! video by id (404 once deleted). Every request waits its turn under a rate cap, carries
//! `Authorization: APIKey <key>`, and is retried on 429 (honouring `Retry-After`), 5xx and
//! timeouts; 401 and 403 stop the run (the key is wrong or revoked). The key never appears in
//! a log line or an error.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::config::{ApiKey, ReconcileConfig};

/// How many times one request is tried (429, 5xx, timeouts) before the run gives up on it.
const TRIES: u32 = 5;
/// The longest `Retry-After` honoured; a longer one ends the run (tried next interval).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// The most pages one list reads (a safety stop: a server that never ends a list).
const MAX_PAGES: u32 = 10_000;

/// Why the API could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 401 or 403: the key is wrong, revoked, or may not read the Streaming API.
    Unauthorized {
        /// The status.
        status: u16,
        /// What the API said (the key is never in it).
        message: String,
    },
    /// Other failures, after retries: what happened.
    Failed(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unauthorized { status, message } => write!(
                f,
                "Gcore's API refused the key ({status}): {message}; check [gcore] api_key_file (a key that may read the Streaming API)"
            ),
            ApiError::Failed(m) => write!(f, "Gcore's API: {m}"),
        }
    }
}

impl std::error::Error for ApiError {}

/// What the API client counts (for metrics).
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// Requests made, by status (0: no answer: a timeout or a refused connection).
    pub by_status: Mutex<BTreeMap<u16, u64>>,
    /// Answers that were not the documented JSON.
    pub malformed: AtomicU64,
    /// Requests made in all.
    pub requests: AtomicU64,
}

impl ApiCounters {
    fn count(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.by_status.lock() {
            *m.entry(status).or_default() += 1;
        }
    }
}

/// The API client.
#[derive(Debug)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    /// The key (its `Debug` is redacted); replaced when the key file changes.
    key: Mutex<ApiKey>,
    per_page: usize,
    gap: Duration,
    next: tokio::sync::Mutex<Instant>,
    /// What it counted.
    pub counters: ApiCounters,
}

impl Api {
    /// A client for `config`'s API.
    pub fn new(config: &ReconcileConfig) -> Result<Api, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("streamhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let rate = config.rate.max(0.01);
        Ok(Api {
            client,
            base: config.api_url.trim_end_matches('/').to_owned(),
            key: Mutex::new(config.api_key.clone()),
            per_page: config.per_page.max(1),
            gap: Duration::from_secs_f64(1.0 / rate),
            next: tokio::sync::Mutex::new(Instant::now()),
            counters: ApiCounters::default(),
        })
    }

    /// Uses `key` from now on (the key file was rewritten).
    pub fn set_key(&self, key: ApiKey) {
        if let Ok(mut k) = self.key.lock() {
            *k = key;
        }
    }

    fn authorization(&self) -> String {
        let key = match self.key.lock() {
            Ok(k) => k.clone(),
            Err(p) => p.into_inner().clone(),
        };
        format!("APIKey {}", key.expose())
    }

    /// Waits for this request's turn under the rate cap.
    async fn turn(&self) {
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep_until((*next).into()).await;
        }
        *next = Instant::now().max(*next) + self.gap;
    }

    /// `GET path`: the JSON answer, `Ok(None)` for 404.
    async fn get(&self, path: &str) -> Result<Option<Value>, ApiError> {
        let url = format!("{}{path}", self.base);
        let mut wait = Duration::from_secs(1);
        let mut last = String::new();
        for attempt in 1..=TRIES {
            self.turn().await;
            let sent = self
                .client
                .get(&url)
                .header("authorization", self.authorization())
                .header("accept", "application/json")
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.counters.count(0);
                    last = if e.is_timeout() {
                        format!("GET {path}: no answer in time")
                    } else {
                        format!("GET {path}: {}", without_url(&e))
                    };
                    if attempt < TRIES {
                        tracing::debug!(attempt, error = %last, "Gcore API request failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                    continue;
                }
            };
            let status = resp.status().as_u16();
            self.counters.count(status);
            match status {
                200..=299 => {
                    let text = match body(resp).await {
                        Ok(t) => t,
                        Err(why) => {
                            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                            return Err(ApiError::Failed(format!("GET {path}: {why}")));
                        }
                    };
                    return match serde_json::from_str::<Value>(&text) {
                        Ok(v) => Ok(Some(v)),
                        Err(e) => {
                            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                            Err(ApiError::Failed(format!(
                                "GET {path}: the answer is not JSON ({e})"
                            )))
                        }
                    };
                }
                404 => return Ok(None),
                401 | 403 => {
                    let text = resp.text().await.unwrap_or_default();
                    return Err(ApiError::Unauthorized {
                        status,
                        message: short(&text),
                    });
                }
                429 => {
                    let after = retry_after(resp.headers()).unwrap_or(wait);
                    if after > MAX_RETRY_AFTER {
                        return Err(ApiError::Failed(format!(
                            "GET {path}: rate limited for {} (Retry-After); the next run tries again",
                            humantime::format_duration(after)
                        )));
                    }
                    last = format!("GET {path}: 429 Too Many Requests");
                    if attempt < TRIES {
                        tracing::info!(retry_in = ?after, "Gcore API: rate limited; waiting as Retry-After says");
                        tokio::time::sleep(after).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                }
                408 | 500..=599 => {
                    last = format!("GET {path}: {status}");
                    if attempt < TRIES {
                        tracing::debug!(attempt, status, "Gcore API answered an error; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(30));
                    }
                }
                _ => {
                    // Another 4xx: asking again would get the same answer.
                    let text = resp.text().await.unwrap_or_default();
                    return Err(ApiError::Failed(format!(
                        "GET {path}: {status}: {}",
                        short(&text)
                    )));
                }
            }
        }
        Err(ApiError::Failed(format!("{last} ({TRIES} tries)")))
    }

    /// Every item of a list (`streams`, `videos`, `restreams`, `broadcasts`), page after page
    /// until a page comes back empty or shorter than the first.
    pub async fn list(&self, what: &str) -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        // The page size is the first page's (an API may cap `per_page` below what was asked):
        // a list that fits one page costs one more request, an empty page.
        let mut page_size = None;
        let mut first_ids: Option<Vec<Value>> = None;
        for page in 1..=MAX_PAGES {
            let path = if what == "videos" {
                format!("/streaming/{what}?page={page}&per_page={}", self.per_page)
            } else {
                format!("/streaming/{what}?page={page}")
            };
            let items = match self.get(&path).await? {
                Some(Value::Array(items)) => items,
                Some(_) => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                    return Err(ApiError::Failed(format!(
                        "GET {path}: the answer is not a list"
                    )));
                }
                None => return Err(ApiError::Failed(format!("GET {path}: 404"))),
            };
            let n = items.len();
            // An API that ignores `page` answers page 1 again and again: stop, or the run
            // would read the list 10,000 times.
            let ids: Vec<Value> = items.iter().take(3).map(|i| i["id"].clone()).collect();
            match &first_ids {
                None => first_ids = Some(ids),
                Some(first) if n > 0 && *first == ids => {
                    return Err(ApiError::Failed(format!(
                        "GET {path}: page {page} repeats page 1 (the API ignores `page`?); the {what} were not compared"
                    )));
                }
                Some(_) => {}
            }
            out.extend(items);
            let size = *page_size.get_or_insert(n);
            if n == 0 || n < size {
                return Ok(out);
            }
        }
        Err(ApiError::Failed(format!(
            "the {what} list did not end after {MAX_PAGES} pages"
        )))
    }

    /// One video (`None`: the API does not have it: deleted).
    pub async fn video(&self, id: u64) -> Result<Option<Value>, ApiError> {
        self.get(&format!("/streaming/videos/{id}")).await
    }
}

/// The most an answer may hold (a list page of 100 videos is some 100 KiB).
const MAX_BODY: usize = 64 << 20;

/// An answer's body, at most [`MAX_BODY`].
async fn body(mut resp: reqwest::Response) -> Result<String, String> {
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(format!("the answer is larger than {} MiB", MAX_BODY >> 20));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| format!("the answer was cut short: {}", without_url(&e)))?
    {
        if out.len() + chunk.len() > MAX_BODY {
            return Err(format!("the answer is larger than {} MiB", MAX_BODY >> 20));
        }
        out.extend_from_slice(&chunk);
    }
    String::from_utf8(out).map_err(|_| "the answer is not UTF-8".to_owned())
}

/// A reqwest error with its causes (connection refused, a certificate problem), without its
/// URL (which holds nothing secret, but keeps lines short).
fn without_url(e: &reqwest::Error) -> String {
    let text = streamhook_core::error_chain(e);
    match text.find(" for url (") {
        Some(at) => {
            let end = text[at..].find(')').map_or(text.len(), |i| at + i + 1);
            format!("{}{}", &text[..at], &text[end..])
        }
        None => text,
    }
}

fn short(text: &str) -> String {
    let t = text.trim();
    if t.len() > 200 {
        let mut cut = 200;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &t[..cut])
    } else {
        t.to_owned()
    }
}

/// `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?.trim().to_owned();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate(&v)?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// An HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`).
fn httpdate(v: &str) -> Option<SystemTime> {
    // humantime reads RFC 3339; the HTTP form is rewritten into it.
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 {
        return None;
    }
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])?
        + 1;
    let text = format!("{}-{month:02}-{:0>2}T{}Z", parts[3], parts[1], parts[4]);
    humantime::parse_rfc3339(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date past is now");
        assert!(httpdate("Wed, 21 Oct 2015 07:28:00 GMT").is_some());
        assert!(httpdate("soon").is_none());
    }
}
