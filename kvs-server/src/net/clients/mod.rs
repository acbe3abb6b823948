//! The client listener: handshake, then many requests per connection, answered in any
//! order. Bounded: connections per server, requests in flight per connection, and the
//! bytes of answers a connection may hold.
//!
//! Memory per connection is bounded in bytes, not only in requests: the answers queued
//! for a connection, plus a reservation for every request still in flight (the largest
//! value the store may answer with, [`ValueBytesSeen`]), may not exceed
//! [`ClientLimits::held_bytes_max`]. While they do, the connection's requests are not read
//! (TCP pushes back on the client). No answer is ever dropped while the connection is
//! open: a client that stops taking its answers for [`ClientLimits::stall_timeout`] has its
//! connection closed instead.

//!
//! Shutdown: when the shutdown token is cancelled the listener stops accepting and every
//! connection stops reading requests; the answers to the requests it already read are
//! still written (the event loop answers them before it stops, within a bound), then the
//! connection is closed cleanly: the write side is shut down and what the client still
//! sends is read and discarded for a moment, so the close is a FIN, not a reset. Every
//! connection task is spawned on the node's [`TaskTracker`], which the node waits on.

mod writer;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wire::{ClientRequest, ErrorReply, HandshakeExpectation};

pub use crate::answers::{Outbox, Responder, ValueBytesSeen};

use super::stream::Stream;
use crate::answers::ConnectionOut;
use crate::event::{ClientIdentity, Event};
use crate::tls::ClientTls;

/// Limits on client traffic.
#[derive(Clone, Debug)]
pub struct ClientLimits {
    /// Connections served at once; more are refused.
    pub connections_max: usize,
    /// Requests a connection may have in flight; more are answered `Busy`.
    pub inflight_per_connection_max: usize,
    /// Largest frame accepted.
    pub frame_bytes_max: usize,
    /// Bytes of answers one connection may hold: answers not yet written plus a
    /// reservation for each request in flight. Over it, the connection's requests are not
    /// read until the client takes its answers.
    pub held_bytes_max: usize,
    /// A connection whose client takes none of its waiting answers for this long is closed.
    pub stall_timeout: Duration,
}

/// The default of [`ClientLimits::connections_max`] (`--max-connections`).
pub const CONNECTIONS_MAX_DEFAULT: usize = 4096;

/// The default of [`ClientLimits::inflight_per_connection_max`].
pub const INFLIGHT_PER_CONNECTION_MAX_DEFAULT: usize = 4096;

/// The default of [`ClientLimits::held_bytes_max`] (`--client-held-bytes-max`).
pub const HELD_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;

/// The default of [`ClientLimits::stall_timeout`] (`--client-stall-timeout-ms`).
pub const STALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// The defaults of the client flags, defined here once.
impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            inflight_per_connection_max: INFLIGHT_PER_CONNECTION_MAX_DEFAULT,
            frame_bytes_max: wire::FRAME_BYTES_MAX_DEFAULT,
            held_bytes_max: HELD_BYTES_MAX_DEFAULT,
            stall_timeout: STALL_TIMEOUT_DEFAULT,
        }
    }
}

/// How long a client has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a closing connection waits for its writer to deliver the last answers.
const WRITER_FINISH_MAX: Duration = Duration::from_secs(2);

/// At shutdown, how long a connection keeps reading (and discarding) what its client still
/// sends after the last answer, so that closing it is a FIN rather than a reset that could
/// destroy answers the client has not read yet.
const CLOSE_DRAIN_MAX: Duration = Duration::from_millis(500);

/// What every client connection of a node shares.
#[derive(Clone)]
pub struct ClientService {
    /// This node's id, told to clients in the handshake.
    pub my_id: u64,
    /// Where requests go: the node's event loop.
    pub events: mpsc::Sender<Event>,
    /// Where the event loop leaves answers.
    pub outbox: Outbox,
    /// Limits on client traffic.
    pub limits: ClientLimits,
    /// The largest value an answer may carry, kept up to date by the event loop.
    pub values: ValueBytesSeen,
    /// Client connections open (`kvs_server_client_connections`).
    pub connections: Gauge,
    /// TLS on the client port (`--cert-file`, ...); plain when `None`.
    pub tls: Option<Arc<ClientTls>>,
}

/// Counts a client connection open while it lives.
struct Counted(Gauge);

