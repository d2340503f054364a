//! The transport seam, simulated: the node's gRPC server accepts turmoil TCP connections, and
//! every channel (peers, forwards, clients) dials turmoil TCP. Nothing else in the gRPC stack
//! differs from production.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use raftgraph::tls::ConnInfo;
use raftgraph::transport::{Connector, Dialer, Io};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// An accepted turmoil connection, as tonic's server wants it.
pub struct SimStream(pub turmoil::net::TcpStream);

/// The identity the simulated transport reports for a connection: the member whose host
/// (`n<id>`) dialled it, as the TLS listener reports the member a verified certificate names.
/// The peer service applies the same check to it as in production; only the proof (a
/// certificate) is left out — TLS handshakes would draw randomness outside the seed.
impl Connected for SimStream {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        let remote = self.0.peer_addr().ok();
        let member = remote
            .and_then(|a| turmoil::reverse_lookup(a.ip()))
            .and_then(|host| host.strip_prefix('n')?.parse::<u64>().ok())
            .map(|id| ("sim".to_string(), id));
        ConnInfo {
            remote,
            member,
            ..ConnInfo::default()
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The connections accepted on `listener`, forever.
pub fn incoming(
    listener: turmoil::net::TcpListener,
) -> impl Stream<Item = io::Result<SimStream>> + Send + 'static {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| SimStream(s));
        Some((next, l))
    })
}

/// Dials from one host within one simulated millisecond past which the host is in a tight
/// reconnect loop (each dial takes a simulated port; a loop would exhaust them).
const DIALS_PER_MS_MAX: u64 = 50;

/// A node's dialer over turmoil's network that reports a tight reconnect loop to `alarms` and
/// stalls it (the dial then fails by its connect timeout), so the run ends with the finding
/// instead of exhausting the simulated ports.
pub fn node_dialer(node: &'static str, alarms: Arc<Mutex<Vec<String>>>) -> Dialer {
    let window = Arc::new(Mutex::new((u64::MAX, 0u64)));
    let connect: Connector = Arc::new(move |addr: String| {
        let now = turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64);
        let looping = {
            let mut w = window.lock().expect("dial window");
            if w.0 != now {
                *w = (now, 0);
            }
            w.1 += 1;
            w.1 > DIALS_PER_MS_MAX
        };
        if looping {
            let mut a = alarms.lock().expect("alarms");
            if a.is_empty() {
                a.push(format!(
                    "{node} dialled {addr} more than {DIALS_PER_MS_MAX} times within simulated \
                     millisecond {now}: a tight reconnect loop"
                ));
            }
        }
        Box::pin(async move {
            if looping {
                std::future::pending::<()>().await;
            }
            let s = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(s) as Box<dyn Io>)
        })
    });
    Dialer::with_connector(connect)
}

/// A dialer over turmoil's network.
pub fn dialer() -> Dialer {
    let connect: Connector = Arc::new(|addr: String| {
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(s) as Box<dyn Io>)
        })
    });
    Dialer::with_connector(connect)
}
