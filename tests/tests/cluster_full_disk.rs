//! A full disk under one replica, end to end with real processes.
//!
//! Replica 3 of a 3-replica cluster keeps its data dir on a small tmpfs (8 MiB; the replica
//! is stopped, its files copied there and its data dir replaced by a symlink to it, then it
//! is started again); the others on the ordinary disk. Writes of 64–200 KiB values go on until that tmpfs is full. Then:
//!
//! - replica 3 exits on its own (a non-zero exit code, not a signal) within a bound of its
//!   disk filling up, and its last words (`error: ...` on stderr) name its data dir and say
//!   "No space left on device"; between its fatal error and its exit it answers neither a
//!   status request nor a local read, and afterwards its client port refuses connections;
//! - replicas 1 and 2 go on acknowledging writes without it;
//! - once the tmpfs is remounted larger (the operator freed space), replica 3 restarted with
//!   the same flags starts without any repair, catches up (same applied index as the others,
//!   and its local state holds every acknowledged value), and votes: with replica 1 killed,
//!   writes still succeed with replicas 2 and 3 alone.
//!
//! Mounting a tmpfs needs root (or CAP_SYS_ADMIN). Without it the test prints `SKIPPED: ...`
//! and passes, unless `KVS_REQUIRE_MOUNT=1` is set, which makes that a failure. The tmpfs is
//! unmounted at the end, also when the test fails (then its files are first copied into the
//! kept cluster directory, as `node-3`).
//!
//! It needs the `kvs-server` binary (`cargo build --bins`).

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use kvs_client::Client;
use rand::{Rng, RngCore};
use tempfile::TempDir;
use tests::cluster::{wait_until_blocking, Cluster};

/// The replica whose data dir is on the small tmpfs.
const SMALL_DISK_NODE: u64 = 3;
/// The tmpfs size while it is to fill up, and after space was freed.
const TMPFS_SMALL: &str = "8m";
const TMPFS_LARGE: &str = "256m";
/// Written values are this large, uniformly drawn.
const VALUE_BYTES_MIN: usize = 64 * 1024;
const VALUE_BYTES_MAX: usize = 200 * 1024;
/// Set to `1` to make a failed mount a test failure instead of a skip.
const REQUIRE_MOUNT_ENV: &str = "KVS_REQUIRE_MOUNT";

/// Request budget of the writing client.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on filling the small disk (from the first write to replica 3's exit).
const FILL_BOUND: Duration = Duration::from_secs(90);
/// Bound on replica 3 exiting once its disk filled up.
const STOP_BOUND: Duration = Duration::from_secs(15);
/// Acknowledged writes required from replicas 1 and 2 after replica 3 stopped, and the
/// bound on them.
const WRITES_AFTER_STOP_MIN: usize = 20;
const WRITES_AFTER_STOP_BOUND: Duration = Duration::from_secs(60);
/// Bound on the restarted replica 3 reaching the applied index of the others.
const CATCH_UP_BOUND: Duration = Duration::from_secs(60);
/// Writes that must succeed with only replicas 2 and 3 up.
const WRITES_WITHOUT_ONE: usize = 10;
/// Request budget of the probes of a replica that is stopping.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on a node listening after a (re)start.
const LISTEN_BOUND: Duration = Duration::from_secs(15);
/// Bound on `umount` succeeding at cleanup before a lazy unmount is used.
const UNMOUNT_BOUND: Duration = Duration::from_secs(5);

const NO_SPACE: &str = "No space left on device";
/// What a replica logs when its log fails (kvs-server/src/node/mod.rs).
const FATAL_LOG: &str = "stopping: the log can no longer be trusted";
const HARNESS_START: &str = "=== test harness: start #";

