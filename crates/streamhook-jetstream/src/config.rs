//! The replicated journal's settings ([`JetStreamConfig`]), the limits and timings the other
//! files share, and the checks of a server's version and URL.

use std::path::PathBuf;
use std::time::Duration;

/// The oldest NATS server the replicated journal accepts: 2.9 accepted concurrent publishes
/// that expected the same last subject sequence (the compare-and-set everything rests on), and
/// 2.11 added `Nats-Expected-Last-Subject-Sequence-Subject`, which fences a stale deliverer's
/// writes of a sink's shared cursor and dead letters.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 11, 0);

/// How long a sink's lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(6);

/// How often a lease is renewed and the sink's cursor written back (twice a second: a
/// successor repeats at most about that much of a dead holder's deliveries).
pub const LEASE_RENEW: Duration = Duration::from_millis(500);

/// A mirror that made no progress for this long while the stream holds messages it lacks is
/// behind: its receiver neither takes nor keeps leases. (Idle, it checks every 5 s.)
pub const MIRROR_STALE: Duration = Duration::from_secs(20);

/// The shortest duplicate window the stream may have: a publish retried (or forwarded from
/// a spool) within it is recognised by its `Nats-Msg-Id` and stored once.
pub const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long `open` waits for a NATS server before starting without one (spooling).
pub(crate) const CONNECT_WAIT: Duration = Duration::from_secs(3);

/// How long `open` waits, once connected, for the stream and buckets (a cluster that just
/// started elects its leaders first) before starting without them (spooling).
pub(crate) const SETUP_WAIT: Duration = Duration::from_secs(20);

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
    /// How long one publish may take before it is tried again (default 10 s); a spooled
    /// event is tried until it is stored.
    pub timeout: Duration,
    /// How long an append waits for the stream before the event is kept in this receiver's
    /// spool instead (default 500 ms): the request is answered, and the event forwarded to
    /// the stream, in arrival order, once it takes events again.
    pub spool_after: Duration,
    /// How often the client pings the server (default 2 s): a dead or blackholed connection
    /// is noticed after two unanswered pings.
    pub ping_interval: Duration,
    /// How long a receiver that stopped sharing how far its mirror has copied still holds the
    /// stream's pruning back (default 1 day).
    pub mirror_grace: Duration,
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
            spool_after: Duration::from_millis(500),
            ping_interval: Duration::from_secs(2),
            mirror_grace: Duration::from_secs(24 * 3600),
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
             subject sequence, or cannot fence a stale deliverer's writes)"
        )),
        None => Err(format!("cannot read the NATS server's version {version:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_below_2_11_are_refused() {
        assert!(check_version("2.15.1").is_ok());
        assert!(check_version("v2.11.0").is_ok());
        assert!(check_version("2.12.0-beta.2").is_ok());
        assert!(check_version("3.0").is_ok());
        let err = check_version("2.10.22").unwrap_err();
        assert!(err.contains("2.11.0 or newer"), "{err}");
        assert!(check_version("2.9.10").is_err());
        assert!(check_version("banana").is_err());
    }
}
