//! PROXY protocol header parsing (pure: bytes in, facts out; no I/O, no policy).
//!
//! The framing and TLV walk come from the `ppp` crate, which bounds every read by the header's
//! own declared length. On top of it this module decides what tracegate accepts:
//! - v2 only with the `PROXY` or `LOCAL` command; `PROXY` must carry a TCP IPv4/IPv6 source
//!   (UNSPEC, UNIX and datagram headers are refused: we would not know who the client is);
//! - every TLV must be well-formed (a TLV running past the header, or leftover bytes, refuse the
//!   whole header);
//! - the AWS TLV (type `0xEA`) with subtype `0x01` is the VPC endpoint id: at most one, 1–64
//!   printable ASCII characters;
//! - the whole header is at most [`MAX_V2_HEADER_BYTES`].
//!
//! This file depends on `std` and `ppp` only, so the fuzz target (`fuzz/`) compiles it on its own
//! with `#[path]`, without the rest of the gateway.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte v2 signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Fixed part of a v2 header: signature, version/command, family/protocol, length.
pub const V2_FIXED_BYTES: usize = 16;
/// Largest v2 header (fixed part + addresses + TLVs) we accept. An AWS NLB header is under 100
/// bytes (IPv6 addresses 36 + VPC endpoint TLV ~26); HAProxy's SSL TLVs stay well below this.
pub const MAX_V2_HEADER_BYTES: usize = 4096;
/// A v1 header, `PROXY … \r\n` included, is at most this long (spec).
pub const MAX_V1_HEADER_BYTES: usize = 107;
/// AWS PrivateLink TLV type and its VPC endpoint id subtype.
pub const PP2_TYPE_AWS: u8 = 0xEA;
pub const PP2_SUBTYPE_AWS_VPCE_ID: u8 = 0x01;
/// Longest VPC endpoint id we accept (real ones are `vpce-` + 17 hex digits).
pub const MAX_VPCE_ID_LEN: usize = 64;

/// What a valid header says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyInfo {
    /// The original client's address; `None` for a `LOCAL` header (health checks from the
    /// proxy itself: use the TCP peer).
    pub client: Option<SocketAddr>,
    /// From the AWS TLV `0xEA`/`0x01`.
    pub vpc_endpoint_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("connection did not start with a PROXY protocol v2 signature")]
    NotProxyV2,
    #[error("connection did not start with a PROXY protocol v1 header")]
    NotProxyV1,
    #[error("PROXY v2 header of {0} bytes is over the {MAX_V2_HEADER_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("truncated PROXY header")]
    Truncated,
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    #[error("invalid PROXY v2 TLV: {0}")]
    BadTlv(String),
    #[error("unsupported PROXY header: {0}")]
    Unsupported(&'static str),
}

/// Total length (fixed part included) of the v2 header whose first 16 bytes are `fixed`, after
/// checking the signature, version and size bound. Read exactly this many bytes, then call
/// [`parse_v2`]: no byte after the header is ever consumed.
pub fn v2_total_len(fixed: &[u8]) -> Result<usize, ProxyError> {
    if fixed.len() < V2_FIXED_BYTES {
        return if V2_SIGNATURE.starts_with(&fixed[..fixed.len().min(12)]) {
            Err(ProxyError::Truncated)
        } else {
            Err(ProxyError::NotProxyV2)
        };
    }
    if &fixed[..12] != V2_SIGNATURE {
        return Err(ProxyError::NotProxyV2);
    }
    if fixed[12] & 0xF0 != 0x20 {
        return Err(ProxyError::Invalid(format!(
            "version {:#x}, expected 2",
            fixed[12] >> 4
        )));
    }
    let len = V2_FIXED_BYTES + u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    if len > MAX_V2_HEADER_BYTES {
        return Err(ProxyError::TooLarge(len));
    }
    Ok(len)
}

