//! One multiplexed connection to one node.
//!
//! After the handshake, a writer task sends the frames it is fed through a channel and a
//! reader task matches each response to the waiting request by id. Many requests may be in
//! flight at once and their answers may come back in any order. When the connection breaks
//! (either task fails, or the node closes it) every request still waiting on it fails at
//! once with the reason, so that its caller can retry elsewhere or report the outcome.
//!
//! A request counts as sent only once the writer takes it for the socket: one still queued
//! for the writer when the connection breaks is reported as not sent (it cannot have
//! reached the node), and one whose caller gave up before the writer took it is never
//! written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use wire::{
    ClientRequest, ClientResponse, ErrorReply, HandshakeRefusal, Hello, Op, Reply, Session,
    WireError,
};

use crate::Error;

/// Frames queued for the writer task at most; senders wait when it is full.
const FRAMES_QUEUED_MAX: usize = 1024;

/// Frames the writer sends before it flushes, at most.
const FRAMES_PER_FLUSH_MAX: usize = 64;

/// How long closing a connection may wait for its last bytes to leave, at most.
const CLOSE_MAX: Duration = Duration::from_secs(1);

/// Requests awaiting an answer on one connection, at most.
const PENDING_MAX: usize = 65_536;

/// What a node answered to one request.
pub(crate) type Answer = Result<Reply, ErrorReply>;

/// Why a connection could not be opened.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Nothing listens at the endpoint: the connection was refused at once.
    NoListener(String),
    /// The node could not be reached or the handshake broke off: worth retrying later.
    Unreachable(String),
    /// The node refused the handshake or is not a kvs node: a configuration error.
    Refused(WireError),
    /// TLS is configured one way here and another there, or a certificate is refused: a
    /// configuration error, reported as it is.
    Config(Error),
}

/// The TLS side of a client: its rustls configuration, and whether it presents a client
/// certificate.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) connector: TlsConnector,
    pub(crate) presents_certificate: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("presents_certificate", &self.presents_certificate)
            .finish_non_exhaustive()
    }
}

type BoxedRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxedWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The first TLS record byte of an alert (content type 21) and of a handshake (22): what a
/// TLS server answers a plain-TCP client with, instead of the handshake's magic.
const TLS_RECORD_TYPES: [u8; 2] = [0x15, 0x16];

fn timed_out(connect_timeout: Duration) -> ConnectError {
    ConnectError::Unreachable(format!(
        "connect timed out after {}",
        crate::format_duration(connect_timeout)
    ))
}

/// One connection being opened: where to, and until when.
struct Dial<'a> {
    endpoint: &'a str,
    hello: &'a Hello,
    deadline: Instant,
    connect_timeout: Duration,
}

