//! The harness's load generator: one HTTP client ([`Poster`]: hyper, keep-alive, TCP_NODELAY,
//! every exchange bounded by a timeout) driven three ways: [`closed_loop`] and [`fixed_rate`]
//! time every request into a latency histogram (the bench, `streamhook-harness load`), each
//! body the seed payload naming the next of [`RESOURCES`] video ids; [`Load`] posts until
//! stopped and tallies every id answered 200 (the fault runs).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::body::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

/// The seed page's "video completely processed" webhook: the measured load's payload.
pub const PAYLOAD: &str = include_str!("../../../fixtures/seed/15-video-processed.json");

/// The video ids the measured load spreads over: each request carries the next, as Gcore's
/// traffic spreads over many streams and videos (one id would serialise the replicated
/// journal's appends, its worst case).
pub const RESOURCES: u32 = 1000;

/// The seed payload once per resource, the id the only difference (same length).
fn bodies() -> &'static [Bytes] {
    static BODIES: std::sync::OnceLock<Vec<Bytes>> = std::sync::OnceLock::new();
    BODIES.get_or_init(|| {
        (0..RESOURCES)
            .map(|i| Bytes::from(PAYLOAD.replace("784280", &(784_280 + i).to_string())))
            .collect()
    })
}

/// The next request's body (round-robin over the resources).
fn next_body() -> Bytes {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let all = bodies();
    all[(NEXT.fetch_add(1, Ordering::Relaxed) % all.len() as u64) as usize].clone()
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// POSTs JSON bodies to one URL over a keep-alive pool of up to `connections` idle
/// connections; clones share the pool.
#[derive(Debug, Clone)]
pub struct Poster {
    client: HttpClient,
    uri: hyper::Uri,
    timeout: Duration,
}

impl Poster {
    /// A client for `url`; an exchange unanswered within `timeout` counts as no answer.
    pub fn new(url: &str, connections: usize, timeout: Duration) -> Result<Poster> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .build(connector);
        Ok(Poster {
            client,
            uri: url.parse()?,
            timeout,
        })
    }

    /// Sends `body` (`content-type: application/json`): the status and the body of the
    /// answer (empty if it could not be read), or `None` when there was no answer in time.
    pub async fn post(&self, body: Bytes) -> Option<(StatusCode, Bytes)> {
        let request = hyper::Request::post(self.uri.clone())
            .header("content-type", "application/json")
            .body(Full::new(body))
            .ok()?;
        let exchange = async {
            let resp = self.client.request(request).await.ok()?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Some((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .ok()
            .flatten()
    }

    /// Sends `body`: whether it was answered 2xx in time.
    pub async fn post_ok(&self, body: Bytes) -> bool {
        self.post(body)
            .await
            .is_some_and(|(status, _)| status.is_success())
    }
}

/// A request of the measured load unanswered for 30 s counts as failed: an overloaded server
/// must not hang the run (seen with a connection closed at accept by the per-peer cap).
pub const MEASURED_TIMEOUT: Duration = Duration::from_secs(30);

/// What one load phase measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Phase {
    /// Successful requests per second.
    pub rps: f64,
    /// Latency percentiles and max, in microseconds.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Maximum.
    pub max: u64,
    /// Failed requests.
    pub errors: u64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

/// `rate` requests per second for `seconds`, each timed from when it was due (so a stall
/// counts against every request it delays: no coordinated omission).
pub async fn fixed_rate(url: &str, rate: u64, seconds: u64) -> Result<Phase> {
    let poster = Poster::new(url, 256, MEASURED_TIMEOUT)?;
    let total = rate * seconds;
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Option<u64>>();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let (poster, tx) = (poster.clone(), tx.clone());
        tokio::spawn(async move {
            let ok = poster.post_ok(next_body()).await;
            let _ = tx.send(ok.then(|| due.elapsed().as_micros() as u64));
        });
    }
    drop(tx);
    let mut h = histogram();
    let mut errors = 0;
    while let Some(r) = rx.recv().await {
        match r {
            Some(us) => h.record(us)?,
            None => errors += 1,
        }
    }
    let took = start.elapsed().as_secs_f64();
    Ok(Phase {
        rps: h.len() as f64 / took,
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        max: h.max(),
        errors,
    })
}

/// `connections` clients sending back to back for `seconds`.
pub async fn closed_loop(url: &str, connections: usize, seconds: u64) -> Result<Phase> {
    let poster = Poster::new(url, connections, MEASURED_TIMEOUT)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (poster, errors) = (poster.clone(), errors.clone());
            tokio::spawn(async move {
                let mut h = histogram();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if poster.post_ok(next_body()).await {
                        let _ = h.record(t.elapsed().as_micros() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                h
            })
        })
        .collect();
    let mut all = histogram();
    for t in tasks {
        all.add(t.await?)?;
    }
    let took = start.elapsed().as_secs_f64();
    Ok(Phase {
        rps: all.len() as f64 / took,
        p50: all.value_at_quantile(0.5),
        p99: all.value_at_quantile(0.99),
        max: all.max(),
        errors: errors.load(Ordering::Relaxed),
    })
}

/// What the fault runs' load saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Id -> resource key of every event answered 200.
    pub acked: Mutex<HashMap<String, String>>,
    /// Answers other than 200, by status (0: no answer).
    pub refused: Mutex<HashMap<u16, u64>>,
    /// Requests sent.
    pub sent: AtomicU64,
}

/// The fault runs' running load.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    /// What it saw so far.
    pub tally: Arc<Tally>,
}

