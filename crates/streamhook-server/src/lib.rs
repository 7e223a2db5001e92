//! The streamhook server: a durable, source-checked inbox for Gcore Video Streaming webhooks.
//!
//! # Brief overview
//!
//! - [`app`] builds the whole webhook HTTP surface as an axum [`axum::Router`]:
//!   `POST /webhook`, `GET /healthz`, `GET /readyz`, `GET /metrics`. Mount it inside your own
//!   axum app, or let [`Server`] run it.
//! - [`Server`] puts everything together: the journal, the sinks' dispatchers, pruning, the
//!   admin API (replay, dead letters, tail), reload and graceful shutdown;
//!   [`Server::run`] takes a listener and a shutdown future.
//! - [`Config`] is the configuration: TOML file, `STREAMHOOK_*` variables and flags ([`Args`]).
//!
//! A webhook is answered `200 {"id", "kinds"}` only once it is in the journal, fsync'd.
//! Refusals: 403 source not allowed, 400 not JSON, 413 too large, 408 too slow, 422 not a
//! webhook, 503 (with `Retry-After`) overloaded or the journal cannot write; each with a JSON
//! body `{"error": "..."}` that says what was wrong.
//!
//! # Example
//!
//! ```no_run
//! use streamhook_server::{Config, Server};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = Config::default();
//! config.allow = vec!["127.0.0.0/8".parse()?];
//! config.data_dir = "/var/lib/streamhook".into();
//! let server = Server::new(config)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! server.run(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! `examples/embed.rs` mounts the router inside another axum app.

pub mod admin;
pub mod config;
pub mod intake;
pub mod metrics;
pub mod serve;
pub mod server;
pub mod systemd;

pub use admin::console;
pub use config::{Args, Config, ConfigError, LogFormat};
pub use intake::{Intake, app, operator_app};
pub use server::{ReloadHandle, Server, ServerError};
