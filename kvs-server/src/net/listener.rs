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