impl Dial<'_> {
    fn remaining(&self) -> Result<Duration, ConnectError> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out(self.connect_timeout));
        }
        Ok(remaining)
    }

    fn config_error(&self, error: impl FnOnce(String) -> Error) -> ConnectError {
        ConnectError::Config(error(self.endpoint.to_owned()))
    }

    /// The TLS handshake over `stream`, verifying the node's certificate.
    async fn tls(
        &self,
        tls: &Tls,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, ConnectError> {
        let name = crate::tls::server_name(self.endpoint)
            .map_err(|reason| self.config_error(|endpoint| Error::Tls { endpoint, reason }))?;
        let connecting = tls.connector.connect(name, stream);
        match tokio::time::timeout_at(self.deadline, connecting).await {
            Err(_) => Err(timed_out(self.connect_timeout)),
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(self.tls_failure(&e, tls.presents_certificate)),
        }
    }

    /// Reads a failed TLS exchange: a configuration error when rustls says why, a
    /// connection error worth retrying otherwise.
    fn tls_failure(&self, error: &std::io::Error, presented: bool) -> ConnectError {
        let Some(tls_error) = crate::tls::rustls_error(error) else {
            if error.kind() == std::io::ErrorKind::UnexpectedEof {
                // What a plain kvs node does with a TLS hello; a node refusing connections
                // (too many) may do the same, so it is worth another try later.
                return ConnectError::Unreachable(format!(
                    "the node closed the connection without answering the TLS handshake: {} \
                     is not a TLS port: connect without --cacert (or it refused the \
                     connection)",
                    self.endpoint
                ));
            }
            return ConnectError::Unreachable(format!("TLS handshake: {error}"));
        };
        match tls_error {
            // The first bytes are no TLS record: a plain kvs node answering our hello.
            rustls::Error::InvalidMessage(_) => {
                self.config_error(|endpoint| Error::NotTlsPort { endpoint })
            }
            rustls::Error::AlertReceived(alert)
                if crate::tls::refuses_client_certificate(alert) =>
            {
                let reason = crate::tls::describe_refusal(alert, presented);
                self.config_error(|endpoint| Error::ClientCertificateRefused { endpoint, reason })
            }
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => self
                .config_error(|endpoint| Error::Tls {
                    endpoint,
                    reason: "the node's certificate is not trusted: it is not signed by a CA \
                             of --cacert"
                        .to_owned(),
                }),
            rustls::Error::InvalidCertificate(e) => self.config_error(|endpoint| Error::Tls {
                endpoint,
                reason: format!("the node's certificate is not trusted: {e}"),
            }),
            other => self.config_error(|endpoint| Error::Tls {
                endpoint,
                reason: other.to_string(),
            }),
        }
    }

    /// The kvs handshake, over TLS when `tls` is given.
    async fn handshake<T>(
        &self,
        framed: &mut Framed<T, LengthDelimitedCodec>,
        tls: Option<&Tls>,
    ) -> Result<(), ConnectError>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let remaining = self.remaining()?;
        match wire::client_handshake(framed, self.hello, remaining).await {
            Ok(_accepted) => Ok(()),
            Err(WireError::BadReply(HandshakeRefusal::BadMagic { got }))
                if tls.is_none() && got.first().is_some_and(|b| TLS_RECORD_TYPES.contains(b)) =>
            {
                Err(self.config_error(|endpoint| Error::TlsRequired { endpoint }))
            }
            Err(e @ (WireError::PeerRefused(_) | WireError::BadReply(_))) => {
                Err(ConnectError::Refused(e))
            }
            // In TLS 1.3 a node checks the client certificate after our side of the TLS
            // handshake is done: its refusal is the first thing read.
            Err(WireError::Io(e)) if tls.is_some() && crate::tls::rustls_error(&e).is_some() => {
                let presented = tls.is_some_and(|tls| tls.presents_certificate);
                Err(self.tls_failure(&e, presented))
            }
            // A node that refused our certificate may have closed before our hello left,
            // so that sending it failed: its alert still waits to be read.
            Err(e @ WireError::ClosedDuringHandshake) if tls.is_some() => {
                let presented = tls.is_some_and(|tls| tls.presents_certificate);
                let mut byte = [0u8; 1];
                let read = framed.get_mut().read(&mut byte);
                match tokio::time::timeout(self.remaining()?, read).await {
                    Ok(Err(io)) if crate::tls::rustls_error(&io).is_some() => {
                        Err(self.tls_failure(&io, presented))
                    }
                    _ => Err(ConnectError::Unreachable(format!("handshake: {e}"))),
                }
            }
            Err(e) => Err(ConnectError::Unreachable(format!("handshake: {e}"))),
        }
    }
}

/// The stream under a framed connection that only exchanged the handshake.
fn handshaken_io<T>(framed: Framed<T, LengthDelimitedCodec>) -> T {
    let parts = framed.into_parts();
    // The handshake reads exactly its record, so no frame byte can be buffered yet.
    debug_assert!(parts.read_buf.is_empty() && parts.write_buf.is_empty());
    parts.io
}

/// Why a request got no answer.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The request was not sent: the connection is closed or too busy, or it closed
    /// before the request left the client.
    NotSent(String),
    /// The request was handed to the connection, then the connection broke.
    Lost(String),
    /// The request cannot be sent at all (it does not fit in a frame).
    Rejected(ErrorReply),
}

/// A connection to one node, shared by every task of a client.
#[derive(Debug)]
pub(crate) struct Connection {
    frames: mpsc::Sender<(u64, Bytes)>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    frame_bytes_max: usize,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    /// Cancelled when the connection closes, which stops both tasks.
    closed: CancellationToken,
}

/// Why a waiting request got no answer: the reason the connection closed, and whether the
/// writer had taken the request for the socket.
type Failure = (String, bool);

