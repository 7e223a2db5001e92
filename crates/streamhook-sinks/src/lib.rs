//! Sinks: where accepted webhooks go (stdout, file, HTTP forwarding with signatures).
//!
//! Each sink implements `streamhook_core::Sink` and sits behind a cargo feature. This crate is
//! laid out by the foundation and filled in by the sinks work.