impl Counted {
    fn new(gauge: &Gauge) -> Counted {
        gauge.inc();
        Counted(gauge.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Accepts client connections until `shutdown` is cancelled; each connection is served by
/// a task on `tasks`.
pub async fn listen(
    listener: TcpListener,
    cluster_id: String,
    service: ClientService,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let limits = &service.limits;
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let expect = HandshakeExpectation::clients(cluster_id);
    while let Some((stream, remote)) = super::listener::accept(&listener, &shutdown, "client").await
    {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%remote, max = limits.connections_max, "refusing a client: too many connections");
            drop(stream);
            continue;
        };
        let connection = Connection {
            remote,
            expect: expect.clone(),
            service: service.clone(),
            shutdown: shutdown.clone(),
            identity: None,
        };
        let writers = tasks.clone();
        let counted = Counted::new(&service.connections);
        tasks.spawn(async move {
            connection.serve(stream, &writers).await;
            drop(counted);
            drop(permit);
        });
    }
}

/// One client connection being served.
struct Connection {
    remote: SocketAddr,
    expect: HandshakeExpectation,
    service: ClientService,
    shutdown: CancellationToken,
    /// Who the client proved to be (its TLS certificate), told to the event loop with
    /// every request.
    identity: Option<ClientIdentity>,
}

type Frames = Framed<Stream, LengthDelimitedCodec>;

impl Connection {
    /// TLS (when the port has it), the handshake, then requests until the connection or
    /// the node ends; then the answers still due are written and the connection is closed.
    async fn serve(mut self, stream: TcpStream, tasks: &TaskTracker) {
        let tls = self
            .service
            .tls
            .as_ref()
            .map(|t| Arc::clone(&t.current().server));
        let stream = match super::listener::open(stream, tls, HANDSHAKE_TIMEOUT).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::info!(remote = %self.remote, error = %e, "refused a client connection");
                return;
            }
        };
        self.identity = stream
            .peer_certificate()
            .and_then(|cert| crate::tls::identity::common_name(cert))
            .map(ClientIdentity::from);
        let limits = &self.service.limits;
        let codec = wire::frame_codec_with_max(limits.frame_bytes_max)
            .unwrap_or_else(|_| wire::frame_codec());
        let mut framed = Framed::new(stream, codec);
        let handshake = wire::server_handshake(
            &mut framed,
            &self.expect,
            self.service.my_id,
            HANDSHAKE_TIMEOUT,
        );
        if let Err(e) = handshake.await {
            tracing::info!(remote = %self.remote, error = %e, "refused a client connection");
            return;
        }
        let (sink, mut requests) = framed.split();
        let conn = Arc::new(ConnectionOut::new(&self.service.outbox));
        let mut writer = tasks.spawn(writer::write_answers(
            sink,
            Arc::clone(&conn),
            limits.stall_timeout,
        ));
        self.read_requests(&mut requests, &conn).await;
        if conn.closed.is_cancelled() {
            tracing::info!(
                remote = %self.remote,
                stall_ms = limits.stall_timeout.as_millis() as u64,
                "closed a client connection: the client stopped taking its answers"
            );
        }
        // Let answers still to come reach the client before closing.
        conn.closing.store(true, Ordering::Release);
        conn.wake.notify_one();
        let sink = match tokio::time::timeout(WRITER_FINISH_MAX, &mut writer).await {
            Ok(Ok(sink)) => sink,
            Ok(Err(_)) => return,
            Err(_) => {
                writer.abort();
                return;
            }
        };
        if self.shutdown.is_cancelled() {
            if let Ok(framed) = requests.reunite(sink) {
                close_cleanly(framed).await;
            }
        }
    }

    /// Reads requests and hands them to the event loop until the client hangs up, sends
    /// something unreadable, stops taking answers, or the node shuts down.
    async fn read_requests(
        &self,
        requests: &mut futures::stream::SplitStream<Frames>,
        conn: &Arc<ConnectionOut>,
    ) {
        let ClientService {
            events,
            limits,
            values,
            ..
        } = &self.service;
        loop {
            // Backpressure: a connection holding too much is not read until its client
            // takes its answers (or it is closed for not taking them).
            if !conn
                .wait_for_room(values, limits.held_bytes_max, &self.shutdown)
                .await
            {
                return;
            }
            let frame = tokio::select! {
                f = requests.next() => f,
                _ = self.shutdown.cancelled() => return,
                _ = conn.closed.cancelled() => return,
            };
            let Some(req) = self.decode(frame) else {
                return;
            };
            let (responder, inflight) = Responder::counted(req.id, conn);
            if inflight >= limits.inflight_per_connection_max {
                responder.respond_now(Err(ErrorReply::Busy));
                continue;
            }
            let identity = self.identity.clone();
            let event = Event::Client {
                req,
                responder,
                identity,
            };
            if events.send(event).await.is_err() {
                return;
            }
        }
    }

    /// The request in a frame; `None` (logged) if the connection is to end.
    fn decode(
        &self,
        frame: Option<Result<bytes::BytesMut, std::io::Error>>,
    ) -> Option<ClientRequest> {
        let remote = self.remote;
        let bytes = match frame? {
            Ok(b) => b,
            // A TLS client that closes its socket without close_notify: how clients hang
            // up, not a bad frame.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                tracing::debug!(%remote, error = %e, "a TLS client closed without close_notify");
                return None;
            }
            Err(e) => {
                tracing::info!(%remote, error = %e, "closing a client connection: bad frame");
                return None;
            }
        };
        match wire::decode(&bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::info!(%remote, error = %e, "closing a client connection: undecodable request");
                None
            }
        }
    }
}

/// Ends a connection at shutdown after its last answer: shuts the write side down (a FIN
/// after the answers), then reads and discards what the client still sends, for at most
/// [`CLOSE_DRAIN_MAX`]: closing a socket with unread input would send a reset instead.
async fn close_cleanly(framed: Frames) {
    let mut stream = framed.into_inner();
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut scratch = [0u8; 4096];
    let drain = async {
        while let Ok(n) = stream.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_DRAIN_MAX, drain).await;
}

#[cfg(test)]
mod tests;
