//! The source filter: is this request really from Gcore?
//!
//! Gcore signs nothing, so the source address is the only proof of origin. A request starts as
//! [`Unverified`]; [`SourceFilter::verify`] turns it into [`Verified`] only when
//!
//! 1. the client address is in the allowlist. The client is the TCP peer, unless the peer is a
//!    trusted proxy: then `Forwarded` (RFC 7239), `X-Forwarded-For` and `X-Real-IP` are read
//!    right to left, skipping trusted hops. When several of them are present they must agree,
//!    so a header the proxy passes through untouched cannot override the one it sets; and
//! 2. the path token matches (when one is configured), compared in constant time. It is checked
//!    second, so a stranger learns nothing about it.
//!
//! [`SourceFilter::may_connect`] tells the accept loop which TCP peers can never pass, so they
//! are closed before a byte is read.
//!
//! Forwarding headers from a peer that is not a trusted proxy are ignored. Malformed headers
//! never panic and never grant access. IPv4-mapped IPv6 addresses are read as IPv4.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use subtle::ConstantTimeEq;

/// Gcore's documented source ranges: the default allowlist.
pub const GCORE_RANGES: &[&str] = &["92.223.112.0/24", "92.223.123.0/24"];

/// The most hops read from forwarding headers; a longer chain is refused.
pub const MAX_HOPS: usize = 32;

/// An address range (`92.223.123.0/24`, `2001:db8::/32`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Whether `ip` (IPv4-mapped IPv6 read as IPv4) is in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&canonical(ip))
    }
}

impl FromStr for Cidr {
    type Err = SourceConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            // Keep what the user wrote as the range; `92.223.123.7/24` means the /24.
            let net = match net {
                IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                    Some(v4) if v6.prefix_len() >= 96 => {
                        IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
                            .map_err(|_| SourceConfigError::BadCidr(s.to_owned()))?
                    }
                    _ => IpNet::V6(v6),
                },
                v4 => v4,
            };
            return Ok(Cidr(net.trunc()));
        }
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(Cidr(IpNet::from(canonical(ip)))),
            Err(_) => Err(SourceConfigError::BadCidr(s.to_owned())),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An address as the filter compares it: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A mistake in the source filter's configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceConfigError {
    /// Not an address or CIDR range.
    #[error("{0:?} is not an IP address or CIDR range (like 92.223.123.0/24 or 2001:db8::/32)")]
    BadCidr(String),
    /// The path token is unusable.
    #[error("the path token must be 16 to 128 characters of A-Z, a-z, 0-9, '-' or '_'")]
    BadToken,
}

/// Why a request was refused. The messages are safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The client address is not allowed.
    #[error("source address {0} is not allowed")]
    NotAllowed(IpAddr),
    /// A trusted proxy sent forwarding headers that cannot be read.
    #[error("malformed {0} header from a trusted proxy")]
    MalformedHeader(&'static str),
    /// A trusted proxy sent forwarding headers that disagree about the client.
    #[error("forwarding headers from a trusted proxy disagree about the client address")]
    ConflictingHeaders,
    /// More hops than [`MAX_HOPS`].
    #[error("too many forwarding hops")]
    TooManyHops,
    /// The path token is missing or wrong.
    #[error("missing or wrong path token")]
    BadToken,
}

/// The forwarding headers of a request, as raw values (one entry per header line).
#[derive(Debug, Clone, Default)]
pub struct ForwardingHeaders<'a> {
    /// Every `Forwarded` header value, in order.
    pub forwarded: Vec<&'a [u8]>,
    /// Every `X-Forwarded-For` header value, in order.
    pub x_forwarded_for: Vec<&'a [u8]>,
    /// Every `X-Real-IP` header value, in order.
    pub x_real_ip: Vec<&'a [u8]>,
}

/// A request whose origin has not been checked.
#[derive(Debug, Clone)]
pub struct Unverified<'a> {
    /// The TCP peer.
    pub peer: IpAddr,
    /// Its forwarding headers.
    pub headers: ForwardingHeaders<'a>,
    /// The token in the path (`/webhook/<token>`), if any.
    pub token: Option<&'a str>,
}

