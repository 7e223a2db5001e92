//! A stand-in for Gcore's Streaming API on loopback, built from its published OpenAPI file
//! (`api-reference/services_documented/streaming_api.yaml`) and its SDKs' models: the list
//! endpoints a reconciler reads (`GET /streaming/streams`, `/videos`, `/restreams`,
//! `/broadcasts`, each a bare JSON array paged by `page`, videos also by `per_page`), one
//! video (`GET /streaming/videos/{id}`, 404 when deleted), and the `Authorization: APIKey
//! <key>` header (401 otherwise). A test sets what the API shows and can make the next
//! answers 429 (with `Retry-After`), 5xx or unreadable, turn every answer to 401, or slow
//! them down; it reads back every request made, with when.
//!
//! Never the real API: tests call this.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// How many list items one page holds when `per_page` is not given (what Gcore's own demos
/// assume).
pub const PAGE: usize = 25;

/// An answer to give instead of the right one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 429 with `Retry-After`.
    TooMany {
        /// The seconds `Retry-After` says.
        retry_after_s: u64,
    },
    /// This 5xx status.
    Server(u16),
    /// 200 with a body that is not the documented JSON.
    Malformed,
}

/// One request the stand-in got.
#[derive(Debug, Clone)]
pub struct Request {
    /// When it came.
    pub at: Instant,
    /// Its path and query.
    pub uri: String,
    /// What it was answered (status).
    pub status: u16,
}

#[derive(Debug, Default)]
struct Shared {
    key: String,
    streams: Vec<Value>,
    videos: Vec<Value>,
    restreams: Vec<Value>,
    broadcasts: Vec<Value>,
    failures: VecDeque<Failure>,
    unauthorized: bool,
    ignore_paging: bool,
    delay: Duration,
    requests: Vec<Request>,
}

/// The stand-in; stops when dropped.
#[derive(Debug)]
pub struct FakeGcore {
    shared: Arc<Mutex<Shared>>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGcore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type St = Arc<Mutex<Shared>>;

fn lock(s: &St) -> std::sync::MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks the key, applies a planned failure or delay, and records the request.
async fn gate(state: &St, headers: &HeaderMap, uri: &Uri) -> Result<(), Response> {
    let (delay, failure, allowed) = {
        let mut s = lock(state);
        let allowed = !s.unauthorized
            && headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == format!("APIKey {}", s.key));
        let failure = if allowed {
            s.failures.pop_front()
        } else {
            None
        };
        (s.delay, failure, allowed)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let answer = if !allowed {
        Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"message": "Given token not valid for any token type"})),
            )
                .into_response(),
        )
    } else {
        match failure {
            Some(Failure::TooMany { retry_after_s }) => Some(
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", retry_after_s.to_string())],
                    Json(json!({"error": "Too Many Requests"})),
                )
                    .into_response(),
            ),
            Some(Failure::Server(status)) => Some(
                (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "upstream unavailable",
                )
                    .into_response(),
            ),
            Some(Failure::Malformed) => Some((StatusCode::OK, "{\"truncated\": [").into_response()),
            None => None,
        }
    };
    let status = answer.as_ref().map_or(200, |r| r.status().as_u16());
    lock(state).requests.push(Request {
        at: Instant::now(),
        uri: uri.to_string(),
        status,
    });
    match answer {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

fn page_of(
    items: &[Value],
    q: &std::collections::HashMap<String, String>,
    ignore_paging: bool,
) -> Vec<Value> {
    let page = if ignore_paging {
        1
    } else {
        q.get("page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1)
    };
    let per_page = q
        .get("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(PAGE)
        .clamp(1, 1000);
    items
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect()
}

async fn list(
    State((state, which)): State<(St, &'static str)>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Err(r) = gate(&state, &headers, &uri).await {
        return r;
    }
    let s = lock(&state);
    let items = match which {
        "streams" => &s.streams,
        "videos" => &s.videos,
        "restreams" => &s.restreams,
        _ => &s.broadcasts,
    };
    Json(Value::Array(page_of(items, &q, s.ignore_paging))).into_response()
}

async fn one_video(
    State((state, _)): State<(St, &'static str)>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<u64>,
) -> Response {
    if let Err(r) = gate(&state, &headers, &uri).await {
        return r;
    }
    let s = lock(&state);
    match s.videos.iter().find(|v| v["id"] == id) {
        Some(v) => Json(v.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"status": 404, "error": "Not Found. Entity you are looking for was not found, please check the initial parameters"})),
        )
            .into_response(),
    }
}

impl FakeGcore {
    /// Starts on a free loopback port, accepting `key`.
    pub async fn start(key: &str) -> FakeGcore {
        let shared = Arc::new(Mutex::new(Shared {
            key: key.to_owned(),
            ..Shared::default()
        }));
        let route = |which: &'static str| {
            axum::Router::new()
                .route(&format!("/streaming/{which}"), axum::routing::get(list))
                .with_state((Arc::clone(&shared), which))
        };
        let app = route("streams")
            .merge(route("videos"))
            .merge(route("restreams"))
            .merge(route("broadcasts"))
            .merge(
                axum::Router::new()
                    .route("/streaming/videos/{id}", axum::routing::get(one_video))
                    .with_state((Arc::clone(&shared), "videos")),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGcore { shared, addr, task }
    }

    /// The API's base URL (what `[gcore] api_url` takes).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What `GET /streaming/streams` lists from now on.
    pub fn set_streams(&self, streams: Vec<Value>) {
        lock(&self.shared).streams = streams;
    }

    /// What `GET /streaming/videos` lists from now on.
    pub fn set_videos(&self, videos: Vec<Value>) {
        lock(&self.shared).videos = videos;
    }

    /// What `GET /streaming/restreams` lists from now on.
    pub fn set_restreams(&self, restreams: Vec<Value>) {
        lock(&self.shared).restreams = restreams;
    }

    /// What `GET /streaming/broadcasts` lists from now on.
    pub fn set_broadcasts(&self, broadcasts: Vec<Value>) {
        lock(&self.shared).broadcasts = broadcasts;
    }

    /// The next answers (one per request, in order) fail so.
    pub fn fail_next(&self, failures: impl IntoIterator<Item = Failure>) {
        lock(&self.shared).failures.extend(failures);
    }

    /// Every answer is 401 (a revoked key) while `on`.
    pub fn set_unauthorized(&self, on: bool) {
        lock(&self.shared).unauthorized = on;
    }

    /// Lists answer page 1 whatever `page` asks, while `on` (an API that does not page).
    pub fn set_ignore_paging(&self, on: bool) {
        lock(&self.shared).ignore_paging = on;
    }

    /// Each answer waits this long first.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.shared).delay = delay;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared).requests.clone()
    }
}

/// A stream as the API lists it.
pub fn stream(id: u64, live: bool, started_at: Option<&str>, finished_at: Option<&str>) -> Value {
    json!({
        "id": id,
        "name": format!("stream {id}"),
        "active": true,
        "live": live,
        "backup_live": false,
        "started_at_primary": started_at,
        "finished_at_primary": finished_at,
        "started_at_backup": null,
        "pull": false,
        "created_at": "2026-11-01T00:00:00.000Z",
    })
}

/// A video as the API lists it.
pub fn video(id: u64, status: &str, created_at: &str) -> Value {
    json!({
        "id": id,
        "name": format!("video {id}"),
        "slug": format!("slug{id:012}"),
        "status": status,
        "duration": 170859,
        "created_at": created_at,
        "updated_at": created_at,
        "stream_id": null,
        "record_type": null,
    })
}
