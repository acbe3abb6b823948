//! The dev cluster (`kvs-server dev`) with cluster identities: it bootstraps, keeps working
//! across restarts, adopts data dirs written before identities existed, and a replica whose
//! data dir alone was wiped refuses to start while the others serve.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use wire::{ClientRequest, ClientResponse, Hello, Op, PeerRole, ReadConsistency, Reply};

const BOUND: Duration = Duration::from_secs(30);

/// Two runs of three free consecutive ports (client ports, then peer ports).
fn free_ports() -> (u16, u16) {
    for base in (20_000u16..60_000)
        .step_by(97)
        .skip((std::process::id() % 300) as usize)
    {
        let ok = (0..6).all(|i| StdListener::bind(("127.0.0.1", base + i)).is_ok());
        if ok {
            return (base, base + 3);
        }
    }
    panic!("no free ports");
}

struct Dev {
    child: Child,
    log: PathBuf,
    endpoints: Vec<String>,
}

impl Dev {
    fn start(data: &Path, ports: (u16, u16), log: PathBuf) -> Dev {
        let out = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log: {e}"));
        let err = out.try_clone().unwrap_or_else(|e| panic!("log: {e}"));
        let child = Command::new(env!("CARGO_BIN_EXE_kvs-server"))
            .arg("dev")
            .arg("--data-dir")
            .arg(data)
            .args(["--client-port", &ports.0.to_string()])
            .args(["--peer-port", &ports.1.to_string()])
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start kvs-server dev: {e}"));
        let endpoints = (0..3)
            .map(|i| format!("127.0.0.1:{}", ports.0 + i))
            .collect();
        Dev {
            child,
            log,
            endpoints,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn request(&self, op: Op, endpoints: &[usize]) -> Reply {
        let deadline = Instant::now() + BOUND;
        let mut last = String::new();
        while Instant::now() < deadline {
            for &i in endpoints {
                match request(&self.endpoints[i], op.clone()).await {
                    Ok(reply) => return reply,
                    Err(e) => last = e,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no answer to {op:?}: {last}\n{}", self.output());
    }

    async fn put(&self, key: &str, value: &str, endpoints: &[usize]) {
        let op = Op::Put {
            key: Bytes::from(key.to_owned()),
            value: Bytes::from(value.to_owned()),
        };
        assert_eq!(self.request(op, endpoints).await, Reply::Written);
    }

    async fn get(&self, key: &str, endpoints: &[usize]) -> Option<Bytes> {
        let op = Op::Get {
            key: Bytes::from(key.to_owned()),
            consistency: ReadConsistency::Linearizable,
        };
        match self.request(op, endpoints).await {
            Reply::Value { value, .. } => value,
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

impl Drop for Dev {
    /// Stops the cluster as an operator does, with SIGTERM: `dev` stops its replicas and
    /// waits for them, so their ports are free for the next start. SIGKILL only if it
    /// has not exited in time.
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a fresh connection; any error reply is an error.
async fn request(addr: &str, op: Op) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut framed = Framed::new(stream, wire::frame_codec());
    let hello = Hello::new("kvs", PeerRole::Client);
    wire::client_handshake(&mut framed, &hello, Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?;
    let req = ClientRequest {
        id: 1,
        session: None,
        op,
    };
    let bytes = wire::encode(&req).map_err(|e| e.to_string())?;
    framed.send(bytes).await.map_err(|e| e.to_string())?;
    let frame = tokio::time::timeout(Duration::from_secs(5), framed.next())
        .await
        .map_err(|_| "no answer".to_string())?
        .ok_or("closed")?
        .map_err(|e| e.to_string())?;
    let resp: ClientResponse = wire::decode(&frame).map_err(|e| e.to_string())?;
    resp.result.map_err(|e| format!("{e:?}"))
}

fn identity(data: &Path, node: u64) -> String {
    std::fs::read_to_string(data.join(format!("node-{node}")).join("IDENTITY")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_bootstraps_restarts_adopts_and_refuses_a_wiped_replica() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = root.path().join("data");
    let ports = free_ports();
    let all = [0, 1, 2];

    // First start: a new cluster.
    let dev = Dev::start(&data, ports, root.path().join("dev-1.log"));
    dev.put("greeting", "hello", &all).await;
    drop(dev);
    let instances: Vec<String> = (1..=3).map(|n| identity(&data, n)).collect();
    for text in &instances {
        assert!(text.contains("joined true"), "{text}");
    }

    // Restart: the same identities, the data is there.
    let dev = Dev::start(&data, ports, root.path().join("dev-2.log"));
    assert_eq!(dev.get("greeting", &all).await, Some(Bytes::from("hello")));
    drop(dev);
    let again: Vec<String> = (1..=3).map(|n| identity(&data, n)).collect();
    let line = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("instance "))
            .map(str::to_owned)
    };
    for (a, b) in instances.iter().zip(&again) {
        assert_eq!(line(a), line(b));
    }

    // Data dirs of an earlier version (a log, no identity) are adopted.
    for n in 1..=3 {
        std::fs::remove_file(data.join(format!("node-{n}")).join("IDENTITY"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let dev = Dev::start(&data, ports, root.path().join("dev-3.log"));
    assert_eq!(dev.get("greeting", &all).await, Some(Bytes::from("hello")));
    assert!(dev.output().contains("adopted the configured cluster"));
    drop(dev);

    // Node 2's data dir alone is wiped: started as `existing` (the dev cluster's restart),
    // it asks to join, its peers know id 2 by another data dir, so it stops, saying why,
    // and the dev cluster, one of whose replicas cannot start, stops with that error.
    let node2 = data.join("node-2");
    std::fs::remove_dir_all(&node2).unwrap_or_else(|e| panic!("{e}"));
    let mut dev = Dev::start(&data, ports, root.path().join("dev-4.log"));
    let deadline = Instant::now() + BOUND;
    let status = loop {
        if let Ok(Some(status)) = dev.child.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "dev still runs with a replica that cannot start:\n{}",
            dev.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let out = dev.output();
    assert!(!status.success(), "dev exited with {status}:\n{out}");
    assert!(out.contains("has lost its data"), "{out}");
    // Its data dir never got past joining: it holds no cluster identity.
    let left = std::fs::read_to_string(node2.join("IDENTITY")).unwrap_or_default();
    assert!(left.contains("\norigin joining\n"), "{left}");
}
