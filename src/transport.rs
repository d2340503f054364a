//! The one network seam for outgoing connections. Every channel this crate opens — to peers,
//! to the leader for forwarded calls, from the client — comes from a [`Dialer`]. By default it
//! dials TCP; the deterministic simulation gives it a connector over its simulated network,
//! and every other line of gRPC code stays the same. With [`Dialer::with_tls`] every connection
//! is TLS over that byte stream, verifying the name the caller expects (the dialled host, or a
//! member's name on the peer plane: [`crate::tls::member_name`]).

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::wire::ADDR_BYTES_MAX;

/// A byte stream to another server.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens a byte stream to `host:port`.
pub type Connector =
    Arc<dyn Fn(String) -> BoxFuture<'static, io::Result<Box<dyn Io>>> + Send + Sync>;

/// The TLS a dialer speaks: the client config in force, taken at each new connection (so a
/// reload applies to connections opened after it).
pub type TlsDial = Arc<dyn Fn() -> Arc<rustls::ClientConfig> + Send + Sync>;

/// How long a channel may take to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Cached channels kept at most (addresses come from the replicated membership or the
/// client's endpoint list; bounded all the same).
pub(crate) const CACHED_MAX: usize = 1024;

/// Builds channels, and caches one per address. Cloning shares the cache. A channel's worker
/// task lives on the tokio runtime that created it, so a dialer (and its cache) belongs to one
/// server or client.
#[derive(Clone, Default)]
pub struct Dialer {
    connector: Option<Connector>,
    tls: Option<TlsDial>,
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field("connector", &self.connector.as_ref().map(|_| "custom"))
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// Dials through `connector` instead of TCP.
    pub fn with_connector(connector: Connector) -> Dialer {
        Dialer {
            connector: Some(connector),
            tls: None,
            channels: Arc::default(),
        }
    }

    /// This dialer speaking TLS with `tls` on every connection it opens.
    pub fn with_tls(mut self, tls: TlsDial) -> Dialer {
        self.tls = Some(tls);
        self.channels = Arc::default();
        self
    }

    /// A new lazily connected channel to `addr` (`host:port`) that reconnects by itself; with
    /// TLS it verifies that the server's certificate names `host`.
    pub fn dial(
        &self,
        addr: &str,
        connect_timeout: Duration,
    ) -> Result<Channel, tonic::transport::Error> {
        self.dial_named(addr, None, connect_timeout)
    }

    /// [`Dialer::dial`], verifying (with TLS) that the server's certificate names `name`
    /// instead of the dialled host. Keepalive: a silently dead peer (a partition that drops
    /// packets) is noticed in seconds, not when TCP gives up, so streams and channels get
    /// rebuilt.
    pub fn dial_named(
        &self,
        addr: &str,
        name: Option<&str>,
        connect_timeout: Duration,
    ) -> Result<Channel, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        if self.connector.is_none() && self.tls.is_none() {
            return Ok(endpoint.connect_lazy());
        }
        let connector = self.connector.clone();
        let tls = self.tls.clone();
        let addr = addr.to_string();
        let name = name.map_or_else(|| host_of(&addr).to_string(), str::to_string);
        Ok(
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let (addr, name) = (addr.clone(), name.clone());
                let (connector, tls) = (connector.clone(), tls.clone());
                async move {
                    let io: Box<dyn Io> = match &connector {
                        Some(c) => c(addr.clone()).await?,
                        None => {
                            let s = tokio::net::TcpStream::connect(&addr).await?;
                            s.set_nodelay(true)?;
                            Box::new(s)
                        }
                    };
                    let io = match tls {
                        None => io,
                        Some(tls) => handshake(io, &addr, &name, tls()).await?,
                    };
                    Ok::<_, io::Error>(TokioIo::new(io))
                }
            })),
        )
    }

    /// The cached channel to `addr`, dialled on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.channel_named(addr, None)
    }

    /// The cached channel to `addr` whose server must be `name` ([`Dialer::dial_named`]).
    pub fn channel_named(
        &self,
        addr: &str,
        name: Option<&str>,
    ) -> Result<Channel, tonic::transport::Error> {
        let key = cache_key(addr, name);
        let mut channels = self.channels.lock().expect("channel cache");
        if let Some(c) = channels.get(&key) {
            return Ok(c.clone());
        }
        if channels.len() >= CACHED_MAX {
            channels.clear();
        }
        let c = self.dial_named(addr, name, CONNECT_TIMEOUT)?;
        channels.insert(key, c.clone());
        Ok(c)
    }

    /// Drops the cached channel to `addr`: the next call dials afresh. For a call that timed
    /// out — its connection may be stalled rather than closed.
    pub fn forget(&self, addr: &str) {
        self.forget_named(addr, None)
    }

    /// [`Dialer::forget`] for a channel from [`Dialer::channel_named`].
    pub fn forget_named(&self, addr: &str, name: Option<&str>) {
        self.channels
            .lock()
            .expect("channel cache")
            .remove(&cache_key(addr, name));
    }
}

