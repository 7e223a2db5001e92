//! The whole server: journal, intake, dispatchers, pruning, admin API, reload and shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use streamhook_core::dispatch::SharedRouter;
use streamhook_core::{Dispatcher, Journal, JournalConfig, Router, SinkStats};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::admin::{ReloadRequest, admin_app};
use crate::config::{ADMIN_TOKEN_FILE, Config, ConfigError};
use crate::intake::{Intake, app};
use crate::serve::{Gate, Tls, serve};

/// Where a reload reads the new configuration from.
pub type ConfigSource = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// A failure to start or run the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The journal cannot be opened.
    #[error(transparent)]
    Journal(#[from] streamhook_core::JournalError),
    /// TLS cannot be set up.
    #[error("TLS: {0}")]
    Tls(String),
    /// The admin token cannot be read or written.
    #[error("admin token: {0}")]
    AdminToken(String),
}

/// A running sink: its dispatcher task and how to stop it.
struct Running {
    name: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    stats: Arc<SinkStats>,
}

/// The server, ready to run.
pub struct Server {
    config: Config,
    journal: Journal,
    intake: Intake,
    router: SharedRouter,
    source: Option<ConfigSource>,
    reload_tx: mpsc::Sender<ReloadRequest>,
    reload_rx: mpsc::Receiver<ReloadRequest>,
    on_ready: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config.redacted())
            .finish_non_exhaustive()
    }
}

/// Asks a running server to reload its configuration.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<ReloadRequest>,
}

impl ReloadHandle {
    /// Reloads; returns a summary, or why the new config was refused (the old one stays).
    pub async fn reload(&self) -> Result<String, String> {
        let (answer, wait) = oneshot::channel();
        self.tx
            .send(answer)
            .await
            .map_err(|_| "the server is not running".to_owned())?;
        wait.await.map_err(|_| "the server stopped".to_owned())?
    }
}

impl Server {
    /// Opens the journal and checks the configuration. Nothing listens yet. For the
    /// `jetstream` backend (which connects to NATS) use [`Server::open`].
    pub fn new(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        if config.journal.backend == crate::config::JournalBackend::Jetstream {
            return Err(ServerError::Journal(streamhook_core::JournalError::write(
                streamhook_core::CauseKind::Other,
                "the jetstream journal connects to NATS: open the server with Server::open",
            )));
        }
        let journal = Journal::open(Self::journal_config(&config))?;
        Self::with_journal(config, journal)
    }

    /// Opens the journal of either backend (connecting to NATS for `jetstream`, copying the
    /// shared journal into the local mirror) and checks the configuration.
    pub async fn open(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        #[cfg(feature = "jetstream")]
        let replicated = config.journal.jetstream();
        #[cfg(not(feature = "jetstream"))]
        let replicated: Option<std::convert::Infallible> = None;
        let journal = match replicated {
            #[cfg(feature = "jetstream")]
            Some(mut remote) => {
                remote.history_max_age = config.retention.history_max_age;
                info!(
                    urls = %config
                        .journal
                        .nats_urls
                        .iter()
                        .map(|u| streamhook_core::redact_url(u))
                        .collect::<Vec<_>>()
                        .join(","),
                    stream = %remote.stream,
                    replicas = remote.replicas,
                    "journal: JetStream (shared by every receiver); the local mirror is in the data folder"
                );
                streamhook_jetstream::open(Self::journal_config(&config), &remote).await?
            }
            #[cfg(not(feature = "jetstream"))]
            Some(never) => match never {},
            None => {
                let journal_config = Self::journal_config(&config);
                tokio::task::spawn_blocking(move || Journal::open(journal_config))
                    .await
                    .map_err(|e| {
                        ServerError::Journal(streamhook_core::JournalError::write(
                            streamhook_core::CauseKind::Other,
                            e.to_string(),
                        ))
                    })??
            }
        };
        Self::with_journal(config, journal)
    }

    fn journal_config(config: &Config) -> JournalConfig {
        let mut journal_config = JournalConfig::new(&config.data_dir);
        journal_config.queue = config.limits.journal_queue;
        journal_config.cache_bytes = config.limits.journal_cache_mb.max(1) * 1024 * 1024;
        journal_config
    }