/// A request awaiting its answer.
#[derive(Debug)]
struct Waiter {
    answer: oneshot::Sender<Result<Answer, Failure>>,
    /// Set when the writer takes the request for the socket: it may reach the node.
    sent: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Pending {
    waiting: HashMap<u64, Waiter>,
    /// Why the connection closed, once it has.
    closed: Option<String>,
}

impl Connection {
    /// Connects to `endpoint`, runs TLS over the TCP connection when `tls` is given, then
    /// the handshake, all within `connect_timeout`.
    pub(crate) async fn open(
        endpoint: &str,
        hello: &Hello,
        connect_timeout: Duration,
        frame_bytes_max: usize,
        tls: Option<&Tls>,
    ) -> Result<Arc<Connection>, ConnectError> {
        let deadline = Instant::now() + connect_timeout;
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(endpoint))
            .await
            .map_err(|_| timed_out(connect_timeout))?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ConnectError::NoListener(e.to_string()),
                _ => ConnectError::Unreachable(e.to_string()),
            })?;
        // Requests are small and latency matters more than packet count.
        stream
            .set_nodelay(true)
            .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
        let codec = wire::frame_codec_with_max(frame_bytes_max).map_err(ConnectError::Refused)?;
        let dial = Dial {
            endpoint,
            hello,
            deadline,
            connect_timeout,
        };
        let (read_half, write_half): (BoxedRead, BoxedWrite) = match tls {
            None => {
                let mut framed = Framed::new(stream, codec.clone());
                dial.handshake(&mut framed, None).await?;
                let (read_half, write_half) = handshaken_io(framed).into_split();
                (Box::new(read_half), Box::new(write_half))
            }
            Some(tls) => {
                let stream = dial.tls(tls, stream).await?;
                let mut framed = Framed::new(stream, codec.clone());
                dial.handshake(&mut framed, Some(tls)).await?;
                let (read_half, write_half) = tokio::io::split(handshaken_io(framed));
                (Box::new(read_half), Box::new(write_half))
            }
        };

        let (frames, queue) = mpsc::channel(FRAMES_QUEUED_MAX);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            closed: CancellationToken::new(),
        });
        tokio::spawn(write_frames(
            FramedWrite::new(write_half, codec.clone()),
            queue,
            Arc::clone(&shared),
        ));
        tokio::spawn(read_responses(
            FramedRead::new(read_half, codec),
            Arc::clone(&shared),
        ));
        Ok(Arc::new(Connection {
            frames,
            shared,
            next_id: AtomicU64::new(1),
            frame_bytes_max,
        }))
    }

    /// True once the connection has broken; a new one must be opened.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Sends one request and waits for its answer. `sent` is set once the writer takes the
    /// request for the socket: from then on it may reach the node even if no answer comes
    /// back. While it is unset the request has not left the client.
    ///
    /// Cancel-safe: dropping the future forgets the request (a late answer is discarded),
    /// and a request forgotten before the writer took it is never written, so `sent` read
    /// after the future is dropped tells whether it may have reached the node.
    pub(crate) async fn call(
        &self,
        session: Option<Session>,
        op: Op,
        sent: &Arc<AtomicBool>,
    ) -> Result<Answer, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = wire::encode(&ClientRequest { id, session, op }).map_err(|e| {
            CallError::Rejected(ErrorReply::Invalid {
                reason: format!("cannot encode the request: {e}"),
            })
        })?;
        if frame.len() > self.frame_bytes_max {
            return Err(CallError::Rejected(ErrorReply::TooLarge {
                what: "request frame".to_owned(),
                size: frame.len() as u64,
                max: self.frame_bytes_max as u64,
            }));
        }
        let (answer_tx, answer_rx) = oneshot::channel();
        {
            let mut pending = self.shared.lock();
            if let Some(reason) = &pending.closed {
                return Err(CallError::NotSent(reason.clone()));
            }
            if pending.waiting.len() >= PENDING_MAX {
                return Err(CallError::NotSent(format!(
                    "{PENDING_MAX} requests already in flight on this connection"
                )));
            }
            let waiter = Waiter {
                answer: answer_tx,
                sent: Arc::clone(sent),
            };
            let previous = pending.waiting.insert(id, waiter);
            assert!(previous.is_none(), "request ids are unique per connection");
        }
        let _forget = ForgetOnDrop {
            shared: &self.shared,
            id,
        };
        if self.frames.send((id, frame)).await.is_err() {
            return Err(CallError::NotSent(self.shared.close_reason()));
        }
        match answer_rx.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err((reason, true))) => Err(CallError::Lost(reason)),
            Ok(Err((reason, false))) => Err(CallError::NotSent(reason)),
            Err(_dropped) if sent.load(Ordering::Acquire) => {
                Err(CallError::Lost(self.shared.close_reason()))
            }
            Err(_dropped) => Err(CallError::NotSent(self.shared.close_reason())),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Nobody can send on it any more: stop both tasks and close the socket.
        self.shared
            .close("the connection was dropped by the client".to_owned());
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Every change to `Pending` is a single step, so it is consistent after a panic.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes the connection (the first reason wins) and fails every waiting request.
    fn close(&self, reason: String) {
        let (reason, waiting) = {
            let mut pending = self.lock();
            let reason = pending.closed.get_or_insert(reason).clone();
            (reason, std::mem::take(&mut pending.waiting))
        };
        // Closed before anyone hears of it, so that a caller told of the loss never picks
        // this connection again.
        self.closed.cancel();
        for waiter in waiting.into_values() {
            // The caller may have given up already; nothing to do then.
            let sent = waiter.sent.load(Ordering::Acquire);
            let _ = waiter.answer.send(Err((reason.clone(), sent)));
        }
    }

    fn close_reason(&self) -> String {
        self.lock()
            .closed
            .clone()
            .unwrap_or_else(|| "the connection closed".to_owned())
    }

    fn resolve(&self, response: ClientResponse) {
        let waiter = self.lock().waiting.remove(&response.id);
        // No waiter: the caller gave up on it (timeout), so the answer is dropped.
        if let Some(waiter) = waiter {
            let _ = waiter.answer.send(Ok(response.result));
        }
    }

    /// The writer is about to write request `id`: marks it sent and returns true, or
    /// returns false if its caller has given up (it must not be written then). Under the
    /// lock, so a caller that gives up either sees it sent or is sure it never will be.
    fn take_for_socket(&self, id: u64) -> bool {
        match self.lock().waiting.get(&id) {
            Some(waiter) => {
                waiter.sent.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }
}

/// Removes a request from the pending map when its caller stops waiting.
struct ForgetOnDrop<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.shared.lock().waiting.remove(&self.id);
    }
}

