//! Tests of the source filter: allowlists over v4, v6 and mapped addresses, forwarding headers
//! from trusted and untrusted peers, tokens; property tests that parsing never panics or grants
//! access it should not.

use super::*;
use proptest::prelude::*;

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|c| c.parse().unwrap()).collect()
}

fn filter(allow: &[&str], trusted: &[&str]) -> SourceFilter {
    SourceFilter::new(cidrs(allow), cidrs(trusted))
}

struct Req<'a> {
    peer: &'a str,
    forwarded: &'a [&'a str],
    xff: &'a [&'a str],
    real_ip: &'a [&'a str],
}

const fn peer(peer: &str) -> Req<'_> {
    Req {
        peer,
        forwarded: &[],
        xff: &[],
        real_ip: &[],
    }
}

/// Checks one request against a filter: `expect` is `Ok("client")` or `Err("message")`.
fn check(f: &SourceFilter, req: Req<'_>, expect: Result<&str, &str>) {
    let headers = ForwardingHeaders {
        forwarded: req.forwarded.iter().map(|s| s.as_bytes()).collect(),
        x_forwarded_for: req.xff.iter().map(|s| s.as_bytes()).collect(),
        x_real_ip: req.real_ip.iter().map(|s| s.as_bytes()).collect(),
    };
    let request = Unverified {
        peer: req.peer.parse().unwrap(),
        headers,
        token: None,
    };
    let got = f
        .verify(&request)
        .map(|v| v.client().to_string())
        .map_err(|e| e.to_string());
    assert_eq!(
        got.as_deref().map_err(String::as_str),
        expect,
        "peer {}",
        req.peer
    );
}

#[test]
fn default_allows_both_gcore_ranges_only() {
    let f = SourceFilter::default();
    check(&f, peer("92.223.112.1"), Ok("92.223.112.1"));
    check(&f, peer("92.223.123.254"), Ok("92.223.123.254"));
    check(
        &f,
        peer("92.223.124.1"),
        Err("source address 92.223.124.1 is not allowed"),
    );
    check(
        &f,
        peer("127.0.0.1"),
        Err("source address 127.0.0.1 is not allowed"),
    );
    check(&f, peer("::1"), Err("source address ::1 is not allowed"));
}

#[test]
fn ipv4_mapped_ipv6_is_read_as_ipv4() {
    let f = SourceFilter::default();
    check(&f, peer("::ffff:92.223.123.9"), Ok("92.223.123.9"));
    check(
        &f,
        peer("::ffff:10.0.0.1"),
        Err("source address 10.0.0.1 is not allowed"),
    );
    // A mapped range in the allowlist matches plain v4 too.
    let f = filter(&["::ffff:127.0.0.0/104"], &[]);
    check(&f, peer("127.0.0.2"), Ok("127.0.0.2"));
}

#[test]
fn ipv6_ranges() {
    let f = filter(&["2001:db8::/32", "::1"], &[]);
    check(&f, peer("2001:db8:1::5"), Ok("2001:db8:1::5"));
    check(&f, peer("::1"), Ok("::1"));
    check(
        &f,
        peer("2001:db9::1"),
        Err("source address 2001:db9::1 is not allowed"),
    );
}

#[test]
fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let f = filter(&["92.223.123.0/24"], &["10.0.0.0/8"]);
    check(
        &f,
        Req {
            peer: "203.0.113.5",
            xff: &["92.223.123.7"],
            forwarded: &["for=92.223.123.7"],
            real_ip: &["92.223.123.7"],
        },
        Err("source address 203.0.113.5 is not allowed"),
    );
}

