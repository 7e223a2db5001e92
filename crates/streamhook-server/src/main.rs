//! `streamhook-server`: the binary. Reads the configuration, sets up logging and signals, and
//! runs [`streamhook_server::Server`].

#![allow(clippy::print_stdout, clippy::print_stderr)] // the binary speaks to its user here

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use streamhook_server::{Args, Config, LogFormat, Server};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let arenas = limit_malloc_arenas();
    if let Some(code) = generate() {
        return code;
    }
    let args = Args::parse();
    let config = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("streamhook-server: invalid configuration: {e}");
            return ExitCode::from(if args.check_config { 1 } else { 2 });
        }
    };
    if args.print_config {
        print!("{}", config.redacted().to_toml());
        return ExitCode::SUCCESS;
    }
    if args.check_config {
        println!(
            "configuration OK: listen {}, {} allowed ranges, {} sinks ({}), {} routes",
            config.listen,
            config.allow.len(),
            config.sinks.len(),
            config.sink_names().join(", "),
            config.routes.len()
        );
        return ExitCode::SUCCESS;
    }
    init_logging(config.log_format);
    tracing::debug!("{arenas}");
    // Sockets passed by the service manager (socket activation), taken before any thread
    // starts (the protocol's variables are read, and may be unset, here).
    let inherited = match streamhook_server::systemd::inherited_listeners() {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("socket activation: {e}");
            eprintln!("streamhook-server: socket activation: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("streamhook-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args, config, inherited));
    // A write stuck in a blocking thread (a stdout pipe nobody reads) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("streamhook-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc's malloc gives every thread that allocates under contention an arena of its own (up to
/// eight per core) and keeps the memory freed in each: in an http-sink load the server held
/// 70 MiB for 25 MiB of live heap (heaptrack); with two arenas 56 MiB, the same throughput
/// (docs/performance.md). An operator's own `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` arena
/// setting wins. Returns what was chosen, for the log.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() -> &'static str {
    // glibc reads the variable only when it is a positive number.
    let tuned = std::env::var("MALLOC_ARENA_MAX")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .is_some_and(|n| n > 0)
        || std::env::var_os("GLIBC_TUNABLES")
            .is_some_and(|v| v.to_string_lossy().contains("glibc.malloc.arena_max="));
    if tuned {
        return "malloc arenas: as MALLOC_ARENA_MAX / GLIBC_TUNABLES set";
    }
    // The project's one `unsafe` (`cargo xtask ci` checks there is no other).
    // SAFETY: `mallopt` only sets an allocator parameter; it is called first thing in `main`,
    // before this process starts any thread, and takes no pointer.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) } == 1;
    if ok {
        "malloc arenas: at most 2 (set MALLOC_ARENA_MAX to choose)"
    } else {
        "malloc arenas: glibc's default (mallopt refused the limit of 2)"
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() -> &'static str {
    "malloc arenas: the platform's allocator"
}

/// `streamhook-server --generate man|complete-bash|complete-zsh|complete-fish`: a man page or
/// a completion script on stdout, for packagers (hidden from `--help`; needs no config).
fn generate() -> Option<ExitCode> {
    use clap::CommandFactory;
    let mut argv = std::env::args().skip(1);
    if argv.next().as_deref() != Some("--generate") {
        return None;
    }
    let what = argv.next().unwrap_or_default();
    let mut command = Args::command();
    let mut out = std::io::stdout().lock();
    let shell = match what.as_str() {
        "man" => {
            return Some(match clap_mangen::Man::new(command).render(&mut out) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("streamhook-server: cannot write the man page: {e}");
                    ExitCode::FAILURE
                }
            });
        }
        "complete-bash" => clap_complete::Shell::Bash,
        "complete-zsh" => clap_complete::Shell::Zsh,
        "complete-fish" => clap_complete::Shell::Fish,
        other => {
            eprintln!(
                "streamhook-server: --generate takes man, complete-bash, complete-zsh or complete-fish (not {other:?})"
            );
            return Some(ExitCode::from(2));
        }
    };
    clap_complete::generate(shell, &mut command, "streamhook-server", &mut out);
    Some(ExitCode::SUCCESS)
}

