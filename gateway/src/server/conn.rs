//! Connection set-up between `accept()` and HTTP: PROXY header (if configured), then TLS (if
//! configured), each with its own deadline, in the connection's own task so a slow client never
//! stalls the accept loop. The result is a stream for hyper and a [`ConnInfo`] that every
//! request of the connection carries in its extensions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::lifecycle::Deadlines;
use super::proxy::{canonical_addr, ProxyPolicy};
use super::tls::TlsListener;
use crate::auth::authenticator::Origin;
use crate::config::Config;
use crate::metrics as m;
use crate::netconfig::{OtlpListener, ProxyMode};

/// Where a connection comes from. Put in every request's extensions by the listener.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer (the load balancer when PROXY protocol is on).
    pub peer: SocketAddr,
    /// The real client: from the PROXY header, else the TCP peer.
    pub client: SocketAddr,
    /// From the PROXY v2 AWS TLV (PrivateLink).
    pub vpc_endpoint_id: Option<String>,
    pub tls: bool,
}

impl ConnInfo {
    pub fn direct(peer: SocketAddr) -> Self {
        Self {
            peer,
            client: peer,
            vpc_endpoint_id: None,
            tls: false,
        }
    }

    pub fn origin(&self) -> Origin {
        Origin {
            client_ip: Some(self.client.ip()),
            client_addr: self.client.to_string(),
            vpc_endpoint_id: self.vpc_endpoint_id.clone(),
        }
    }
}

/// The request's origin: from the connection info the listener attached, else `peer`.
pub fn origin(extensions: &http::Extensions, peer: SocketAddr) -> Origin {
    match extensions.get::<Arc<ConnInfo>>() {
        Some(c) => c.origin(),
        None => ConnInfo::direct(peer).origin(),
    }
}

/// What happens to a connection before HTTP.
#[derive(Debug, Clone)]
pub struct ConnSetup {
    pub tls: Option<Arc<TlsListener>>,
    pub tls_timeout: Duration,
    pub proxy: Option<ProxyPolicy>,
    /// Open connections at most (`server.max_connections`).
    pub max_connections: usize,
    /// Open connections per client address at most; 0 = no limit.
    pub max_connections_per_client: usize,
    /// Head, idle and age deadlines of every connection.
    pub deadlines: Deadlines,
}

pub type Io = Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>;

impl ConnSetup {
    pub fn plain() -> Self {
        Self {
            tls: None,
            tls_timeout: Duration::from_secs(10),
            proxy: None,
            max_connections: crate::config::ServerConfig::default().max_connections,
            max_connections_per_client: 0,
            deadlines: Deadlines::default(),
        }
    }

    /// Loads the TLS material of `l` (errors name the config key) and starts its reloader.
    pub fn for_listener(cfg: &Config, l: OtlpListener) -> Result<Self> {
        let tls = match cfg.tls.resolve(l)? {
            Some(settings) => {
                let t = TlsListener::new(l, settings)?;
                if tokio::runtime::Handle::try_current().is_ok() {
                    t.spawn_reloader(Duration::from_millis(cfg.tls.reload_interval_ms));
                }
                Some(t)
            }
            None => None,
        };
        let (mode, trusted) = cfg.proxy_protocol.resolve(l);
        let proxy = (mode != ProxyMode::Off).then(|| ProxyPolicy {
            mode,
            trusted,
            timeout: Duration::from_millis(cfg.proxy_protocol.header_timeout_ms),
        });
        Ok(Self {
            tls,
            tls_timeout: Duration::from_millis(cfg.tls.handshake_timeout_ms),
            proxy,
            max_connections: cfg.server.max_connections,
            max_connections_per_client: cfg.server.max_connections_per_client,
            deadlines: Deadlines::from_config(&cfg.server),
        })
    }

    /// The admin listener's: plain, or TLS by `[tls.admin]` (reloaded like the others'); the
    /// default limits and deadlines, no PROXY.
    pub fn for_admin(cfg: &Config) -> Result<Self> {
        let mut setup = Self::plain();
        if let Some(settings) = cfg.tls.resolve(OtlpListener::Admin)? {
            let t = TlsListener::new(OtlpListener::Admin, settings)?;
            if tokio::runtime::Handle::try_current().is_ok() {
                t.spawn_reloader(Duration::from_millis(cfg.tls.reload_interval_ms));
            }
            setup.tls = Some(t);
            setup.tls_timeout = Duration::from_millis(cfg.tls.handshake_timeout_ms);
        }
        Ok(setup)
    }

    /// Checks that every OTLP listener's TLS material loads, before anything is bound.
    pub fn preflight(cfg: &Config) -> Result<()> {
        for l in OtlpListener::ALL {
            if let Some(settings) = cfg.tls.resolve(l)? {
                TlsListener::new(l, settings)?;
            }
        }
        Ok(())
    }

    /// A short description for the start-up log.
    pub fn describe(&self) -> String {
        let tls = match &self.tls {
            Some(t) if t.mtls() => "tls+mtls",
            Some(_) => "tls",
            None => "plaintext",
        };
        match &self.proxy {
            Some(p) => format!("{tls}, proxy_protocol={:?}", p.mode).to_lowercase(),
            None => tls.to_string(),
        }
    }

    /// PROXY header, then TLS handshake. `Err` = the connection was refused (already logged
    /// and counted); drop the stream.
    pub async fn establish(
        &self,
        listener: &'static str,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) -> Result<(Io, ConnInfo), ()> {
        let mut info = ConnInfo::direct(canonical_addr(peer));
        if let Some(p) = &self.proxy {
            match p.accept(&mut stream, peer).await {
                Ok(h) => {
                    if let Some(c) = h.client {
                        info.client = c;
                    }
                    info.vpc_endpoint_id = h.vpc_endpoint_id;
                }
                Err(e) => {
                    refused(listener, e.reason(), &info, &e.to_string());
                    return Err(());
                }
            }
        }
        let Some(tls) = &self.tls else {
            return Ok((Either::Left(stream), info));
        };
        match tokio::time::timeout(self.tls_timeout, tls.acceptor().accept(stream)).await {
            Ok(Ok(s)) => {
                info.tls = true;
                Ok((Either::Right(s), info))
            }
            Ok(Err(e)) => {
                refused(listener, "tls_handshake", &info, &e.to_string());
                Err(())
            }
            Err(_) => {
                refused(
                    listener,
                    "tls_timeout",
                    &info,
                    "TLS handshake did not finish in time",
                );
                Err(())
            }
        }
    }
}

/// Counts and logs a refused connection. Scanners and misconfigured clients can cause many, so
/// at most one line per second is logged at `warn`; the rest go to `debug`.
pub fn refused(listener: &'static str, reason: &'static str, info: &ConnInfo, detail: &str) {
    static LAST_WARN_SEC: AtomicU64 = AtomicU64::new(0);
    metrics::counter!(m::CONNECTIONS_REFUSED, "listener" => listener, "reason" => reason)
        .increment(1);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let vpce = info.vpc_endpoint_id.as_deref().unwrap_or("-");
    if LAST_WARN_SEC.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(listener, reason, peer = %info.peer, client = %info.client, vpce, detail, "connection refused");
    } else {
        tracing::debug!(listener, reason, peer = %info.peer, client = %info.client, vpce, detail, "connection refused");
    }
}
