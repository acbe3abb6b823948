//! Links between replicas.
//!
//! A replica sends only on the connections it dials (one per peer) and receives only on
//! the connections it accepts. Every direction of every link is therefore its own TCP
//! connection, and cutting one (a one-way partition) affects one direction only.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use paxos_core::NodeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;
use wire::{HandshakeExpectation, Hello, PeerMessage, PeerRole};

use crate::node::Event;

/// How many messages may wait for a peer link; beyond that they are dropped (the consensus
/// core retransmits what matters).
pub const PEER_QUEUE_MAX: usize = 8192;

const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps a connection to peer `to` at `addr` and sends it what arrives on `rx`.
pub async fn outbound(
    my_id: NodeId,
    to: NodeId,
    addr: String,
    cluster_id: String,
    mut rx: mpsc::Receiver<PeerMessage>,
    reachable: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let connected = tokio::select! {
            c = connect(my_id, &addr, &cluster_id) => c,
            _ = shutdown.changed() => return,
        };
        let mut framed = match connected {
            Ok(f) => {
                tracing::debug!(peer = to, %addr, "connected to peer");
                backoff = BACKOFF_MIN;
                reachable.store(true, Ordering::Relaxed);
                f
            }
            Err(e) => {
                reachable.store(false, Ordering::Relaxed);
                tracing::debug!(peer = to, %addr, error = %e, "cannot reach peer");
                // Messages queued while the peer is unreachable are stale by the time it
                // is back; the core resends what is still needed.
                while rx.try_recv().is_ok() {}
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        loop {
            let first = tokio::select! {
                m = rx.recv() => m,
                _ = shutdown.changed() => return,
                // The receiving side never writes; a read returning means it hung up.
                r = framed.next() => {
                    if r.is_none() || matches!(r, Some(Err(_))) {
                        break;
                    }
                    continue;
                }
            };
            let Some(first) = first else {
                return; // the node is gone
            };
            // One write syscall per burst: feed everything queued, then flush once.
            let mut failed = feed(&mut framed, &first).await.is_err();
            while !failed {
                match rx.try_recv() {
                    Ok(m) => failed = feed(&mut framed, &m).await.is_err(),
                    Err(_) => break,
                }
            }
            if failed || SinkExt::<bytes::Bytes>::flush(&mut framed).await.is_err() {
                break;
            }
        }
        reachable.store(false, Ordering::Relaxed);
        tracing::debug!(peer = to, %addr, "peer link lost; reconnecting");
    }
}

async fn feed(
    framed: &mut Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
    msg: &PeerMessage,
) -> Result<(), String> {
    let bytes = wire::encode(msg).map_err(|e| e.to_string())?;
    framed.feed(bytes).await.map_err(|e| e.to_string())
}

async fn connect(
    my_id: NodeId,
    addr: &str,
    cluster_id: &str,
) -> Result<Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>, String> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(
        stream,
        wire::frame_codec_with_max(wire::FRAME_BYTES_MAX_CEILING)
            .unwrap_or_else(|_| wire::frame_codec()),
    );
    let hello = Hello::new(cluster_id, PeerRole::Replica(my_id));
    wire::client_handshake(&mut framed, &hello, HANDSHAKE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    Ok(framed)
}

/// Accepts peer connections and forwards what they carry to the event loop.
pub async fn listen(
    listener: TcpListener,
    my_id: NodeId,
    cluster_id: String,
    members: BTreeSet<NodeId>,
    events: mpsc::Sender<Event>,
    frame_bytes_max: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let expect = HandshakeExpectation::replicas(cluster_id, members);
    loop {
        let Some((stream, remote)) =
            crate::listener::accept(&listener, &mut shutdown, "peer").await
        else {
            return;
        };
        let events = events.clone();
        let expect = expect.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            receive(
                stream,
                remote,
                my_id,
                expect,
                events,
                frame_bytes_max,
                shutdown,
            )
            .await;
        });
    }
}

async fn receive(
    stream: TcpStream,
    remote: std::net::SocketAddr,
    my_id: NodeId,
    expect: HandshakeExpectation,
    events: mpsc::Sender<Event>,
    frame_bytes_max: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let codec = match wire::frame_codec_with_max(frame_bytes_max) {
        Ok(c) => c,
        Err(_) => wire::frame_codec(),
    };
    let mut framed = Framed::new(stream, codec);
    let hello = match wire::server_handshake(&mut framed, &expect, my_id, HANDSHAKE_TIMEOUT).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refused a peer connection");
            return;
        }
    };
    let PeerRole::Replica(from) = hello.role else {
        return;
    };
    loop {
        let frame = tokio::select! {
            f = framed.next() => f,
            _ = shutdown.changed() => return,
        };
        let bytes = match frame {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                // A reset or an abrupt close is what partitions and restarts look like.
                tracing::info!(peer = from, %remote, error = %e, "peer connection ended");
                return;
            }
            None => return,
        };
        match wire::decode::<PeerMessage>(&bytes) {
            Ok(msg) => {
                if events.send(Event::Peer { from, msg }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(peer = from, %remote, error = %e, "closing a peer connection: undecodable message");
                return;
            }
        }
    }
}