    fn with_journal(config: Config, journal: Journal) -> Result<Server, ServerError> {
        let intake = Intake::new(
            journal.clone(),
            config.source_filter()?,
            config.limits.clone(),
        );
        intake.set_strict(config.strict);
        intake.set_sink_grace(config.retention.removed_sink_grace);
        let router: SharedRouter = Arc::new(RwLock::new(Arc::new(config.router()?)));
        let (reload_tx, reload_rx) = mpsc::channel(4);
        Ok(Server {
            config,
            journal,
            intake,
            router,
            source: None,
            reload_tx,
            reload_rx,
            on_ready: None,
        })
    }

    /// Where SIGHUP and `POST /admin/reload` read the new configuration from.
    pub fn with_config_source(mut self, source: ConfigSource) -> Self {
        self.source = Some(source);
        self
    }

    /// Called once the journal is open, the sinks run and the listeners are about to be served
    /// (the binary sends systemd's `READY=1` here).
    pub fn with_on_ready(mut self, ready: impl FnOnce() + Send + 'static) -> Self {
        self.on_ready = Some(Box::new(ready));
        self
    }

    /// Binds the admin listener of the config (None when disabled; a failure is logged and
    /// the server runs without it).
    pub async fn bind_admin(&self) -> Option<TcpListener> {
        if !self.config.admin.enabled {
            return None;
        }
        match TcpListener::bind(self.config.admin.listen).await {
            Ok(l) => Some(l),
            Err(e) => {
                warn!(addr = %self.config.admin.listen, error = %e, "cannot listen for the admin API; running without it (no /readyz, /metrics)");
                None
            }
        }
    }

    /// The intake (journal, filter, metrics) behind the router.
    pub fn intake(&self) -> &Intake {
        &self.intake
    }

    /// The webhook router, to mount in another axum app.
    pub fn app(&self) -> axum::Router {
        app(self.intake.clone(), &self.config.path)
    }

