//! What every admin handler shares, below the state: the `{"error": "..."}` answer, journal
//! errors as status codes, journal calls run off the async runtime, and the `since` times that
//! replay and the console's filters take.
//!
//! It imports no sibling: every other file of `admin/` may use it.

use std::time::SystemTime;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use streamhook_core::{Journal, JournalError};

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

pub(crate) fn journal_error(e: JournalError) -> Response {
    let status = match e {
        JournalError::NoSuchDeadLetter { .. }
        | JournalError::NoSuchEvent { .. }
        | JournalError::NoSuchSink { .. } => StatusCode::NOT_FOUND,
        JournalError::AlreadyQueued { .. } => StatusCode::CONFLICT,
        JournalError::ReplayPastEnd { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

pub(crate) async fn blocking<T: Send + 'static>(
    journal: &Journal,
    f: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
) -> Result<T, Response> {
    let journal = journal.clone();
    match tokio::task::spawn_blocking(move || f(&journal)).await {
        Ok(r) => r.map_err(journal_error),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("task failed: {e}"),
        )),
    }
}

/// `since`: an RFC 3339 time, or a duration back from now (`"2h"`).
pub(crate) fn parse_since(since: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(since) {
        return Ok(t);
    }
    let ago = streamhook_core::duration::parse(since)
        .map_err(|_| format!("{since:?} is neither an RFC 3339 time nor a duration like \"2h\""))?;
    Ok(SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(SystemTime::UNIX_EPOCH))
}
