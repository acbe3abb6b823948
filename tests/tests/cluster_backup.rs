//! Backup and restore with real processes: a cluster holding 100,000 keys is saved with
//! `kvs-client snapshot save` while a writer keeps writing, the file is described by
//! `snapshot status`, damaged copies are refused by `snapshot status` and `kvs-server
//! restore`, and a new three-replica cluster (new data dirs, new ports) restored from the
//! file serves every key acknowledged before the save began, with its value.

#[macro_use]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::stream::{self, StreamExt};
use kvs_client::Client;
use tests::cluster::{find_server_binary, wait_for, Cluster, ClusterOptions, ReservedPort};

/// Keys loaded before the save.
const KEYS: usize = 100_000;
/// Puts in flight while loading.
const LOAD_CONCURRENCY: usize = 256;
/// Reads in flight while reading everything back.
const READ_BACK_CONCURRENCY: usize = 256;
/// Bound on one CLI or restore run.
const RUN_BOUND: Duration = Duration::from_secs(120);

fn key(i: usize) -> String {
    format!("key-{i:06}")
}

fn value(i: usize) -> Bytes {
    Bytes::from(format!("value-{i}-{}", "x".repeat(64)))
}

/// `kvs-client` next to the server executable (or `$KVS_CLIENT_BIN`).
fn client_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KVS_CLIENT_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let server = find_server_binary(None).unwrap_or_else(|e| panic!("{e:#}"));
    server.with_file_name("kvs-client")
}

