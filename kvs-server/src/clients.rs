//! The client listener: handshake, then many requests per connection, answered in any
//! order. Bounded: connections per server and requests in flight per connection.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
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

/// Answers waiting to be written to one client connection.
#[derive(Debug)]
struct ConnectionOut {
    queue: Mutex<Vec<ClientResponse>>,
    /// Wakes the connection's writer.
    wake: Notify,
    /// The connection is already on the outbox's list of connections to wake.
    listed: AtomicBool,
    /// Requests of this connection not yet answered.
    inflight: AtomicUsize,
    /// The reader has stopped: the writer ends once every request is answered.
    closing: AtomicBool,
    /// Answers queued at most; more are dropped (the client is not reading).
    queue_max: usize,
    outbox: Outbox,
}

impl ConnectionOut {
    fn lock(&self) -> MutexGuard<'_, Vec<ClientResponse>> {
        // A panic elsewhere cannot leave a Vec of answers inconsistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The client connections that have answers queued since the event loop last flushed.
///
/// Answers produced in one turn of the event loop are queued per connection, and each
/// connection's writer is woken once at the end of the turn ([`Outbox::flush`]): the
/// answers a turn produces for one connection leave in one write, rather than one write
/// (and one wake-up) each.
#[derive(Clone, Debug, Default)]
pub struct Outbox {
    listed: Arc<Mutex<Vec<Arc<ConnectionOut>>>>,
}

impl Outbox {
    /// Wakes the writer of every connection with queued answers.
    pub fn flush(&self) {
        let listed = std::mem::take(&mut *self.lock());
        for conn in listed {
            conn.listed.store(false, Ordering::Release);
            conn.wake.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<ConnectionOut>>> {
        self.listed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A way to answer one request. Dropping it unanswered lets the connection close without
/// waiting for that answer.
#[derive(Debug)]
pub struct Responder {
    id: u64,
    conn: Arc<ConnectionOut>,
    answered: bool,
}

impl Responder {
    /// Answers the request: the answer is queued for its connection and written at the
    /// next [`Outbox::flush`] (dropped silently if the client has gone or stopped reading).
    pub fn respond(mut self, result: Result<wire::Reply, ErrorReply>) {
        if self.finish(Some(result)) && !self.conn.listed.swap(true, Ordering::AcqRel) {
            self.conn.outbox.lock().push(self.conn.clone());
        }
    }

    /// Answers the request and wakes its connection's writer at once: for answers given
    /// outside the event loop, which flushes the outbox only at the end of its turns.
    fn respond_now(self, result: Result<wire::Reply, ErrorReply>) {
        let conn = self.conn.clone();
        self.respond(result);
        conn.wake.notify_one();
    }

    /// Counts the request as answered and queues `answer`, if any and if the queue has
    /// room; true if it was queued. The count goes down under the queue's lock, so a
    /// closing writer that sees no request left and an empty queue has written every
    /// answer. Does nothing the second time.
    fn finish(&mut self, answer: Option<Result<wire::Reply, ErrorReply>>) -> bool {
        if std::mem::replace(&mut self.answered, true) {
            return false;
        }
        let mut queue = self.conn.lock();
        self.conn.inflight.fetch_sub(1, Ordering::AcqRel);
        match answer {
            Some(result) if queue.len() < self.conn.queue_max => {
                queue.push(ClientResponse {
                    id: self.id,
                    result,
                });
                true
            }
            _ => false,
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.answered {
            self.finish(None);
            self.conn.wake.notify_one();
        }
    }
}

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
}

/// Accepts client connections until shutdown.
pub async fn listen(
    listener: TcpListener,
    cluster_id: String,
    service: ClientService,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = &service.limits;
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
        let expect = expect.clone();
        let service = service.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve(stream, remote, expect, service, shutdown).await;
            drop(permit);
        });
    }
}

async fn serve(
    stream: TcpStream,
    remote: std::net::SocketAddr,
    expect: HandshakeExpectation,
    service: ClientService,
    mut shutdown: watch::Receiver<bool>,
) {
    let ClientService {
        my_id,
        events,
        outbox,
        limits,
    } = service;
    let codec =
        wire::frame_codec_with_max(limits.frame_bytes_max).unwrap_or_else(|_| wire::frame_codec());
    let mut framed = Framed::new(stream, codec);
    if let Err(e) = wire::server_handshake(&mut framed, &expect, my_id, HANDSHAKE_TIMEOUT).await {
        tracing::info!(%remote, error = %e, "refused a client connection");
        return;
    }
    let (sink, mut stream) = framed.split();
    let conn = Arc::new(ConnectionOut {
        queue: Mutex::new(Vec::new()),
        wake: Notify::new(),
        listed: AtomicBool::new(false),
        inflight: AtomicUsize::new(0),
        closing: AtomicBool::new(false),
        queue_max: limits.inflight_per_connection_max + 16,
        outbox,
    });
    let writer = tokio::spawn(write_answers(sink, conn.clone()));
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
            conn: conn.clone(),
            answered: false,
        };
        if conn.inflight.fetch_add(1, Ordering::AcqRel) >= limits.inflight_per_connection_max {
            responder.respond_now(Err(ErrorReply::Busy));
            continue;
        }
        if events.send(Event::Client { req, responder }).await.is_err() {
            break;
        }
    }
    // Let answers still to come reach the client before closing.
    conn.closing.store(true, Ordering::Release);
    conn.wake.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// Writes the answers queued for one connection, all that are queued in one write, until
/// the connection breaks or its reader stopped and every request is answered.
async fn write_answers<S>(mut sink: S, conn: Arc<ConnectionOut>)
where
    S: futures::Sink<bytes::Bytes> + Unpin,
{
    let mut batch = Vec::new();
    loop {
        conn.wake.notified().await;
        std::mem::swap(&mut batch, &mut *conn.lock());
        if !batch.is_empty() {
            for resp in batch.drain(..) {
                if !feed(&mut sink, &resp).await {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        if conn.closing.load(Ordering::Acquire) {
            let queue = conn.lock();
            if queue.is_empty() && conn.inflight.load(Ordering::Acquire) == 0 {
                return; // every request has its answer
            }
            if !queue.is_empty() {
                conn.wake.notify_one();
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A sink that records every frame and every flush.
    #[derive(Default)]
    struct Recorder {
        frames: Arc<Mutex<Vec<Vec<u64>>>>,
        current: Vec<u64>,
    }

    impl futures::Sink<bytes::Bytes> for Recorder {
        type Error = std::io::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(mut self: Pin<&mut Self>, item: bytes::Bytes) -> Result<(), Self::Error> {
            let resp: ClientResponse = wire::decode(&item).map_err(std::io::Error::other)?;
            self.current.push(resp.id);
            Ok(())
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            let batch = std::mem::take(&mut self.current);
            if !batch.is_empty() {
                self.frames.lock().unwrap().push(batch);
            }
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.poll_flush(cx)
        }
    }

    fn connection(outbox: &Outbox, queue_max: usize) -> Arc<ConnectionOut> {
        Arc::new(ConnectionOut {
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            listed: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            queue_max,
            outbox: outbox.clone(),
        })
    }

    fn request(conn: &Arc<ConnectionOut>, id: u64) -> Responder {
        conn.inflight.fetch_add(1, Ordering::AcqRel);
        Responder {
            id,
            conn: conn.clone(),
            answered: false,
        }
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn answers_of_one_turn_leave_in_one_write_at_the_flush() {
        let outbox = Outbox::default();
        let a = connection(&outbox, 100);
        let b = connection(&outbox, 100);
        let (sink_a, sink_b) = (Recorder::default(), Recorder::default());
        let (seen_a, seen_b) = (sink_a.frames.clone(), sink_b.frames.clone());
        tokio::spawn(write_answers(sink_a, a.clone()));
        tokio::spawn(write_answers(sink_b, b.clone()));
        let pending: Vec<_> = (0..5).map(|i| request(&a, i)).collect();
        let other = request(&b, 100);
        for r in pending {
            r.respond(Ok(wire::Reply::Written));
        }
        other.respond(Ok(wire::Reply::Written));
        settle().await;
        assert!(
            seen_a.lock().unwrap().is_empty(),
            "nothing is written before the flush"
        );
        outbox.flush();
        settle().await;
        assert_eq!(*seen_a.lock().unwrap(), vec![vec![0, 1, 2, 3, 4]]);
        assert_eq!(*seen_b.lock().unwrap(), vec![vec![100]]);
        // The next turn's answers make the next write.
        request(&a, 5).respond(Ok(wire::Reply::Written));
        outbox.flush();
        settle().await;
        assert_eq!(seen_a.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_closing_connection_waits_for_every_answer_then_ends() {
        let outbox = Outbox::default();
        let conn = connection(&outbox, 100);
        let sink = Recorder::default();
        let seen = sink.frames.clone();
        let writer = tokio::spawn(write_answers(sink, conn.clone()));
        let late = request(&conn, 1);
        let dropped = request(&conn, 2);
        conn.closing.store(true, Ordering::Release);
        conn.wake.notify_one();
        settle().await;
        assert!(!writer.is_finished(), "two requests are still unanswered");
        drop(dropped); // the node let it go unanswered
        settle().await;
        assert!(!writer.is_finished(), "one request is still unanswered");
        late.respond(Ok(wire::Reply::Written));
        outbox.flush();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer ends once every request is answered")
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![vec![1]]);
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_cannot_grow_the_queue_past_its_bound() {
        let outbox = Outbox::default();
        let conn = connection(&outbox, 3);
        for id in 0..10 {
            request(&conn, id).respond(Err(ErrorReply::Busy));
        }
        assert_eq!(conn.lock().len(), 3);
        assert_eq!(conn.inflight.load(Ordering::Acquire), 0);
        assert_eq!(outbox.lock().len(), 1, "listed once however many answers");
    }
}
