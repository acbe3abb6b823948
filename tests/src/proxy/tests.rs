//! Tests of the proxy against a local echo server.
//!
//! Timeouts in these tests only guard against hangs; timing assertions are lower bounds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Direction, Leak, Proxy};
use crate::cluster::wait_until;

/// Bound for anything that should happen "at once" (generous: the machine is shared).
const PROMPTLY: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(200);
const POLL: Duration = Duration::from_millis(5);
const GREETING: &[u8] = b"hi!";

/// Accepts connections, sends [`GREETING`] on each, then echoes everything while reporting the
/// bytes it received on `received`.
struct EchoServer {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    received: mpsc::UnboundedReceiver<Vec<u8>>,
    task: JoinHandle<()>,
}

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let (tx, received) = mpsc::unbounded_channel();
        let counter = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                tokio::spawn(async move {
                    if stream.write_all(GREETING).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let _ = tx.send(buf[..n].to_vec());
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        EchoServer {
            addr,
            accepted,
            received,
            task,
        }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Collects what the server received until `len` bytes arrived.
    async fn receive(&mut self, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < len {
            let chunk = tokio::time::timeout(PROMPTLY, self.received.recv())
                .await
                .expect("echo server received nothing in time")
                .expect("echo server stopped");
            got.extend_from_slice(&chunk);
        }
        got
    }

    /// Asserts that the server receives nothing for a while.
    async fn assert_receives_nothing(&mut self) {
        if let Ok(Some(chunk)) = tokio::time::timeout(QUIET, self.received.recv()).await {
            panic!("echo server unexpectedly received {chunk:?}");
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_exact_n(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    tokio::time::timeout(PROMPTLY, stream.read_exact(&mut buf))
        .await
        .expect("read timed out")
        .expect("read failed");
    buf
}

/// Connects through the proxy and consumes the greeting.
async fn connect_greeted(proxy: &Proxy) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(read_exact_n(&mut stream, GREETING.len()).await, GREETING);
    stream
}

async fn echo(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.unwrap();
    assert_eq!(read_exact_n(stream, msg.len()).await, msg);
}

/// Asserts that the connection ends (EOF or error) promptly, without delivering more data.
async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(PROMPTLY, stream.read(&mut buf)).await {
        Err(_) => panic!("connection was not closed in time"),
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("unexpected data on a closed connection: {:?}", &buf[..n]),
    }
}

async fn assert_nothing_to_read(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(QUIET, stream.read(&mut buf)).await {
        Err(_) => {}
        Ok(Ok(n)) => panic!("unexpected read of {n} bytes: {:?}", &buf[..n]),
        Ok(Err(e)) => panic!("connection unexpectedly failed: {e}"),
    }
}

#[tokio::test]
async fn forwards_both_ways_and_counts() {
    let mut server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    assert_eq!(proxy.target(), server.addr);
    assert!(proxy.addr().ip().is_loopback());

    let mut a = connect_greeted(&proxy).await;
    let mut b = connect_greeted(&proxy).await;
    echo(&mut a, b"hello").await;
    echo(&mut b, b"world!").await;
    assert_eq!(server.receive(11).await.len(), 11);

    // A byte is counted once written to the other side, which may be after it was read there.
    let backward = 11 + 2 * GREETING.len() as u64;
    wait_until("byte counters to settle", PROMPTLY, POLL, || async {
        let stats = proxy.stats();
        stats.forward_bytes == 11 && stats.backward_bytes == backward
    })
    .await
    .unwrap();
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 2);
    assert_eq!(stats.refused, 0);
    assert_eq!(stats.active, 2);
    assert_eq!(
        stats.discarded_forward_bytes + stats.discarded_backward_bytes,
        0
    );
    assert!(!proxy.is_faulty());
}

#[tokio::test]
async fn large_transfer_arrives_intact_and_in_order() {
    let server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    let mut stream = connect_greeted(&proxy).await;
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut read_half, mut write_half) = stream.split();
    let send = async {
        write_half.write_all(&payload).await.unwrap();
    };
    let receive = async {
        let mut got = vec![0u8; payload.len()];
        tokio::time::timeout(PROMPTLY, read_half.read_exact(&mut got))
            .await
            .expect("transfer timed out")
            .unwrap();
        got
    };
    let ((), got) = tokio::join!(send, receive);
    assert!(got == payload, "echoed payload differs");
}

