//! The replicated journal's settings ([`JetStreamConfig`]), the limits and timings the other
//! files share, and the checks of a server's version and URL.

use std::path::PathBuf;
use std::time::Duration;

/// The oldest NATS server the replicated journal accepts: 2.9 accepted concurrent publishes
/// that expected the same last subject sequence (the compare-and-set everything rests on).
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 10, 0);

/// How long a sink's lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(6);

/// How often a lease is renewed and the sink's cursor written back.
pub const LEASE_RENEW: Duration = Duration::from_secs(1);

/// A mirror that made no progress for this long while the stream holds messages it lacks is
/// behind: its receiver neither takes nor keeps leases. (Idle, it checks every 5 s.)
pub const MIRROR_STALE: Duration = Duration::from_secs(20);

/// How many times an append reads and classifies again after losing a race.
pub(crate) const MAX_CONFLICTS: u32 = 1000;

/// How the replicated journal reaches JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// Server URLs; the client fails over between them.
    pub urls: Vec<String>,
    /// The stream's name (default `STREAMHOOK`); the buckets are named after it.
    pub stream: String,
    /// Replicas of the stream and buckets (default 3; 1 for a single server).
    pub replicas: usize,
    /// A credentials file (JWT and NKey seed).
    pub credentials: Option<PathBuf>,
    /// A PEM file of CA certificates for `tls://` servers.
    pub tls_ca: Option<PathBuf>,
    /// How long an append may take, retries included (default 10 s).
    pub timeout: Duration,
    /// A resource idle this long is classified as new (as the single-host journal drops its
    /// history): its last message's state is not used. `None`: kept for ever.
    pub history_max_age: Option<Duration>,
}

impl JetStreamConfig {
    /// The defaults for `urls`.
    pub fn new(urls: Vec<String>) -> Self {
        JetStreamConfig {
            urls,
            stream: "STREAMHOOK".into(),
            replicas: 3,
            credentials: None,
            tls_ca: None,
            timeout: Duration::from_secs(10),
            history_max_age: None,
        }
    }
}

/// Whether `url` is a NATS server address the client accepts (`nats://`, `tls://`, `ws://`,
/// or a bare `host:port`).
pub fn check_url(url: &str) -> Result<(), String> {
    url.parse::<async_nats::ServerAddr>()
        .map(drop)
        .map_err(|e| format!("{}: {e}", streamhook_core::redact_url(url)))
}

/// Parses `2.15.1` (also `v2.10.0-beta.1`) into numbers.
pub fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>());
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next().unwrap_or(Ok(0)).ok()?,
    ))
}

/// Refuses a server older than [`MIN_SERVER_VERSION`].
pub fn check_version(version: &str) -> Result<(), String> {
    let (a, b, c) = MIN_SERVER_VERSION;
    match parse_version(version) {
        Some(v) if v >= MIN_SERVER_VERSION => Ok(()),
        Some(_) => Err(format!(
            "NATS server {version} is too old for the replicated journal: it needs {a}.{b}.{c} \
             or newer (older servers accept concurrent publishes that expect the same last \
             subject sequence, so two receivers could both extend one resource's history)"
        )),
        None => Err(format!("cannot read the NATS server's version {version:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_below_2_10_are_refused() {
        assert!(check_version("2.15.1").is_ok());
        assert!(check_version("v2.10.0").is_ok());
        assert!(check_version("2.11.0-beta.2").is_ok());
        assert!(check_version("3.0").is_ok());
        let err = check_version("2.9.10").unwrap_err();
        assert!(err.contains("2.10.0 or newer"), "{err}");
        assert!(check_version("banana").is_err());
    }
}
