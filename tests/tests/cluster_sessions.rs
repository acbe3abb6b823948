//! Exactly-once writes on a real three-replica cluster whose session table is small
//! (`--sessions-max`): more clients than the table holds push a session out, and a retry of
//! that session's write is then refused as expired, never applied a second time; writes
//! without a session take no room in the table; a replica restarted from its snapshot
//! holds what the others hold. The `kvs-client retry` command is checked against the same
//! cluster: it answers a remembered write's first result and exits 5 for a forgotten one.

#[macro_use]
mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures::{SinkExt, StreamExt};
use kvs_client::{Client, Error, RetryHandle, WriteOutcome};
use tests::cluster::{find_server_binary, Cluster, ClusterOptions};
use tokio_util::codec::Framed;
use wire::{ClientRequest, ClientResponse, Hello, Op, PeerRole, Reply, Session};

/// Sessions each replica remembers in these tests.
const SESSIONS_MAX: usize = 4;

fn options() -> ClusterOptions {
    let mut extra_args = fast_timing();
    extra_args.extend(["--sessions-max".to_owned(), SESSIONS_MAX.to_string()]);
    ClusterOptions {
        nodes: 3,
        // Snapshots every few slots, so that a restarted replica restores from one.
        snapshot_every: Some(5),
        extra_args,
        ..ClusterOptions::default()
    }
}

/// The handle of write `seq` of `client`'s current session, doing `op`.
fn handle(cluster: &Cluster, client: &Client, seq: u64, op: Op) -> RetryHandle {
    let Some(client_id) = client.client_id() else {
        fail(cluster, "the client has no session after a write");
    };
    RetryHandle::new(Session { client_id, seq }, op).or_fail(cluster, "a retry handle")
}

async fn value(cluster: &Cluster, client: &Client, key: &str) -> Option<Bytes> {
    client
        .get(key.to_owned())
        .await
        .or_fail(cluster, &format!("get {key:?}"))
}