#[tokio::test]
async fn cut_resets_existing_connections_and_refuses_new_ones() {
    let mut server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    let mut existing = connect_greeted(&proxy).await;
    echo(&mut existing, b"before").await;
    server.receive(6).await;

    proxy.cut();
    assert!(proxy.is_cut());
    assert_closed(&mut existing).await;

    // A new connection is accepted by the proxy and reset at once (so fast that the connect
    // itself may report the reset); it never reaches the server.
    if let Ok(mut fresh) = TcpStream::connect(proxy.addr()).await {
        let _ = fresh.write_all(b"lost").await;
        assert_closed(&mut fresh).await;
    }
    server.assert_receives_nothing().await;
    assert_eq!(server.accepted(), 1);
    wait_until("the refused connection counted", PROMPTLY, POLL, || async {
        proxy.stats().refused == 1
    })
    .await
    .unwrap();
    assert_eq!(proxy.stats().accepted, 2);
    wait_until("no active connection", PROMPTLY, POLL, || async {
        proxy.stats().active == 0
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn forward_cut_discards_requests_but_replies_still_flow() {
    let mut server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    proxy.cut_direction(Direction::Forward);
    assert!(proxy.is_direction_cut(Direction::Forward));
    assert!(!proxy.is_direction_cut(Direction::Backward));

    // The greeting travels backward, so it arrives; what the client sends does not.
    let mut stream = connect_greeted(&proxy).await;
    stream.write_all(b"into the void").await.unwrap();
    server.assert_receives_nothing().await;
    assert_nothing_to_read(&mut stream).await;
    wait_until("discarded bytes counted", PROMPTLY, POLL, || async {
        proxy.stats().discarded_forward_bytes == 13
    })
    .await
    .unwrap();
    assert_eq!(proxy.stats().forward_bytes, 0);
}

#[tokio::test]
async fn backward_cut_delivers_requests_but_discards_replies() {
    let mut server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    proxy.cut_direction(Direction::Backward);

    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    assert_eq!(server.receive(4).await, b"ping");
    // Neither the greeting nor the echo comes back, yet the connection stays up.
    assert_nothing_to_read(&mut stream).await;
    assert_eq!(proxy.stats().backward_bytes, 0);
    assert_eq!(proxy.stats().active, 1);
    let discarded = (GREETING.len() + 4) as u64;
    wait_until("greeting and echo discarded", PROMPTLY, POLL, || async {
        proxy.stats().discarded_backward_bytes == discarded
    })
    .await
    .unwrap();

    proxy.heal();
    echo(&mut stream, b"again").await;
    assert_eq!(server.receive(5).await, b"again");
}

#[tokio::test]
async fn delay_holds_chunks_at_least_the_delay_and_keeps_order() {
    let server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    let mut stream = connect_greeted(&proxy).await;
    let delay = Duration::from_millis(100);
    proxy.set_delay(delay);
    assert_eq!(proxy.delay(), delay);

    let started = Instant::now();
    for part in [&b"one,"[..], b"two,", b"three"] {
        stream.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = read_exact_n(&mut stream, 13).await;
    // The request is delayed on its way in and the echo on its way out.
    assert!(
        started.elapsed() >= 2 * delay,
        "round trip took only {:?}",
        started.elapsed()
    );
    assert_eq!(got, b"one,two,three");

    proxy.heal();
    assert_eq!(proxy.delay(), Duration::ZERO);
    echo(&mut stream, b"fast again").await;
}

#[tokio::test]
async fn heal_after_cut_restores_service() {
    let mut server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    proxy.cut();
    proxy.cut_direction(Direction::Backward);
    proxy.set_delay(Duration::from_secs(60));
    assert!(proxy.is_faulty());
    proxy.heal();
    assert!(!proxy.is_faulty());
    assert!(!proxy.is_cut());

    let mut stream = connect_greeted(&proxy).await;
    echo(&mut stream, b"healed").await;
    assert_eq!(server.receive(6).await, b"healed");
}

#[tokio::test]
async fn drop_connections_closes_current_ones_only_once() {
    let server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    let mut old = connect_greeted(&proxy).await;
    echo(&mut old, b"x").await;

    proxy.drop_connections();
    assert_closed(&mut old).await;
    assert!(!proxy.is_faulty());

    let mut fresh = connect_greeted(&proxy).await;
    echo(&mut fresh, b"still served").await;
    assert_eq!(proxy.stats().refused, 0);
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn unreachable_target_closes_the_client_connection() {
    // Reserve a port and release it, so nothing listens there.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let proxy = Proxy::start(dead).unwrap();
    // The reset may come so fast that the connect itself reports it.
    if let Ok(mut stream) = TcpStream::connect(proxy.addr()).await {
        assert_closed(&mut stream).await;
    }
    wait_until("the failed connection to end", PROMPTLY, POLL, || async {
        let stats = proxy.stats();
        stats.accepted == 1 && stats.active == 0
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn dropping_the_proxy_ends_every_task_and_connection() {
    let server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    let mut a = connect_greeted(&proxy).await;
    let mut b = connect_greeted(&proxy).await;
    proxy.set_delay(Duration::from_secs(3600)); // A task parked in a long sleep must end too.
    a.write_all(b"parked").await.unwrap();
    let tasks = proxy.tasks();
    assert_eq!(tasks.live(), 3, "accept loop and two connections");
    let addr = proxy.addr();

    drop(proxy);
    wait_until("all proxy tasks ended", PROMPTLY, POLL, || async {
        tasks.live() == 0
    })
    .await
    .unwrap();
    assert_closed(&mut a).await;
    assert_closed(&mut b).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );
}

/// Keeps writing small messages through `proxy` (reconnecting whenever the connection fails)
/// until the returned sender is dropped or sent to.
fn keep_sending(proxy: &Proxy) -> (tokio::sync::oneshot::Sender<()>, JoinHandle<u64>) {
    let addr = proxy.addr();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut attempts = 0u64;
        loop {
            attempts += 1;
            if let Ok(mut stream) = TcpStream::connect(addr).await {
                loop {
                    if stream.write_all(b"tick").await.is_err() {
                        break;
                    }
                    tokio::select! {
                        _ = &mut stopped => return attempts,
                        () = tokio::time::sleep(Duration::from_millis(2)) => {}
                    }
                }
            }
            tokio::select! {
                _ = &mut stopped => return attempts,
                () = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    });
    (stop, task)
}

#[tokio::test]
async fn a_cut_forwards_nothing_until_healed_while_traffic_keeps_coming() {
    let mut server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    assert_eq!(proxy.leak(), None, "no fault, no leak accounting");
    let (stop, sender) = keep_sending(&proxy);
    server.receive(40).await;

    proxy.cut();
    let at_cut = proxy.stats();
    // The sender keeps reconnecting and writing: wait until a connection was refused, and a
    // while longer.
    wait_until("a refused reconnection", PROMPTLY, POLL, || async {
        proxy.stats().refused > at_cut.refused
    })
    .await
    .unwrap();
    tokio::time::sleep(QUIET).await;
    let leak = proxy.leak().expect("a cut is accounted");
    assert!(leak.is_empty(), "a cut proxy forwarded {leak}");
    let during = proxy.stats();
    assert_eq!(during.forward_bytes, at_cut.forward_bytes);
    assert_eq!(during.backward_bytes, at_cut.backward_bytes);
    assert_eq!(during.dialed, at_cut.dialed);
    assert_eq!(proxy.heal(), Some(Leak::default()));
    assert_eq!(proxy.leak(), None);

    // Healed: traffic flows again.
    wait_until("traffic after the heal", PROMPTLY, POLL, || async {
        proxy.stats().forward_bytes > during.forward_bytes
    })
    .await
    .unwrap();
    let _ = stop.send(());
    sender.await.unwrap();
}

#[tokio::test]
async fn bytes_queued_before_a_cut_are_never_delivered() {
    let mut server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    let mut stream = connect_greeted(&proxy).await;
    proxy.set_delay(Duration::from_millis(300));
    stream.write_all(b"queued").await.unwrap();
    // The proxy has read the bytes (they are held by the delay) when the cut comes.
    wait_until(
        "the bytes to be read by the proxy",
        PROMPTLY,
        POLL,
        || async { proxy.stats().active == 1 },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.cut();
    server.assert_receives_nothing().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.heal(), Some(Leak::default()));
    assert_eq!(proxy.stats().forward_bytes, 0);
}

#[tokio::test]
async fn a_one_way_cut_accounts_only_its_direction() {
    let mut server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    let mut stream = connect_greeted(&proxy).await;
    proxy.cut_direction(Direction::Forward);
    stream.write_all(b"dropped").await.unwrap();
    server.assert_receives_nothing().await;
    let leak = proxy.leak().expect("a one-way cut is accounted");
    assert!(leak.is_empty(), "{leak}");
    assert_eq!(proxy.heal(), Some(Leak::default()));
    echo(&mut stream, b"back").await;
}

#[tokio::test]
async fn a_fake_cut_is_caught_by_the_leak_accounting() {
    // The proxy pretends to cut (it says it is cut) but forwards everything: the very bug the
    // leak check exists for. The check must see the traffic.
    let mut server = EchoServer::start().await;
    let proxy = Proxy::start(server.addr).unwrap();
    proxy.set_fake_faults(true);
    let (stop, sender) = keep_sending(&proxy);
    server.receive(8).await;
    proxy.cut();
    assert!(proxy.is_cut(), "a fake cut still reports itself");
    wait_until("traffic through the fake cut", PROMPTLY, POLL, || async {
        proxy.leak().is_some_and(|l| l.forward_bytes > 0)
    })
    .await
    .unwrap();
    let leak = proxy.heal().expect("accounted");
    assert!(!leak.is_empty());
    assert!(leak.to_string().contains("bytes forward"), "{leak}");
    let _ = stop.send(());
    sender.await.unwrap();
}

#[test]
fn controls_work_from_sync_code_without_a_runtime() {
    let dead = "127.0.0.1:9".parse().unwrap();
    let proxy = Proxy::start(dead).unwrap();
    proxy.cut();
    proxy.cut_direction(Direction::Forward);
    proxy.set_delay(Duration::from_millis(1));
    proxy.drop_connections();
    proxy.heal();
    assert!(!proxy.is_faulty());
    let tasks = proxy.tasks();
    drop(proxy);
    crate::cluster::wait_until_blocking("accept loop ended", PROMPTLY, POLL, || tasks.live() == 0)
        .unwrap();
}
