//! The accepting side: TCP connections become TLS connections off the accept loop, each
//! handshake bounded in time, the handshakes in progress bounded in number, and a plaintext
//! HTTP/2 client told in words why it is refused.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::server::Connected;

use super::named_member;
use crate::budget::ByteBudget;
use crate::wire::{CONNECTION_ANSWER_BYTES_MAX, CONNECTION_REQUEST_BYTES_MAX};

/// How long a connection may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; connections past it are closed at once, so a
/// flood of silent connections cannot hold unbounded memory or starve the accept loop.
pub const HANDSHAKES_MAX: usize = 256;
/// Handshakes in progress at once from one IP address: one source cannot take every slot.
pub const HANDSHAKES_PER_ADDRESS_MAX: usize = 16;
/// How long a new connection may take to send its first byte (a TLS client sends its hello at
/// once): silent connections give their slot back sooner than the whole handshake timeout.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// What a plaintext HTTP/2 client is told (in a GOAWAY frame's debug data) on a TLS listener.
pub const PLAINTEXT_REFUSAL: &str = "this raftgraph listener requires TLS: connect with TLS \
                                     and the cluster's CA certificate (raftgraph --ca FILE)";

/// What the transport knows of the caller, as tonic hands it to every request (`ConnectInfo`).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The member the caller's verified certificate names: `(cluster id, member id)`. `None`
    /// for a caller without a certificate, or with one that names no member.
    pub member: Option<(String, u64)>,
    /// The connection's budget for stream answers not yet sent
    /// ([`CONNECTION_ANSWER_BYTES_MAX`]), shared by all its streams: one per connection.
    pub answers: Arc<ByteBudget>,
    /// The connection's budget for request messages received but not yet decoded
    /// ([`CONNECTION_REQUEST_BYTES_MAX`]; see `api::intake`): one per connection.
    pub requests: Arc<ByteBudget>,
}

impl Default for ConnInfo {
    /// No address, no member, and a budget of its own.
    fn default() -> Self {
        ConnInfo {
            remote: None,
            member: None,
            answers: ByteBudget::new(CONNECTION_ANSWER_BYTES_MAX),
            requests: ByteBudget::new(CONNECTION_REQUEST_BYTES_MAX),
        }
    }
}

/// An accepted TLS connection.
pub struct Conn {
    tls: Box<tokio_rustls::server::TlsStream<TcpStream>>,
    info: ConnInfo,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.tls).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.tls).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.tls).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}

/// The TLS connections accepted on `listener`, each handshake with the config `config` returns
/// at its accept (so a reload applies to the next connection). `plane` names the listener in
/// the log. The accept loop runs on its own task and ends when the stream is dropped.
pub fn accept<F>(
    listener: TcpListener,
    config: F,
    plane: &'static str,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static
where
    F: Fn() -> Arc<ServerConfig> + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel::<Conn>(64);
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    let per_address = Arc::new(Mutex::new(BTreeMap::new()));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(plane, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(from) = PerAddress::enter(&per_address, remote.ip()) else {
                tracing::warn!(
                    plane,
                    %remote,
                    "{HANDSHAKES_PER_ADDRESS_MAX} TLS handshakes from this address already in \
                     progress: connection closed"
                );
                continue;
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(
                    plane,
                    %remote,
                    "{HANDSHAKES_MAX} TLS handshakes already in progress: connection closed"
                );
                continue;
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(error = %e, "TCP_NODELAY not set on an accepted connection");
            }
            let tx = tx.clone();
            let config = config();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, config));
                match handshake.await {
                    Ok(Ok(tls)) => {
                        let member = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(named_member);
                        let conn = Conn {
                            tls: Box::new(tls),
                            info: ConnInfo {
                                remote: Some(remote),
                                member,
                                ..ConnInfo::default()
                            },
                        };
                        let _ = tx.send(conn).await;
                    }
                    Ok(Err(e)) => tracing::warn!(plane, %remote, "TLS connection refused: {e}"),
                    Err(_) => tracing::warn!(
                        plane,
                        %remote,
                        "TLS handshake not done within {HANDSHAKE_TIMEOUT:?}: connection closed"
                    ),
                }
                drop((permit, from));
            });
        }
    });
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|c| (Ok(c), rx)) },
    )
}

