//! Process-level tests of what a client connection may make a replica hold: a client that
//! pipelines reads of a large value and never reads the answers must not grow the replica's
//! memory past the per-connection bound, and is disconnected once it has stalled for the
//! stall timeout; a slow but honest client gets every answer.
//!
//! Peak memory is the server process's `VmHWM` (peak resident set) from `/proc/PID/status`.

use std::collections::BTreeSet;
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

const STALL_TIMEOUT_MS: u64 = 3000;

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// One replica (a single-member cluster), killed when dropped.
struct Server {
    child: Child,
    client_addr: String,
    log: PathBuf,
}

impl Server {
    fn start(data: &Path, extra: &[&str]) -> Server {
        let client_addr = format!("127.0.0.1:{}", free_port());
        let log = data.with_extension("log");
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log file: {e}"));
        let err = out.try_clone().unwrap_or_else(|e| panic!("log file: {e}"));
        let child = Command::new(env!("CARGO_BIN_EXE_kvs-server"))
            .args(["--id", "1", "--peers"])
            .arg(format!("1=127.0.0.1:{}", free_port()))
            .arg("--client-addr")
            .arg(&client_addr)
            .arg("--data-dir")
            .arg(data)
            .args(["--election-timeout-ms", "100..200", "--heartbeat-ms", "20"])
            .args(extra)
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

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {path}"))
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

async fn connect(addr: &str) -> Result<Conn, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut framed = Framed::new(stream, wire::frame_codec());
    let hello = Hello::new("kvs", PeerRole::Client);
    wire::client_handshake(&mut framed, &hello, Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?;
    Ok(framed)
}

async fn connect_ready(addr: &str) -> Conn {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match connect(addr).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("server never accepted clients: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn frame(req: &ClientRequest) -> Bytes {
    wire::encode(req).unwrap_or_else(|e| panic!("{e}"))
}

fn get_request(id: u64, key: &str) -> ClientRequest {
    ClientRequest {
        id,
        session: None,
        op: Op::Get {
            key: Bytes::from(key.to_owned()),
            consistency: ReadConsistency::Linearizable,
        },
    }
}

async fn call(conn: &mut Conn, req: ClientRequest) -> ClientResponse {
    conn.send(frame(&req))
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    match tokio::time::timeout(Duration::from_secs(10), conn.next()).await {
        Ok(Some(Ok(b))) => wire::decode(&b).unwrap_or_else(|e| panic!("decode: {e}")),
        other => panic!("no response to request {}: {other:?}", req.id),
    }
}

/// Writes `key` = `len` bytes once the replica leads.
async fn put_value(conn: &mut Conn, key: &str, len: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = ClientRequest {
            id: 1,
            session: None,
            op: Op::Put {
                key: Bytes::from(key.to_owned()),
                value: Bytes::from(vec![b'v'; len]),
            },
        };
        match call(conn, req).await.result {
            Ok(Reply::Written) => return,
            Err(ErrorReply::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("put failed: {other:?}"),
        }
    }
}

/// Sends `count` reads of `key` as fast as the connection takes them; ends with the number
/// sent, or early when the connection fails.
async fn pipeline_reads<S>(mut sink: S, key: &'static str, first_id: u64, count: u64) -> u64
where
    S: futures::Sink<Bytes> + Unpin,
{
    for i in 0..count {
        if sink
            .feed(frame(&get_request(first_id + i, key)))
            .await
            .is_err()
        {
            return i;
        }
        if i % 64 == 63 && sink.flush().await.is_err() {
            return i + 1;
        }
    }
    let _ = sink.flush().await;
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_cannot_exhaust_a_replica() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let stall = STALL_TIMEOUT_MS.to_string();
    let server = Server::start(
        &dir.path().join("data"),
        &["--client-stall-timeout-ms", &stall],
    );
    let mut control = connect_ready(&server.client_addr).await;
    put_value(&mut control, "big", 120 * 1024).await;
    let baseline_kib = server.status_kib("VmRSS");

    // Two connections pipeline 10,000 reads of the 120 KiB value each and never read:
    // unbounded, that is 2 x 10,000 x 120 KiB of answers.
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for c in 0..2u64 {
        let conn = connect_ready(&server.client_addr).await;
        let (sink, stream) = conn.split();
        readers.push(stream); // held, never read
        senders.push(tokio::spawn(pipeline_reads(
            sink,
            "big",
            c * 1_000_000,
            10_000,
        )));
    }
    // Meanwhile the replica keeps serving other clients.
    let mut served = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(STALL_TIMEOUT_MS - 500) {
        let t = Instant::now();
        let r = call(&mut control, get_request(10 + served, "big")).await;
        assert!(
            matches!(r.result, Ok(Reply::Value { value: Some(_), .. })),
            "{r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a read took {:?}",
            t.elapsed()
        );
        served += 1;
    }
    let peak_kib = server.status_kib("VmHWM");
    let growth_mib = peak_kib.saturating_sub(baseline_kib) / 1024;
    println!(
        "never-reading clients: baseline RSS {} MiB, peak RSS (VmHWM) {} MiB, growth {growth_mib} MiB; {served} reads served meanwhile",
        baseline_kib / 1024,
        peak_kib / 1024
    );
    assert!(
        growth_mib < 64,
        "two never-reading connections grew the replica by {growth_mib} MiB (bound: 8 MiB each)"
    );

    // Both connections have stalled since their first answers: the replica closes them.
    let deadline = Instant::now() + Duration::from_millis(STALL_TIMEOUT_MS + 10_000);
    while server
        .log()
        .matches("the client stopped taking its answers")
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the stalled connections were not both closed: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut stream in readers {
        // What was on its way arrives, then the connection ends (not 20,000 answers).
        let mut answers = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                Ok(Some(Ok(_))) => answers += 1,
                Ok(Some(Err(_)) | None) => break,
                Err(_) => panic!("a stalled connection is still open after {answers} answers"),
            }
        }
        assert!(answers < 10_000, "{answers}");
    }
    for sender in senders {
        tokio::time::timeout(Duration::from_secs(10), sender)
            .await
            .unwrap_or_else(|_| panic!("a sender is still blocked on a closed connection"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let r = call(&mut control, get_request(5, "big")).await;
    assert!(matches!(r.result, Ok(Reply::Value { value: Some(_), .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_pipelining_client_gets_every_answer() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = Server::start(&dir.path().join("data"), &[]);
    let mut control = connect_ready(&server.client_addr).await;
    put_value(&mut control, "v", 16 * 1024).await;
    let baseline_kib = server.status_kib("VmRSS");

    const COUNT: u64 = 6_000;
    let conn = connect_ready(&server.client_addr).await;
    let (sink, mut stream) = conn.split();
    let sender = tokio::spawn(pipeline_reads(sink, "v", 0, COUNT));
    // The client takes its time before reading anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut seen = BTreeSet::new();
    while (seen.len() as u64) < COUNT {
        match tokio::time::timeout(Duration::from_secs(15), stream.next()).await {
            Ok(Some(Ok(b))) => {
                let resp: ClientResponse = wire::decode(&b).unwrap_or_else(|e| panic!("{e}"));
                assert!(
                    matches!(&resp.result, Ok(Reply::Value { value: Some(v), .. }) if v.len() == 16 * 1024),
                    "{:?}",
                    resp.result.as_ref().err()
                );
                assert!(seen.insert(resp.id), "answer {} twice", resp.id);
            }
            other => panic!(
                "{} of {COUNT} answers, then {other:?}: answers were dropped",
                seen.len()
            ),
        }
    }
    let sent = sender.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sent, COUNT);
    let peak_kib = server.status_kib("VmHWM");
    println!(
        "slow reader: {COUNT} answers of 16 KiB, baseline RSS {} MiB, peak RSS (VmHWM) {} MiB",
        baseline_kib / 1024,
        peak_kib / 1024
    );
}
