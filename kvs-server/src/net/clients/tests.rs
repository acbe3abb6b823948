use super::writer::write_answers;
use crate::answers::ConnectionOut;
use crate::answers::{Outbox, Responder, ValueBytesSeen, ANSWER_OVERHEAD_BYTES};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wire::{ClientResponse, ErrorReply};

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
    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
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
    Responder::counted(id, conn).0
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
    let shutdown = CancellationToken::new();
    let r = request(&conn, 1);
    r.respond(value_reply(100_000));
    let waiting = {
        let conn = conn.clone();
        let values = values.clone();
        tokio::spawn(async move { conn.wait_for_room(&values, 150_000, &shutdown).await })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_a_connection_delivers_its_last_answer_then_closes_cleanly() {
    use super::{listen, ClientLimits, ClientService};
    use crate::event::Event;
    use futures::{SinkExt, StreamExt};
    use tokio_util::task::TaskTracker;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (events, mut inbox) = tokio::sync::mpsc::channel(16);
    let outbox = Outbox::default();
    let service = ClientService {
        my_id: 1,
        events,
        outbox: outbox.clone(),
        limits: ClientLimits::default(),
        values: ValueBytesSeen::default(),
        connections: Default::default(),
        tls: None,
    };
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(listen(
        listener,
        "kvs".into(),
        service,
        shutdown.clone(),
        tasks.clone(),
    ));
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut client = tokio_util::codec::Framed::new(stream, wire::frame_codec());
    let hello = wire::Hello::new("kvs", wire::PeerRole::Client);
    wire::client_handshake(&mut client, &hello, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let request = wire::ClientRequest {
        id: 7,
        session: None,
        op: wire::Op::Status,
    };
    let frame = wire::encode(&request).unwrap_or_else(|e| panic!("{e}"));
    client.send(frame).await.unwrap_or_else(|e| panic!("{e}"));
    let Some(Event::Client { responder, .. }) = inbox.recv().await else {
        panic!("the request did not reach the event loop");
    };

    // Shutdown with the request in flight: the connection waits for its answer.
    shutdown.cancel();
    tasks.close();
    let early = tokio::time::timeout(Duration::from_millis(200), tasks.wait()).await;
    assert!(
        early.is_err(),
        "the connection ended before its last answer"
    );
    responder.respond(Ok(wire::Reply::Written));
    outbox.flush();
    let answer = tokio::time::timeout(Duration::from_secs(5), client.next()).await;
    let frame = match answer {
        Ok(Some(Ok(frame))) => frame,
        other => panic!("no answer: {other:?}"),
    };
    let response: ClientResponse = wire::decode(&frame).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (response.id, response.result),
        (7, Ok(wire::Reply::Written))
    );
    // Then a clean close (end of stream, not a reset), and the task is gone.
    let end = tokio::time::timeout(Duration::from_secs(5), client.next()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    tokio::time::timeout(Duration::from_secs(5), tasks.wait())
        .await
        .unwrap_or_else(|_| panic!("the connection task did not end"));
}