fn server_binary() -> PathBuf {
    find_server_binary(None).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `program` with `args` to completion within [`RUN_BOUND`].
fn run(program: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env_remove("KVS_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let started = Instant::now();
    // Bounded by RUN_BOUND.
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < RUN_BOUND => std::thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                panic!(
                    "{} {args:?} ran longer than {RUN_BOUND:?}",
                    program.display()
                );
            }
        }
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for {}: {e}", program.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Puts every key of `0..KEYS`, many at once.
async fn load(cluster: &Cluster, client: &Client) {
    let results: Vec<Result<(), String>> = stream::iter(0..KEYS)
        .map(|i| async move {
            client
                .put(key(i), value(i))
                .await
                .map_err(|e| format!("{}: {e}", key(i)))
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .collect()
        .await;
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if !failed.is_empty() {
        fail(
            cluster,
            format!(
                "{} of {KEYS} puts failed, first: {}",
                failed.len(),
                failed[0]
            ),
        );
    }
}

/// Writes `during-N` one after another until stopped; records when each was acknowledged.
fn spawn_writer(
    client: Client,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(usize, Instant)>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Bounded: stopped by the test, and at most this many writes.
        for n in 0..1_000_000usize {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if client
                .put(format!("during-{n:07}"), format!("d{n}"))
                .await
                .is_ok()
            {
                let mut acked = acked.lock().unwrap_or_else(|e| e.into_inner());
                acked.push((n, Instant::now()));
            }
        }
    })
}

/// The replicas of the restored cluster: killed when dropped.
struct Restored {
    children: Vec<Child>,
}

impl Drop for Restored {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_restored_from_a_backup_serves_every_key_acknowledged_before_the_save() {
    let cluster = start(ClusterOptions {
        proxies: false,
        ..fast_options(3)
    });
    wait_leader(&cluster, &[1, 2, 3]).await;
    let client = client(&cluster, Duration::from_secs(30));
    let loading = Instant::now();
    load(&cluster, &client).await;
    eprintln!(
        "loaded {KEYS} keys in {:.1} s",
        loading.elapsed().as_secs_f64()
    );

    // A writer keeps writing while the snapshot is saved.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = spawn_writer(client.clone(), stop.clone(), acked.clone());
    let writing = wait_for(
        "the writer's first writes",
        Duration::from_secs(20),
        POLL,
        || {
            let n = acked.lock().unwrap_or_else(|e| e.into_inner()).len();
            async move { (n >= 20).then_some(n) }
        },
    )
    .await;
    writing.or_fail(&cluster, "writing during the save");

    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("backup.kvs");
    let file_arg = file.to_string_lossy().into_owned();
    let endpoints = cluster.client_endpoints().join(",");
    let cli = client_binary();
    let save_began = Instant::now();
    let saved = tokio::task::spawn_blocking({
        let cli = cli.clone();
        let (endpoints, file_arg) = (endpoints.clone(), file_arg.clone());
        move || {
            run(
                &cli,
                &[
                    "--endpoints",
                    &endpoints,
                    "--timeout-ms",
                    "30000",
                    "snapshot",
                    "save",
                    &file_arg,
                ],
            )
        }
    })
    .await
    .expect("the save thread");
    let save_took = save_began.elapsed();
    if !saved.status.success() {
        fail(
            &cluster,
            format!(
                "snapshot save failed: {}{}",
                text(&saved.stdout),
                text(&saved.stderr)
            ),
        );
    }
    let acked_before_save: Vec<usize> = acked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, at)| *at < save_began)
        .map(|(n, _)| *n)
        .collect();
    // The writer goes on after the save: its later writes must not disturb the backup.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("the writer");
    let file_bytes = std::fs::metadata(&file).expect("the backup exists").len();
    eprintln!(
        "snapshot save: {:.2} s, {file_bytes} bytes; {}",
        save_took.as_secs_f64(),
        text(&saved.stdout).trim()
    );

    // snapshot status, as JSON.
    let status = run(&cli, &["-o", "json", "snapshot", "status", &file_arg]);
    assert!(status.status.success(), "status: {}", text(&status.stderr));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    let keys = json["keys"].as_u64().expect("keys");
    let slot = json["slot"].as_u64().expect("slot");
    check!(
        &cluster,
        keys >= (KEYS + acked_before_save.len()) as u64,
        "the backup holds {keys} keys, fewer than were acknowledged before the save: {json}"
    );
    assert_eq!(json["format_version"], 1, "{json}");
    assert_eq!(json["file_bytes"].as_u64(), Some(file_bytes), "{json}");
    assert!(
        json["checksum"]
            .as_str()
            .is_some_and(|c| c.starts_with("crc32c:")),
        "{json}"
    );
    assert!(slot > 0);

    // Damaged copies are refused by both tools, which name the file.
    let bytes = std::fs::read(&file).expect("read the backup");
    let truncated = dir.path().join("truncated.kvs");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let corrupted = dir.path().join("corrupted.kvs");
    let mut flipped = bytes.clone();
    flipped[bytes.len() * 2 / 3] ^= 0x10;
    std::fs::write(&corrupted, &flipped).expect("write");
    let server = server_binary();
    let restored_root = dir.path().join("restored");
    for (bad, what) in [(&truncated, "truncated"), (&corrupted, "damaged")] {
        let bad_arg = bad.to_string_lossy().into_owned();
        let name = bad.file_name().and_then(|n| n.to_str()).expect("a name");
        let status = run(&cli, &["snapshot", "status", &bad_arg]);
        let err = text(&status.stderr);
        assert!(!status.status.success(), "status accepted {name}");
        assert!(
            err.contains(name) && err.contains(what),
            "status of {name}: {err}"
        );
        let target = restored_root.join(format!("from-{name}"));
        let target_arg = target.to_string_lossy().into_owned();
        let restore = run(
            &server,
            &[
                "restore",
                "--from",
                &bad_arg,
                "--data-dir",
                &target_arg,
                "--id",
                "1",
                "--peers",
                "1=127.0.0.1:1",
            ],
        );
        let err = text(&restore.stderr);
        assert!(!restore.status.success(), "restore accepted {name}");
        assert!(
            err.contains(name) && err.contains(what),
            "restore of {name}: {err}"
        );
        assert!(
            !target.exists(),
            "restore of {name} wrote {}",
            target.display()
        );
    }
    cluster.kill_all();
    // A save that cannot reach the cluster leaves no file behind, not even a temporary one.
    let unreachable = run(
        &cli,
        &[
            "--endpoints",
            &endpoints,
            "snapshot",
            "save",
            &dir.path().join("none.kvs").to_string_lossy(),
        ],
    );
    assert_eq!(
        unreachable.status.code(),
        Some(3),
        "{}",
        text(&unreachable.stderr)
    );
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list the temp dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.contains("none.kvs"))
        .collect();
    assert!(left.is_empty(), "a failed save left {left:?}");

    // Restore a new three-replica cluster on new ports.
    let ports: Vec<(ReservedPort, ReservedPort)> = (0..3)
        .map(|_| {
            (
                ReservedPort::new().expect("port"),
                ReservedPort::new().expect("port"),
            )
        })
        .collect();
    let peers = ports
        .iter()
        .enumerate()
        .map(|(i, (p, _))| format!("{}={}", i + 1, p.addr()))
        .collect::<Vec<_>>()
        .join(",");
    let client_addrs = ports
        .iter()
        .enumerate()
        .map(|(i, (_, c))| format!("{}={}", i + 1, c.addr()))
        .collect::<Vec<_>>()
        .join(",");
    let data_dir = |id: usize| restored_root.join(format!("node-{id}"));
    let restoring = Instant::now();
    for id in 1..=3 {
        let dir_arg = data_dir(id).to_string_lossy().into_owned();
        let out = run(
            &server,
            &[
                "restore",
                "--from",
                &file_arg,
                "--data-dir",
                &dir_arg,
                "--id",
                &id.to_string(),
                "--peers",
                &peers,
                "--client-addrs",
                &client_addrs,
            ],
        );
        assert!(
            out.status.success(),
            "restore of node {id}: {}",
            text(&out.stderr)
        );
    }
    let restore_took = restoring.elapsed();
    eprintln!(
        "restore of 3 data dirs: {:.2} s",
        restore_took.as_secs_f64()
    );
    let again = run(
        &server,
        &[
            "restore",
            "--from",
            &file_arg,
            "--data-dir",
            &data_dir(1).to_string_lossy(),
            "--id",
            "1",
            "--peers",
            &peers,
        ],
    );
    let err = text(&again.stderr);
    assert!(
        !again.status.success(),
        "restore wrote over a data dir that is not empty"
    );
    assert!(err.contains("not empty"), "{err}");

    let mut endpoints = Vec::new();
    let mut restored = Restored {
        children: Vec::new(),
    };
    for (i, (peer, client_port)) in ports.into_iter().enumerate() {
        let id = i + 1;
        peer.release();
        let client_addr = client_port.release().to_string();
        endpoints.push(client_addr.clone());
        let log = std::fs::File::create(restored_root.join(format!("node-{id}.log"))).expect("log");
        let child = Command::new(&server)
            .args([
                "--id",
                &id.to_string(),
                "--peers",
                &peers,
                "--client-addr",
                &client_addr,
            ])
            .args(["--client-addrs", &client_addrs, "--data-dir"])
            .arg(data_dir(id))
            .args(fast_timing())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start a restored replica");
        restored.children.push(child);
    }
    let restored_client = Client::connect(endpoints, client_options(Duration::from_secs(30)))
        .expect("a client of the restored cluster");
    let logs = || {
        (1..=3)
            .map(|id| {
                let path = restored_root.join(format!("node-{id}.log"));
                format!(
                    "--- node {id} ---\n{}",
                    std::fs::read_to_string(path).unwrap_or_default()
                )
            })
            .collect::<String>()
    };

    let up = wait_for(
        "the restored cluster to serve",
        Duration::from_secs(60),
        POLL,
        || {
            let c = restored_client.clone();
            async move { matches!(c.get(key(0)).await, Ok(Some(_))).then_some(()) }
        },
    )
    .await;
    assert!(
        up.is_ok(),
        "the restored cluster does not serve: {up:?}\n{}",
        logs()
    );

    // Every key loaded, and every write acknowledged before the save began, is there.
    let reading = Instant::now();
    let missing: Vec<String> = stream::iter(0..KEYS)
        .map(|i| {
            let c = restored_client.clone();
            async move {
                match c.get(key(i)).await {
                    Ok(Some(v)) if v == value(i) => None,
                    other => Some(format!("{}: {other:?}", key(i))),
                }
            }
        })
        .buffer_unordered(READ_BACK_CONCURRENCY)
        .filter_map(|m| async move { m })
        .collect()
        .await;
    assert!(
        missing.is_empty(),
        "{} keys wrong, first {:?}\n{}",
        missing.len(),
        missing.first(),
        logs()
    );
    for n in &acked_before_save {
        let got = restored_client.get(format!("during-{n:07}")).await;
        assert!(
            matches!(&got, Ok(Some(v)) if v == &Bytes::from(format!("d{n}"))),
            "during-{n:07}, acknowledged before the save began: {got:?}"
        );
    }
    eprintln!(
        "read back {} keys in {:.1} s",
        KEYS + acked_before_save.len(),
        reading.elapsed().as_secs_f64()
    );
    // It holds exactly the keys of the backup.
    let count = restored_client
        .count(kvs_client::KeyRange::prefix(""), None, false)
        .await
        .expect("a count");
    assert_eq!(
        count, keys,
        "keys in the restored cluster, and in the backup"
    );
    // The restored cluster starts at the backup's slot and takes writes.
    restored_client
        .put("after-restore", "yes")
        .await
        .expect("a write");
    let status = restored_client.status().await;
    let applied = status
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .map(|s| s.applied_index)
        .max()
        .unwrap_or(0);
    assert!(
        applied > slot,
        "applied {applied}, backup slot {slot}\n{}",
        logs()
    );
}

