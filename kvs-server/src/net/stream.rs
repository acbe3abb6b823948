//! A connection's byte stream: plain TCP, or TLS over it (accepted or dialled), behind one
//! type so the framing and the handshake do not care which.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::TLS_HANDSHAKE_BYTE;

/// A connection's stream.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS accepted on a listener.
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS dialled to a peer.
    Dialled(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// The certificate the other side presented and TLS verified, if any.
    pub fn peer_certificate(&self) -> Option<&rustls_pki_types::CertificateDer<'static>> {
        let certs = match self {
            Stream::Plain(_) => None,
            Stream::Accepted(s) => s.get_ref().1.peer_certificates(),
            Stream::Dialled(s) => s.get_ref().1.peer_certificates(),
        };
        certs.and_then(|c| c.first())
    }
}

/// What the first byte of an accepted connection says it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstByte {
    /// A TLS handshake record.
    Tls,
    /// Anything else: a plain client or peer (or not a kvs program at all).
    Plain,
    /// The connection closed, or sent nothing within the time allowed.
    Nothing,
}

/// Looks at the first byte of `stream` without taking it, waiting at most `timeout`.
pub async fn first_byte(stream: &TcpStream, timeout: Duration) -> FirstByte {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut byte)).await {
        Ok(Ok(1)) if byte[0] == TLS_HANDSHAKE_BYTE => FirstByte::Tls,
        Ok(Ok(1)) => FirstByte::Plain,
        _ => FirstByte::Nothing,
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Dialled(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Dialled(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Dialled(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Accepted(s) => s.is_write_vectored(),
            Stream::Dialled(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Dialled(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Accepted(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Dialled(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