/// A request the filter let through. Only [`SourceFilter::verify`] makes one, so only a
/// checked request can reach the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    client: IpAddr,
    peer: IpAddr,
    rule: Option<Cidr>,
}

impl Verified {
    /// The client address the decision was made on.
    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// The TCP peer (a trusted proxy when it differs from [`Verified::client`]).
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// The allowlist entry that admitted the client (None for [`Verified::trusted_local`]).
    pub fn rule(&self) -> Option<Cidr> {
        self.rule
    }

    /// For embedding and tests: a request accepted without a filter (e.g. the CLI reading a
    /// file). Servers must use [`SourceFilter::verify`].
    pub fn trusted_local(client: IpAddr) -> Self {
        Verified {
            client,
            peer: client,
            rule: None,
        }
    }
}

/// The source filter's settings.
#[derive(Debug, Clone)]
pub struct SourceFilter {
    allow: Vec<Cidr>,
    trusted_proxies: Vec<Cidr>,
    /// Accepted path tokens (any one of them; two during a rotation).
    tokens: Vec<String>,
}

impl Default for SourceFilter {
    /// Gcore's two ranges, no trusted proxy, no token.
    fn default() -> Self {
        SourceFilter {
            allow: gcore_ranges(),
            trusted_proxies: Vec::new(),
            tokens: Vec::new(),
        }
    }
}

/// Gcore's ranges as [`Cidr`]s.
pub fn gcore_ranges() -> Vec<Cidr> {
    GCORE_RANGES.iter().filter_map(|r| r.parse().ok()).collect()
}

impl SourceFilter {
    /// A filter with this allowlist and these trusted proxies, and no token.
    pub fn new(allow: Vec<Cidr>, trusted_proxies: Vec<Cidr>) -> Self {
        SourceFilter {
            allow,
            trusted_proxies,
            tokens: Vec::new(),
        }
    }

    /// Requires `/webhook/<token>`.
    pub fn with_token(self, token: Option<String>) -> Result<Self, SourceConfigError> {
        self.with_tokens(token.into_iter().collect())
    }

    /// Requires `/webhook/<token>` with any one of `tokens` (several while a token is being
    /// rotated: the new and the old). Empty: no token.
    pub fn with_tokens(mut self, tokens: Vec<String>) -> Result<Self, SourceConfigError> {
        for t in &tokens {
            let ok = (16..=128).contains(&t.len())
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(SourceConfigError::BadToken);
            }
        }
        self.tokens = tokens;
        Ok(self)
    }

    /// The allowlist.
    pub fn allow(&self) -> &[Cidr] {
        &self.allow
    }

    /// The trusted proxies.
    pub fn trusted_proxies(&self) -> &[Cidr] {
        &self.trusted_proxies
    }

    /// Whether a path token is required.
    pub fn requires_token(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Checks a request: client address, then token.
    pub fn verify(&self, request: &Unverified<'_>) -> Result<Verified, SourceError> {
        // The source first: a stranger learns nothing about the token.
        let client = self.client_ip(request.peer, &request.headers)?;
        let Some(rule) = self.allow.iter().find(|c| c.contains(client)) else {
            return Err(SourceError::NotAllowed(client));
        };
        self.check_token(request.token)?;
        Ok(Verified {
            client,
            peer: canonical(request.peer),
            rule: Some(*rule),
        })
    }

    /// Whether a TCP peer could ever pass [`SourceFilter::verify`]: it is allowed itself, or
    /// it is a trusted proxy (whose clients are checked per request). A peer that is neither
    /// can be refused at accept, before it costs a byte of reading.
    pub fn may_connect(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.is_trusted(peer) || self.allow.iter().any(|c| c.contains(peer))
    }

    /// Whether `peer` is a trusted proxy.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        self.is_trusted(canonical(peer))
    }

    fn check_token(&self, got: Option<&str>) -> Result<(), SourceError> {
        match (self.tokens.is_empty(), got) {
            (true, None) => Ok(()),
            (true, Some(_)) | (false, None) => Err(SourceError::BadToken),
            (false, Some(got)) => {
                // Each compared in constant time, and all of them, whichever matches.
                let mut matched = subtle::Choice::from(0);
                for want in &self.tokens {
                    matched |= want.as_bytes().ct_eq(got.as_bytes());
                }
                if bool::from(matched) {
                    Ok(())
                } else {
                    Err(SourceError::BadToken)
                }
            }
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// The client address: the peer, or, when the peer is a trusted proxy, the rightmost
    /// untrusted hop of its forwarding headers (which must agree with each other).
    pub fn client_ip(
        &self,
        peer: IpAddr,
        headers: &ForwardingHeaders<'_>,
    ) -> Result<IpAddr, SourceError> {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return Ok(peer);
        }
        let chains = [
            ("Forwarded", parse_forwarded(&headers.forwarded)),
            ("X-Forwarded-For", parse_list(&headers.x_forwarded_for)),
            ("X-Real-IP", parse_list(&headers.x_real_ip)),
        ];
        let mut found: Option<IpAddr> = None;
        for (name, chain) in chains {
            let chain = match chain {
                Ok(c) if c.is_empty() => continue,
                Ok(c) => c,
                Err(HopsError::Malformed) => return Err(SourceError::MalformedHeader(name)),
                Err(HopsError::TooMany) => return Err(SourceError::TooManyHops),
            };
            let client = self.rightmost_untrusted(&chain);
            match found {
                Some(prev) if prev != client => return Err(SourceError::ConflictingHeaders),
                _ => found = Some(client),
            }
        }
        Ok(found.unwrap_or(peer))
    }

    fn rightmost_untrusted(&self, chain: &[IpAddr]) -> IpAddr {
        chain
            .iter()
            .rev()
            .copied()
            .find(|ip| !self.is_trusted(*ip))
            // Every hop is a trusted proxy: the request began at the leftmost one.
            .unwrap_or(chain[0])
    }
}

