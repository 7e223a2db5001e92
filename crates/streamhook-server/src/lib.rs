//! The HTTP server: an axum `Router` users can mount in their own app, and `run`.
//!
//! Laid out by the foundation and filled in by the server work.
