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
}

impl Admin {
    /// `reload` reaches the running server (None: reload unsupported); `router` tells the
    /// console which sinks an event is routed to.
    pub(crate) fn new(
        intake: Intake,
        token: String,
        reload: Option<mpsc::Sender<ReloadRequest>>,
        router: Option<SharedRouter>,
    ) -> Admin {
        Admin {
            intake,
            auth: Auth::new(token),
            reload,
            router,
        }
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
