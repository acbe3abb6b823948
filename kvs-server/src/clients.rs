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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
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
    /// Bytes of answers one connection may hold: answers not yet written plus a
    /// reservation for each request in flight. Over it, the connection's requests are not
    /// read until the client takes its answers.
    pub held_bytes_max: usize,
    /// A connection whose client takes none of its waiting answers for this long is closed.
    pub stall_timeout: Duration,
}

/// The default of [`ClientLimits::held_bytes_max`].
pub const HELD_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;

/// The default of [`ClientLimits::stall_timeout`].
pub const STALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            connections_max: 4096,
            inflight_per_connection_max: 4096,
            frame_bytes_max: wire::FRAME_BYTES_MAX_DEFAULT,
            held_bytes_max: HELD_BYTES_MAX_DEFAULT,
            stall_timeout: STALL_TIMEOUT_DEFAULT,
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer flushes after this many answer bytes, so the bytes a connection holds go
/// down as the client takes them and a stall is noticed within one flush.
const FLUSH_BYTES: usize = 64 * 1024;

/// What an answer costs besides the value it carries: the response itself, its frame and
/// the longest error text or status.
const ANSWER_OVERHEAD_BYTES: usize = 1024;

/// The largest value this replica's store may answer with: the largest value written
/// since it started, or found in a snapshot it loaded. Every request in flight reserves
/// this much of its connection's [`ClientLimits::held_bytes_max`], since its answer may
/// carry such a value.
#[derive(Clone, Debug, Default)]
pub struct ValueBytesSeen(Arc<AtomicUsize>);

impl ValueBytesSeen {
    /// Notes a value of `len` bytes in the store.
    pub fn observe(&self, len: usize) {
        self.0.fetch_max(len, Ordering::Relaxed);
    }

