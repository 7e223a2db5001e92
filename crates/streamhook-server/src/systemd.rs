//! systemd integration: listening sockets passed by socket activation (`LISTEN_FDS`,
//! `LISTEN_PID`, `LISTEN_FDNAMES`), and `sd_notify` (`READY=1`, `STOPPING=1`, watchdog pings).
//!
//! With socket activation the service manager (or any parent that holds the sockets, as
//! `cargo xtask restart-test` does) keeps the listening sockets open across restarts, so
//! connections that arrive while one process stops and the next starts wait in the kernel's
//! backlog instead of being refused. Taking the inherited descriptors is done by the
//! `listenfd` crate (it checks `LISTEN_PID` and that each descriptor is a TCP listener);
//! naming them (`webhook`, `admin`) is read here.

use std::time::Duration;

/// The listeners the service manager passed, if any.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The webhook listener (named `webhook`, or the only one).
    pub webhook: Option<std::net::TcpListener>,
    /// The admin listener (named `admin`).
    pub admin: Option<std::net::TcpListener>,
}

/// Which inherited descriptor (by index from 0) serves which listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Assignment {
    /// The webhook listener's index.
    pub webhook: Option<usize>,
    /// The admin listener's index.
    pub admin: Option<usize>,
}

/// Assigns `count` inherited descriptors by their `LISTEN_FDNAMES` (colon-separated):
/// `webhook` and `admin` by name; with no recognised name (systemd names an unnamed socket
/// after its unit), by position: the first is the webhook listener, the second the admin one.
pub fn assign(names: Option<&str>, count: usize) -> Result<Assignment, String> {
    let mut out = Assignment::default();
    if count == 0 {
        return Ok(out);
    }
    let names: Vec<&str> = names
        .filter(|n| !n.is_empty())
        .map(|n| n.split(':').collect())
        .unwrap_or_default();
    if !names.is_empty() && names.len() != count {
        return Err(format!(
            "LISTEN_FDNAMES names {} sockets but LISTEN_FDS passes {count}",
            names.len()
        ));
    }
    let known = |n: &&str| *n == "webhook" || *n == "admin";
    if names.iter().any(known) {
        for (i, name) in names.iter().enumerate() {
            let slot = match *name {
                "webhook" => &mut out.webhook,
                "admin" => &mut out.admin,
                other => {
                    return Err(format!(
                        "socket {i} is named {other:?}; name the sockets `webhook` and `admin` (FileDescriptorName=)"
                    ));
                }
            };
            if slot.is_some() {
                return Err(format!("two sockets are named {name:?}"));
            }
            *slot = Some(i);
        }
        return Ok(out);
    }
    match count {
        1 => out.webhook = Some(0),
        2 => (out.webhook, out.admin) = (Some(0), Some(1)),
        n => {
            return Err(format!(
                "{n} sockets passed without the names `webhook` and `admin`; pass one or two, or name them (FileDescriptorName=)"
            ));
        }
    }
    Ok(out)
}

/// Takes the listeners passed by the service manager (none when `LISTEN_FDS` is unset or
/// `LISTEN_PID` names another process). Each is set non-blocking, ready for tokio.
pub fn inherited_listeners() -> Result<Inherited, String> {
    let mut fds = listenfd::ListenFd::from_env();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    let assignment = assign(names.as_deref(), fds.len())?;
    let mut take = |index: Option<usize>, what: &str| -> Result<_, String> {
        let Some(i) = index else { return Ok(None) };
        let listener = fds
            .take_tcp_listener(i)
            .map_err(|e| {
                format!(
                    "the inherited {what} socket (descriptor {}) is unusable: {e}",
                    i + 3
                )
            })?
            .ok_or_else(|| {
                format!(
                    "the inherited {what} socket (descriptor {}) was already taken",
                    i + 3
                )
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot make the {what} socket non-blocking: {e}"))?;
        Ok(Some(listener))
    };
    Ok(Inherited {
        webhook: take(assignment.webhook, "webhook")?,
        admin: take(assignment.admin, "admin")?,
    })
}

/// Tells the service manager the server is ready (a no-op without `NOTIFY_SOCKET`).
pub fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell the service manager we are ready");
    }
}

/// Tells the service manager the server is stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// The watchdog interval the service manager asked for (`WATCHDOG_USEC`), if any: pings are
/// due at half of it.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// One watchdog ping.
pub fn notify_watchdog() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_assigned_by_name_then_by_position() {
        let a = |webhook, admin| Assignment { webhook, admin };
        assert_eq!(assign(None, 0), Ok(a(None, None)));
        assert_eq!(assign(None, 1), Ok(a(Some(0), None)));
        assert_eq!(assign(Some("webhook"), 1), Ok(a(Some(0), None)));
        assert_eq!(assign(Some("admin:webhook"), 2), Ok(a(Some(1), Some(0))));
        assert_eq!(assign(Some("webhook:admin"), 2), Ok(a(Some(0), Some(1))));
        assert_eq!(assign(Some("admin"), 1), Ok(a(None, Some(0))));
        // systemd's default names (the unit's): by position.
        assert_eq!(
            assign(Some("streamhook.socket:streamhook-admin.socket"), 2),
            Ok(a(Some(0), Some(1)))
        );
        assert_eq!(assign(Some("streamhook.socket"), 1), Ok(a(Some(0), None)));
        assert_eq!(
            assign(Some("webhook:metrics"), 2).unwrap_err(),
            "socket 1 is named \"metrics\"; name the sockets `webhook` and `admin` (FileDescriptorName=)"
        );
        assert_eq!(
            assign(Some("webhook:webhook"), 2).unwrap_err(),
            "two sockets are named \"webhook\""
        );
        assert_eq!(
            assign(Some("webhook"), 2).unwrap_err(),
            "LISTEN_FDNAMES names 1 sockets but LISTEN_FDS passes 2"
        );
        assert!(assign(None, 3).is_err());
    }
}