#[test]
fn through_a_trusted_proxy_the_real_client_is_used() {
    let f = filter(&["92.223.123.0/24"], &["10.0.0.0/8"]);
    check(
        &f,
        Req {
            xff: &["92.223.123.7"],
            ..peer("10.0.0.2")
        },
        Ok("92.223.123.7"),
    );
    check(
        &f,
        Req {
            real_ip: &["92.223.123.8"],
            ..peer("10.0.0.2")
        },
        Ok("92.223.123.8"),
    );
    check(
        &f,
        Req {
            forwarded: &["for=92.223.123.9;proto=https"],
            ..peer("10.0.0.2")
        },
        Ok("92.223.123.9"),
    );
    // Two proxies: the rightmost untrusted hop is the client.
    check(
        &f,
        Req {
            xff: &["92.223.123.7, 10.1.1.1"],
            ..peer("10.0.0.2")
        },
        Ok("92.223.123.7"),
    );
    // v6 in Forwarded, quoted with a port.
    let f6 = filter(&["2001:db8::/32"], &["10.0.0.0/8"]);
    check(
        &f6,
        Req {
            forwarded: &["for=\"[2001:db8:cafe::17]:4711\""],
            ..peer("10.0.0.2")
        },
        Ok("2001:db8:cafe::17"),
    );
    // A trusted proxy without headers: the proxy itself is the client.
    check(
        &f,
        peer("10.0.0.2"),
        Err("source address 10.0.0.2 is not allowed"),
    );
}

#[test]
fn a_spoofed_leftmost_hop_does_not_win() {
    // The attacker sends X-Forwarded-For: 92.223.123.7; nginx appends the attacker's address.
    let f = filter(&["92.223.123.0/24"], &["10.0.0.0/8"]);
    check(
        &f,
        Req {
            xff: &["92.223.123.7, 198.51.100.66"],
            ..peer("10.0.0.2")
        },
        Err("source address 198.51.100.66 is not allowed"),
    );
    // Forwarded split across lines is one list.
    check(
        &f,
        Req {
            forwarded: &["for=92.223.123.7", "for=198.51.100.66"],
            ..peer("10.0.0.2")
        },
        Err("source address 198.51.100.66 is not allowed"),
    );
}

#[test]
fn headers_that_disagree_are_refused() {
    // The proxy sets X-Forwarded-For; the attacker's own Forwarded header passed through.
    let f = filter(&["92.223.123.0/24"], &["10.0.0.0/8"]);
    check(
        &f,
        Req {
            forwarded: &["for=92.223.123.7"],
            xff: &["198.51.100.66"],
            ..peer("10.0.0.2")
        },
        Err("forwarding headers from a trusted proxy disagree about the client address"),
    );
    // Agreeing headers are fine.
    check(
        &f,
        Req {
            forwarded: &["for=92.223.123.7"],
            xff: &["92.223.123.7"],
            real_ip: &["92.223.123.7"],
            ..peer("10.0.0.2")
        },
        Ok("92.223.123.7"),
    );
}

#[test]
fn malformed_headers_from_a_trusted_proxy_are_refused() {
    let f = filter(&["92.223.123.0/24"], &["10.0.0.0/8"]);
    for (forwarded, xff) in [
        (&["for=unknown"][..], &[][..]),
        (&["for=_hidden"], &[]),
        (&["proto=https"], &[]),
        (&["for"], &[]),
        (&["for=1.2.3.4;for=5.6.7.8"], &[]),
        (&[], &["not-an-ip"]),
        (&[], &["92.223.123.7, 999.1.1.1"]),
    ] {
        let req = Req {
            forwarded,
            xff,
            ..peer("10.0.0.2")
        };
        let headers = ForwardingHeaders {
            forwarded: req.forwarded.iter().map(|s| s.as_bytes()).collect(),
            x_forwarded_for: req.xff.iter().map(|s| s.as_bytes()).collect(),
            x_real_ip: vec![],
        };
        let got = f.verify(&Unverified {
            peer: "10.0.0.2".parse().unwrap(),
            headers,
            token: None,
        });
        assert!(
            matches!(got, Err(SourceError::MalformedHeader(_))),
            "{forwarded:?} {xff:?}: {got:?}"
        );
    }
    let long = vec!["92.223.123.7"; MAX_HOPS + 1].join(",");
    check(
        &f,
        Req {
            xff: &[&long],
            ..peer("10.0.0.2")
        },
        Err("too many forwarding hops"),
    );
}

