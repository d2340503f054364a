//! The client's connections: one channel per address, dialled through the transport's
//! [`Dialer`], and on each channel the client's write and read multiplexers
//! ([`super::stream`]). Cloning a [`Pool`] shares all of them, so clients made from clones of
//! one pool share one connection per address.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use super::stream::{Kind, Mux, ReadMux, Reads, WriteMux, Writes};
use crate::transport::{CACHED_MAX, Dialer};

/// One multiplexer of a kind per address.
type Streams<K> = Arc<Mutex<BTreeMap<String, Arc<Mux<K>>>>>;

/// Channels and multiplexers, cached per address. `Default`: TCP.
#[derive(Clone, Default)]
pub struct Pool {
    dialer: Dialer,
    /// `Bearer <token>`, sent with every call and stream.
    authorization: Option<AsciiMetadataValue>,
    writes: Streams<Writes>,
    reads: Streams<Reads>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("dialer", &self.dialer)
            .field("token", &self.authorization.is_some())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool that dials through `dialer` (the simulation passes its network's).
    pub fn new(dialer: Dialer) -> Pool {
        Pool {
            dialer,
            ..Pool::default()
        }
    }

    /// Sends `token` (`authorization: Bearer <token>`) with every call and stream of this pool.
    /// The streams of a pool are shared by its clients, so a pool has one token.
    pub fn with_token(mut self, token: &str) -> Result<Pool, tonic::Status> {
        let mut value: AsciiMetadataValue =
            format!("Bearer {}", token.trim()).parse().map_err(|_| {
                tonic::Status::invalid_argument(
                    "invalid argument token: not printable ASCII (a token is rgt_ and hex digits)",
                )
            })?;
        // Never printed by Debug, never indexed by HPACK.
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }

    /// The `authorization` value calls of this pool carry.
    pub(crate) fn authorization(&self) -> Option<&AsciiMetadataValue> {
        self.authorization.as_ref()
    }

    /// The cached channel to `addr`, dialled on first use.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.dialer.channel(addr)
    }

    /// Drops the channel to `addr` and the multiplexers on it: the next call dials afresh. For
    /// a call that timed out, whose connection may be stalled rather than closed.
    pub(crate) fn forget(&self, addr: &str) {
        self.dialer.forget(addr);
        self.writes.lock().expect("stream cache").remove(addr);
        self.reads.lock().expect("stream cache").remove(addr);
    }

    /// The write multiplexer to `addr` over `channel` (this pool's channel to it), opened on
    /// first use and again after its stream ended.
    pub(crate) fn write_stream(&self, addr: &str, channel: Channel) -> Arc<WriteMux> {
        stream(&self.writes, addr, channel, self.authorization.clone())
    }

    /// The read multiplexer to `addr` over `channel`, as [`Pool::write_stream`].
    pub(crate) fn read_stream(&self, addr: &str, channel: Channel) -> Arc<ReadMux> {
        stream(&self.reads, addr, channel, self.authorization.clone())
    }
}

/// The multiplexer in `streams` to `addr` over `channel`, opened on first use and again after
/// its stream ended.
fn stream<K: Kind>(
    streams: &Streams<K>,
    addr: &str,
    channel: Channel,
    authorization: Option<AsciiMetadataValue>,
) -> Arc<Mux<K>> {
    let mut streams = streams.lock().expect("stream cache");
    if let Some(m) = streams.get(addr)
        && !m.ended()
    {
        return m.clone();
    }
    if streams.len() >= CACHED_MAX {
        streams.clear();
    }
    let m = Arc::new(Mux::open(addr, channel, authorization));
    streams.insert(addr.to_string(), m.clone());
    m
}
