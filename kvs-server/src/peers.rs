//! Links between replicas.
//!
//! A replica sends only on the connections it dials (one per peer) and receives only on
//! the connections it accepts. Every direction of every link is therefore its own TCP
//! connection, and cutting one (a one-way partition) affects one direction only.
//!
//! Every connection opens with the handshake: the dialing replica presents its identity
//! (cluster identity, data dir instance, members, `--sessions-max`), the accepting replica
//! checks it ([`wire::check_hello`]) and the instance against the one it recorded for that
//! member ([`IdentityStore::admit`]), and only then accepts. So a refusal is seen on both
//! sides: the accepting side logs it at warn, and the dialing side logs the reason it was
//! given at warn. A refusal saying that this member is known by another data dir stops
//! this replica ([`LinkEvent::Fatal`]): its promises are lost and it must not vote.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use paxos_core::NodeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::Framed;
use wire::{HandshakeExpectation, HandshakeRefusal, Hello, PeerMessage, PeerRole, WireError};

use crate::identity::{IdentityStore, LinkEvent};
use crate::node::Event;

/// How many messages may wait for a peer link; beyond that they are dropped (the consensus
/// core retransmits what matters).
pub const PEER_QUEUE_MAX: usize = 8192;

/// How many snapshot chunks may wait for a peer link, in a queue of their own: a transfer
/// waits for room rather than growing memory, and never crowds out consensus messages,
/// which are always written first.
pub const SNAPSHOT_QUEUE_CHUNKS: usize = 4;

/// The snapshot side of a peer link: chunks to send, and a count of the connections made,
/// so that a transfer can stop when the connection it was streaming over is gone.
pub struct SnapshotLane {
    /// Chunks to send when no consensus message waits.
    pub chunks: mpsc::Receiver<PeerMessage>,
    /// Goes up every time the link connects or is lost.
    pub epoch: Arc<AtomicU64>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps a connection to peer `to` at `addr`, opened with `hello`, and sends it what
/// arrives on `rx`. Each accepted handshake is reported as [`LinkEvent::Admitted`].
#[allow(clippy::too_many_arguments)]
pub async fn outbound(
    to: NodeId,
    addr: String,
    hello: Hello,
    store: Arc<IdentityStore>,
    mut rx: mpsc::Receiver<PeerMessage>,
    lane: SnapshotLane,
    reachable: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let SnapshotLane { mut chunks, epoch } = lane;
    let mut backoff = BACKOFF_MIN;
    let mut last_refusal: Option<String> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let connected = tokio::select! {
            c = connect(&addr, &hello) => c,
            _ = shutdown.changed() => return,
        };
        let mut framed = match connected {
            Ok(f) => {
                tracing::debug!(peer = to, %addr, "connected to peer");
                backoff = BACKOFF_MIN;
                last_refusal = None;
                epoch.fetch_add(1, Ordering::AcqRel);
                reachable.store(true, Ordering::Relaxed);
                store.report(LinkEvent::Admitted(to));
                f
            }
            Err(e) => {
                reachable.store(false, Ordering::Relaxed);
                refused(to, &addr, &e, &store, &mut last_refusal);
                // Messages queued while the peer is unreachable are stale by the time it
                // is back; the core resends what is still needed.
                while rx.try_recv().is_ok() {}
                while chunks.try_recv().is_ok() {}
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        loop {
            // Consensus messages first; a snapshot chunk only when none waits.
            let first = tokio::select! {
                biased;
                m = rx.recv() => m,
                c = chunks.recv() => c,
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
        // A transfer streaming over the lost connection stops (its chunks are dropped).
        epoch.fetch_add(1, Ordering::AcqRel);
        while chunks.try_recv().is_ok() {}
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

/// Logs why a connection failed: a refusal at warn (once until it changes, the link
/// retries every second), anything else at debug. A peer that knows this member by another
/// data dir stops this replica.
fn refused(
    to: NodeId,
    addr: &str,
    error: &WireError,
    store: &IdentityStore,
    last: &mut Option<String>,
) {
    let WireError::PeerRefused(refusal) = error else {
        tracing::debug!(peer = to, %addr, %error, "cannot reach peer");
        return;
    };
    let text = refusal.to_string();
    if last.as_deref() != Some(text.as_str()) {
        tracing::warn!(peer = to, %addr, reason = %text, "peer refused our handshake");
        *last = Some(text.clone());
    }
    if let HandshakeRefusal::MemberReplaced { .. } = refusal {
        store.report(LinkEvent::Fatal(format!(
            "peer {to} refused this replica: {text}"
        )));
    }
}

async fn connect(
    addr: &str,
    hello: &Hello,
) -> Result<Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>, WireError> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| WireError::HandshakeTimeout {
            timeout_ms: HANDSHAKE_TIMEOUT.as_millis() as u64,
        })??;
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(
        stream,
        wire::frame_codec_with_max(wire::FRAME_BYTES_MAX_CEILING)
            .unwrap_or_else(|_| wire::frame_codec()),
    );
    wire::client_handshake(&mut framed, hello, HANDSHAKE_TIMEOUT).await?;
    Ok(framed)
}

/// Accepts peer connections that meet `expect` and whose instance `store` admits, and
/// forwards what they carry to the event loop.
pub async fn listen(
    listener: TcpListener,
    my_id: NodeId,
    expect: HandshakeExpectation,
    store: Arc<IdentityStore>,
    events: mpsc::Sender<Event>,
    frame_bytes_max: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let Some((stream, remote)) =
            crate::listener::accept(&listener, &mut shutdown, "peer").await
        else {
            return;
        };
        let events = events.clone();
        let expect = expect.clone();
        let shutdown = shutdown.clone();
        let store = store.clone();
        tokio::spawn(async move {
            receive(
                stream,
                remote,
                my_id,
                (expect, store),
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
    (expect, store): (HandshakeExpectation, Arc<IdentityStore>),
    events: mpsc::Sender<Event>,
    frame_bytes_max: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let codec = match wire::frame_codec_with_max(frame_bytes_max) {
        Ok(c) => c,
        Err(_) => wire::frame_codec(),
    };
    let mut framed = Framed::new(stream, codec);
    let admit = |hello: &Hello| {
        let claim = match (hello.role, &hello.identity) {
            (PeerRole::Replica(id), Some(identity)) => Some((id, identity.instance)),
            _ => None, // check_hello already refused a replica without an identity
        };
        async move {
            let Some((id, instance)) = claim else {
                return Ok(());
            };
            tokio::task::spawn_blocking(move || store.admit(id, instance))
                .await
                .unwrap_or_else(|e| {
                    Err(HandshakeRefusal::Other {
                        code: 0,
                        message: format!("the accepting node failed: {e}"),
                    })
                })
        }
    };
    let handshake =
        wire::server_handshake_with(&mut framed, &expect, my_id, HANDSHAKE_TIMEOUT, admit);
    let hello = match handshake.await {
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