fn cache_key(addr: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("{n}@{addr}"),
        None => addr.to_string(),
    }
}

/// The host of `host:port`, without an IPv6 address's brackets.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The client side of a TLS handshake over `io`, verifying the server's certificate names
/// `name`. Errors say what failed and where, in words an operator can act on.
async fn handshake(
    io: Box<dyn Io>,
    addr: &str,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> io::Result<Box<dyn Io>> {
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TLS to {addr}: {name:?} is not a DNS name or IP address"),
        )
    })?;
    match tokio_rustls::TlsConnector::from(config)
        .connect(server_name, io)
        .await
    {
        Ok(s) => Ok(Box::new(s)),
        Err(e) => {
            let hint = if e.to_string().contains("InvalidContentType") {
                " (the server does not speak TLS: is its listener plaintext?)"
            } else {
                ""
            };
            Err(io::Error::new(
                e.kind(),
                format!("TLS to {addr} (expecting {name}): {e}{hint}"),
            ))
        }
    }
}

/// An address that cannot be dialled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("{bytes} bytes, limit {ADDR_BYTES_MAX}")]
    TooLong { bytes: usize },
    #[error("{addr:?} is not host:port (e.g. 127.0.0.1:7001)")]
    NotHostPort { addr: String },
}

/// Checks that `addr` is `host:port` with a non-zero numeric port, at most [`ADDR_BYTES_MAX`]
/// bytes: a DNS name or IPv4 address, or a bracketed IPv6 address — nothing a URI would read as
/// a scheme, user info or path, since the address is dialled as `http://{addr}`.
pub fn check_addr(addr: &str) -> Result<(), AddrError> {
    if addr.len() > ADDR_BYTES_MAX {
        return Err(AddrError::TooLong { bytes: addr.len() });
    }
    let host_ok = |h: &str| {
        let plain = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
        let v6 = h.len() > 2
            && h.starts_with('[')
            && h.ends_with(']')
            && h[1..h.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
        plain || v6
    };
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| host_ok(host) && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        return Err(AddrError::NotHostPort { addr: addr.into() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{AddrError, check_addr};

    #[test]
    fn addresses_must_be_dialable_host_port() {
        for ok in [
            "127.0.0.1:7001",
            "node-1.internal:7001",
            "[::1]:7001",
            "h_2:1",
        ] {
            check_addr(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://x:1",
            "a/b:1",
            "u@h:1",
            "h:0",
            "h:",
            ":1",
            "h:99999",
            "[zz]:1",
            "h",
        ] {
            let e = check_addr(bad).expect_err(bad);
            assert!(e.to_string().contains("host:port"), "{bad}: {e}");
        }
        let e = check_addr(&format!("{}:1", "h".repeat(300))).unwrap_err();
        assert_eq!(e, AddrError::TooLong { bytes: 302 });
        assert!(e.to_string().contains("limit 256"), "{e}");
    }
}
