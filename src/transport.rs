//! The one network seam for outgoing connections. Every channel this crate opens — to peers,
//! to the leader for forwarded calls, from the client — comes from a [`Dialer`]. By default it
//! dials TCP; the deterministic simulation gives it a connector over its simulated network,
//! and every other line of gRPC code stays the same.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::client::stream::{Kind, Mux, ReadMux, WriteMux};

/// A byte stream to another node.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Opens a byte stream to `host:port`.
pub type Connector =
    Arc<dyn Fn(String) -> BoxFuture<'static, io::Result<Box<dyn Io>>> + Send + Sync>;

/// How long a channel may take to connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Cached channels kept at most (addresses come from the replicated membership or the
/// client's endpoint list; bounded all the same).
const CACHED_MAX: usize = 1024;

/// Builds channels, and caches one per address. Cloning shares the cache. A channel's worker
/// task lives on the tokio runtime that created it, so a dialer (and its cache) belongs to one
/// node or client.
#[derive(Clone, Default)]
pub struct Dialer {
    connector: Option<Connector>,
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
    /// The client's write stream on each cached channel (see [`crate::client::stream`]).
    write_streams: Streams<crate::client::stream::Writes>,
    /// The client's read stream on each cached channel.
    read_streams: Streams<crate::client::stream::Reads>,
}

/// One stream of a kind per address.
type Streams<K> = Arc<Mutex<BTreeMap<String, Arc<Mux<K>>>>>;

/// The stream in `streams` to `addr` over `channel`, opened on first use and again after it
/// ended.
fn stream<K: Kind>(streams: &Streams<K>, addr: &str, channel: Channel) -> Arc<Mux<K>> {
    let mut streams = streams.lock().expect("stream cache");
    if let Some(m) = streams.get(addr)
        && !m.ended()
    {
        return m.clone();
    }
    if streams.len() >= CACHED_MAX {
        streams.clear();
    }
    let m = Arc::new(Mux::open(addr, channel));
    streams.insert(addr.to_string(), m.clone());
    m
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field("connector", &self.connector.as_ref().map(|_| "custom"))
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// Dials through `connector` instead of TCP.
    pub fn with_connector(connector: Connector) -> Dialer {
        Dialer {
            connector: Some(connector),
            channels: Arc::default(),
            write_streams: Arc::default(),
            read_streams: Arc::default(),
        }
    }

    /// A new lazily connected channel to `addr` (`host:port`) that reconnects by itself.
    /// Keepalive: a silently dead peer (a partition that drops packets) is noticed in seconds,
    /// not when TCP gives up, so streams and channels get rebuilt.
    pub fn dial(
        &self,
        addr: &str,
        connect_timeout: Duration,
    ) -> Result<Channel, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        Ok(match &self.connector {
            None => endpoint.connect_lazy(),
            Some(connector) => {
                let connector = connector.clone();
                let addr = addr.to_string();
                endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let connecting = connector(addr.clone());
                    async move { connecting.await.map(TokioIo::new) }
                }))
            }
        })
    }

    /// The cached channel to `addr`, dialled on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("channel cache");
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        if channels.len() >= CACHED_MAX {
            channels.clear();
        }
        let c = self.dial(addr, CONNECT_TIMEOUT)?;
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Drops the cached channel to `addr`: the next call dials afresh. For a call that timed
    /// out — its connection may be stalled rather than closed.
    pub fn forget(&self, addr: &str) {
        self.channels.lock().expect("channel cache").remove(addr);
        self.write_streams
            .lock()
            .expect("stream cache")
            .remove(addr);
        self.read_streams.lock().expect("stream cache").remove(addr);
    }

    /// The write stream to `addr` over `channel` (this dialer's channel to it), opened on first
    /// use and again after it ends.
    pub fn write_stream(&self, addr: &str, channel: Channel) -> Arc<WriteMux> {
        stream(&self.write_streams, addr, channel)
    }

    /// The read stream to `addr` over `channel`, as [`Dialer::write_stream`].
    pub fn read_stream(&self, addr: &str, channel: Channel) -> Arc<ReadMux> {
        stream(&self.read_streams, addr, channel)
    }
}