/// Parses one complete v2 header (`buf` must be exactly the header: see [`v2_total_len`]).
pub fn parse_v2(buf: &[u8]) -> Result<ProxyInfo, ProxyError> {
    use ppp::v2::{Addresses, Command, Header, ParseError, Protocol};
    let total = v2_total_len(buf)?;
    if buf.len() < total {
        return Err(ProxyError::Truncated);
    }
    if buf.len() > total {
        return Err(ProxyError::Invalid(format!(
            "{} bytes after the header's declared end",
            buf.len() - total
        )));
    }
    let header = Header::try_from(buf).map_err(|e| match e {
        ParseError::Incomplete(_) | ParseError::Partial(..) => ProxyError::Truncated,
        e => ProxyError::Invalid(e.to_string()),
    })?;
    if header.command == Command::Local {
        // The proxy's own connection (e.g. a health check): "the receiver must use the real
        // connection endpoints and discard the protocol block".
        return Ok(ProxyInfo::default());
    }
    if header.protocol != Protocol::Stream {
        return Err(ProxyError::Unsupported("only TCP (STREAM) is supported"));
    }
    let client = match header.addresses {
        Addresses::IPv4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
        Addresses::IPv6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
        Addresses::Unspecified => {
            return Err(ProxyError::Unsupported(
                "PROXY command without a source address (AF_UNSPEC)",
            ))
        }
        Addresses::Unix(_) => return Err(ProxyError::Unsupported("AF_UNIX addresses")),
    };
    let mut vpce: Option<String> = None;
    for tlv in header.tlvs() {
        let tlv = tlv.map_err(|e| ProxyError::BadTlv(e.to_string()))?;
        if tlv.kind != PP2_TYPE_AWS {
            continue;
        }
        let Some((&subtype, value)) = tlv.value.split_first() else {
            return Err(ProxyError::BadTlv("empty AWS TLV".into()));
        };
        if subtype != PP2_SUBTYPE_AWS_VPCE_ID {
            continue;
        }
        if vpce.is_some() {
            return Err(ProxyError::BadTlv("more than one VPC endpoint id".into()));
        }
        vpce = Some(vpce_id(value)?);
    }
    Ok(ProxyInfo {
        client: Some(client),
        vpc_endpoint_id: vpce,
    })
}

fn vpce_id(value: &[u8]) -> Result<String, ProxyError> {
    if value.is_empty() || value.len() > MAX_VPCE_ID_LEN {
        return Err(ProxyError::BadTlv(format!(
            "VPC endpoint id of {} bytes (1 to {MAX_VPCE_ID_LEN} allowed)",
            value.len()
        )));
    }
    if !value
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    {
        return Err(ProxyError::BadTlv(
            "VPC endpoint id holds characters other than [A-Za-z0-9_-]".into(),
        ));
    }
    // Checked ASCII above, so this cannot fail.
    String::from_utf8(value.to_vec()).map_err(|_| ProxyError::BadTlv("not UTF-8".into()))
}

/// Parses one v1 header line, `\r\n` included (at most [`MAX_V1_HEADER_BYTES`]).
pub fn parse_v1(line: &[u8]) -> Result<ProxyInfo, ProxyError> {
    use ppp::v1::{Addresses, Header};
    if line.len() > MAX_V1_HEADER_BYTES {
        return Err(ProxyError::Invalid(
            "v1 header longer than 107 bytes".into(),
        ));
    }
    if !line.starts_with(b"PROXY ") {
        return Err(ProxyError::NotProxyV1);
    }
    if !line.ends_with(b"\r\n") {
        return Err(ProxyError::Truncated);
    }
    // ASCII only, and CR only in the final CRLF. `ppp` (2.3.0) slices its `&str` input at the
    // first CR + 2 bytes, which panics when a multi-byte character follows that CR (found by the
    // fuzz target; regression test `v1_non_ascii_after_cr_is_refused_not_a_panic`).
    if !line.is_ascii() || line[..line.len() - 2].contains(&b'\r') {
        return Err(ProxyError::Invalid(
            "v1 header is not a single ASCII line".into(),
        ));
    }
    let text = std::str::from_utf8(line).map_err(|_| ProxyError::Invalid("not ASCII".into()))?;
    let header = Header::try_from(text).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    match header.addresses {
        Addresses::Tcp4(a) => Ok(ProxyInfo {
            client: Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
            vpc_endpoint_id: None,
        }),
        Addresses::Tcp6(a) => Ok(ProxyInfo {
            client: Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
            vpc_endpoint_id: None,
        }),
        Addresses::Unknown => Err(ProxyError::Unsupported("v1 UNKNOWN")),
    }
}