/// A tmpfs mounted on a fresh temporary directory, unmounted (and the directory removed)
/// when dropped. Drop it after the cluster, so that no replica holds files on it any more.
struct Tmpfs {
    /// `None` once dropped.
    dir: Option<TempDir>,
    /// When dropped during a panic, the files are first copied here (if set).
    keep_into: Option<PathBuf>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (a `mount -o size=` value) on a new temporary directory, or
    /// says why it cannot.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("kvs-full-disk-")
            .tempdir()
            .map_err(|e| format!("cannot create a mount point: {e}"))?;
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(dir.path()))?;
        Ok(Tmpfs {
            dir: Some(dir),
            keep_into: None,
        })
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("mounted").path()
    }

    /// Changes the size of the mounted tmpfs, keeping its files.
    fn resize(&self, size: &str) -> Result<(), String> {
        run(Command::new("mount")
            .args(["-o"])
            .arg(format!("remount,size={size}"))
            .arg(self.path()))
    }

    /// `(size, available)` in bytes, from `df`.
    fn space(&self) -> Result<(u64, u64), String> {
        let out = Command::new("df")
            .args(["--block-size=1", "--output=size,avail"])
            .arg(self.path())
            .output()
            .map_err(|e| format!("cannot run df: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let numbers: Vec<u64> = text
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        match numbers[..] {
            [size, avail] => Ok((size, avail)),
            _ => Err(format!(
                "unexpected df output: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    fn unmount(&self) {
        let path = self.path();
        let plain = wait_until_blocking(
            &format!("umount {}", path.display()),
            UNMOUNT_BOUND,
            Duration::from_millis(100),
            || run(Command::new("umount").arg(path)).is_ok(),
        );
        if plain.is_err() {
            if let Err(e) = run(Command::new("umount").arg("-l").arg(path)) {
                eprintln!(
                    "warning: cannot unmount the tmpfs at {}: {e}",
                    path.display()
                );
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(target) = &self.keep_into {
                let _ = fs::remove_file(target); // The symlink to the mount point.
                match copy_tree(self.path(), target) {
                    Ok(()) => eprintln!(
                        "replica {SMALL_DISK_NODE}'s tmpfs data copied to {}",
                        target.display()
                    ),
                    Err(e) => eprintln!("cannot keep the tmpfs data: {e}"),
                }
            }
        }
        self.unmount();
        // Removes the (now empty) mount point; after a failed unmount it fails, and says so.
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("warning: cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// Runs `command`; an error says how it failed.
fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Copies the files and directories under `from` into `to` (created).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A value of a random size within the bounds, random bytes.
fn random_value() -> Bytes {
    let mut rng = rand::rng();
    let mut value = vec![0u8; rng.random_range(VALUE_BYTES_MIN..=VALUE_BYTES_MAX)];
    rng.fill_bytes(&mut value);
    Bytes::from(value)
}

/// What the writes of the test produced.
#[derive(Default)]
struct Written {
    /// Acknowledged writes: key → value.
    acked: BTreeMap<String, Bytes>,
    /// Writes that failed (outcome unknown or not), with the error; not checked.
    failed: Vec<(String, String)>,
    next: usize,
}

impl Written {
    /// Puts one new key with a random value; true if acknowledged.
    async fn put(&mut self, client: &Client, phase: &str) -> (bool, usize) {
        let key = format!("{phase}-{:04}", self.next);
        self.next += 1;
        let value = random_value();
        let len = value.len();
        match client.put(key.clone(), value.clone()).await {
            Ok(()) => {
                self.acked.insert(key, value);
                (true, len)
            }
            Err(e) => {
                self.failed.push((key, e.to_string()));
                (false, len)
            }
        }
    }
}

/// Node `id`'s log (stdout and stderr) since its last start.
fn last_start_log(cluster: &Cluster, id: u64) -> String {
    let log = fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
    let from = log.rfind(HARNESS_START).unwrap_or(0);
    log[from..].to_owned()
}

/// Replaces node `id`'s data dir by a symlink to `tmpfs`, holding a copy of its files. The
/// node must be stopped.
fn move_data_dir(cluster: &Cluster, id: u64, tmpfs: &mut Tmpfs) -> anyhow::Result<()> {
    let data_dir = cluster.data_dir(id);
    copy_tree(&data_dir, tmpfs.path())?;
    fs::remove_dir_all(&data_dir)?;
    std::os::unix::fs::symlink(tmpfs.path(), &data_dir)?;
    tmpfs.keep_into = Some(data_dir);
    Ok(())
}

/// Asks node `id` alone, which has logged its fatal error and not yet exited, for its
/// status and a local read: it must answer neither. Returns what happened, for the log.
async fn probe_stopping_node(cluster: &Cluster, id: u64) -> String {
    let addr = cluster.layout().client_listen[&id].to_string();
    let direct = Client::connect([addr.clone()], client_options(PROBE_TIMEOUT))
        .or_fail(cluster, "creating a client");
    let status = direct.status_of(&addr).await;
    let stale = direct.get_stale("fill-0000").await;
    let alive = cluster.is_running(id);
    check!(
        cluster,
        status.is_err() && stale.is_err(),
        "node {id} logged {FATAL_LOG:?}, yet it still answers: status {:?}, local read of \
         fill-0000 {:?} (process still running: {alive})",
        status.map(|s| (s.role, s.applied_index)),
        stale.map(|v| v.map(|v| v.len()))
    );
    format!(
        "status and local read refused ({}; process still running after: {alive})",
        stale.err().map(|e| e.to_string()).unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_stops_the_replica_and_it_catches_up_after_space_is_freed() {
    let started = Instant::now();
    // Declared before the cluster, so dropped after it: no replica runs on it any more.
    let mut tmpfs = match Tmpfs::mount(TMPFS_SMALL) {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            if std::env::var(REQUIRE_MOUNT_ENV).as_deref() == Ok("1") {
                panic!("{REQUIRE_MOUNT_ENV}=1, and a tmpfs cannot be mounted: {reason}");
            }
            eprintln!("SKIPPED: full-disk test (cannot mount tmpfs: {reason})");
            return;
        }
    };
    let cluster = start(fast_options(3));
    let ids = cluster.ids();
    let n = SMALL_DISK_NODE;
    wait_leader(&cluster, &ids).await;

    // Replica 3's data dir moves onto the small disk (stopped, copied, restarted).
    let status = cluster
        .terminate(n)
        .or_fail(&cluster, &format!("stopping node {n}"));
    check!(&cluster, status.success(), "node {n} stopped with {status}");
    move_data_dir(&cluster, n, &mut tmpfs).or_fail(&cluster, "moving the data dir to tmpfs");
    cluster
        .restart(n)
        .or_fail(&cluster, &format!("restart of node {n}"));
    cluster
        .wait_listening(n, LISTEN_BOUND)
        .or_fail(&cluster, &format!("node {n} on its tmpfs"));
    let leader = wait_leader(&cluster, &ids).await;
    let (size, avail_at_start) = tmpfs.space().or_fail(&cluster, "df");
    eprintln!(
        "  node {n}'s data dir is on a {size}-byte tmpfs ({avail_at_start} bytes free) at {}; \
         leader {leader}",
        tmpfs.path().display()
    );

    // Fill it. The time to stop counts from the first sign of a full disk: a write issued
    // while the tmpfs had no room left for a value of the largest size, or the replica's
    // fatal error in its log, whichever the test sees first.
    let client = Client::connect(cluster.client_endpoints(), client_options(WRITE_TIMEOUT))
        .or_fail(&cluster, "creating a client");
    let mut written = Written::default();
    let mut bytes_acked_before_fatal = 0u64;
    let mut full_since: Option<Instant> = None;
    let mut fatal_seen_at: Option<Instant> = None;
    let mut probe_after_fatal = String::from("not probed (the process was gone first)");
    let mut avail_last = avail_at_start;
    let fill_started = Instant::now();
    let exit = loop {
        if !cluster.is_running(n) {
            break cluster.last_exit(n).expect("an exited node has a status");
        }
        if fatal_seen_at.is_none() && log_contains(&cluster, n, FATAL_LOG) {
            fatal_seen_at = Some(Instant::now());
            full_since = full_since.or(fatal_seen_at);
            probe_after_fatal = probe_stopping_node(&cluster, n).await;
        }
        if let Some(since) = full_since {
            check!(
                &cluster,
                since.elapsed() < STOP_BOUND,
                "node {n} still runs {:?} after its disk filled up ({avail_last} bytes \
                 free); it must stop",
                since.elapsed()
            );
        }
        let elapsed = fill_started.elapsed();
        check!(
            &cluster,
            elapsed < FILL_BOUND,
            "node {n} still runs after {elapsed:?} of writes ({bytes_acked_before_fatal} bytes \
             acknowledged, {avail_last} bytes free on its disk)"
        );
        avail_last = tmpfs.space().or_fail(&cluster, "df").1;
        if full_since.is_none() && avail_last < VALUE_BYTES_MAX as u64 {
            full_since = Some(Instant::now());
        }
        let (acked, len) = written.put(&client, "fill").await;
        if acked && fatal_seen_at.is_none() {
            bytes_acked_before_fatal += len as u64;
        }
    };
    let stopped_at = Instant::now();
    let acked_before_stop = written.acked.len();
    let time_to_stop = full_since.map(|t| stopped_at - t);
    let fatal_to_exit = fatal_seen_at.map(|t| stopped_at - t);
    let (_, avail_at_stop) = tmpfs.space().or_fail(&cluster, "df");
    let on_disk_at_stop = size - avail_at_stop;

    // It stopped on its own, with a clear error, and is gone.
    check!(
        &cluster,
        exit.code().is_some_and(|c| c != 0),
        "node {n} must exit with a non-zero code when its disk is full; it ended with {exit} \
         (signal {:?})",
        exit.signal()
    );
    let log = last_start_log(&cluster, n);
    let data_dir = cluster.data_dir(n).display().to_string();
    let error_line = log
        .lines()
        .rev()
        .find(|line| line.starts_with("error: "))
        .unwrap_or_default()
        .to_owned();
    check!(
        &cluster,
        error_line.contains(NO_SPACE) && error_line.contains(&data_dir),
        "node {n}'s last error must name its data dir {data_dir} and say {NO_SPACE:?}; it \
         said {error_line:?}"
    );
    let addr = cluster.layout().client_listen[&n];
    let refused = matches!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    );
    check!(
        &cluster,
        refused,
        "node {n} exited, yet its client address {addr} did not refuse a connection"
    );
    eprintln!(
        "  node {n} exited with {exit} after {acked_before_stop} acknowledged writes, \
         {on_disk_at_stop} bytes on its disk; {error_line}\n  between its fatal error and \
         its exit: {probe_after_fatal}"
    );

    // Replicas 1 and 2 keep serving.
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != n).collect();
    let after_stop_started = Instant::now();
    let mut acked_after_stop = 0;
    while acked_after_stop < WRITES_AFTER_STOP_MIN {
        check!(
            &cluster,
            after_stop_started.elapsed() < WRITES_AFTER_STOP_BOUND,
            "only {acked_after_stop} writes acknowledged in {WRITES_AFTER_STOP_BOUND:?} with \
             node {n} stopped; last failures: {:?}",
            written.failed.iter().rev().take(3).collect::<Vec<_>>()
        );
        if written.put(&client, "after-stop").await.0 {
            acked_after_stop += 1;
        }
    }
    let leader_without = wait_leader(&cluster, &survivors).await;

    // Space freed: remount larger; the same command line starts and catches up.
    tmpfs
        .resize(TMPFS_LARGE)
        .or_fail(&cluster, "growing the tmpfs");
    let (size_now, avail_now) = tmpfs.space().or_fail(&cluster, "df");
    check!(
        &cluster,
        avail_now > 128 * 1024 * 1024,
        "after remount,size={TMPFS_LARGE} the tmpfs has {size_now} bytes, {avail_now} free"
    );
    let restarted_at = Instant::now();
    cluster
        .restart(n)
        .or_fail(&cluster, &format!("restart of node {n}"));
    // It must start as it is: a refusal naming `kvs-server repair` would mean the full disk
    // damaged what it had reported durable.
    let up = wait_until_blocking(
        &format!("node {n} to listen on {addr} (or exit)"),
        LISTEN_BOUND,
        Duration::from_millis(20),
        || {
            !cluster.is_running(n)
                || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        },
    );
    let restart_log = last_start_log(&cluster, n);
    check!(
        &cluster,
        up.is_ok() && cluster.is_running(n) && !restart_log.contains("kvs-server repair"),
        "node {n} does not start again with the same flags after space was freed (waiting: \
         {:?}; running: {}; exit: {:?}):\n{restart_log}",
        up.as_ref().err().map(|e| format!("{e:#}")),
        cluster.is_running(n),
        cluster.last_exit(n)
    );
    let applied = wait_converged(&cluster, &ids, CATCH_UP_BOUND).await;
    let catch_up = restarted_at.elapsed();
    let expected: BTreeMap<String, Option<Bytes>> = written
        .acked
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    verify_node_holds(&cluster, n, &expected).await;
    check!(
        &cluster,
        cluster.is_running(n),
        "node {n} exited after catching up: {:?}",
        cluster.last_exit(n)
    );
    let restart_log = last_start_log(&cluster, n);
    check!(
        &cluster,
        !restart_log.contains("kvs-server repair"),
        "node {n} asks for a repair after a full disk:\n{restart_log}"
    );
    let torn_tail = restart_log
        .lines()
        .find(|line| line.contains("torn WAL tail"))
        .map(|line| line[line.find("offset=").unwrap_or(0)..].to_owned());

    // It votes: without replica 1, every write needs replica 3.
    let first = ids[0];
    let evidence = cluster
        .kill_verified(first)
        .or_fail(&cluster, &format!("kill -9 of node {first}"));
    let pair: Vec<u64> = ids.iter().copied().filter(|&id| id != first).collect();
    let leader_of_pair = wait_leader(&cluster, &pair).await;
    let pair_client = Client::connect(
        pair.iter()
            .map(|&id| cluster.client_endpoint(id).expect("known id"))
            .collect::<Vec<_>>(),
        client_options(WRITE_TIMEOUT),
    )
    .or_fail(&cluster, "creating a client");
    let mut pair_keys = Vec::new();
    for i in 0..WRITES_WITHOUT_ONE {
        let key = format!("pair-{i:04}");
        let value = random_value();
        pair_client
            .put(key.clone(), value.clone())
            .await
            .or_fail(&cluster, &format!("put {key:?} with node {first} down"));
        let got = pair_client
            .get(key.clone())
            .await
            .or_fail(&cluster, &format!("get {key:?} with node {first} down"));
        check!(
            &cluster,
            got.as_ref() == Some(&value),
            "{key:?} reads {} bytes right after a write of {} bytes",
            got.map_or(0, |g| g.len()),
            value.len()
        );
        pair_keys.push((key, Some(value)));
    }
    verify_node_holds(&cluster, n, &pair_keys.into_iter().collect()).await;

    let secs = |t: Option<Duration>| t.map_or("n/a".to_owned(), |t| format!("{t:.1?}"));
    eprintln!(
        "SUMMARY full-disk: node {n} on a {TMPFS_SMALL} tmpfs (leader {leader}) stopped with \
         {exit}: {on_disk_at_stop} bytes on its disk, {bytes_acked_before_fatal} value bytes \
         acknowledged by the cluster before its fatal error ({acked_before_stop} writes before \
         its exit); time to stop={} after the disk was full ({} after the fatal error, {:.1?} \
         of writing); nodes 1-2 (leader {leader_without}) then acknowledged {acked_after_stop} \
         writes; {} writes failed or unknown in all; remounted {TMPFS_LARGE} and restarted: \
         caught up to applied index {applied} in {catch_up:.1?} ({} acknowledged values checked \
         on node {n}; torn tail truncated: {}); with {evidence}, nodes 2-3 (leader \
         {leader_of_pair}) acknowledged {WRITES_WITHOUT_ONE} writes; elapsed={:.1?}",
        secs(time_to_stop),
        secs(fatal_to_exit),
        stopped_at - fill_started,
        written.failed.len(),
        expected.len(),
        torn_tail.as_deref().unwrap_or("none"),
        started.elapsed()
    );
    drop(cluster);
    drop(tmpfs);
}
