//! Nobody reading a replica's logs must not stop it: `kvs-server ... 2>&1 | head -2` used to
//! end the replica (a panic writing to the closed pipe). A real replica is started with its
//! stdout and stderr on pipes whose read ends are closed at once; it must still elect
//! itself, serve writes and reads, and stop cleanly on SIGTERM, logging all along into the
//! closed pipes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvs_client::{Client, ClientOptions};
use tests::cluster::{find_server_binary, send_signal, wait_child_exit as wait_exit, ReservedPort};

/// Writes sent once the pipes are closed.
const WRITES: usize = 50;
/// How long the replica may take to elect itself and answer.
const SERVE_BOUND: Duration = Duration::from_secs(20);
/// How long the replica may take to stop after SIGTERM (its own bound is 10 s).
const STOP_BOUND: Duration = Duration::from_secs(20);

/// Kills the replica if the test fails before it stopped.
struct Replica(Child);

impl Drop for Replica {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_log_pipes_are_closed_keeps_serving_and_stops_cleanly() {
    let server = find_server_binary(None).unwrap_or_else(|e| panic!("{e:#}"));
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let peer = ReservedPort::new().unwrap_or_else(|e| panic!("{e}"));
    let client = ReservedPort::new().unwrap_or_else(|e| panic!("{e}"));
    let (peer, client) = (peer.release(), client.release());
    let child = Command::new(&server)
        .arg("--id=1")
        .arg(format!("--peers=1={peer}"))
        .arg(format!("--client-addr={client}"))
        .arg(format!("--data-dir={}", data.path().display()))
        // Everything the replica has to say, so that it writes into the closed pipes
        // while it elects itself, serves and stops.
        .arg("--log-level=trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", server.display()));
    let mut replica = Replica(child);
    // Close the read ends at once, as `| head -2` does once it has its lines.
    drop(replica.0.stdout.take());
    drop(replica.0.stderr.take());

    // Until it listens (a client fails at once while nothing does).
    let started = Instant::now();
    while std::net::TcpStream::connect(client).is_err() {
        let exited = replica.0.try_wait().ok().flatten();
        assert!(exited.is_none(), "the replica exited at start: {exited:?}");
        assert!(
            started.elapsed() < SERVE_BOUND,
            "the replica did not listen within {SERVE_BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let options = ClientOptions {
        request_timeout: SERVE_BOUND,
        ..ClientOptions::default()
    };
    let kvs = Client::connect([client.to_string()], options).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..WRITES {
        let key = format!("k{i}");
        if let Err(e) = kvs.put(key.clone(), format!("v{i}")).await {
            let exited = replica.0.try_wait().ok().flatten();
            panic!("write {i} failed: {e}; the replica's exit status: {exited:?}");
        }
        let read = kvs
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("read {i}: {e}"));
        assert_eq!(read.as_deref(), Some(format!("v{i}").as_bytes()));
    }
    assert!(
        matches!(replica.0.try_wait(), Ok(None)),
        "the replica exited though it served every request"
    );

    send_signal(replica.0.id(), libc::SIGTERM)
        .unwrap_or_else(|e| panic!("cannot send SIGTERM: {e}"));
    let status = wait_exit(&mut replica.0, STOP_BOUND)
        .unwrap_or_else(|| panic!("the replica did not stop within {STOP_BOUND:?} of SIGTERM"));
    assert!(
        status.success(),
        "the replica stopped with {status} after SIGTERM, logging into closed pipes"
    );
    eprintln!("SUMMARY server-logs: {WRITES} writes and reads served with closed log pipes; stopped with {status}");
}
