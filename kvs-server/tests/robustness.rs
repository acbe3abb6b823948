//! Process-level tests of one `kvs-server` replica (a single-member cluster): bad input on
//! the client port, kill -9 durability, and what a damaged write-ahead log does on restart.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use wire::{
    ClientRequest, ClientResponse, ErrorReply, Hello, Op, PeerRole, ReadConsistency, Reply, Session,
};

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

struct Server {
    child: Option<Child>,
    client_addr: String,
    peer_addr: String,
    data: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(data: &Path) -> Server {
        let s = Server {
            child: None,
            client_addr: format!("127.0.0.1:{}", free_port()),
            peer_addr: format!("127.0.0.1:{}", free_port()),
            data: data.to_path_buf(),
            log: data.with_extension("log"),
        };
        s.spawn()
    }

    fn spawn(mut self) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("log file: {e}"));
        let err = log.try_clone().unwrap_or_else(|e| panic!("log file: {e}"));
        let child = Command::new(env!("CARGO_BIN_EXE_kvs-server"))
            .args(["--id", "1", "--peers"])
            .arg(format!("1={}", self.peer_addr))
            .arg("--client-addr")
            .arg(&self.client_addr)
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--election-timeout-ms", "100..200", "--heartbeat-ms", "20"])
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start kvs-server: {e}"));
        self.child = Some(child);
        self
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(mut self) -> Server {
        self.kill9();
        self.spawn()
    }

    /// Waits for the process to exit by itself; returns its exit status and log.
    fn wait_exit(&mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        let mut code = None;
        if let Some(c) = self.child.as_mut() {
            while Instant::now() < deadline {
                if let Ok(Some(status)) = c.try_wait() {
                    code = status.code();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if code.is_some() {
            self.child = None;
        }
        (code, std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
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

/// Connects once the server accepts clients (bounded wait).
async fn connect_ready(addr: &str) -> Conn {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match connect(addr).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => {
                panic!("server at {addr} never accepted clients: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn call(conn: &mut Conn, req: ClientRequest) -> ClientResponse {
    let bytes = wire::encode(&req).unwrap_or_else(|e| panic!("{e}"));
    conn.send(bytes)
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    let frame = tokio::time::timeout(Duration::from_secs(10), conn.next())
        .await
        .unwrap_or_else(|_| panic!("no response to request {}", req.id));
    match frame {
        Some(Ok(b)) => wire::decode(&b).unwrap_or_else(|e| panic!("decode: {e}")),
        other => panic!("connection ended: {other:?}"),
    }
}

/// Registers a write session once the single replica has become leader; returns its id.
async fn register(conn: &mut Conn) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = ClientRequest {
            id: 1_000_000,
            session: None,
            op: Op::RegisterSession,
        };
        match call(conn, req).await.result {
            Ok(Reply::SessionRegistered { client_id }) => return client_id,
            Err(ErrorReply::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("registration failed: {other:?}"),
        }
    }
}

/// Sends write `seq` of session `client` until the single replica has become leader and
/// applied it.
async fn put(conn: &mut Conn, client: u64, seq: u64, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = ClientRequest {
            id: seq,
            session: Some(Session {
                client_id: client,
                seq,
            }),
            op: Op::Put {
                key: Bytes::from(key.to_string()),
                value: Bytes::from(value.to_string()),
            },
        };
        match call(conn, req).await.result {
            Ok(Reply::Written) => return,
            Err(ErrorReply::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("put {key} failed: {other:?}"),
        }
    }
}

async fn get(conn: &mut Conn, id: u64, key: &str) -> Option<Bytes> {
    let req = ClientRequest {
        id,
        session: None,
        op: Op::Get {
            key: Bytes::from(key.to_string()),
            consistency: ReadConsistency::Linearizable,
        },
    };
    match call(conn, req).await.result {
        Ok(Reply::Value { value, stale }) => {
            assert!(!stale);
            value
        }
        other => panic!("get {key} failed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let server = Server::start(&dir.path().join("node"));
    let mut good = connect_ready(&server.client_addr).await;
    let me = register(&mut good).await;
    put(&mut good, me, 1, "k", "v").await;

    // Garbage instead of a handshake: refused with a reason, connection closed.
    let mut raw = TcpStream::connect(&server.client_addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.contains("magic"),
        "refusal should name the bad magic, got {text:?}"
    );

    // A wrong protocol version: refused, naming the supported range.
    let mut hello = Hello::new("kvs", PeerRole::Client);
    hello.version = 99;
    let stream = TcpStream::connect(&server.client_addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut framed = Framed::new(stream, wire::frame_codec());
    let refused = wire::client_handshake(&mut framed, &hello, Duration::from_secs(2)).await;
    let msg = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("version"), "{msg}");

    // The wrong cluster id: refused.
    let stream = TcpStream::connect(&server.client_addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut framed = Framed::new(stream, wire::frame_codec());
    let other = Hello::new("another-cluster", PeerRole::Client);
    let msg = wire::client_handshake(&mut framed, &other, Duration::from_secs(2))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(msg.contains("another-cluster"), "{msg}");

    // An oversized frame after a good handshake: the connection is closed.
    let mut big = connect(&server.client_addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let stream = big.get_mut();
    stream
        .write_all(&(64u32 * 1024 * 1024).to_be_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let closed = tokio::time::timeout(Duration::from_secs(5), big.next()).await;
    assert!(
        matches!(closed, Ok(None) | Ok(Some(Err(_)))),
        "oversized frame not refused: {closed:?}"
    );

    // Garbage inside a well-formed frame: closed.
    let mut junk = connect(&server.client_addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    junk.send(Bytes::from_static(b"\xff\xfe\xfd not a request"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let closed = tokio::time::timeout(Duration::from_secs(5), junk.next()).await;
    assert!(
        matches!(closed, Ok(None) | Ok(Some(Err(_)))),
        "garbage frame not refused: {closed:?}"
    );

    // A truncated frame, then the client goes away: nothing breaks.
    let mut cut = connect(&server.client_addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let s = cut.get_mut();
    s.write_all(&100u32.to_be_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.write_all(b"only a few bytes")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(cut);

    // An oversized value is refused with the limit named, and nothing is written.
    let req = ClientRequest {
        id: 77,
        session: Some(Session {
            client_id: 42,
            seq: 77,
        }),
        op: Op::Put {
            key: Bytes::from_static(b"big"),
            value: Bytes::from(vec![0u8; wire::VALUE_BYTES_MAX + 1]),
        },
    };
    match call(&mut good, req).await.result {
        Err(ErrorReply::TooLarge { max, .. }) => assert_eq!(max, wire::VALUE_BYTES_MAX as u64),
        other => panic!("oversized value accepted: {other:?}"),
    }

    // Through all of that, the first client is still served.
    put(&mut good, me, 2, "k", "v2").await;
    assert_eq!(
        get(&mut good, 3, "k").await,
        Some(Bytes::from_static(b"v2"))
    );
    assert_eq!(get(&mut good, 4, "big").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_retries_apply_once() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut server = Server::start(&dir.path().join("node"));
    let mut c = connect_ready(&server.client_addr).await;
    let me = register(&mut c).await;
    for i in 0..50u64 {
        put(&mut c, me, i + 1, &format!("key{i}"), &format!("value{i}")).await;
    }
    server = server.restart();
    let mut c = connect_ready(&server.client_addr).await;
    // The first write that gets an answer proves the replica leads again.
    put(&mut c, me, 1000, "after", "restart").await;
    for i in 0..50u64 {
        let v = get(&mut c, 5000 + i, &format!("key{i}")).await;
        assert_eq!(
            v,
            Some(Bytes::from(format!("value{i}"))),
            "key{i} lost after kill -9"
        );
    }
    // Retrying write seq 4 (key3, applied before the crash) must not apply it again.
    put(&mut c, me, 2000, "key3", "changed").await;
    let retry = ClientRequest {
        id: 9,
        session: Some(Session {
            client_id: me,
            seq: 4,
        }),
        op: Op::Put {
            key: Bytes::from_static(b"key3"),
            value: Bytes::from_static(b"value3"),
        },
    };
    assert_eq!(call(&mut c, retry).await.result, Ok(Reply::Written));
    assert_eq!(
        get(&mut c, 10, "key3").await,
        Some(Bytes::from_static(b"changed"))
    );
    drop(server);
}

fn wal_segments(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data.join("wal"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == "log"));
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_log_stops_the_replica_but_a_torn_tail_is_repaired() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("node");
    let mut server = Server::start(&data);
    let mut c = connect_ready(&server.client_addr).await;
    let me = register(&mut c).await;
    for i in 0..20u64 {
        put(
            &mut c,
            me,
            i + 1,
            &format!("key{i}"),
            "some value to make records",
        )
        .await;
    }
    server.kill9();

    // A torn tail: half a record appended at the end, as a crash mid-write leaves it.
    let segs = wal_segments(&data);
    let last = segs
        .last()
        .cloned()
        .unwrap_or_else(|| panic!("no WAL segment"));
    let good_len = std::fs::metadata(&last).map(|m| m.len()).unwrap_or(0);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap_or_else(|e| panic!("{e}"));
    std::io::Write::write_all(&mut f, &[200, 0, 0, 0, 1, 2]).unwrap_or_else(|e| panic!("{e}"));
    drop(f);
    server = server.spawn();
    let mut c = connect_ready(&server.client_addr).await;
    put(&mut c, me, 100, "post", "repair").await;
    assert_eq!(
        get(&mut c, 101, "key19").await,
        Some(Bytes::from_static(b"some value to make records"))
    );
    server.kill9();
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert!(
        log.contains("torn"),
        "the truncation should be logged: {log}"
    );

    // Corruption in the middle: one flipped byte well inside the segment.
    let mut bytes = std::fs::read(&last).unwrap_or_else(|e| panic!("{e}"));
    let at = (good_len / 2) as usize;
    bytes[at] ^= 0x5a;
    std::fs::write(&last, &bytes).unwrap_or_else(|e| panic!("{e}"));
    server = server.spawn();
    let (code, log) = server.wait_exit(Duration::from_secs(10));
    assert_eq!(
        code,
        Some(1),
        "a corrupt log must stop the replica; log:\n{log}"
    );
    let name = last
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    assert!(
        log.contains(&name),
        "the error should name the file {name}: {log}"
    );
    assert!(
        log.contains("offset"),
        "the error should name the offset: {log}"
    );
}
