//! PROXY protocol on a listener: who may send a header, reading it off the socket with a
//! deadline, and what it means for the connection.
//!
//! - Only peers inside `trusted_cidrs` (the load balancer) may connect at all; anyone else is
//!   disconnected before a byte is read. A client that could reach the listener directly could
//!   otherwise claim any source address and VPC endpoint.
//! - The connection must start with a header of the configured version; without one it is
//!   closed. Only this first header counts: a header the client itself sent (an NLB does not
//!   strip them) comes after it, as application data, and fails the TLS or HTTP parse.
//! - The header is read exactly (16 bytes, then its declared length; v1: byte by byte up to
//!   CRLF), so no application byte is consumed and no buffering layer is needed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::proxy_header::{
    parse_v1, parse_v2, v2_total_len, ProxyError, ProxyInfo, MAX_V1_HEADER_BYTES, V2_FIXED_BYTES,
};
use crate::netconfig::ProxyMode;

#[derive(Debug, Clone)]
pub struct ProxyPolicy {
    pub mode: ProxyMode,
    pub trusted: Vec<ipnet::IpNet>,
    pub timeout: Duration,
}

/// Why a connection was closed; `reason()` is a bounded metric label.
#[derive(Debug, thiserror::Error)]
pub enum ProxyRefusal {
    #[error("peer {0} is not in proxy_protocol.trusted_cidrs")]
    Untrusted(IpAddr),
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection closed while reading the PROXY header")]
    Eof,
    #[error("{0}")]
    Header(#[from] ProxyError),
    #[error("reading the PROXY header: {0}")]
    Io(std::io::Error),
}

impl ProxyRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyRefusal::Untrusted(_) => "proxy_untrusted_source",
            ProxyRefusal::Timeout(_) => "proxy_timeout",
            ProxyRefusal::Eof | ProxyRefusal::Io(_) => "proxy_eof",
            ProxyRefusal::Header(ProxyError::NotProxyV1 | ProxyError::NotProxyV2) => {
                "proxy_missing_header"
            }
            ProxyRefusal::Header(_) => "proxy_invalid_header",
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, seen on dual-stack sockets) as plain IPv4, so IPv4
/// CIDRs match.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

pub fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

impl ProxyPolicy {
    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        let ip = canonical(peer);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Checks the peer, then reads and parses the header. On `Ok`, the stream is positioned at
    /// the first application byte.
    pub async fn accept<S: AsyncRead + Unpin>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
    ) -> Result<ProxyInfo, ProxyRefusal> {
        if !self.is_trusted(peer.ip()) {
            return Err(ProxyRefusal::Untrusted(peer.ip()));
        }
        let read = async {
            match self.mode {
                ProxyMode::V2 => read_v2(stream).await,
                ProxyMode::V1 => read_v1(stream).await,
                ProxyMode::Off => Ok(ProxyInfo::default()),
            }
        };
        let mut info = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| ProxyRefusal::Timeout(self.timeout))??;
        info.client = info.client.map(canonical_addr);
        Ok(info)
    }
}

fn io_err(e: std::io::Error) -> ProxyRefusal {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProxyRefusal::Eof
    } else {
        ProxyRefusal::Io(e)
    }
}

async fn read_v2<S: AsyncRead + Unpin>(s: &mut S) -> Result<ProxyInfo, ProxyRefusal> {
    let mut fixed = [0u8; V2_FIXED_BYTES];
    s.read_exact(&mut fixed).await.map_err(io_err)?;
    let total = v2_total_len(&fixed)?;
    let mut buf = vec![0u8; total];
    buf[..V2_FIXED_BYTES].copy_from_slice(&fixed);
    s.read_exact(&mut buf[V2_FIXED_BYTES..])
        .await
        .map_err(io_err)?;
    Ok(parse_v2(&buf)?)
}

async fn read_v1<S: AsyncRead + Unpin>(s: &mut S) -> Result<ProxyInfo, ProxyRefusal> {
    let mut line = Vec::with_capacity(MAX_V1_HEADER_BYTES);
    loop {
        let b = s.read_u8().await.map_err(io_err)?;
        line.push(b);
        if line.len() <= 6 && !b"PROXY ".starts_with(&line) {
            return Err(ProxyError::NotProxyV1.into());
        }
        if line.ends_with(b"\r\n") {
            return Ok(parse_v1(&line)?);
        }
        if line.len() >= MAX_V1_HEADER_BYTES {
            return Err(ProxyError::Invalid("v1 header longer than 107 bytes".into()).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::proxy_header::build_v2;
    use super::*;

    fn policy(mode: ProxyMode, nets: &[&str]) -> ProxyPolicy {
        ProxyPolicy {
            mode,
            trusted: nets.iter().map(|n| n.parse().unwrap()).collect(),
            timeout: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn reads_exactly_the_header() {
        let p = policy(ProxyMode::V2, &["127.0.0.0/8"]);
        let mut data = build_v2(
            "10.1.2.3:4".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
            Some("vpce-1"),
            &[],
        );
        data.extend_from_slice(b"rest");
        let mut r = &data[..];
        let info = p
            .accept(&mut r, "127.0.0.1:9".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(info.vpc_endpoint_id.as_deref(), Some("vpce-1"));
        assert_eq!(r, b"rest");
        // Mapped IPv6 peer counts as IPv4.
        let mut r = &data[..];
        p.accept(&mut r, "[::ffff:127.0.0.1]:9".parse().unwrap())
            .await
            .unwrap();
        let mut r = &data[..];
        let e = p
            .accept(&mut r, "192.0.2.1:9".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "proxy_untrusted_source");
        let mut r = &b"POST /v1/traces HTTP/1.1\r\n"[..];
        let e = p
            .accept(&mut r, "127.0.0.1:9".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "proxy_missing_header");
        let mut r = &data[..20];
        let e = p
            .accept(&mut r, "127.0.0.1:9".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "proxy_eof");
    }

    #[tokio::test]
    async fn v1_and_timeout() {
        let p = policy(ProxyMode::V1, &["0.0.0.0/0"]);
        let mut r = &b"PROXY TCP4 192.0.2.7 192.0.2.8 1000 443\r\nGET"[..];
        let info = p
            .accept(&mut r, "127.0.0.1:9".parse().unwrap())
            .await
            .unwrap();
        assert_eq!(info.client, Some("192.0.2.7:1000".parse().unwrap()));
        assert_eq!(r, b"GET");
        let mut r = &b"GET / HTTP/1.1\r\n"[..];
        assert!(p
            .accept(&mut r, "127.0.0.1:9".parse().unwrap())
            .await
            .is_err());
        let (mut a, _b) = tokio::io::duplex(64);
        let e = p
            .accept(&mut a, "127.0.0.1:9".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "proxy_timeout");
    }
}