/// One handshake in progress from an address, counted in a shared map until dropped.
struct PerAddress {
    map: Arc<Mutex<BTreeMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerAddress {
    fn enter(map: &Arc<Mutex<BTreeMap<IpAddr, usize>>>, ip: IpAddr) -> Option<PerAddress> {
        let mut m = map.lock().expect("handshakes per address");
        let n = m.entry(ip).or_insert(0);
        if *n >= HANDSHAKES_PER_ADDRESS_MAX {
            return None;
        }
        *n += 1;
        Some(PerAddress {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for PerAddress {
    fn drop(&mut self) {
        let mut m = self.map.lock().expect("handshakes per address");
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// The TLS handshake, after a look at the first bytes: an HTTP/2 client speaking plaintext
/// (its preface starts `PRI `) gets a GOAWAY saying TLS is required instead of a TLS alert
/// it would report as a garbled frame.
async fn handshake(
    mut tcp: TcpStream,
    config: Arc<ServerConfig>,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    // One peek: a TLS record starts 0x16; an HTTP/2 preface starts with `P`.
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nothing sent within {FIRST_BYTE_TIMEOUT:?}"),
            )
        })??;
    if peeked == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before the handshake",
        ));
    }
    if first[0] == b'P' {
        refuse_plaintext(&mut tcp).await;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a plaintext HTTP/2 client on a TLS listener (told to use TLS)",
        ));
    }
    tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
}

/// Tells a plaintext HTTP/2 client why it is refused. Its first request is waited for (its
/// preface, then frames up to its first HEADERS, at most 64 KiB and one second): a GOAWAY that
/// arrives before the client sent a request fails that request as "connection closed", without
/// the reason. Then the GOAWAY goes out, and what the client sends is read until it closes
/// (64 KiB at most), so the connection is not reset before the client has read it. All of it
/// runs within the handshake timeout.
async fn refuse_plaintext(tcp: &mut TcpStream) {
    const PREFACE: usize = 24;
    const READ_MAX: usize = 64 << 10;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    // Frames start after the preface: a 9-byte header (length 3, type 1, …) and the payload.
    let has_headers = |b: &[u8]| {
        let mut at = PREFACE;
        while at + 9 <= b.len() {
            if b[at + 3] == 0x1 {
                return true;
            }
            let len =
                (usize::from(b[at]) << 16) | (usize::from(b[at + 1]) << 8) | usize::from(b[at + 2]);
            at += 9 + len;
        }
        false
    };
    // A client that waits for the server's frames before its first request gets the GOAWAY
    // after a second anyway.
    let first_request = async {
        while seen.len() < READ_MAX && !has_headers(&seen) {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    if let Ok(false) = tokio::time::timeout(Duration::from_secs(1), first_request).await {
        return;
    }
    if tcp.write_all(&goaway(PLAINTEXT_REFUSAL)).await.is_err() {
        return;
    }
    let mut left = READ_MAX;
    while left > 0 {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    let _ = tcp.shutdown().await;
}

/// An empty SETTINGS frame (the server preface) and a GOAWAY with INADEQUATE_SECURITY and
/// `why` as its debug data (RFC 9113 §6.5, §6.8).
fn goaway(why: &str) -> Vec<u8> {
    let mut f = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = (8 + why.len()) as u32;
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&0u32.to_be_bytes()); // last stream id
    f.extend_from_slice(&0xcu32.to_be_bytes()); // INADEQUATE_SECURITY
    f.extend_from_slice(why.as_bytes());
    f
}