async fn write_frames(
    mut sink: FramedWrite<BoxedWrite, LengthDelimitedCodec>,
    mut queue: mpsc::Receiver<(u64, Bytes)>,
    shared: Arc<Shared>,
) {
    loop {
        let frame = tokio::select! {
            () = shared.closed.cancelled() => break,
            frame = queue.recv() => frame,
        };
        let Some(frame) = frame else {
            shared.close("the connection was dropped by the client".to_owned());
            break;
        };
        if let Err(e) = write_batch(&mut sink, &mut queue, &shared, frame).await {
            shared.close(format!("sending failed: {e}"));
            return;
        }
    }
    // Over TLS this sends close_notify, so that the node tells a clean close from a cut
    // connection; over TCP it is the FIN that dropping would send. Bounded: a node that
    // reads nothing cannot hold the task.
    let _ = tokio::time::timeout(CLOSE_MAX, SinkExt::<Bytes>::close(&mut sink)).await;
}

/// Writes `first` and whatever else is queued (up to a limit), then flushes once. Requests
/// whose callers have given up are skipped.
async fn write_batch(
    sink: &mut FramedWrite<BoxedWrite, LengthDelimitedCodec>,
    queue: &mut mpsc::Receiver<(u64, Bytes)>,
    shared: &Shared,
    (id, first): (u64, Bytes),
) -> std::io::Result<()> {
    if shared.take_for_socket(id) {
        sink.feed(first).await?;
    }
    if queue.is_empty() {
        // Callers woken by the same batch of answers are usually about to send their next
        // request: let them run first, so one write carries all of them rather than one
        // write (and one packet) each.
        tokio::task::yield_now().await;
    }
    for _ in 1..FRAMES_PER_FLUSH_MAX {
        match queue.try_recv() {
            Ok((id, frame)) => {
                if shared.take_for_socket(id) {
                    sink.feed(frame).await?;
                }
            }
            Err(_) => break,
        }
    }
    SinkExt::<Bytes>::flush(sink).await
}