/// Registers `n` new sessions, each with one write: enough to push older ones out.
async fn crowd(cluster: &Cluster, n: usize) {
    for i in 0..n {
        let other = client(cluster, CHECK_TIMEOUT);
        other
            .put(format!("crowd/{i}"), "x")
            .await
            .or_fail(cluster, "a crowding write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_its_session_was_evicted_is_refused_and_not_applied_twice() {
    let cluster = start(options());
    wait_leader(&cluster, &cluster.ids()).await;
    let a = client(&cluster, CHECK_TIMEOUT);
    let b = client(&cluster, CHECK_TIMEOUT);

    // Session a: write 1 puts, write 2 deletes.
    a.put("k", "a1").await.or_fail(&cluster, "put");
    let retry_put = handle(&cluster, &a, 1, put_op("k", "a1"));
    check!(
        &cluster,
        a.delete("k").await.or_fail(&cluster, "delete"),
        "k existed"
    );
    let retry_del = handle(&cluster, &a, 2, del_op("k"));

    // While the session is remembered, a retry answers the first result and changes nothing.
    b.put("k", "b1").await.or_fail(&cluster, "a later write");
    let again = b
        .retry(&retry_del)
        .await
        .or_fail(&cluster, "retry the delete");
    check!(
        &cluster,
        again == WriteOutcome::Deleted { existed: true },
        "the retried delete answered {again:?}, not its first result"
    );
    check!(
        &cluster,
        value(&cluster, &b, "k").await == Some(Bytes::from("b1")),
        "a retried delete removed a later write"
    );

    // More sessions than the table holds: a's session is forgotten.
    crowd(&cluster, SESSIONS_MAX).await;
    for retry in [&retry_del, &retry_put] {
        match b.retry(retry).await {
            Err(Error::SessionExpired { client_id, seq }) => check!(
                &cluster,
                (client_id, seq) == (retry.session().client_id, retry.session().seq),
                "expired names another write: {client_id}/{seq}"
            ),
            other => fail(
                &cluster,
                format!("a retry of a forgotten session answered {other:?}"),
            ),
        }
    }
    check!(
        &cluster,
        value(&cluster, &b, "k").await == Some(Bytes::from("b1")),
        "a write of a forgotten session was applied again"
    );

    // A new write of the forgotten client simply registers a new session.
    let old_id = a.client_id();
    a.put("k2", "new").await.or_fail(&cluster, "a new write");
    check!(
        &cluster,
        a.client_id() != old_id,
        "the session was not renewed"
    );

    // Every replica holds the same, also one restarted from its snapshot and log.
    let leader = wait_leader(&cluster, &cluster.ids()).await;
    let follower = cluster.ids().into_iter().find(|&id| id != leader);
    let Some(follower) = follower else {
        fail(&cluster, "no follower");
    };
    cluster.kill(follower).or_fail(&cluster, "kill a follower");
    cluster.restart(follower).or_fail(&cluster, "restart it");
    b.put("after-restart", "y").await.or_fail(&cluster, "put");
    wait_converged(&cluster, &cluster.ids(), CONVERGE_BOUND).await;
    let mut keys: Vec<String> = ["k", "k2", "after-restart"].map(str::to_owned).to_vec();
    keys.extend((0..SESSIONS_MAX).map(|i| format!("crowd/{i}")));
    verify_replicas_agree(&cluster, &b, &cluster.ids(), &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_a_session_take_no_room_in_the_session_table() {
    let cluster = start(options());
    wait_leader(&cluster, &cluster.ids()).await;
    let a = client(&cluster, CHECK_TIMEOUT);
    a.put("k", "a").await.or_fail(&cluster, "put");
    let retry = handle(&cluster, &a, 1, put_op("k", "a"));
    // Ten times the table's size in writes without a session, the first one overwriting k.
    for i in 0..10 * SESSIONS_MAX {
        let key = if i == 0 {
            "k".to_owned()
        } else {
            format!("s/{i}")
        };
        sessionless_put(&cluster, &key, "z").await;
    }
    // a's session is still remembered: the retry is answered, not applied again.
    let again = a.retry(&retry).await.or_fail(&cluster, "retry");
    check!(
        &cluster,
        again == WriteOutcome::Written,
        "the retry answered {again:?}"
    );
    check!(
        &cluster,
        value(&cluster, &a, "k").await == Some(Bytes::from("z")),
        "a retried put was applied again after writes without a session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_retry_answers_a_remembered_write_and_exits_5_for_a_forgotten_one() {
    let cluster = start(options());
    wait_leader(&cluster, &cluster.ids()).await;
    let a = client(&cluster, CHECK_TIMEOUT);
    a.put("k", "first").await.or_fail(&cluster, "put");
    let token = base64(&handle(&cluster, &a, 1, put_op("k", "first")).to_bytes());
    a.put("k", "second")
        .await
        .or_fail(&cluster, "a later write");

    let (code, stderr) = cli(&cluster, &["retry", &token]).await;
    check!(&cluster, code == Some(0), "retry exited {code:?}: {stderr}");
    check!(
        &cluster,
        value(&cluster, &a, "k").await == Some(Bytes::from("second")),
        "the CLI retry applied the write again"
    );

    crowd(&cluster, SESSIONS_MAX).await;
    let (code, stderr) = cli(&cluster, &["retry", &token]).await;
    check!(
        &cluster,
        code == Some(5) && stderr.starts_with("error: session expired: "),
        "a retry of a forgotten session exited {code:?}: {stderr}"
    );
    check!(
        &cluster,
        value(&cluster, &a, "k").await == Some(Bytes::from("second")),
        "the expired retry was applied"
    );
}

fn put_op(key: &str, value: &str) -> Op {
    Op::Put {
        key: Bytes::from(key.to_owned()),
        value: Bytes::from(value.to_owned()),
    }
}

fn del_op(key: &str) -> Op {
    Op::Delete {
        key: Bytes::from(key.to_owned()),
    }
}

/// Writes `key` without a session (as a client that does not need exactly-once would),
/// over a raw connection, at whichever node leads.
async fn sessionless_put(cluster: &Cluster, key: &str, value: &str) {
    let deadline = tokio::time::Instant::now() + CHECK_TIMEOUT;
    loop {
        for endpoint in cluster.client_endpoints() {
            if let Ok(Ok(Reply::Written)) = raw_request(&endpoint, put_op(key, value)).await {
                return;
            }
        }
        if tokio::time::Instant::now() > deadline {
            fail(
                cluster,
                format!("no node took a write of {key:?} without a session"),
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One request without a session to one node; `Err` if the connection failed.
async fn raw_request(endpoint: &str, op: Op) -> Result<Result<Reply, wire::ErrorReply>, String> {
    let stream = tokio::net::TcpStream::connect(endpoint)
        .await
        .map_err(|e| e.to_string())?;
    let mut framed = Framed::new(stream, wire::frame_codec());
    let hello = Hello::new("kvs", PeerRole::Client);
    wire::client_handshake(&mut framed, &hello, Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?;
    let request = ClientRequest {
        id: 1,
        session: None,
        op,
    };
    let payload = wire::encode(&request).map_err(|e| e.to_string())?;
    framed.send(payload).await.map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(CHECK_TIMEOUT, framed.next()).await;
    match answer {
        Ok(Some(Ok(frame))) => {
            let response: ClientResponse = wire::decode(&frame).map_err(|e| e.to_string())?;
            Ok(response.result)
        }
        other => Err(format!("no response: {other:?}")),
    }
}

/// `kvs-client` next to the server executable.
fn client_binary(cluster: &Cluster) -> PathBuf {
    let server = find_server_binary(None).or_fail(cluster, "the server executable");
    let path = server.with_file_name("kvs-client");
    check!(
        cluster,
        path.is_file(),
        "kvs-client not found at {}; run `cargo build --bins` first",
        path.display()
    );
    path
}

/// Runs the CLI against the cluster; returns its exit code and stderr.
async fn cli(cluster: &Cluster, args: &[&str]) -> (Option<i32>, String) {
    let child = tokio::process::Command::new(client_binary(cluster))
        .arg("--endpoints")
        .arg(cluster.client_endpoints().join(","))
        .arg("--timeout-ms")
        .arg("5000")
        .args(args)
        .env_remove("KVS_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .or_fail(cluster, "spawning kvs-client");
    let output = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .or_fail(cluster, "kvs-client ran too long")
        .or_fail(cluster, "waiting for kvs-client");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

/// Standard base64 with padding, as the CLI prints retry tokens.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
