//! The accepting side: TCP connections become TLS connections off the accept loop, each
//! handshake bounded in time, the handshakes in progress bounded in number, and a plaintext
//! HTTP/2 client told in words why it is refused.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tonic::transport::server::Connected;

use super::named_member;

/// How long a connection may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; connections past it are closed at once, so a
/// flood of silent connections cannot hold unbounded memory or starve the accept loop.
pub const HANDSHAKES_MAX: usize = 256;
/// What a plaintext HTTP/2 client is told (in a GOAWAY frame's debug data) on a TLS listener.
pub const PLAINTEXT_REFUSAL: &str = "this raftgraph listener requires TLS: connect with TLS \
                                     and the cluster's CA certificate (raftgraph --ca FILE)";

/// What the transport knows of the caller, as tonic hands it to every request (`ConnectInfo`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The member the caller's verified certificate names: `(cluster id, member id)`. `None`
    /// for a caller without a certificate, or with one that names no member.
    pub member: Option<(String, u64)>,
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
                drop(permit);
            });
        }
    });
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|c| (Ok(c), rx)) },
    )
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
    if tcp.peek(&mut first).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before the handshake",
        ));
    }
    if first[0] == b'P' {
        let _ = tcp.write_all(&goaway(PLAINTEXT_REFUSAL)).await;
        // Read what the client sends until it closes (at most 64 KiB, within the handshake
        // timeout): closing at once would reset the connection before the client read the
        // GOAWAY, and it would report a broken pipe instead of the reason.
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 << 10;
        while left > 0 {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
        let _ = tcp.shutdown().await;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a plaintext HTTP/2 client on a TLS listener (told to use TLS)",
        ));
    }
    tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
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
