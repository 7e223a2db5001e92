//! The properties the `forwarded` fuzz target checks, shared with the regression test that
//! runs the kept corpus on stable (`crates/streamhook-core/tests/fuzz_corpus.rs`).

use std::net::IpAddr;

use streamhook_core::{Cidr, ForwardingHeaders, SourceFilter, Unverified};

/// Any header bytes (three headers separated by 0xFF): parsing never panics; an untrusted
/// peer is judged on its own address whatever the headers say; through the trusted proxy, an
/// accepted client is an address that appears in the headers.
pub fn check(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == 0xFF);
    let (forwarded, xff, real) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let allow: Vec<Cidr> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
    let filter = SourceFilter::new(allow, trusted);
    let headers = || ForwardingHeaders {
        forwarded: vec![forwarded],
        x_forwarded_for: vec![xff],
        x_real_ip: vec![real],
    };

    let outsider: IpAddr = "203.0.113.9".parse().unwrap();
    let verdict = filter.verify(&Unverified {
        peer: outsider,
        headers: headers(),
        token: None,
    });
    assert_eq!(
        verdict.map(|v| v.client()),
        Ok(outsider),
        "an untrusted peer's headers were believed"
    );

    let proxy: IpAddr = "10.1.2.3".parse().unwrap();
    if let Ok(v) = filter.verify(&Unverified {
        peer: proxy,
        headers: headers(),
        token: None,
    }) {
        let client = v.client();
        let written = addresses_in(&String::from_utf8_lossy(data));
        assert!(
            client == proxy || written.contains(&client),
            "client {client} is not among the addresses written: {written:?}"
        );
    }
}

/// Every address written in `text` (runs of hex digits, `.` and `:`, with or without a port),
/// IPv4-mapped ones read as IPv4.
fn addresses_in(text: &str) -> Vec<IpAddr> {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            t.parse::<IpAddr>()
                .ok()
                .or_else(|| t.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
                .or_else(|| {
                    t.rsplit_once(':')
                        .and_then(|(ip, _)| ip.parse::<IpAddr>().ok())
                })
        })
        .map(canonical)
        .collect()
}
