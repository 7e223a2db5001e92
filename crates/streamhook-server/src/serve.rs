//! The accept loop: serves an axum router on a listener with the limits that keep slow or
//! hostile clients from holding the server, and a bounded graceful shutdown.
//!
//! - Headers must arrive within `header_timeout` (hyper's header read timer), which also
//!   closes keep-alive connections idle for that long; bodies within `body_timeout` (the
//!   handler answers 408).
//! - At most `max_connections` connections are open; further ones wait in the backlog.
//! - With a [`Gate`] (the webhook listener), a peer that can never be allowed (neither in the
//!   allowlist nor a trusted proxy) is closed at accept, before a byte is read, and no peer
//!   but a trusted proxy may hold more than `max_connections_per_peer`: strangers cannot fill
//!   the connection slots that Gcore's requests need. Both are counted in metrics; refusing an
//!   allowed peer is also logged (at most once a minute).
//! - A connection is closed gracefully after `max_connection_age`, however busy.
//! - TLS (optional) must complete its handshake within `header_timeout`.
//! - On shutdown: stop accepting, let in-flight requests finish (each connection is closed
//!   after its current request, which carries `connection: close`), give a connection that
//!   was accepted but has not sent its first request yet the header timeout (at most 5 s) to
//!   send it, and give up after `shutdown_timeout`. With an inherited socket (socket
//!   activation) the listening socket stays open in the service manager, so connections that
//!   arrive meanwhile wait in its backlog for the next process.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::config::Limits;
use crate::intake::Intake;

/// Who may hold a connection on the webhook listener, checked at accept.
#[derive(Debug)]
pub struct Gate {
    intake: Intake,
    per_peer: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
    last_warned: Mutex<Option<std::time::Instant>>,
}

impl Gate {
    /// A gate reading the intake's source filter (so a reload applies at once) and counting
    /// refusals in its metrics; `per_peer` 0 means no cap.
    pub fn new(intake: Intake, per_peer: usize) -> Self {
        Gate {
            intake,
            per_peer,
            open: Mutex::new(HashMap::new()),
            last_warned: Mutex::new(None),
        }
    }

    /// Admits `peer`, or says why not (and counts it). Trusted proxies are not capped: they
    /// carry everyone's requests, Gcore's included.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<PeerSlot> {
        let metrics = self.intake.metrics();
        let filter = self.intake.filter();
        if !filter.may_connect(peer) {
            metrics.refused_source.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let capped = self.per_peer > 0 && !filter.is_trusted_proxy(peer);
        if capped {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let n = open.entry(peer).or_default();
            if *n >= self.per_peer {
                drop(open);
                metrics.refused_peer_limit.fetch_add(1, Ordering::Relaxed);
                self.warn_peer_limit(peer);
                return None;
            }
            *n += 1;
        }
        Some(PeerSlot {
            gate: Arc::clone(self),
            peer,
            capped,
        })
    }

    /// An allowed peer was refused: it may be Gcore, so say so (at most once a minute).
    fn warn_peer_limit(&self, peer: IpAddr) {
        let now = std::time::Instant::now();
        let mut last = self.last_warned.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(60)) {
            *last = Some(now);
            warn!(%peer, limit = self.per_peer, "an allowed peer holds limits.max_connections_per_peer connections; further ones are closed at accept (if this is Gcore or your proxy, raise the limit)");
        }
    }
}

/// A connection counted against its peer's cap until dropped.
struct PeerSlot {
    gate: Arc<Gate>,
    peer: IpAddr,
    capped: bool,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if !self.capped {
            return;
        }
        let mut open = self.gate.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// A TLS acceptor, when the server terminates TLS itself.
#[cfg(feature = "tls")]
pub type Tls = tokio_rustls::TlsAcceptor;

/// Without the `tls` feature there is no TLS acceptor.
#[cfg(not(feature = "tls"))]
#[derive(Debug, Clone)]
pub enum Tls {}

/// Builds a TLS acceptor from PEM files (rustls with the ring provider).
#[cfg(feature = "tls")]
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<Tls, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("the certificate and key do not work together: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` until `shutdown` completes, then drains. With a `gate`, peers
/// are checked at accept.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    tls: Option<Tls>,
    gate: Option<Arc<Gate>>,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let http = Arc::new(http);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&connections).acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let slot = match &gate {
            Some(gate) => match gate.admit(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    // Closed at once, before a byte is read.
                    drop(stream);
                    debug!(%peer, "connection refused at accept");
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let (app, http, limits, mut stop) = (
            app.clone(),
            Arc::clone(&http),
            limits.clone(),
            stop_rx.clone(),
        );
        #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
        let tls = tls.clone();
        tokio::spawn(async move {
            #[cfg(feature = "tls")]
            if let Some(acceptor) = tls {
                match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        connection(tls_stream, peer, app, &http, &limits, &mut stop).await
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
                drop((permit, slot));
                return;
            }
            connection(stream, peer, app, &http, &limits, &mut stop).await;
            drop((permit, slot));
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it is done.
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_timeout, connections.acquire_many(all))
        .await
        .is_err()
    {
        warn!(timeout = %humantime::format_duration(limits.shutdown_timeout), "shutdown: connections still open after the timeout; closing them");
    }
}

async fn connection<I>(
    io: I,
    peer: SocketAddr,
    app: axum::Router,
    http: &hyper::server::conn::http1::Builder,
    limits: &Limits,
    stop: &mut watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Whether a request has started on this connection (and a signal when the first does).
    let first = Arc::new(tokio::sync::Notify::new());
    let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service = {
        let (first, served) = (Arc::clone(&first), Arc::clone(&served));
        hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            if !served.swap(true, Ordering::Relaxed) {
                first.notify_one();
            }
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(axum::body::Body::new))
        })
    };
    let conn = http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let age = tokio::time::sleep(limits.max_connection_age);
    tokio::pin!(age);
    let stopping = async {
        let _ = stop.wait_for(|s| *s).await;
    };
    let finished = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = stopping => None,
        _ = &mut age => None,
    };
    // Shutdown or old age: finish the request in progress, then close. A connection accepted
    // just before a restart may not have sent its request yet (it is on the way): closing it
    // now would fail that request, so it gets up to the header timeout (at most 5 s) for its
    // first request, which is then served with `connection: close`.
    let result = match finished {
        Some(r) => r,
        None => {
            let mut done = None;
            if !served.load(Ordering::Relaxed) {
                let grace = limits.header_timeout.min(std::time::Duration::from_secs(5));
                tokio::select! {
                    r = conn.as_mut() => done = Some(r),
                    _ = first.notified() => {}
                    _ = tokio::time::sleep(grace) => {}
                }
            }
            match done {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.as_mut().await
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}
