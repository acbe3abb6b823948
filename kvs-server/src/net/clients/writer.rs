//! The writer of one client connection: answers queued by the event loop, written in
//! batches, with a bound on how long a client may leave them unread.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use wire::ClientResponse;

use crate::answers::{answer_bytes, ConnectionOut};

/// The writer flushes after this many answer bytes, so the bytes a connection holds go
/// down as the client takes them and a stall is noticed within one flush.
const FLUSH_BYTES: usize = 64 * 1024;

/// Writes the answers queued for one connection until the connection breaks, its client
/// stops taking answers for `stall_timeout`, or its reader stopped and every request is
/// answered. Closes the connection's output when it ends, and hands the sink back (for a
/// clean close of the socket).
pub(super) async fn write_answers<S>(
    mut sink: S,
    conn: Arc<ConnectionOut>,
    stall_timeout: Duration,
) -> S
where
    S: futures::Sink<bytes::Bytes> + Unpin,
{
    write_until_done(&mut sink, &conn, stall_timeout).await;
    conn.close();
    sink
}

async fn write_until_done<S>(sink: &mut S, conn: &ConnectionOut, stall_timeout: Duration)
where
    S: futures::Sink<bytes::Bytes> + Unpin,
{
    let mut batch = Vec::new();
    loop {
        conn.wake.notified().await;
        std::mem::swap(&mut batch, &mut *conn.lock());
        if !write_batch(sink, conn, &mut batch, stall_timeout).await {
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
