//! `streamhook-server`: the binary. Reads the configuration, sets up logging and signals, and
//! runs [`streamhook_server::Server`].

#![allow(clippy::print_stdout, clippy::print_stderr)] // the binary speaks to its user here

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use streamhook_server::{Args, Config, LogFormat, Server};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("streamhook-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args, config));
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

async fn run(args: Args, config: Config) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM that arrives while the journal opens must drain and
    // exit 0, not kill the process.
    let shutdown = shutdown_signal()?;
    let listen = config.listen;
    let server = Server::new(config)?.with_config_source(Arc::new(move || Config::load(&args)));
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {listen}: {e} (choose another address with --listen or STREAMHOOK_LISTEN)")
    })?;
    let reload = server.reload_handle();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            // The outcome is logged by the server.
            let _ = reload.reload().await;
        }
    });
    server.run(listener, shutdown).await?;
    Ok(())
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
