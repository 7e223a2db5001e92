//! The state every admin handler gets: the intake (journal, sinks, shutdown), the caller
//! checks ([`Auth`]), the way to ask the running server to reload, and the routes in force.

use std::sync::Arc;

use streamhook_core::dispatch::SharedRouter;
use tokio::sync::{mpsc, oneshot};

use super::auth::{Auth, Guard};
use crate::intake::Intake;

/// A request to reload, answered with a summary or the reason it was refused.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

#[derive(Clone)]
pub(crate) struct Admin {
    pub(crate) intake: Intake,
    auth: Auth,
    reload: Option<mpsc::Sender<ReloadRequest>>,
    router: Option<SharedRouter>,
    /// The live streams open now.
    streams: Arc<Streams>,
    /// Heavy reads (searches, timelines) running at once.
    pub(crate) reads: Arc<tokio::sync::Semaphore>,
}

/// The most live streams open at once on the listener (it takes 1,024 connections: the rest
/// stay free for probes, the CLI and the console's own calls).
pub(crate) const MAX_STREAMS: usize = 64;
/// The most live streams one console session (or the bearer token) holds.
pub(crate) const MAX_STREAMS_PER_CALLER: usize = 4;
/// Heavy reads at once.
pub(crate) const MAX_READS: usize = 2;

/// Counts the live streams, in total and per caller.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// A live stream's place, given back when dropped.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    streams: Arc<Streams>,
    caller: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

impl Admin {
    /// `reload` reaches the running server (None: reload unsupported); `router` tells the
    /// console which sinks an event is routed to.
    pub(crate) fn new(
        intake: Intake,
        token: String,
        reload: Option<mpsc::Sender<ReloadRequest>>,
        router: Option<SharedRouter>,
        port: u16,
    ) -> Admin {
        Admin {
            intake,
            auth: Auth::new(token, port),
            reload,
            router,
            streams: Arc::default(),
            reads: Arc::new(tokio::sync::Semaphore::new(MAX_READS)),
        }
    }

    /// A place for a live stream of `caller` (a session id, or `token`); `None` when the
    /// caller or the listener holds as many as they may.
    pub(crate) fn stream_slot(&self, caller: &str) -> Option<StreamSlot> {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = open.values().sum();
        let mine = open.get(caller).copied().unwrap_or(0);
        if total >= MAX_STREAMS || mine >= MAX_STREAMS_PER_CALLER {
            return None;
        }
        *open.entry(caller.to_owned()).or_default() += 1;
        Some(StreamSlot {
            streams: Arc::clone(&self.streams),
            caller: caller.to_owned(),
        })
    }

    /// The token and the guard, for the middleware in front of `/admin/*`.
    pub(crate) fn auth(&self) -> &Auth {
        &self.auth
    }

    pub(crate) fn token(&self) -> &str {
        self.auth.token()
    }

    pub(crate) fn guard(&self) -> &Guard {
        self.auth.guard()
    }

    /// Where reload requests go (None: this server cannot reload).
    pub(crate) fn reloads(&self) -> Option<&mpsc::Sender<ReloadRequest>> {
        self.reload.as_ref()
    }

    /// The routes in force (None when the server did not share them).
    pub(crate) fn router(&self) -> Option<Arc<streamhook_core::Router>> {
        self.router
            .as_ref()
            .and_then(|r| r.read().ok().map(|r| Arc::clone(&r)))
    }
}

/// Who made an admin call, as the audit log names them: `console session 3f2a9c1e` or
/// `token` (the CLI), with the client's address.
#[derive(Debug, Clone)]
pub(crate) struct Who(pub(crate) String);

impl axum::extract::FromRequestParts<Admin> for Who {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        admin: &Admin,
    ) -> Result<Who, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
        let bearer = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes().starts_with(b"Bearer "));
        let who = if bearer {
            format!("token (CLI) from {peer}")
        } else {
            match super::auth::session(&parts.headers, admin.auth()) {
                Some(id) => format!("console session {} from {peer}", &id[..id.len().min(8)]),
                None => format!("unknown from {peer}"),
            }
        };
        Ok(Who(who))
    }
}

impl Admin {
    /// Records an operator's action in the journal's audit log (a failure to record is
    /// logged: the action is done either way).
    pub(crate) async fn record(&self, who: &Who, action: &str, detail: String) {
        let entry = streamhook_core::AuditEntry {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            who: who.0.clone(),
            action: action.to_owned(),
            detail,
        };
        tracing::info!(who = %entry.who, action = %entry.action, detail = %entry.detail, "operator action");
        let journal = self.intake.journal().clone();
        let stored = tokio::task::spawn_blocking(move || journal.audit(&entry)).await;
        if !matches!(stored, Ok(Ok(()))) {
            tracing::warn!("cannot record the operator's action in the audit log");
        }
    }
}