    /// The largest value noted.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// The bytes an answer holds while it waits to be written.
fn answer_bytes(resp: &ClientResponse) -> usize {
    let carried = match &resp.result {
        Ok(wire::Reply::Value { value: Some(v), .. }) => v.len(),
        Ok(wire::Reply::Mismatch { current: Some(v) }) => v.len(),
        _ => 0,
    };
    carried + ANSWER_OVERHEAD_BYTES
}

/// Answers waiting to be written to one client connection.
#[derive(Debug)]
struct ConnectionOut {
    queue: Mutex<Vec<ClientResponse>>,
    /// Wakes the connection's writer.
    wake: Notify,
    /// Wakes the connection's reader when it may have room again.
    room: Notify,
    /// The connection is already on the outbox's list of connections to wake.
    listed: AtomicBool,
    /// Requests of this connection not yet answered.
    inflight: AtomicUsize,
    /// Bytes of the answers queued or being written ([`answer_bytes`]).
    held_bytes: AtomicUsize,
    /// The reader has stopped: the writer ends once every request is answered.
    closing: AtomicBool,
    /// Cancelled when the writer has ended (the socket failed or the client stalled):
    /// answers are no longer queued and the reader stops.
    closed: CancellationToken,
    outbox: Outbox,
}

impl ConnectionOut {
    fn new(outbox: &Outbox) -> ConnectionOut {
        ConnectionOut {
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            room: Notify::new(),
            listed: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            held_bytes: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            closed: CancellationToken::new(),
            outbox: outbox.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<ClientResponse>> {
        // A panic elsewhere cannot leave a Vec of answers inconsistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if the connection holds too much to take another request: the answers
    /// waiting, plus `reserve_bytes` for each request in flight and for the next one. An
    /// idle connection always has room, however large one answer may be.
    fn is_full(&self, reserve_bytes: usize, held_bytes_max: usize) -> bool {
        let held = self.held_bytes.load(Ordering::Acquire);
        let inflight = self.inflight.load(Ordering::Acquire);
        if held == 0 && inflight == 0 {
            return false;
        }
        let reserved = inflight.saturating_add(1).saturating_mul(reserve_bytes);
        held.saturating_add(reserved) > held_bytes_max
    }

    /// Waits until the connection has room for another request. False if the connection
    /// closed or the server is shutting down meanwhile.
    async fn wait_for_room(
        &self,
        values: &ValueBytesSeen,
        held_bytes_max: usize,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        loop {
            let reserve = values.get().saturating_add(ANSWER_OVERHEAD_BYTES);
            if !self.is_full(reserve, held_bytes_max) {
                return true;
            }
            tokio::select! {
                _ = self.room.notified() => {}
                _ = self.closed.cancelled() => return false,
                _ = shutdown.changed() => return false,
            }
        }
    }

    /// Ends the connection's output: what is queued is dropped (the socket is gone) and
    /// nothing more is queued.
    fn close(&self) {
        let mut queue = self.lock();
        queue.clear();
        self.held_bytes.store(0, Ordering::Release);
        self.closed.cancel();
        drop(queue);
        self.room.notify_one();
    }

    /// `bytes` of answers have left for the socket.
    fn written(&self, bytes: usize) {
        let previous = self.held_bytes.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(previous >= bytes, "more bytes written than held");
        self.room.notify_one();
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
    /// next [`Outbox::flush`] (dropped only if the connection has closed).
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

    /// Counts the request as answered and queues `answer`, if any and if the connection
    /// is open; true if it was queued. The count goes down under the queue's lock, so a
    /// closing writer that sees no request left and an empty queue has written every
    /// answer. Does nothing the second time.
    fn finish(&mut self, answer: Option<Result<wire::Reply, ErrorReply>>) -> bool {
        if std::mem::replace(&mut self.answered, true) {
            return false;
        }
        let mut queue = self.conn.lock();
        let previous = self.conn.inflight.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(
            previous > 0,
            "an answer for a request not counted in flight"
        );
        let queued = match answer {
            Some(result) if !self.conn.closed.is_cancelled() => {
                let resp = ClientResponse {
                    id: self.id,
                    result,
                };
                self.conn
                    .held_bytes
                    .fetch_add(answer_bytes(&resp), Ordering::AcqRel);
                queue.push(resp);
                true
            }
            _ => false,
        };
        drop(queue);
        // The reservation of this request is released.
        self.conn.room.notify_one();
        queued
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
    /// The largest value an answer may carry, kept up to date by the event loop.
    pub values: ValueBytesSeen,
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
        values,
    } = service;
    let codec =
        wire::frame_codec_with_max(limits.frame_bytes_max).unwrap_or_else(|_| wire::frame_codec());
    let mut framed = Framed::new(stream, codec);
    if let Err(e) = wire::server_handshake(&mut framed, &expect, my_id, HANDSHAKE_TIMEOUT).await {
        tracing::info!(%remote, error = %e, "refused a client connection");
        return;
    }
    let (sink, mut stream) = framed.split();
    let conn = Arc::new(ConnectionOut::new(&outbox));
    let writer = tokio::spawn(write_answers(sink, conn.clone(), limits.stall_timeout));
    loop {
        // Backpressure: a connection holding too much is not read until its client takes
        // its answers (or it is closed for not taking them).
        if !conn
            .wait_for_room(&values, limits.held_bytes_max, &mut shutdown)
            .await
        {
            break;
        }
        let frame = tokio::select! {
            f = stream.next() => f,
            _ = shutdown.changed() => break,
            _ = conn.closed.cancelled() => break,
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
    if conn.closed.is_cancelled() {
        tracing::info!(
            %remote,
            stall_ms = limits.stall_timeout.as_millis() as u64,
            "closed a client connection: the client stopped taking its answers"
        );
    }
    // Let answers still to come reach the client before closing.
    conn.closing.store(true, Ordering::Release);
    conn.wake.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
}

/// Writes the answers queued for one connection until the connection breaks, its client
/// stops taking answers for `stall_timeout`, or its reader stopped and every request is
/// answered. Closes the connection's output when it ends.
async fn write_answers<S>(sink: S, conn: Arc<ConnectionOut>, stall_timeout: Duration)
where
    S: futures::Sink<bytes::Bytes> + Unpin,
{
    write_until_done(sink, &conn, stall_timeout).await;
    conn.close();
}

async fn write_until_done<S>(mut sink: S, conn: &ConnectionOut, stall_timeout: Duration)
where
    S: futures::Sink<bytes::Bytes> + Unpin,
{
    let mut batch = Vec::new();
    loop {
        conn.wake.notified().await;
        std::mem::swap(&mut batch, &mut *conn.lock());
        if !write_batch(&mut sink, conn, &mut batch, stall_timeout).await {
            return;
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

/// Writes `batch` (all that was queued: one write when it is small), flushing every
/// [`FLUSH_BYTES`]; each flush must finish within `stall_timeout`. False if the
/// connection is to end.
async fn write_batch<S>(
    sink: &mut S,
    conn: &ConnectionOut,
    batch: &mut Vec<ClientResponse>,
    stall_timeout: Duration,
) -> bool
where
    S: futures::Sink<bytes::Bytes> + Unpin,
{
    let mut unflushed = 0;
    for resp in batch.drain(..) {
        let bytes = answer_bytes(&resp);
        let frame = match wire::encode(&resp) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a client response");
                return false;
            }
        };
        drop(resp);
        unflushed += bytes;
        if !within(stall_timeout, sink.feed(frame)).await {
            return false;
        }
        if unflushed >= FLUSH_BYTES {
            if !within(stall_timeout, sink.flush()).await {
                return false;
            }
            conn.written(std::mem::take(&mut unflushed));
        }
    }
    if unflushed > 0 {
        if !within(stall_timeout, sink.flush()).await {
            return false;
        }
        conn.written(unflushed);
    }
    true
}

/// True if `op` succeeded within `limit`.
async fn within<E>(limit: Duration, op: impl std::future::Future<Output = Result<(), E>>) -> bool {
    matches!(tokio::time::timeout(limit, op).await, Ok(Ok(())))
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

    fn connection(outbox: &Outbox) -> Arc<ConnectionOut> {
        Arc::new(ConnectionOut::new(outbox))
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
        let a = connection(&outbox);
        let b = connection(&outbox);
        let (sink_a, sink_b) = (Recorder::default(), Recorder::default());
        let (seen_a, seen_b) = (sink_a.frames.clone(), sink_b.frames.clone());
        tokio::spawn(write_answers(sink_a, a.clone(), STALL));
        tokio::spawn(write_answers(sink_b, b.clone(), STALL));
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
        let conn = connection(&outbox);
        let sink = Recorder::default();
        let seen = sink.frames.clone();
        let writer = tokio::spawn(write_answers(sink, conn.clone(), STALL));
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

    const STALL: Duration = Duration::from_secs(30);

    /// A sink whose client never takes anything: every write waits forever.
    struct Stalled;

    impl futures::Sink<bytes::Bytes> for Stalled {
        type Error = std::io::Error;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
        fn start_send(self: Pin<&mut Self>, _: bytes::Bytes) -> Result<(), Self::Error> {
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Pending
        }
    }

    fn value_reply(len: usize) -> Result<wire::Reply, ErrorReply> {
        Ok(wire::Reply::Value {
            value: Some(bytes::Bytes::from(vec![7u8; len])),
            stale: false,
        })
    }

    #[tokio::test]
    async fn answers_are_never_dropped_while_the_connection_is_open() {
        let outbox = Outbox::default();
        let conn = connection(&outbox);
        for id in 0..10_000 {
            request(&conn, id).respond(Err(ErrorReply::Busy));
        }
        assert_eq!(conn.lock().len(), 10_000);
        assert_eq!(conn.inflight.load(Ordering::Acquire), 0);
        assert_eq!(
            conn.held_bytes.load(Ordering::Acquire),
            10_000 * ANSWER_OVERHEAD_BYTES
        );
        assert_eq!(outbox.lock().len(), 1, "listed once however many answers");
    }

    #[test]
    fn a_connection_is_full_when_answers_and_reservations_pass_the_bound() {
        let outbox = Outbox::default();
        let conn = connection(&outbox);
        let max = 1_000_000;
        assert!(
            !conn.is_full(10 * max, max),
            "an idle connection takes one request"
        );
        let pending: Vec<_> = (0..9).map(|id| request(&conn, id)).collect();
        assert!(
            !conn.is_full(100_000, max),
            "9 in flight + 1 reserve 1,000,000"
        );
        let one_more = request(&conn, 9);
        assert!(
            conn.is_full(100_000, max),
            "10 in flight + 1 reserve 1,100,000"
        );
        one_more.respond(value_reply(50_000));
        assert!(
            !conn.is_full(40_000, max),
            "51,024 held + 10 x 40,000 reserved"
        );
        assert!(
            conn.is_full(100_000, max),
            "51,024 held + 10 x 100,000 reserved"
        );
        drop(pending);
        assert!(conn.is_full(1, 50_000), "held answers count until written");
        conn.written(50_000 + ANSWER_OVERHEAD_BYTES);
        assert!(!conn.is_full(1, 50_000));
    }

    #[tokio::test]
    async fn the_reader_waits_for_room_and_resumes_when_answers_are_written() {
        let outbox = Outbox::default();
        let conn = connection(&outbox);
        let values = ValueBytesSeen::default();
        values.observe(100_000);
        let (_tx, mut shutdown) = watch::channel(false);
        let r = request(&conn, 1);
        r.respond(value_reply(100_000));
        let waiting = {
            let conn = conn.clone();
            let values = values.clone();
            tokio::spawn(async move { conn.wait_for_room(&values, 150_000, &mut shutdown).await })
        };
        settle().await;
        assert!(
            !waiting.is_finished(),
            "101,024 held + 101,024 reserved > 150,000"
        );
        let sink = Recorder::default();
        tokio::spawn(write_answers(sink, conn.clone(), STALL));
        outbox.flush();
        let room = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the reader resumes once the answer is written")
            .unwrap();
        assert!(room);
        assert_eq!(conn.held_bytes.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_client_that_stops_taking_answers_is_closed_after_the_stall_timeout() {
        let outbox = Outbox::default();
        let conn = connection(&outbox);
        let writer = tokio::spawn(write_answers(
            Stalled,
            conn.clone(),
            Duration::from_millis(200),
        ));
        request(&conn, 1).respond(value_reply(10));
        outbox.flush();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("a stalled writer ends")
            .unwrap();
        assert!(conn.closed.is_cancelled());
        assert_eq!(
            conn.held_bytes.load(Ordering::Acquire),
            0,
            "dropped with the socket"
        );
        request(&conn, 2).respond(value_reply(10));
        assert!(
            conn.lock().is_empty(),
            "nothing is queued on a closed connection"
        );
    }
}
