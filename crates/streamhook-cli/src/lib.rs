//! The `streamhook` command-line inspector: validate, inspect, send, tail, replay, schema.
//!
//! Laid out by the foundation and filled in by the CLI work.
