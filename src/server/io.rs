//! A connection on the client listener: TLS (the default) or plaintext (`tls = "off"`). Both
//! report the caller to the services as a [`ConnInfo`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::Connected;

use crate::tls::{Conn, ConnInfo};

/// A connection on the client listener.
pub enum ApiIo {
    Plain(TcpStream),
    Tls(Conn),
}

impl Connected for ApiIo {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        match self {
            ApiIo::Plain(s) => ConnInfo {
                remote: s.peer_addr().ok(),
                ..ConnInfo::default()
            },
            ApiIo::Tls(c) => c.connect_info(),
        }
    }
}

impl AsyncRead for ApiIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ApiIo::Tls(c) => Pin::new(c).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ApiIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ApiIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ApiIo::Tls(c) => Pin::new(c).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ApiIo::Tls(c) => Pin::new(c).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ApiIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ApiIo::Tls(c) => Pin::new(c).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ApiIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ApiIo::Tls(c) => Pin::new(c).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            ApiIo::Plain(s) => s.is_write_vectored(),
            ApiIo::Tls(c) => c.is_write_vectored(),
        }
    }
}