/// Builds a v2 header for this crate's unit tests: TCP `PROXY` command from `src` to `dst`, with
/// the AWS VPC endpoint TLV when `vpce` is given, then `extra_tlvs` raw. (The integration tests
/// build theirs with the `ppp` crate, independently of this code.)
#[cfg(test)]
pub fn build_v2(
    src: SocketAddr,
    dst: SocketAddr,
    vpce: Option<&str>,
    extra_tlvs: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    let fam = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            0x11
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
            body.extend_from_slice(&s.port().to_be_bytes());
            body.extend_from_slice(&d.port().to_be_bytes());
            0x21
        }
    };
    if let Some(id) = vpce {
        body.push(PP2_TYPE_AWS);
        body.extend_from_slice(&((id.len() + 1) as u16).to_be_bytes());
        body.push(PP2_SUBTYPE_AWS_VPCE_ID);
        body.extend_from_slice(id.as_bytes());
    }
    body.extend_from_slice(extra_tlvs);
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    out.push(fam);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Parses `data` as a stream would: fixed part, then the declared length. Used by the fuzz
/// target and the property tests, so both exercise exactly the code path of the listener.
pub fn parse_v2_stream(data: &[u8]) -> Result<(ProxyInfo, usize), ProxyError> {
    let total = v2_total_len(&data[..data.len().min(V2_FIXED_BYTES)])?;
    if data.len() < total {
        return Err(ProxyError::Truncated);
    }
    parse_v2(&data[..total]).map(|i| (i, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn aws_header_with_vpce() {
        let h = build_v2(
            a("10.1.2.3:5555"),
            a("10.0.0.1:4318"),
            Some("vpce-0123456789abcdef0"),
            &[],
        );
        let (info, n) = parse_v2_stream(&h).unwrap();
        assert_eq!(n, h.len());
        assert_eq!(info.client, Some(a("10.1.2.3:5555")));
        assert_eq!(
            info.vpc_endpoint_id.as_deref(),
            Some("vpce-0123456789abcdef0")
        );
        // IPv6 too, and the bytes after the header are not part of it.
        let mut h6 = build_v2(
            a("[2001:db8::1]:1"),
            a("[2001:db8::2]:2"),
            Some("vpce-x"),
            &[],
        );
        let len = h6.len();
        h6.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (info, n) = parse_v2_stream(&h6).unwrap();
        assert_eq!(n, len);
        assert_eq!(info.client, Some(a("[2001:db8::1]:1")));
    }

    #[test]
    fn other_tlvs_are_skipped_and_other_aws_subtypes_ignored() {
        // NOOP TLV, AWS subtype 0x02, then the endpoint id.
        let extra = [0x04, 0, 2, 0, 0, 0xEA, 0, 2, 0x02, b'z'];
        let h = build_v2(a("1.2.3.4:1"), a("5.6.7.8:2"), None, &extra);
        assert_eq!(parse_v2(&h).unwrap().vpc_endpoint_id, None);
        let h = build_v2(a("1.2.3.4:1"), a("5.6.7.8:2"), Some("vpce-a"), &extra);
        assert_eq!(
            parse_v2(&h).unwrap().vpc_endpoint_id.as_deref(),
            Some("vpce-a")
        );
    }

    #[test]
    fn refusals() {
        let src = a("1.2.3.4:1");
        let dst = a("5.6.7.8:2");
        // Missing header / HTTP.
        assert_eq!(
            parse_v2_stream(b"POST /v1/traces HTTP/1.1\r\n"),
            Err(ProxyError::NotProxyV2)
        );
        // A TLV whose length runs past the header.
        let h = build_v2(src, dst, None, &[0xEA, 0x10, 0x00, 0x01, b'v']);
        assert!(
            matches!(parse_v2(&h), Err(ProxyError::BadTlv(_))),
            "{:?}",
            parse_v2(&h)
        );
        // Leftover bytes too short for a TLV.
        let h = build_v2(src, dst, None, &[0xEA, 0x00]);
        assert!(matches!(parse_v2(&h), Err(ProxyError::BadTlv(_))));
        // Truncated: declared length longer than what arrived.
        let h = build_v2(src, dst, Some("vpce-a"), &[]);
        assert_eq!(
            parse_v2_stream(&h[..h.len() - 1]),
            Err(ProxyError::Truncated)
        );
        assert_eq!(parse_v2_stream(&h[..10]), Err(ProxyError::Truncated));
        // Oversized: declared length over the limit.
        let mut big = h.clone();
        big[14] = 0xFF;
        big[15] = 0xFF;
        assert_eq!(
            parse_v2_stream(&big),
            Err(ProxyError::TooLarge(16 + 0xFFFF))
        );
        // Endpoint id: too long, bad characters, empty, twice.
        let long = "v".repeat(MAX_VPCE_ID_LEN + 1);
        assert!(parse_v2(&build_v2(src, dst, Some(&long), &[])).is_err());
        assert!(parse_v2(&build_v2(src, dst, Some("vpce a"), &[])).is_err());
        assert!(parse_v2(&build_v2(src, dst, Some(""), &[])).is_err());
        assert!(parse_v2(&build_v2(src, dst, None, &[0xEA, 0, 0])).is_err());
        let twice = [0xEA, 0, 3, 1, b'a', b'b'];
        assert!(parse_v2(&build_v2(src, dst, Some("vpce-a"), &twice)).is_err());
        // Version 1 in the binary header, datagram, UNSPEC with PROXY.
        let mut v = h.clone();
        v[12] = 0x11;
        assert!(parse_v2(&v).is_err());
        let mut v = h.clone();
        v[13] = 0x12;
        assert!(parse_v2(&v).is_err());
        let mut unspec = V2_SIGNATURE.to_vec();
        unspec.extend_from_slice(&[0x21, 0x00, 0, 0]);
        assert!(parse_v2(&unspec).is_err());
    }

    #[test]
    fn local_command_uses_the_tcp_peer() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse_v2(&h).unwrap(), ProxyInfo::default());
    }

    #[test]
    fn v1() {
        let i = parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n").unwrap();
        assert_eq!(i.client, Some(a("192.0.2.1:56324")));
        assert!(parse_v1(b"PROXY UNKNOWN\r\n").is_err());
        assert!(parse_v1(b"GET / HTTP/1.1\r\n").is_err());
        assert!(parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443").is_err());
        assert!(parse_v1(b"PROXY TCP4 300.0.2.1 198.51.100.1 56324 443\r\n").is_err());
    }

    #[test]
    fn v1_non_ascii_after_cr_is_refused_not_a_panic() {
        // Minimised from fuzz/artifacts: a CR followed by a 4-byte UTF-8 character.
        let mut line = b"PROXY \x1b\x00A\r\xf3\xae\xaa\xb2P".to_vec();
        line.extend_from_slice(b"\r\n");
        assert!(parse_v1(&line).is_err());
        assert!(parse_v1(b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n").is_err());
        assert!(parse_v1("PROXY TCP4 1.2.3.4 5.6.7.8 1 2é\r\n".as_bytes()).is_err());
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn any_addr() -> impl Strategy<Value = SocketAddr> {
            prop_oneof![
                (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
                (any::<[u16; 8]>(), any::<u16>())
                    .prop_map(|(ip, p)| SocketAddr::from((std::net::Ipv6Addr::from(ip), p))),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// Arbitrary bytes never panic, and a success never claims more bytes than given.
            #[test]
            fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
                if let Ok((_, n)) = parse_v2_stream(&data) {
                    prop_assert!(n <= data.len());
                }
                let _ = parse_v1(&data);
            }

            /// v1 lines with arbitrary Unicode and stray CRs (the class of input that made
            /// `ppp` panic) are parsed or refused, never a panic.
            #[test]
            fn random_v1_lines(body in "(\\PC|\r| |TCP4|TCP6|[0-9.:]){0,40}") {
                let line = format!("PROXY {body}\r\n");
                let _ = parse_v1(line.as_bytes());
            }

            /// Random bytes behind a valid signature reach the deep paths (families, TLVs).
            #[test]
            fn random_after_signature(
                cmd in any::<u8>(), fam in any::<u8>(),
                body in proptest::collection::vec(any::<u8>(), 0..200),
                lie in 0u16..400,
            ) {
                let mut h = V2_SIGNATURE.to_vec();
                h.push(cmd);
                h.push(fam);
                h.extend_from_slice(&lie.to_be_bytes());
                h.extend_from_slice(&body);
                if let Ok((_, n)) = parse_v2_stream(&h) {
                    prop_assert_eq!(n, 16 + lie as usize);
                }
            }

            /// Valid headers round-trip; any truncation or TLV-length corruption is refused.
            #[test]
            fn built_headers_round_trip_and_mutations_fail_cleanly(
                src in any_addr(), dst in any_addr(),
                id in "[a-z0-9-]{1,64}",
                cut in any::<usize>(), flip in any::<usize>(), byte in any::<u8>(),
            ) {
                let h = build_v2(src, dst, Some(&id), &[]);
                let (info, n) = parse_v2_stream(&h).unwrap();
                prop_assert_eq!(n, h.len());
                prop_assert_eq!(info.vpc_endpoint_id.as_deref(), Some(id.as_str()));
                let want = match (src, dst) {
                    (SocketAddr::V4(_), SocketAddr::V4(_)) => src,
                    _ => SocketAddr::new(match src.ip() {
                        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
                        ip => ip,
                    }, src.port()),
                };
                prop_assert_eq!(info.client, Some(want));
                let cut = cut % h.len();
                prop_assert!(parse_v2_stream(&h[..cut]).is_err());
                let mut m = h.clone();
                let i = flip % m.len();
                m[i] = byte;
                let _ = parse_v2_stream(&m);
            }
        }
    }
}