    /// A handle to reload the running server.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            tx: self.reload_tx.clone(),
        }
    }

    /// The admin token: configured, or read from (or generated into) `DATA_DIR/admin.token`.
    pub fn admin_token(&self) -> Result<String, ServerError> {
        if let Some(t) = &self.config.admin.token {
            return Ok(t.clone());
        }
        let path = self.config.data_dir.join(ADMIN_TOKEN_FILE);
        if let Ok(t) = std::fs::read_to_string(&path)
            && !t.trim().is_empty()
        {
            let t = t.trim();
            if t.chars().count() < crate::config::MIN_ADMIN_TOKEN {
                return Err(ServerError::AdminToken(format!(
                    "{} holds a token of {} characters; use at least {} (or delete the file to have one generated)",
                    path.display(),
                    t.chars().count(),
                    crate::config::MIN_ADMIN_TOKEN
                )));
            }
            return Ok(t.to_owned());
        }
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        write_private(&path, &token).map_err(|e| {
            ServerError::AdminToken(format!("cannot write {}: {e}", path.display()))
        })?;
        Ok(token)
    }

    /// Runs on `listener` (and the admin listener of the config) until `shutdown` completes.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let admin = self.bind_admin().await;
        self.run_with(listener, admin, shutdown).await
    }

    /// Runs on `listener`, with the admin API on `admin` if given, until `shutdown` completes:
    /// then stops accepting, lets in-flight requests finish, stops the dispatchers (their
    /// cursors persisted, sinks flushed) and closes the journal.
    pub async fn run_with(
        mut self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let tls = self.tls()?;
        let journal = self.journal.clone();
        let held = tokio::task::spawn_blocking(move || {
            (journal.len().unwrap_or(0), journal.last_seq().unwrap_or(0))
        })
        .await
        .unwrap_or_default();
        self.log_startup(&listener, admin.as_ref(), tls.is_some(), held);
        let sinks = build_sinks(&self.config).map_err(ServerError::Config)?;
        let mut sinks_state = SinkSet {
            journal: self.journal.clone(),
            intake: self.intake.clone(),
            router: Arc::clone(&self.router),
            config: self.config.clone(),
            source: self.source.clone(),
        };
        sinks_state.prepare(&self.config).await?;
        let running = sinks_state.start(sinks);

        let (stop_tx, stop_rx) = watch::channel(false);
        let pruner = tokio::spawn(prune_loop(
            self.intake.clone(),
            self.config.retention.clone(),
            stop_rx.clone(),
        ));
        let reconciler = match self
            .config
            .reconcile_config()
            .map_err(ServerError::Config)?
        {
            Some(config) => {
                let url = config.api_url.clone();
                let reconciler =
                    streamhook_reconcile::Reconciler::new(self.journal.clone(), config).map_err(
                        |e| ServerError::Config(ConfigError::Invalid(format!("[gcore]: {e}"))),
                    )?;
                self.intake.set_reconciler(Arc::clone(&reconciler));
                info!(
                    api = %url,
                    interval = %humantime::format_duration(self.config.reconcile.interval),
                    "reconciliation with Gcore's API is on"
                );
                Some(tokio::spawn(reconciler.run_loop()))
            }
            None => None,
        };
        let admin_task = match admin {
            Some(listener) => {
                let token = self.admin_token()?;
                let port = listener.local_addr().map_or(0, |a| a.port());
                let app = admin_app(
                    self.intake.clone(),
                    token,
                    Some(self.reload_tx.clone()),
                    Some(self.router.clone()),
                    port,
                );
                let mut stop = stop_rx.clone();
                let limits = self.config.limits.clone();
                Some(tokio::spawn(async move {
                    serve(listener, app, limits, None, None, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
                }))
            }
            None => None,
        };

        // Reloads run in their own task: stopping old sinks (up to seconds) never pauses the
        // accept loop.
        let (stop_reloads, mut reloads_stopped) = oneshot::channel::<()>();
        let mut reload_rx = self.reload_rx;
        let reloader = tokio::spawn(async move {
            let mut running = running;
            loop {
                tokio::select! {
                    Some(answer) = reload_rx.recv() => {
                        let result = sinks_state.reload(&mut running).await;
                        match &result {
                            Ok(summary) => info!("reloaded: {summary}"),
                            Err(reason) => error!("reload refused, keeping the old config: {reason}"),
                        }
                        let _ = answer.send(result);
                    }
                    _ = &mut reloads_stopped => break,
                }
            }
            running
        });

        let gate = Arc::new(Gate::new(
            self.intake.clone(),
            self.config.limits.max_connections_per_peer,
        ));
        if let Some(ready) = self.on_ready.take() {
            ready();
        }
        // When shutdown starts, both listeners stop accepting and drain at once (the admin
        // API's long polls end too), so a restart waits for one drain, not two in a row.
        let intake = self.intake.clone();
        let shutdown = async move {
            shutdown.await;
            intake.begin_shutdown();
            let _ = stop_tx.send(true);
        };
        serve(
            listener,
            app(self.intake.clone(), &self.config.path),
            self.config.limits.clone(),
            tls,
            Some(gate),
            shutdown,
        )
        .await;
        info!("shutting down: no more requests; stopping sinks and closing the journal");
        let _ = stop_reloads.send(());
        let running = reloader.await.unwrap_or_default();
        if let Some(task) = reconciler {
            // A run cut short journals no half event, and the next run compares again; a
            // stream's missed session whose first step was journaled and not the rest is
            // then no longer seen (docs/reconciliation.md, known limits).
            task.abort();
        }
        stop_sinks(running).await;
        let _ = pruner.await;
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        // A replicated journal's spool: forwarded now if the stream takes it; what is left
        // stays in the data folder and is forwarded at the next start.
        if self.journal.spool_len() > 0 {
            let left = self
                .journal
                .drain(self.config.limits.shutdown_timeout)
                .await;
            if left > 0 {
                warn!(
                    spooled = left,
                    "stopping with events in the spool: they are in this data folder and go to the shared stream at the next start (keep the folder)"
                );
            } else {
                info!("the spool is forwarded");
            }
        }
        self.journal.close().await;
        info!("stopped");
        Ok(())
    }

    fn tls(&self) -> Result<Option<Tls>, ServerError> {
        match &self.config.tls {
            #[cfg(feature = "tls")]
            Some(t) => crate::serve::tls_acceptor(&t.cert, &t.key)
                .map(Some)
                .map_err(ServerError::Tls),
            #[cfg(not(feature = "tls"))]
            Some(_) => Err(ServerError::Tls(
                "this build has no TLS support (the `tls` feature)".into(),
            )),
            None => Ok(None),
        }
    }

    /// Logs what the server runs with; `held` is the journal's event count and last seq.
    fn log_startup(
        &self,
        listener: &TcpListener,
        admin: Option<&TcpListener>,
        tls: bool,
        (events, last): (u64, u64),
    ) {
        let c = &self.config;
        let addr = listener
            .local_addr()
            .map_or_else(|_| c.listen.to_string(), |a| a.to_string());
        let scheme = if tls { "https" } else { "http" };
        let tokens = c.path_tokens().len();
        let path = match tokens {
            0 => c.path.clone(),
            1 => format!("{}/<token>", c.path),
            n => format!("{}/<token> ({n} tokens accepted: a rotation)", c.path),
        };
        info!(
            "streamhook {}: listening on {scheme}://{addr}{path} (POST)",
            env!("CARGO_PKG_VERSION")
        );
        let list = |l: &[streamhook_core::Cidr]| {
            l.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        info!("allowing {}", list(&c.allow));
        if tokens == 0 && c.allow == streamhook_core::source::gcore_ranges() {
            warn!(
                "no path token: Gcore's ranges send the webhooks of every Gcore customer, so any of them can post to this server; \
                 set a secret path with --path-token (STREAMHOOK_PATH_TOKEN, `path_token`) and give Gcore the URL {}/<token>",
                c.path
            );
        }
        if c.trusted_proxies.is_empty() {
            info!("no trusted proxy: forwarding headers are ignored; the TCP peer is the source");
        } else {
            info!(
                "trusted proxies: {} (their Forwarded / X-Forwarded-For / X-Real-IP are read)",
                list(&c.trusted_proxies)
            );
        }
        info!(
            "journal {}: {events} events held, last seq {last}",
            self.journal.path().display()
        );
        for sink in &c.sinks {
            info!("sink {}", sink.describe());
        }
        for line in Router::describe(&c.routes, &c.default_sinks) {
            info!("{line}");
        }
        if let Ok(router) = c.router() {
            let invalid = streamhook_core::RouteInput {
                kinds: &[streamhook_types::EventKind::Invalid],
                type_name: "",
                origin: None,
                id: None,
            };
            if router.sinks_for(&invalid).is_empty() {
                warn!(
                    "no route sends `invalid` events (payloads that do not fit the model) to any sink: they are journaled but nobody sees them; add a route with kinds = [\"invalid\"], or a default sink"
                );
            }
        }
        if let Some(admin) = admin {
            let addr = admin
                .local_addr()
                .map_or_else(|_| c.admin.listen.to_string(), |a| a.to_string());
            let token = if c.admin.token.is_some() {
                "configured token".to_owned()
            } else {
                format!("token in {}", c.data_dir.join(ADMIN_TOKEN_FILE).display())
            };
            info!("admin API on http://{addr}/admin ({token}); /readyz and /metrics there too");
            info!(
                "console on http://{addr}/ (log in with the admin token, or open http://{addr}/?token=TOKEN)"
            );
            let ip = admin.local_addr().map_or(c.admin.listen.ip(), |a| a.ip());
            if !ip.is_loopback() {
                warn!(
                    "the admin listener {addr} is not on loopback: anyone who reaches it can read /metrics and /readyz, and try the admin token; \
                     keep it on 127.0.0.1 or behind a firewall"
                );
            }
        }
    }
}

/// The running sinks' side of the server: what a reload changes.
struct SinkSet {
    journal: Journal,
    intake: Intake,
    router: SharedRouter,
    config: Config,
    source: Option<ConfigSource>,
}

impl SinkSet {
    /// Makes the journal's sinks match `config` (off the async workers): each new sink's
    /// cursor is created where its `start` says (default: after what is journaled now); a
    /// flag-made sink renamed by an upgrade takes its old name's place; a sink no longer
    /// configured is recorded as removed (its cursor keeps holding its events for
    /// `retention.removed_sink_grace`). Done before any request is accepted (and, on reload,
    /// before the old sinks stop), so no event can slip in between "journaled" and "the sink's
    /// starting point", and a failure leaves what runs untouched.
    async fn prepare(&self, config: &Config) -> Result<(), ServerError> {
        let sinks: Vec<(String, streamhook_core::SinkStart)> = config
            .sinks
            .iter()
            .map(|s| (s.name().to_owned(), s.start().to_core()))
            .collect();
        // (new name, old name, and for a file sink its old and new position files)
        type Rename = (String, String, Option<(PathBuf, PathBuf)>);
        let renames: Vec<Rename> = config
            .sink_aliases
            .iter()
            .filter(|(_, old)| !sinks.iter().any(|(n, _)| n == old))
            .map(|(new, old)| {
                // A file sink's position file is named after the sink too.
                let positions = config.sinks.iter().find_map(|s| match s {
                    streamhook_sinks::SinkConfig::File(f) if s.name() == new => Some((
                        streamhook_sinks::file::position_file(&f.path, old),
                        streamhook_sinks::file::position_file(&f.path, new),
                    )),
                    _ => None,
                });
                (new.clone(), old.clone(), positions)
            })
            .collect();
        let journal = self.journal.clone();
        let set = tokio::task::spawn_blocking(move || {
            for (new, old, positions) in &renames {
                if journal.rename_sink(old, new)? {
                    info!(sink = %new, was = %old, "sink renamed (flag-made sinks are named by what they write to): it keeps its place");
                    if let Some((from, to)) = positions
                        && from.exists()
                        && !to.exists()
                        && let Err(e) = std::fs::rename(from, to)
                    {
                        warn!(from = %from.display(), to = %to.display(), error = %e, "cannot rename the file sink's position file; after this start it may write its last lines again");
                    }
                }
            }
            journal.configure_sinks(&sinks)
        })
        .await
        .map_err(|e| {
            ServerError::Journal(streamhook_core::JournalError::write(
                streamhook_core::CauseKind::Other,
                e.to_string(),
            ))
        })??;
        for (name, cursor, created) in set {
            if created {
                info!(sink = %name, from = cursor, "new sink: it starts at this seq");
            }
        }
        Ok(())
    }

    /// Starts a dispatcher per sink (their cursors exist: see [`SinkSet::prepare`]).
    fn start(&self, sinks: Vec<Arc<dyn streamhook_core::Sink>>) -> Vec<Running> {
        let running: Vec<Running> = sinks
            .into_iter()
            .map(|sink| {
                let name = sink.name().to_owned();
                let dispatcher = Dispatcher::new(
                    self.journal.clone(),
                    sink,
                    Arc::clone(&self.router),
                    self.config.retry.policy(),
                );
                let stats = dispatcher.stats();
                let (stop, rx) = watch::channel(false);
                let task = tokio::spawn(dispatcher.run(rx));
                Running {
                    name,
                    stop,
                    task,
                    stats,
                }
            })
            .collect();
        self.intake.set_sinks(
            running
                .iter()
                .map(|r| (r.name.clone(), Arc::clone(&r.stats)))
                .collect(),
        );
        running
    }

    /// Applies a new configuration, or refuses it whole and keeps the old one running.
    async fn reload(&mut self, running: &mut Vec<Running>) -> Result<String, String> {
        let Some(source) = &self.source else {
            return Err("no config source to reload from".into());
        };
        let source = Arc::clone(source);
        let new = tokio::task::spawn_blocking(move || source())
            .await
            .map_err(|e| format!("reading the config failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let filter = new.source_filter().map_err(|e| e.to_string())?;
        let router = new.router().map_err(|e| e.to_string())?;
        let sinks = build_sinks(&new).map_err(|e| e.to_string())?;
        let old = &self.config;
        for (what, changed) in [
            ("listen", old.listen != new.listen),
            ("path", old.path != new.path),
            ("data_dir", old.data_dir != new.data_dir),
            ("journal", old.journal != new.journal),
            ("tls", old.tls != new.tls),
            ("admin", old.admin != new.admin),
            ("limits", old.limits != new.limits),
            ("gcore", old.gcore != new.gcore),
            ("reconcile", old.reconcile != new.reconcile),
        ] {
            if changed {
                warn!("reload: `{what}` changed; it takes effect on restart");
            }
        }
        self.prepare(&new)
            .await
            .map_err(|e| format!("cannot create the sinks' cursors: {e}"))?;
        // Everything built and ready: switch. Intake never pauses; sinks restart from their
        // cursors.
        self.intake.set_filter(filter);
        self.intake.set_strict(new.strict);
        self.intake.set_sink_grace(new.retention.removed_sink_grace);
        stop_sinks(std::mem::take(running)).await;
        if let Ok(mut r) = self.router.write() {
            *r = Arc::new(router);
        }
        let mut config = new;
        config.listen = self.config.listen;
        config.path = self.config.path.clone();
        config.data_dir = self.config.data_dir.clone();
        config.tls = self.config.tls.clone();
        config.admin = self.config.admin.clone();
        config.limits = self.config.limits.clone();
        config.gcore = self.config.gcore.clone();
        config.reconcile = self.config.reconcile.clone();
        self.config = config;
        *running = self.start(sinks);
        let names = self.config.sink_names().join(", ");
        Ok(format!(
            "{} allowed ranges, {} routes, sinks: {names}",
            self.config.allow.len(),
            self.config.routes.len()
        ))
    }
}

fn build_sinks(config: &Config) -> Result<Vec<Arc<dyn streamhook_core::Sink>>, ConfigError> {
    config
        .sinks
        .iter()
        .map(|s| s.build().map_err(|e| ConfigError::Invalid(e.to_string())))
        .collect()
}

/// Stops dispatchers (all at once), waiting up to 10 s in all; one still running then is
/// aborted (its cursor stays where it was last persisted: at least once).
async fn stop_sinks(running: Vec<Running>) {
    for r in &running {
        let _ = r.stop.send(true);
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    for mut r in running {
        if tokio::time::timeout_at(deadline, &mut r.task)
            .await
            .is_err()
        {
            warn!(sink = %r.name, "dispatcher did not stop within 10s; aborting it");
            r.task.abort();
            let _ = r.task.await;
        }
    }
}

/// Deletes events every running sink has passed, per the retention settings.
async fn prune_loop(
    intake: Intake,
    retention: crate::config::Retention,
    mut stop: watch::Receiver<bool>,
) {
    if retention.max_age.is_none()
        && retention.max_events.is_none()
        && retention.history_max_age.is_none()
    {
        return;
    }
    // Histories are pruned hourly (it walks the whole table), events every `interval`.
    let mut histories_due = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(retention.interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let sinks = intake.sink_names();
        if let Err(e) = intake.journal().follow_shared_cursors(&sinks).await {
            warn!(error = %e, "cannot read the shared cursors; not pruning this time");
            continue;
        }
        let (j, s, r) = (intake.journal().clone(), sinks.clone(), retention.clone());
        let history_max_age = if tokio::time::Instant::now() >= histories_due {
            histories_due = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
            r.history_max_age
        } else {
            None
        };
        let pruned = tokio::task::spawn_blocking(move || {
            j.prune(
                &s,
                &streamhook_core::PrunePolicy {
                    max_age: r.max_age,
                    max_events: r.max_events,
                    history_max_age,
                    removed_sink_grace: r.removed_sink_grace,
                },
            )
        })
        .await;
        match pruned {
            Ok(Ok(p)) if p == streamhook_core::Pruned::default() => {}
            Ok(Ok(p)) => info!(
                events = p.events,
                histories = p.histories,
                "pruned delivered events and idle resource histories"
            ),
            Ok(Err(e)) => warn!(error = %e, "pruning failed"),
            Err(e) => warn!(error = %e, "pruning task failed"),
        }
        // The shared stream, on a replicated journal (one receiver at a time).
        match intake
            .journal()
            .prune_shared(
                &sinks,
                retention.max_age,
                retention.max_events,
                history_max_age,
            )
            .await
        {
            Ok(Some(p)) if p.events > 0 => info!(
                events = p.events,
                histories = p.histories,
                below = p.below,
                "pruned the shared stream"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "pruning the shared stream failed"),
        }
    }
}

fn write_private(path: &PathBuf, content: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options.open(path)?;
    file.write_all(content.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_dispatcher_that_will_not_stop_is_aborted_after_the_timeout() {
        let (stop, _rx) = watch::channel(false);
        // A task that ignores its stop signal, as a sink stuck in I/O would.
        let task = tokio::spawn(std::future::pending::<()>());
        let abort = task.abort_handle();
        let running = vec![Running {
            name: "stuck".into(),
            stop,
            task,
            stats: Arc::new(SinkStats::default()),
        }];
        stop_sinks(running).await;
        tokio::task::yield_now().await;
        assert!(abort.is_finished(), "the stuck dispatcher is still running");
    }
}
