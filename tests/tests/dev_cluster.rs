//! `kvs-server dev` as a user runs it: one process per replica, their pids in the banner,
//! failover by `kill -9` of one of them, SIGTERM stopping the whole cluster, and a clear,
//! immediate failure when a port it needs is taken.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kvs_client::{Client, ClientOptions, NodeRole};
use tests::cluster::{
    find_server_binary, process_exists, send_signal, wait_child_exit as wait_exit,
};

/// How long the cluster may take to print its banner (replicas started and listening).
const BANNER_BOUND: Duration = Duration::from_secs(60);
/// Budget of each client request (a failover included).
const REQUEST_BOUND: Duration = Duration::from_secs(15);
/// How long `dev` may take to stop after SIGTERM (each replica has 10 s, in parallel).
const STOP_BOUND: Duration = Duration::from_secs(30);
/// How long a refused start may take.
const REFUSAL_BOUND: Duration = Duration::from_secs(10);
/// Bytes of `dev`'s stderr kept for failure messages.
const STDERR_KEPT_BYTES: usize = 256 * 1024;

/// A running `kvs-server dev`: killed (and its replicas with it) if the test fails early.
struct Dev {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    pids: Vec<(u64, u32)>,
    /// Every line of stdout up to the end of the banner.
    banner: Vec<String>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), libc::SIGTERM);
            if wait_exit(&mut self.child, STOP_BOUND).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        for &(_, pid) in &self.pids {
            if process_exists(pid) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

impl Dev {
    fn stderr(&self) -> String {
        let kept = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&kept).into_owned()
    }
}

/// Sends `signal` to `pid`; a process already gone is not an error here.
fn signal(pid: u32, signal: libc::c_int) {
    let _ = send_signal(pid, signal);
}

/// A base port from which `count` consecutive loopback ports are free now, tried at
/// pseudo-random places in 20000..60000 (a bounded number of times).
fn free_ports(count: u16, salt: u64) -> u16 {
    let seed = u64::from(std::process::id()) * 7919 + salt * 104_729;
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed + attempt * 2_654_435_761) % 40_000) as u16;
        let free = (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no {count} consecutive free ports found");
}

/// Nine free consecutive ports (`salt` picks where to look): the client port base, and the
/// flags giving `dev` them as its client, peer and admin port bases.
fn port_flags(salt: u64) -> (u16, [String; 3]) {
    let client_port = free_ports(9, salt);
    let (peer_port, admin_port) = (client_port + 3, client_port + 6);
    let flags = [
        format!("--client-port={client_port}"),
        format!("--peer-port={peer_port}"),
        format!("--admin-port={admin_port}"),
    ];
    (client_port, flags)
}

/// Starts `kvs-server dev` with `extra` flags; stdout comes line by line on the channel,
/// stderr is kept.
fn start_dev(data_dir: &std::path::Path, extra: &[String]) -> (Dev, mpsc::Receiver<String>) {
    let server = find_server_binary(None).unwrap_or_else(|e| panic!("{e:#}"));
    let mut child = Command::new(&server)
        .arg("dev")
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env_remove("KVS_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} dev: {e}", server.display()));
    let (lines_tx, lines) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
    }
    let stderr = Arc::new(Mutex::new(Vec::new()));
    if let Some(mut pipe) = child.stderr.take() {
        let kept = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    return;
                }
                let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                kept.extend_from_slice(&buf[..n]);
                let excess = kept.len().saturating_sub(STDERR_KEPT_BYTES);
                kept.drain(..excess);
            }
        });
    }
    let dev = Dev {
        child,
        stderr,
        pids: Vec::new(),
        banner: Vec::new(),
    };
    (dev, lines)
}

