//! Load: clients POSTing payloads continuously, recording every id answered 200.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

/// What the load saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Id -> resource key of every event answered 200.
    pub acked: Mutex<HashMap<String, String>>,
    /// Answers other than 200, by status (0: no answer).
    pub refused: Mutex<HashMap<u16, u64>>,
    /// Requests sent.
    pub sent: AtomicU64,
}

/// Running load.
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
    /// `clients` tasks POSTing to `url` until stopped; `pad` bytes of padding per payload.
    pub fn start(url: String, clients: usize, resources: u64, pad: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let tasks = (0..clients as u64)
            .map(|c| {
                let (stop, tally, client, url) = (
                    Arc::clone(&stop),
                    Arc::clone(&tally),
                    client.clone(),
                    url.clone(),
                );
                tokio::spawn(async move {
                    let mut round = 0;
                    while !stop.load(Ordering::Relaxed) {
                        round += 1;
                        let n = c * 1_000_000 + (round % resources);
                        let (body, resource) = payload(n, round / resources, pad);
                        tally.sent.fetch_add(1, Ordering::Relaxed);
                        match client.post(&url).body(body).send().await {
                            Ok(resp) if resp.status().as_u16() == 200 => {
                                if let Ok(v) = resp.json::<serde_json::Value>().await
                                    && let Some(id) = v["id"].as_str()
                                {
                                    tally
                                        .acked
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .insert(id.to_owned(), resource);
                                }
                            }
                            Ok(resp) => {
                                *tally
                                    .refused
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .entry(resp.status().as_u16())
                                    .or_default() += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(_) => {
                                *tally
                                    .refused
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .entry(0)
                                    .or_default() += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, tasks, tally }
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
