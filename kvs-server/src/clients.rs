//! The client listener: handshake, then many requests per connection, answered in any
//! order. Bounded: connections per server and requests in flight per connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::codec::Framed;
use wire::{ClientRequest, ClientResponse, ErrorReply, HandshakeExpectation};

use crate::node::Event;

/// Limits on client traffic.
#[derive(Clone, Debug)]
pub struct ClientLimits {
    /// Connections served at once; more are refused.
    pub connections_max: usize,
    /// Requests a connection may have in flight; more are answered `Busy`.
    pub inflight_per_connection_max: usize,
    /// Largest frame accepted.
    pub frame_bytes_max: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            connections_max: 4096,
            inflight_per_connection_max: 4096,
            frame_bytes_max: wire::FRAME_BYTES_MAX_DEFAULT,
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A way to answer one request.
#[derive(Clone, Debug)]
pub struct Responder {
    id: u64,
    tx: mpsc::Sender<ClientResponse>,
    inflight: Arc<AtomicUsize>,
}

impl Responder {
    /// Answers the request (dropped silently if the client has gone).
    pub fn respond(self, result: Result<wire::Reply, ErrorReply>) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        let _ = self.tx.try_send(ClientResponse {
            id: self.id,
            result,
        });
    }
}

/// Accepts client connections until shutdown.
pub async fn listen(
    listener: TcpListener,
    my_id: u64,
    cluster_id: String,
    events: mpsc::Sender<Event>,
    limits: ClientLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let expect = HandshakeExpectation::clients(cluster_id);
    loop {
        let Some((stream, remote)) =
            crate::listener::accept(&listener, &mut shutdown, "client").await
        else {
            return;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%remote, max = limits.connections_max, "refusing a client: too many connections");
            drop(stream);
            continue;
        };
        let events = events.clone();
        let expect = expect.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve(stream, remote, my_id, expect, events, limits, shutdown).await;
            drop(permit);
        });
    }
}

async fn serve(
    stream: TcpStream,
    remote: std::net::SocketAddr,
    my_id: u64,
    expect: HandshakeExpectation,
    events: mpsc::Sender<Event>,
    limits: ClientLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let codec =
        wire::frame_codec_with_max(limits.frame_bytes_max).unwrap_or_else(|_| wire::frame_codec());
    let mut framed = Framed::new(stream, codec);
    if let Err(e) = wire::server_handshake(&mut framed, &expect, my_id, HANDSHAKE_TIMEOUT).await {
        tracing::info!(%remote, error = %e, "refused a client connection");
        return;
    }
    let (mut sink, mut stream) = framed.split();
    let (tx, mut rx) = mpsc::channel::<ClientResponse>(limits.inflight_per_connection_max + 16);
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut ok = feed(&mut sink, &first).await;
            while ok {
                match rx.try_recv() {
                    Ok(r) => ok = feed(&mut sink, &r).await,
                    Err(_) => break,
                }
            }
            if !ok || sink.flush().await.is_err() {
                return;
            }
        }
    });
    let inflight = Arc::new(AtomicUsize::new(0));
    loop {
        let frame = tokio::select! {
            f = stream.next() => f,
            _ = shutdown.changed() => break,
        };
        let bytes = match frame {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                tracing::info!(%remote, error = %e, "closing a client connection: bad frame");
                break;
            }
            None => break,
        };
        let req: ClientRequest = match wire::decode(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::info!(%remote, error = %e, "closing a client connection: undecodable request");
                break;
            }
        };
        let responder = Responder {
            id: req.id,
            tx: tx.clone(),
            inflight: inflight.clone(),
        };
        if inflight.fetch_add(1, Ordering::Relaxed) >= limits.inflight_per_connection_max {
            responder.respond(Err(ErrorReply::Busy));
            continue;
        }
        if events.send(Event::Client { req, responder }).await.is_err() {
            break;
        }
    }
    drop(tx);
    // Let answers already produced reach the client before closing.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

async fn feed<S>(sink: &mut S, resp: &ClientResponse) -> bool
where
    S: futures::Sink<bytes::Bytes> + Unpin,
{
    match wire::encode(resp) {
        Ok(b) => sink.feed(b).await.is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a client response");
            false
        }
    }
}
