//! Graceful shutdown of one `kvs-server` replica (a single-member cluster): on SIGTERM with
//! writes in flight it answers what it can, closes its client connections cleanly (a FIN
//! after the last answer, not a reset), exits 0, and every write it acknowledged is there
//! after a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use wire::{
    ClientRequest, ClientResponse, ErrorReply, Hello, Op, PeerRole, ReadConsistency, Reply,
};

/// Writes pipelined on one connection, most of them in flight when SIGTERM comes.
const WRITES: u64 = 3000;
/// SIGTERM is sent once this many answers have arrived.
const ANSWERS_BEFORE_SIGTERM: usize = 100;
/// How long the replica may take to exit after SIGTERM.
const EXIT_MAX: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

struct Server {
    child: Child,
    client_addr: String,
    log: PathBuf,
}

impl Server {
    fn start(data: &Path, peer_port: u16, client_port: u16) -> Server {
        let client_addr = format!("127.0.0.1:{client_port}");
        let log = data.with_extension("log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("log file: {e}"));
        let err = out.try_clone().unwrap_or_else(|e| panic!("log file: {e}"));
        let child = Command::new(env!("CARGO_BIN_EXE_kvs-server"))
            .args(["--id", "1", "--peers"])
            .arg(format!("1=127.0.0.1:{peer_port}"))
            .arg("--client-addr")
            .arg(&client_addr)
            .arg("--data-dir")
            .arg(data)
            .args(["--election-timeout-ms", "100..200", "--heartbeat-ms", "20"])
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start kvs-server: {e}"));
        Server {
            child,
            client_addr,
            log,
        }
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// The exit code once the process has exited by itself within `within`.
    fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Conn = Framed<TcpStream, LengthDelimitedCodec>;

async fn connect_ready(addr: &str) -> Conn {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(stream) = TcpStream::connect(addr).await {
            let mut framed = Framed::new(stream, wire::frame_codec());
            let hello = Hello::new("kvs", PeerRole::Client);
            if wire::client_handshake(&mut framed, &hello, Duration::from_secs(2))
                .await
                .is_ok()
            {
                return framed;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never accepted clients");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn put(id: u64) -> ClientRequest {
    ClientRequest {
        id,
        session: None,
        op: Op::Put {
            key: Bytes::from(format!("k{id}")),
            value: Bytes::from(format!("v{id}")),
        },
    }
}

/// Waits until the single replica leads and applies writes.
async fn wait_until_writable(conn: &mut Conn) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let frame = wire::encode(&put(u64::MAX)).unwrap_or_else(|e| panic!("{e}"));
        conn.send(frame).await.unwrap_or_else(|e| panic!("{e}"));
        let answer = match conn.next().await {
            Some(Ok(b)) => wire::decode::<ClientResponse>(&b).unwrap_or_else(|e| panic!("{e}")),
            other => panic!("connection ended: {other:?}"),
        };
        match answer.result {
            Ok(Reply::Written) => return,
            Err(ErrorReply::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("the replica does not take writes: {other:?}"),
        }
    }
}

/// How the connection ended, and the answers it delivered.
struct Outcome {
    answers: BTreeMap<u64, Result<Reply, ErrorReply>>,
    /// `None` for a clean close (end of stream), else the error.
    error: Option<String>,
}

/// Pipelines [`WRITES`] writes, sends SIGTERM after [`ANSWERS_BEFORE_SIGTERM`] answers,
/// and reads answers until the connection ends.
async fn writes_through_sigterm(server: &Server, conn: Conn) -> Outcome {
    let (mut sink, mut stream) = conn.split();
    let writer = tokio::spawn(async move {
        for id in 0..WRITES {
            let frame = wire::encode(&put(id)).unwrap_or_else(|e| panic!("{e}"));
            if sink.feed(frame).await.is_err() {
                return;
            }
        }
        let _ = sink.flush().await;
        // Keep the write side open: the server is the one to close.
        std::future::pending::<()>().await;
    });
    let mut outcome = Outcome {
        answers: BTreeMap::new(),
        error: None,
    };
    let mut signalled = false;
    loop {
        let next = tokio::time::timeout(EXIT_MAX, stream.next()).await;
        let frame = match next {
            Err(_) => panic!("no answer and no close within {EXIT_MAX:?}"),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                outcome.error = Some(e.to_string());
                break;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let answer: ClientResponse = wire::decode(&frame).unwrap_or_else(|e| panic!("{e}"));
        let first = outcome.answers.insert(answer.id, answer.result).is_none();
        assert!(first, "request {} answered twice", answer.id);
        if !signalled && outcome.answers.len() >= ANSWERS_BEFORE_SIGTERM {
            server.sigterm();
            signalled = true;
        }
    }
    writer.abort();
    assert!(signalled, "the connection ended before SIGTERM");
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_in_flight_writes_closes_cleanly_and_exits_0() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("data");
    let (peer_port, client_port) = (free_port(), free_port());
    let mut server = Server::start(&data, peer_port, client_port);
    let mut conn = connect_ready(&server.client_addr).await;
    wait_until_writable(&mut conn).await;

    let outcome = writes_through_sigterm(&server, conn).await;
    let code = server.exit_code(EXIT_MAX);
    let log = server.log();
    assert_eq!(code, Some(0), "exit after SIGTERM:\n{log}");
    assert_eq!(
        outcome.error, None,
        "the connection was not closed cleanly:\n{log}"
    );
    assert!(
        log.contains("shutting down: finishing in-flight requests"),
        "{log}"
    );
    assert!(log.contains("stopped"), "{log}");
    let written: BTreeSet<u64> = outcome
        .answers
        .iter()
        .filter(|(_, r)| matches!(r, Ok(Reply::Written)))
        .map(|(id, _)| *id)
        .collect();
    assert!(
        written.len() >= ANSWERS_BEFORE_SIGTERM,
        "{} written",
        written.len()
    );
    for (id, result) in &outcome.answers {
        // Every answer is a real one: written, or refused while stopping.
        assert!(
            matches!(
                result,
                Ok(Reply::Written) | Err(ErrorReply::Timeout | ErrorReply::Unavailable { .. })
            ),
            "request {id}: {result:?}"
        );
    }

    // Every acknowledged write is there after a restart.
    let server = Server::start(&data, peer_port, client_port);
    let mut conn = connect_ready(&server.client_addr).await;
    wait_until_writable(&mut conn).await;
    for &id in &written {
        let req = ClientRequest {
            id,
            session: None,
            op: Op::Get {
                key: Bytes::from(format!("k{id}")),
                consistency: ReadConsistency::Linearizable,
            },
        };
        conn.send(wire::encode(&req).unwrap_or_else(|e| panic!("{e}")))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let answer = match conn.next().await {
            Some(Ok(b)) => wire::decode::<ClientResponse>(&b).unwrap_or_else(|e| panic!("{e}")),
            other => panic!("connection ended: {other:?}"),
        };
        assert_eq!(
            answer.result,
            Ok(Reply::Value {
                value: Some(Bytes::from(format!("v{id}"))),
                stale: false
            }),
            "acknowledged write k{id} lost"
        );
    }
}