enum HopsError {
    Malformed,
    TooMany,
}

/// Reads one hop: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

/// Reads comma-separated addresses from every line of a header (`X-Forwarded-For`, `X-Real-IP`).
fn parse_list(values: &[&[u8]]) -> Result<Vec<IpAddr>, HopsError> {
    let mut hops = Vec::new();
    for value in values {
        let text = std::str::from_utf8(value).map_err(|_| HopsError::Malformed)?;
        for part in text.split(',') {
            if part.trim().is_empty() {
                continue;
            }
            if hops.len() == MAX_HOPS {
                return Err(HopsError::TooMany);
            }
            hops.push(parse_hop(part).ok_or(HopsError::Malformed)?);
        }
    }
    Ok(hops)
}

/// Reads the `for=` of each element of every `Forwarded` line (RFC 7239). An element without
/// `for=`, or with `unknown` or an obfuscated identifier, makes the chain unreadable.
fn parse_forwarded(values: &[&[u8]]) -> Result<Vec<IpAddr>, HopsError> {
    let mut hops = Vec::new();
    for value in values {
        let text = std::str::from_utf8(value).map_err(|_| HopsError::Malformed)?;
        for element in split_outside_quotes(text, ',') {
            if element.trim().is_empty() {
                continue;
            }
            if hops.len() == MAX_HOPS {
                return Err(HopsError::TooMany);
            }
            let mut for_value = None;
            for pair in split_outside_quotes(element, ';') {
                let Some((name, val)) = pair.split_once('=') else {
                    return Err(HopsError::Malformed);
                };
                if name.trim().eq_ignore_ascii_case("for") {
                    if for_value.is_some() {
                        return Err(HopsError::Malformed);
                    }
                    let val = val.trim();
                    let val = val
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(val);
                    for_value = Some(val);
                }
            }
            let hop = for_value.and_then(parse_hop).ok_or(HopsError::Malformed)?;
            hops.push(hop);
        }
    }
    Ok(hops)
}

/// Splits on `sep` where it is not inside a quoted string (quotes may hold `,` and `;`).
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `127.0.0.1`: convenient for tests and for `--allow` defaults in demos.
pub const LOOPBACK_V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[cfg(test)]
mod tests;
