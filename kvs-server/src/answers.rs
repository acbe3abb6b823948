//! Answers on their way to client connections: a [`Responder`] per request, the queue of
//! answers of each connection ([`ConnectionOut`]), and the [`Outbox`] that wakes the
//! connections' writers once per turn of the event loop.
//!
//! This module knows nothing of the event loop nor of sockets: the loop holds
//! [`Responder`]s, and the connection tasks ([`crate::net::clients`]) read requests and write
//! what is queued here. It sits below both, so neither imports the other.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wire::{ClientResponse, ErrorReply};

/// What an answer costs besides the value it carries: the response itself, its frame and
/// the longest error text or status.
pub(crate) const ANSWER_OVERHEAD_BYTES: usize = 1024;

/// The largest value this replica's store may answer with: the largest value written
/// since it started, or found in a snapshot it loaded. Every request in flight reserves
/// this much of its connection's [`crate::net::clients::ClientLimits::held_bytes_max`], since its answer may
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
pub(crate) fn answer_bytes(resp: &ClientResponse) -> usize {
    let carried = match &resp.result {
        Ok(wire::Reply::Value { value: Some(v), .. }) => v.len(),
        Ok(wire::Reply::Mismatch { current: Some(v) }) => v.len(),
        Ok(wire::Reply::SnapshotChunk { data }) => data.len(),
        Ok(wire::Reply::AuthStatus(status)) => status.bytes(),
        _ => 0,
    };
    carried + ANSWER_OVERHEAD_BYTES
}

/// Answers waiting to be written to one client connection.
#[derive(Debug)]
pub(crate) struct ConnectionOut {
    pub(crate) queue: Mutex<Vec<ClientResponse>>,
    /// Wakes the connection's writer.
    pub(crate) wake: Notify,
    /// Wakes the connection's reader when it may have room again.
    pub(crate) room: Notify,
    /// The connection is already on the outbox's list of connections to wake.
    pub(crate) listed: AtomicBool,
    /// Requests of this connection not yet answered.
    pub(crate) inflight: AtomicUsize,
    /// Bytes of the answers queued or being written ([`answer_bytes`]).
    pub(crate) held_bytes: AtomicUsize,
    /// The reader has stopped: the writer ends once every request is answered.
    pub(crate) closing: AtomicBool,
    /// Cancelled when the writer has ended (the socket failed or the client stalled):
    /// answers are no longer queued and the reader stops.
    pub(crate) closed: CancellationToken,
    pub(crate) outbox: Outbox,
}

impl ConnectionOut {
    pub(crate) fn new(outbox: &Outbox) -> ConnectionOut {
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<ClientResponse>> {
        // A panic elsewhere cannot leave a Vec of answers inconsistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if the connection holds too much to take another request: the answers
    /// waiting, plus `reserve_bytes` for each request in flight and for the next one. An
    /// idle connection always has room, however large one answer may be.
    pub(crate) fn is_full(&self, reserve_bytes: usize, held_bytes_max: usize) -> bool {
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
    pub(crate) async fn wait_for_room(
        &self,
        values: &ValueBytesSeen,
        held_bytes_max: usize,
        shutdown: &CancellationToken,
    ) -> bool {
        loop {
            let reserve = values.get().saturating_add(ANSWER_OVERHEAD_BYTES);
            if !self.is_full(reserve, held_bytes_max) {
                return true;
            }
            tokio::select! {
                _ = self.room.notified() => {}
                _ = self.closed.cancelled() => return false,
                _ = shutdown.cancelled() => return false,
            }
        }
    }

    /// Ends the connection's output: what is queued is dropped (the socket is gone) and
    /// nothing more is queued.
    pub(crate) fn close(&self) {
        let mut queue = self.lock();
        queue.clear();
        self.held_bytes.store(0, Ordering::Release);
        self.closed.cancel();
        drop(queue);
        self.room.notify_one();
    }

    /// `bytes` of answers have left for the socket.
    pub(crate) fn written(&self, bytes: usize) {
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

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<Arc<ConnectionOut>>> {
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
    /// A way to answer request `id` of `conn`, counted in flight until it is answered or
    /// dropped. Also returns how many requests of `conn` were in flight before this one.
    pub(crate) fn counted(id: u64, conn: &Arc<ConnectionOut>) -> (Responder, usize) {
        let before = conn.inflight.fetch_add(1, Ordering::AcqRel);
        let responder = Responder {
            id,
            conn: Arc::clone(conn),
            answered: false,
        };
        (responder, before)
    }

    /// Answers the request: the answer is queued for its connection and written at the
    /// next [`Outbox::flush`] (dropped only if the connection has closed).
    pub fn respond(mut self, result: Result<wire::Reply, ErrorReply>) {
        if self.finish(Some(result)) && !self.conn.listed.swap(true, Ordering::AcqRel) {
            self.conn.outbox.lock().push(self.conn.clone());
        }
    }

    /// Answers the request and wakes its connection's writer at once: for answers given
    /// outside the event loop, which flushes the outbox only at the end of its turns.
    pub(crate) fn respond_now(self, result: Result<wire::Reply, ErrorReply>) {
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

/// A connection without a socket, for tests of code that answers requests.
#[cfg(test)]
pub(crate) struct Probe {
    outbox: Outbox,
    conn: Arc<ConnectionOut>,
}

#[cfg(test)]
impl Probe {
    /// A connection of its own outbox.
    pub(crate) fn new() -> Probe {
        let outbox = Outbox::default();
        let conn = Arc::new(ConnectionOut::new(&outbox));
        Probe { outbox, conn }
    }

    /// A way to answer request `id` on this connection.
    pub(crate) fn responder(&self, id: u64) -> Responder {
        Responder::counted(id, &self.conn).0
    }

    /// The answers queued so far (taken), as `(request id, result)`.
    pub(crate) fn answers(&self) -> Vec<(u64, Result<wire::Reply, ErrorReply>)> {
        self.outbox.flush();
        let queued = std::mem::take(&mut *self.conn.lock());
        queued.into_iter().map(|r| (r.id, r.result)).collect()
    }

    /// Requests neither answered nor dropped.
    pub(crate) fn inflight(&self) -> usize {
        self.conn.inflight.load(Ordering::Acquire)
    }
}
