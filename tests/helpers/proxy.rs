//! TCP proxies in front of a server's client and peer listeners, so a test can cut a server off
//! (tests/cluster cuts whole nodes; tests/auth a member's peer links).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// TCP proxies in front of a node's two listeners, so a test can cut the node off: when cut,
/// open connections are dropped and new ones are closed at once.
pub struct Proxy {
    pub addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub cut: watch::Sender<bool>,
}

pub async fn proxy(target: SocketAddr, peer_target: SocketAddr) -> Proxy {
    let (cut, _) = watch::channel(false);
    Proxy {
        addr: forward(target, cut.subscribe()).await,
        peer_addr: forward(peer_target, cut.subscribe()).await,
        cut,
    }
}

async fn forward(target: SocketAddr, cut_rx: watch::Receiver<bool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = l.accept().await else {
                return;
            };
            if *cut_rx.borrow() {
                continue; // dropped: closed at once
            }
            let mut rx = cut_rx.clone();
            tokio::spawn(async move {
                let Ok(mut out) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = out.set_nodelay(true);
                let _ = inbound.set_nodelay(true);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                    _ = rx.wait_for(|c| *c) => {}
                }
            });
        }
    });
    addr
}
