//! Accepting connections until shutdown, shared by the client and peer listeners.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The pause after a failed accept (such as running out of file descriptors) before the
/// next attempt.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The next accepted connection, or `None` once `shutdown` is cancelled. Accept errors are
/// logged and retried after [`ACCEPT_RETRY_PAUSE`] rather than ending the listener.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return None,
        };
        match accepted {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, remote));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a {what} connection failed");
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
    }
}

/// Why an accepted connection was closed before its handshake.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A plain connection on a TLS port: it was answered with
    /// [`wire::HandshakeRefusal::TlsRequired`] and closed.
    #[error("refused a plain connection: this port requires TLS")]
    PlainOnTlsPort,
    /// A TLS handshake on a plain port: answered with the plain bad-magic refusal and
    /// closed (a TLS client reads it as a corrupt record, and knows it reached a plain
    /// port).
    #[error("refused a TLS connection: this port is plain (no TLS configured)")]
    TlsOnPlainPort,
    /// The connection closed, or sent nothing in time.
    #[error("the connection closed or sent nothing")]
    Nothing,
    /// The TLS handshake failed (a certificate refused, a timeout, ...).
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

/// How long a connection that cannot be served here is still read (and its bytes
/// discarded) before it is closed, so that the close is a FIN the other side reads rather
/// than a reset.
const CLOSE_DISCARD_MAX: Duration = Duration::from_millis(200);

/// Opens an accepted connection: with TLS when `tls` is given, plain otherwise. On a TLS
/// port a plain connection (its first byte is not a TLS handshake record) gets the plain
/// handshake refusal [`wire::HandshakeRefusal::TlsRequired`], so that a plain client says
/// why instead of hanging; on a plain port a TLS handshake gets the plain bad-magic
/// refusal at once, which its TLS library reads as a corrupt record (not TLS). Each step
/// waits at most `timeout`.
pub async fn open(
    stream: TcpStream,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    timeout: Duration,
) -> Result<super::stream::Stream, OpenError> {
    use super::stream::{first_byte, FirstByte, Stream};
    let first = first_byte(&stream, timeout).await;
    match (tls, first) {
        (_, FirstByte::Nothing) => Err(OpenError::Nothing),
        (None, FirstByte::Plain) => Ok(Stream::Plain(stream)),
        (None, FirstByte::Tls) => {
            let mut stream = stream;
            let refusal = wire::HandshakeRefusal::BadMagic {
                got: vec![crate::tls::TLS_HANDSHAKE_BYTE],
            };
            let _ = wire::refuse_handshake(&mut stream, refusal, timeout).await;
            close_discarding(stream).await;
            Err(OpenError::TlsOnPlainPort)
        }
        (Some(_), FirstByte::Plain) => {
            let mut stream = stream;
            let refusal = wire::HandshakeRefusal::TlsRequired;
            let _ = wire::refuse_handshake(&mut stream, refusal, timeout).await;
            close_discarding(stream).await;
            Err(OpenError::PlainOnTlsPort)
        }
        (Some(config), FirstByte::Tls) => {
            let accept = tokio_rustls::TlsAcceptor::from(config)
                .accept(stream)
                .into_fallible();
            match tokio::time::timeout(timeout, accept).await {
                Ok(Ok(tls)) => Ok(Stream::Accepted(Box::new(tls))),
                Ok(Err((e, stream))) => {
                    // The alert saying why (a certificate refused, ...) has been sent;
                    // closing with the client's next bytes unread would reset the
                    // connection and could destroy the alert before the client reads it.
                    close_discarding(stream).await;
                    Err(OpenError::Tls(e))
                }
                Err(_) => Err(OpenError::Tls(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no TLS handshake within {} ms", timeout.as_millis()),
                ))),
            }
        }
    }
}

/// Shuts the sending side of `stream` down, then reads and discards what the other side
/// still sends for at most [`CLOSE_DISCARD_MAX`]: closing a socket with unread input
/// would reset the connection.
async fn close_discarding(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut scratch = [0u8; 4096];
    let drain = async {
        while let Ok(n) = stream.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_DISCARD_MAX, drain).await;
}