#[test]
fn path_tokens_are_compared_exactly() {
    let token = "s3cr3t-token-0123456789".to_owned();
    let f = SourceFilter::default()
        .with_token(Some(token.clone()))
        .unwrap();
    let req = |t: Option<&'static str>| Unverified {
        peer: "92.223.123.1".parse().unwrap(),
        headers: ForwardingHeaders::default(),
        token: t,
    };
    assert!(f.verify(&req(Some("s3cr3t-token-0123456789"))).is_ok());
    assert_eq!(
        f.verify(&req(Some("s3cr3t-token-0123456788"))),
        Err(SourceError::BadToken)
    );
    assert_eq!(f.verify(&req(None)), Err(SourceError::BadToken));
    // Without a configured token, a token in the path is refused too (no guessing game).
    assert_eq!(
        SourceFilter::default().verify(&req(Some("x"))),
        Err(SourceError::BadToken)
    );
    assert_eq!(
        SourceFilter::default()
            .with_token(Some("short".into()))
            .unwrap_err(),
        SourceConfigError::BadToken
    );
}

#[test]
fn bad_cidrs_are_reported() {
    assert_eq!(
        "92.223.123.0/33".parse::<Cidr>().unwrap_err().to_string(),
        "\"92.223.123.0/33\" is not an IP address or CIDR range (like 92.223.123.0/24 or 2001:db8::/32)"
    );
    assert!("gcore".parse::<Cidr>().is_err());
    assert_eq!(
        "92.223.123.77/24".parse::<Cidr>().unwrap().to_string(),
        "92.223.123.0/24"
    );
    assert_eq!(
        "127.0.0.1".parse::<Cidr>().unwrap().to_string(),
        "127.0.0.1/32"
    );
}

proptest! {
    #[test]
    fn cidr_contains_agrees_with_prefix_arithmetic(addr in any::<u32>(), net in any::<u32>(), len in 0u8..=32) {
        let cidr: Cidr = format!("{}/{len}", Ipv4Addr::from(net)).parse().unwrap();
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let expected = (addr & mask) == (net & mask);
        prop_assert_eq!(cidr.contains(IpAddr::V4(Ipv4Addr::from(addr))), expected);
        // The mapped form of the same address agrees.
        let mapped = IpAddr::V6(Ipv4Addr::from(addr).to_ipv6_mapped());
        prop_assert_eq!(cidr.contains(mapped), expected);
    }

    #[test]
    fn header_parsing_never_panics(forwarded in ".{0,200}", xff in ".{0,200}", real in ".{0,60}") {
        let f = filter(&["92.223.123.0/24"], &["10.0.0.0/8"]);
        let headers = ForwardingHeaders {
            forwarded: vec![forwarded.as_bytes()],
            x_forwarded_for: vec![xff.as_bytes()],
            x_real_ip: vec![real.as_bytes()],
        };
        let _ = f.verify(&Unverified { peer: "10.0.0.2".parse().unwrap(), headers, token: None });
    }

    #[test]
    fn an_untrusted_peer_is_judged_on_its_own_address(peer in any::<u32>(), xff in ".{0,100}") {
        let f = filter(&["92.223.123.0/24"], &["10.0.0.0/8"]);
        let peer = Ipv4Addr::from(peer);
        prop_assume!(!cidrs(&["10.0.0.0/8"])[0].contains(IpAddr::V4(peer)));
        let headers = ForwardingHeaders { x_forwarded_for: vec![xff.as_bytes()], ..Default::default() };
        let got = f.verify(&Unverified { peer: IpAddr::V4(peer), headers, token: None });
        let allowed = cidrs(&["92.223.123.0/24"])[0].contains(IpAddr::V4(peer));
        prop_assert_eq!(got.is_ok(), allowed);
    }

    #[test]
    fn forged_hops_left_of_an_untrusted_one_never_grant_access(forged in any::<u32>(), real in any::<u32>()) {
        let f = filter(&["92.223.123.0/24"], &["10.0.0.0/8"]);
        let real = Ipv4Addr::from(real);
        let allow = cidrs(&["92.223.123.0/24"])[0];
        let trusted = cidrs(&["10.0.0.0/8"])[0];
        prop_assume!(!allow.contains(IpAddr::V4(real)) && !trusted.contains(IpAddr::V4(real)));
        let xff = format!("{}, {real}", Ipv4Addr::from(forged));
        let headers = ForwardingHeaders { x_forwarded_for: vec![xff.as_bytes()], ..Default::default() };
        let got = f.verify(&Unverified { peer: "10.0.0.2".parse().unwrap(), headers, token: None });
        prop_assert!(got.is_err());
    }
}