async fn read_responses(
    mut stream: FramedRead<BoxedRead, LengthDelimitedCodec>,
    shared: Arc<Shared>,
) {
    let reason = loop {
        let frame = tokio::select! {
            () = shared.closed.cancelled() => return,
            frame = stream.next() => frame,
        };
        match frame {
            None => break "the node closed the connection".to_owned(),
            Some(Err(e)) => break format!("receiving failed: {e}"),
            Some(Ok(payload)) => match wire::decode::<ClientResponse>(&payload) {
                Ok(response) => shared.resolve(response),
                Err(e) => break format!("the node sent an undecodable response: {e}"),
            },
        }
    };
    shared.close(reason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A node that completes the handshake and reads nothing for `hold`. Then it hangs up,
    /// or (with `drain`) reads every request until the client closes and sends their ids.
    async fn deaf_node(hold: Duration, drain: Option<oneshot::Sender<Vec<u64>>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string();
        tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let mut framed = Framed::new(stream, wire::frame_codec());
            let expect = wire::HandshakeExpectation::clients("kvs");
            if wire::server_handshake(&mut framed, &expect, 1, Duration::from_secs(5))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(hold).await;
            let Some(report) = drain else {
                return; // hangs up
            };
            let mut ids = Vec::new();
            while let Some(Ok(frame)) = framed.next().await {
                if let Ok(req) = wire::decode::<ClientRequest>(&frame) {
                    ids.push(req.id);
                }
            }
            let _ = report.send(ids);
        });
        addr
    }

    async fn open(addr: &str) -> Arc<Connection> {
        let hello = Hello::new("kvs", wire::PeerRole::Client);
        Connection::open(
            addr,
            &hello,
            Duration::from_secs(5),
            wire::FRAME_BYTES_MAX_DEFAULT,
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn put(i: usize) -> Op {
        Op::Put {
            key: Bytes::from(format!("k{i}")),
            value: Bytes::from(vec![b'x'; 512 * 1024]),
        }
    }

    #[tokio::test]
    async fn writes_still_queued_when_the_connection_breaks_are_not_sent() {
        let addr = deaf_node(Duration::from_millis(500), None).await;
        let conn = open(&addr).await;
        // 200 writes of 512 KiB: far more than the socket buffers take, so most are still
        // queued in the client when the node hangs up.
        let calls = (0..200).map(|i| {
            let conn = Arc::clone(&conn);
            async move {
                let sent = Arc::new(AtomicBool::new(false));
                let result = conn.call(None, put(i), &sent).await;
                (result, sent.load(Ordering::Acquire))
            }
        });
        let outcomes =
            tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(calls))
                .await
                .unwrap_or_else(|_| panic!("the calls did not fail when the node hung up"));
        let (mut lost, mut not_sent) = (0, 0);
        for (result, sent) in outcomes {
            match result {
                Err(CallError::Lost(_)) => {
                    assert!(sent, "a request lost in transit was taken for the socket");
                    lost += 1;
                }
                Err(CallError::NotSent(_)) => {
                    assert!(
                        !sent,
                        "a request reported not sent was taken for the socket"
                    );
                    not_sent += 1;
                }
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        assert!(lost >= 1, "some writes reached the socket");
        assert!(
            not_sent >= 100,
            "writes still queued are not sent: {not_sent} of 200 ({lost} lost)"
        );
    }

    #[tokio::test]
    async fn a_request_given_up_before_the_writer_took_it_is_never_written() {
        let (report, received) = oneshot::channel();
        let addr = deaf_node(Duration::from_millis(800), Some(report)).await;
        let conn = open(&addr).await;
        let flags: Vec<_> = (0..100).map(|_| Arc::new(AtomicBool::new(false))).collect();
        let calls = flags.iter().enumerate().map(|(i, sent)| {
            let conn = Arc::clone(&conn);
            async move {
                let call = conn.call(None, put(i), sent);
                let _ = tokio::time::timeout(Duration::from_millis(300), call).await;
            }
        });
        futures::future::join_all(calls).await;
        // Every caller has given up. The node now reads everything the client writes.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(conn);
        let received = tokio::time::timeout(Duration::from_secs(10), received)
            .await
            .unwrap_or_else(|_| panic!("the node did not finish reading"))
            .unwrap_or_else(|e| panic!("{e}"));
        let taken: Vec<u64> = (0..100u64)
            .filter(|&i| flags[i as usize].load(Ordering::Acquire))
            .map(|i| i + 1) // request ids start at 1
            .collect();
        assert!(
            !taken.is_empty() && taken.len() < 100,
            "{} of 100 taken for the socket",
            taken.len()
        );
        assert_eq!(received, taken, "only requests taken for the socket arrive");
    }
}