/// A payload about resource `n` (videos and streams), and its resource key.
pub fn payload(n: u64, round: u64, pad: usize) -> (String, String) {
    let pad = "x".repeat(pad);
    if n % 3 == 0 {
        let live = round % 2 == 0;
        (
            format!(
                r#"{{"type":"stream","message":{{"stream":{{"id":{n},"live":{live},"recording":false,"client_entity_data":"{pad}"}}}}}}"#
            ),
            format!("stream:{n}"),
        )
    } else {
        let status = ["empty", "pending", "viewable", "ready"][(round % 4) as usize];
        (
            format!(
                r#"{{"type":"video","message":{{"video":{{"id":{n},"name":"clip {n}","status":"{status}","slug":"{pad}"}}}}}}"#
            ),
            format!("video:{n}"),
        )
    }
}

impl Load {
    /// `clients` tasks POSTing to `url` until stopped, each over its own `resources`
    /// resources; `pad` bytes of padding per payload. A request unanswered within 10 s counts
    /// as refused with status 0; after a refusal a client pauses 20 ms.
    pub fn start(url: String, clients: usize, resources: u64, pad: usize) -> Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let poster = Poster::new(&url, clients, Duration::from_secs(10))?;
        let refused = |tally: &Tally, status: u16| {
            *tally
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(status)
                .or_default() += 1;
        };
        let tasks = (0..clients as u64)
            .map(|c| {
                let (stop, tally, poster) = (Arc::clone(&stop), Arc::clone(&tally), poster.clone());
                tokio::spawn(async move {
                    let mut round = 0;
                    while !stop.load(Ordering::Relaxed) {
                        round += 1;
                        let n = c * 1_000_000 + (round % resources);
                        let (body, resource) = payload(n, round / resources, pad);
                        tally.sent.fetch_add(1, Ordering::Relaxed);
                        match poster.post(Bytes::from(body)).await {
                            Some((status, body)) if status == StatusCode::OK => {
                                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                                    && let Some(id) = v["id"].as_str()
                                {
                                    tally
                                        .acked
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .insert(id.to_owned(), resource);
                                }
                            }
                            answer => {
                                refused(&tally, answer.map_or(0, |(status, _)| status.as_u16()));
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Ok(Load { stop, tasks, tally })
    }

    /// Stops and waits for the clients.
    pub async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_spreads_over_distinct_video_ids_with_the_seed_bodys_length() {
        let bodies = bodies();
        assert_eq!(bodies.len(), RESOURCES as usize);
        let distinct: std::collections::HashSet<&Bytes> = bodies.iter().collect();
        assert_eq!(
            distinct.len(),
            bodies.len(),
            "each body names its own video"
        );
        for (i, b) in bodies.iter().enumerate() {
            assert_eq!(b.len(), PAYLOAD.len());
            let v: serde_json::Value = serde_json::from_slice(b).expect("valid JSON");
            assert_eq!(v["message"]["video"]["id"], 784_280 + i as u64);
        }
    }
}
