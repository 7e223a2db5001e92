//! A webhook receiver on loopback that an http sink delivers to: it records every attempt
//! (id, seq, resource, status given) and can accept, refuse with 503, or be down.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::task::JoinHandle;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 204.
    Accept,
    /// 503.
    Refuse,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// `webhook-id`.
    pub id: String,
    /// `x-streamhook-seq`.
    pub seq: u64,
    /// The resource key of the payload (`video:7`).
    pub resource: String,
    /// Whether it was accepted.
    pub accepted: bool,
    /// `x-streamhook-lease` (replicated journal: the delivering lease; 0 when absent).
    pub lease: u64,
    /// `x-receiver` (a static header a test gives each receiver's sink; empty when absent).
    pub from: String,
}

#[derive(Debug)]
struct Shared {
    mode: Mutex<Mode>,
    attempts: Mutex<Vec<Attempt>>,
}

/// The receiver; stop and start it to simulate an outage.
#[derive(Debug)]
pub struct Receiver {
    shared: Arc<Shared>,
    /// Where it listens (the same port across restarts).
    pub addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

async fn receive(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let payload: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let (kind, message) = (
        payload["type"].as_str().unwrap_or("?").to_owned(),
        &payload["message"],
    );
    let inner = message
        .as_object()
        .and_then(|m| m.values().next())
        .cloned()
        .unwrap_or_default();
    let resource = format!(
        "{}:{}",
        if kind == "video_delete" {
            "video"
        } else {
            &kind
        },
        inner["id"]
    );
    let mode = *shared.mode.lock().unwrap_or_else(|e| e.into_inner());
    let accepted = mode == Mode::Accept;
    shared
        .attempts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Attempt {
            id: header("webhook-id"),
            seq: header("x-streamhook-seq").parse().unwrap_or(0),
            resource,
            accepted,
            lease: header("x-streamhook-lease").parse().unwrap_or(0),
            from: header("x-receiver"),
        });
    if accepted {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

impl Receiver {
    /// Starts on a free loopback port.
    pub async fn start() -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Accept),
            attempts: Mutex::new(Vec::new()),
        });
        let mut r = Receiver {
            shared,
            addr,
            task: None,
        };
        r.serve(listener);
        Ok(r)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(Arc::clone(&self.shared));
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// The URL to deliver to.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers 204 or 503 from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    /// Stops listening: connections are refused.
    pub fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }

    /// Every attempt so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.shared
            .attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