/// Reads the banner up to its last line; returns each replica's id and pid.
fn read_banner(dev: &mut Dev, lines: &mpsc::Receiver<String>) -> Vec<(u64, u32)> {
    let deadline = Instant::now() + BANNER_BOUND;
    let mut pids = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match lines.recv_timeout(left) {
            Ok(line) => line,
            Err(e) => panic!(
                "no complete banner within {BANNER_BOUND:?} ({e}); exit {:?}; stderr:\n{}",
                dev.child.try_wait(),
                dev.stderr()
            ),
        };
        dev.banner.push(line.clone());
        // "  replica 2 (pid 1234): clients at ..."
        if let Some(rest) = line.trim_start().strip_prefix("replica ") {
            let id = rest
                .split_whitespace()
                .next()
                .and_then(|id| id.parse().ok());
            let pid = rest
                .split("(pid ")
                .nth(1)
                .and_then(|p| p.split(')').next())
                .and_then(|p| p.parse().ok());
            if let (Some(id), Some(pid)) = (id, pid) {
                pids.push((id, pid));
            }
        }
        if line.starts_with("Ctrl-C stops the cluster") {
            dev.pids = pids.clone();
            return pids;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_each_replica_as_a_process_that_can_be_killed_for_failover() {
    let started = Instant::now();
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (client_port, flags) = port_flags(1);
    let (mut dev, lines) = start_dev(data.path(), &flags);
    let pids = read_banner(&mut dev, &lines);
    assert_eq!(
        pids.iter().map(|&(id, _)| id).collect::<Vec<_>>(),
        [1, 2, 3],
        "the banner names each replica with its pid"
    );
    let parent = dev.child.id();
    assert!(
        pids.iter()
            .all(|&(_, pid)| pid != parent && process_exists(pid)),
        "each replica is a process of its own: {pids:?} (dev is {parent})"
    );

    let endpoints: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", client_port + i))
        .collect();
    let options = ClientOptions {
        request_timeout: REQUEST_BOUND,
        ..ClientOptions::default()
    };
    let kvs = Client::connect(endpoints.clone(), options).unwrap_or_else(|e| panic!("{e}"));
    kvs.put("before", "1")
        .await
        .unwrap_or_else(|e| panic!("write before the kill: {e}\n{}", dev.stderr()));

    // kill -9 the leader's process, as the banner suggests.
    let leader = kvs
        .status()
        .await
        .into_iter()
        .filter_map(|(_, status)| status.ok())
        .find(|node| node.role == NodeRole::Leader)
        .map(|node| node.id)
        .unwrap_or_else(|| panic!("no leader after a write:\n{}", dev.stderr()));
    let (_, victim) = pids
        .iter()
        .copied()
        .find(|&(id, _)| id == leader)
        .unwrap_or_else(|| panic!("leader {leader} is not in the banner {pids:?}"));
    signal(victim, libc::SIGKILL);
    let killed_at = Instant::now();
    while process_exists(victim) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "replica {leader} (pid {victim}) is still there after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The others elect a new leader and serve; the old value is there.
    for i in 0..5 {
        kvs.put(format!("after/{i}"), "2")
            .await
            .unwrap_or_else(|e| panic!("write {i} after the kill: {e}\n{}", dev.stderr()));
    }
    let read = kvs.get("before").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read.as_deref(), Some(&b"1"[..]));
    let failover = killed_at.elapsed();
    assert!(
        matches!(dev.child.try_wait(), Ok(None)),
        "dev exited when one replica died: {}",
        dev.stderr()
    );
    let reported = format!("replica {leader} exited (signal: 9");
    assert!(
        dev.stderr().contains(&reported),
        "dev reports the replica that died ({reported:?}):\n{}",
        dev.stderr()
    );

    // SIGTERM stops dev and every replica still running.
    signal(parent, libc::SIGTERM);
    let status = wait_exit(&mut dev.child, STOP_BOUND)
        .unwrap_or_else(|| panic!("dev did not exit within {STOP_BOUND:?} of SIGTERM"));
    assert!(
        status.success(),
        "dev stopped with {status}:\n{}",
        dev.stderr()
    );
    let left: Vec<u32> = pids
        .iter()
        .map(|&(_, pid)| pid)
        .filter(|&pid| process_exists(pid))
        .collect();
    assert!(
        left.is_empty(),
        "replicas still running after dev stopped: {left:?}"
    );
    eprintln!(
        "SUMMARY dev-cluster: 3 replica processes {pids:?}; leader {leader} killed, 5 writes \
         served {failover:.1?} later; dev stopped with {status}; elapsed={:.1?}",
        started.elapsed()
    );
}

#[test]
fn dev_fails_at_once_when_a_client_port_is_taken() {
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let client_port = free_ports(9, 2);
    let (peer_port, admin_port) = (client_port + 3, client_port + 6);
    let taken_port = client_port + 1;
    let taken = std::net::TcpListener::bind(("127.0.0.1", taken_port))
        .unwrap_or_else(|e| panic!("cannot take port {taken_port}: {e}"));
    let flags = [
        format!("--client-port={client_port}"),
        format!("--peer-port={peer_port}"),
        format!("--admin-port={admin_port}"),
    ];
    let started = Instant::now();
    let (mut dev, lines) = start_dev(data.path(), &flags);
    let status = wait_exit(&mut dev.child, REFUSAL_BOUND)
        .unwrap_or_else(|| panic!("dev still runs {REFUSAL_BOUND:?} after it could not start"));
    let took = started.elapsed();
    drop(taken);
    assert!(
        !status.success(),
        "dev exited with {status} though a port is taken"
    );
    // The stdout reader ends with the pipe; give the stderr reader a moment too.
    let stdout: Vec<String> = lines.iter().collect();
    std::thread::sleep(Duration::from_millis(200));
    let stderr = dev.stderr();
    let expected = format!("client port 127.0.0.1:{taken_port} of replica 2 is taken");
    assert!(
        stderr.contains(&expected),
        "want {expected:?} in:\n{stderr}"
    );
    assert!(
        stdout.iter().all(|l| !l.starts_with("kvs dev cluster")),
        "no banner for a cluster that did not start: {stdout:?}"
    );
    eprintln!("SUMMARY dev-port-taken: exit {status} after {took:.1?}");
}

/// `kill -9` of `dev` itself cannot forward anything to the replicas; they notice that
/// the pipe `dev` holds to each of them closed, and stop on their own, freeing their ports.
#[test]
fn dev_killed_with_9_takes_its_replicas_with_it() {
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (client_port, flags) = port_flags(3);
    let (mut dev, lines) = start_dev(data.path(), &flags);
    let pids = read_banner(&mut dev, &lines);
    assert_eq!(pids.len(), 3, "three replicas in the banner: {pids:?}");
    signal(dev.child.id(), libc::SIGKILL);
    let _ = dev.child.wait();
    let killed_at = Instant::now();
    loop {
        let left: Vec<u32> = pids
            .iter()
            .map(|&(_, pid)| pid)
            .filter(|&pid| process_exists(pid))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            killed_at.elapsed() < STOP_BOUND,
            "replicas {left:?} still run {STOP_BOUND:?} after dev was killed with -9"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = killed_at.elapsed();
    let free = (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", client_port + i)).is_ok());
    assert!(
        free,
        "the client ports are still taken after the replicas stopped"
    );
    eprintln!("SUMMARY dev-killed: its 3 replicas stopped {stopped:.1?} after kill -9 of dev");
}

/// Runs `kvs-client` (next to the server) with `args`, bounded by [`REQUEST_BOUND`];
/// returns its exit code and stdout, stderr.
fn kvs_client(args: &[String]) -> (Option<i32>, String, String) {
    let server = find_server_binary(None).unwrap_or_else(|e| panic!("{e:#}"));
    let mut child = Command::new(server.with_file_name("kvs-client"))
        .args(args)
        .env_remove("KVS_CACERT")
        .env_remove("KVS_CERT")
        .env_remove("KVS_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run kvs-client: {e}"));
    let status = wait_exit(&mut child, REQUEST_BOUND);
    if status.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        status.and_then(|s| s.code()),
        text(&output.stdout),
        text(&output.stderr),
    )
}

/// `dev --tls`: TLS on every port, the certificates made on the first start in the data
/// dir and reused on the next, and the banner's `kvs-client` line works as printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_tls_serves_clients_with_the_certificates_its_banner_names_and_reuses_them() {
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (client_port, ports) = port_flags(4);
    let mut flags = ports.to_vec();
    flags.push("--tls".to_owned());
    let endpoints: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", client_port + i))
        .collect();
    let endpoints_flag = format!("--endpoints={}", endpoints.join(","));
    let ca = data.path().join("certs").join("ca.pem");
    let mut first_ca = None;
    for start in ["first", "second"] {
        let (mut dev, lines) = start_dev(data.path(), &flags);
        read_banner(&mut dev, &lines);
        // "  kvs-client --cacert CA --cert CERT --key KEY put greeting hello"
        let line = dev
            .banner
            .iter()
            .find(|l| l.trim_start().starts_with("kvs-client --cacert"))
            .unwrap_or_else(|| panic!("no kvs-client line in the banner: {:?}", dev.banner))
            .clone();
        let printed: Vec<String> = line.split_whitespace().skip(1).map(str::to_owned).collect();
        let tls_flags = printed[..6].to_vec();
        assert_eq!(tls_flags[1], ca.to_string_lossy(), "{line}");
        let export = format!("export KVS_CACERT={}", ca.display());
        assert!(
            dev.banner
                .iter()
                .any(|l| l.trim_start().starts_with(&export)),
            "{:?}",
            dev.banner
        );

        // The printed line, as printed.
        // The first write may wait for the first election.
        let mut args = vec![endpoints_flag.clone(), "--timeout-ms=15000".to_owned()];
        args.extend(printed.iter().cloned());
        let (code, _, stderr) = kvs_client(&args);
        assert_eq!(code, Some(0), "{line}: {stderr}\n{}", dev.stderr());
        let mut get = vec![endpoints_flag.clone()];
        get.extend(tls_flags.iter().cloned());
        get.extend(["get".to_owned(), "greeting".to_owned()]);
        let (code, stdout, stderr) = kvs_client(&get);
        assert_eq!((code, stdout.trim()), (Some(0), "hello"), "{stderr}");

        // Without them: refused at once, with the reason.
        let started = Instant::now();
        let (code, _, stderr) =
            kvs_client(&[endpoints_flag.clone(), "get".into(), "greeting".into()]);
        assert_eq!(code, Some(3), "{stderr}");
        assert!(stderr.contains("requires TLS"), "{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let plain = Client::connect(
            endpoints.clone(),
            ClientOptions {
                request_timeout: REQUEST_BOUND,
                ..ClientOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            plain.get("greeting").await.is_err(),
            "a plain client was served"
        );

        let ca_bytes = std::fs::read(&ca).unwrap_or_else(|e| panic!("{e}"));
        match &first_ca {
            None => first_ca = Some(ca_bytes),
            Some(first) => assert_eq!(first, &ca_bytes, "the second start made a new CA"),
        }
        signal(dev.child.id(), libc::SIGTERM);
        let status = wait_exit(&mut dev.child, STOP_BOUND)
            .unwrap_or_else(|| panic!("dev did not exit within {STOP_BOUND:?} of SIGTERM"));
        assert!(
            status.success(),
            "dev stopped with {status}:\n{}",
            dev.stderr()
        );
        eprintln!("dev --tls, {start} start: {line}");
    }
}