/// A replica streams at most two snapshots at once: a third save is refused as busy, with
/// nothing else disturbed, until one of the two has been read to its end. Writes and reads
/// are served while the streams are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_concurrent_save_is_refused_as_busy_until_one_ends() {
    let cluster = start(ClusterOptions {
        proxies: false,
        ..fast_options(3)
    });
    wait_leader(&cluster, &[1, 2, 3]).await;
    let client = client(&cluster, Duration::from_secs(30));
    for i in 0..100 {
        client
            .put(key(i), value(i))
            .await
            .or_fail(&cluster, "a put");
    }
    let step = Duration::from_secs(30);
    let mut first = client
        .snapshot_open(step)
        .await
        .or_fail(&cluster, "first save");
    let second = client
        .snapshot_open(step)
        .await
        .or_fail(&cluster, "second save");
    check!(&cluster, first.info().keys == 100, "{:?}", first.info());
    check!(
        &cluster,
        first.endpoint() == second.endpoint(),
        "both from the leader"
    );
    let third = client.snapshot_open(step).await;
    check!(
        &cluster,
        matches!(
            &third,
            Err(kvs_client::Error::Rejected(
                kvs_client::ErrorReply::SnapshotBusy { saves_max: 2 }
            ))
        ),
        "a third save while two are open: {third:?}"
    );
    // The store is served meanwhile.
    client
        .put("while-open", "yes")
        .await
        .or_fail(&cluster, "a put");
    let got = client.get("while-open").await.or_fail(&cluster, "a get");
    check!(&cluster, got.as_deref() == Some(&b"yes"[..]), "{got:?}");
    // Reading one to its end frees its room.
    let mut received = 0u64;
    // Bounded: each chunk is at least one byte of the stream.
    while let Some(chunk) = first.next_chunk().await.or_fail(&cluster, "a chunk") {
        received += chunk.len() as u64;
    }
    check!(&cluster, received == first.info().bytes, "{received} bytes");
    let again = client
        .snapshot_open(step)
        .await
        .or_fail(&cluster, "a save after one ended");
    check!(
        &cluster,
        again.info().keys == 101 && again.info().slot > first.info().slot,
        "the new save holds the write made meanwhile: {:?} after {:?}",
        again.info(),
        first.info()
    );
    drop(second);
}