async fn run(
    args: Args,
    config: Config,
    inherited: streamhook_server::systemd::Inherited,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Signal handlers first: a SIGTERM that arrives while the journal opens must drain and
    // exit 0, and a SIGHUP must not kill the process.
    let shutdown = shutdown_signal()?;
    let mut hup =
        signal(SignalKind::hangup()).map_err(|e| anyhow::anyhow!("cannot handle SIGHUP: {e}"))?;
    let listen = config.listen;
    let admin_enabled = config.admin.enabled;
    let server = Server::open(config)
        .await?
        .with_config_source(Arc::new(move || Config::load(&args)));
    let journal = server.intake().journal().clone();
    let server = server.with_on_ready(move || {
        streamhook_server::systemd::notify_ready();
        if let Some(every) = streamhook_server::systemd::watchdog_interval() {
            tokio::spawn(watchdog(every, journal));
        }
    });
    let listener = match inherited.webhook {
        Some(l) => {
            let l = tokio::net::TcpListener::from_std(l)?;
            tracing::info!(
                "webhook listener {} inherited from the service manager (socket activation)",
                l.local_addr().map_or_else(|_| "?".into(), |a| a.to_string())
            );
            l
        }
        None => tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {listen}: {e} (choose another address with --listen or STREAMHOOK_LISTEN)")
        })?,
    };
    let admin = match inherited.admin {
        Some(l) if admin_enabled => Some(tokio::net::TcpListener::from_std(l)?),
        Some(_) => {
            tracing::warn!("admin.enabled is false: the inherited admin socket is not served");
            None
        }
        None => server.bind_admin().await,
    };
    let reload = server.reload_handle();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            // The outcome is logged by the server.
            let _ = reload.reload().await;
        }
    });
    // A dead journal writer cannot recover in this process: stop (after the usual drain),
    // and exit non-zero, so the service manager starts a fresh one while new connections
    // wait in the socket's backlog.
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shutdown = {
        let (journal, dead) = (server.intake().journal().clone(), Arc::clone(&dead));
        async move {
            let writer_died = async {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    if journal.health() == streamhook_core::Health::WriterDead {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = shutdown => {}
                _ = writer_died => {
                    dead.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::error!("the journal writer died; stopping so that the service manager restarts the server");
                }
            }
        }
    };
    server.run_with(listener, admin, shutdown).await?;
    if dead.load(std::sync::atomic::Ordering::SeqCst) {
        anyhow::bail!(
            "the journal writer died (a bug: please report it with the log); exited for a restart"
        );
    }
    Ok(())
}

/// Pings systemd's watchdog while the journal's writer lives: a dead writer cannot recover
/// without a restart, so the pings stop and systemd restarts the service.
async fn watchdog(every: std::time::Duration, journal: streamhook_core::Journal) {
    let mut tick = tokio::time::interval(every);
    let mut warned = false;
    loop {
        tick.tick().await;
        match journal.health() {
            streamhook_core::Health::WriterDead => {
                if !warned {
                    warned = true;
                    tracing::error!(
                        "the journal writer is dead: no more watchdog pings, so systemd restarts the service"
                    );
                }
            }
            streamhook_core::Health::Closed => return,
            _ => streamhook_server::systemd::notify_watchdog(),
        }
    }
}

/// Registers SIGTERM and SIGINT handlers now; the future completes on the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| anyhow::anyhow!("cannot handle SIGTERM: {e}"))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("cannot handle SIGINT: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("ctrl-c: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
        streamhook_server::systemd::notify_stopping();
    })
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("STREAMHOOK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().init(),
    }
}
