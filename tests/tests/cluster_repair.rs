//! Repair from peers, end to end with real processes.
//!
//! - A follower of a 3-replica cluster is stopped and one byte of its log is flipped inside
//!   a record that a later sync marker proves was synced. Restarted, it refuses to start
//!   (exit 1), naming the file, the offset and `kvs-server repair --data-dir DIR`.
//!   `kvs-server repair` moves the log aside (whole) and marks the dir; restarted with its
//!   usual flags while writes go on, the replica says it is repairing, removes the mark
//!   within a bound and says it votes again. Its local state then holds every acknowledged
//!   write, and with another replica killed it is needed for every write: writes still
//!   succeed, and every acknowledged write reads back linearizably. Run without snapshots,
//!   and with a snapshot every 40 slots (the damaged replica keeps its snapshot).
//! - A repair needs every peer: with one of the two others down, a repairing replica does
//!   not finish (the mark stays, a write through the cluster fails), nor after a `kill -9`
//!   and restart (the mark is durable); once the peer is back, it finishes and votes.
//!   `kvs-server repair` on the dir of a running replica is refused and changes nothing.
//!
//! They need the `kvs-server` binary (`cargo build --bins`); under `cargo test` they run one
//! at a time.

#[macro_use]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kvs_client::Client;
use tests::cluster::{
    find_server_binary, wait_until, wait_until_blocking, Cluster, ClusterOptions,
};

/// Bound on a damaged replica refusing to start.
const REFUSAL_BOUND: Duration = Duration::from_secs(15);
/// Bound on `kvs-server repair` finishing.
const REPAIR_COMMAND_BOUND: Duration = Duration::from_secs(15);
/// Bound on a repairing replica finishing once every peer is up.
const REPAIR_BOUND: Duration = Duration::from_secs(30);
/// How long a repair with a peer down is watched not finishing.
const STILL_REPAIRING_FOR: Duration = Duration::from_secs(3);
/// Request budget of the write attempted while too few replicas vote.
const BLOCKED_WRITE_BUDGET: Duration = Duration::from_secs(3);
/// Bound on a write stream making progress.
const PROGRESS_BOUND: Duration = Duration::from_secs(15);

/// The log's on-disk format (kvs-server/src/wal/mod.rs).
const SEGMENT_HEADER_BYTES: usize = 28;
const RECORD_HEADER_BYTES: usize = 12;
const MARKER_FLAG: u32 = 0x8000_0000;
const MARKER_PAYLOAD_BYTES: usize = 28;
const MARKER_MAGIC: &[u8] = b"KVS-SYNC";

const MARK: &str = "REPAIRING";
const REPAIRING_LOG: &str =
    "repairing: this replica votes for nothing until it has relearned the log from its peers";
const REPAIRED_LOG: &str = "repaired from peers: this replica votes again";
const HARNESS_START: &str = "=== test harness: start #";

/// The cluster tests of this file start three servers each; one at a time is enough for a
/// small machine.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One record of a log segment, as laid out on disk.
#[derive(Debug, Clone, Copy)]
struct Record {
    offset: usize,
    payload_bytes: usize,
    marker: bool,
}

/// The records of a segment file, up to the first one that does not parse (a tail).
fn records(bytes: &[u8]) -> Vec<Record> {
    let mut found = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while at + RECORD_HEADER_BYTES <= bytes.len() {
        let header = &bytes[at..at + RECORD_HEADER_BYTES];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let marker = len & MARKER_FLAG != 0;
        let payload_bytes = (len & !MARKER_FLAG) as usize;
        let end = at + RECORD_HEADER_BYTES + payload_bytes;
        if end > bytes.len() {
            break;
        }
        let payload = &bytes[at + RECORD_HEADER_BYTES..end];
        if marker && (payload_bytes != MARKER_PAYLOAD_BYTES || !payload.starts_with(MARKER_MAGIC)) {
            break;
        }
        found.push(Record {
            offset: at,
            payload_bytes,
            marker,
        });
        at = end;
    }
    found
}

/// Where a byte of the log was flipped.
#[derive(Debug, Clone)]
struct Damage {
    segment: PathBuf,
    /// The damaged record's offset in the segment.
    record_offset: usize,
    /// The flipped byte's offset.
    byte_offset: usize,
    /// Sync markers after the damaged record in the segment.
    markers_after: usize,
    /// Records (markers not counted) in the segment.
    data_records: usize,
}

/// Flips one byte in the payload of a record of `dir/wal` that a later sync marker proves
/// was synced: the record in the middle of those before the segment's last marker. `None`
/// if there is no such record (a snapshot taken just before the replica stopped let it
/// drop every record it had).
fn damage_log(cluster: &Cluster, dir: &Path) -> Option<Damage> {
    let wal = dir.join("wal");
    let mut segments: Vec<PathBuf> = fs::read_dir(&wal)
        .or_fail(cluster, &format!("list {}", wal.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".log"))
        })
        .collect();
    segments.sort();
    for segment in segments {
        let mut bytes = fs::read(&segment).or_fail(cluster, "read a log segment");
        let all = records(&bytes);
        let Some(last_marker) = all.iter().rposition(|r| r.marker) else {
            continue;
        };
        let candidates: Vec<Record> = all[..last_marker]
            .iter()
            .copied()
            .filter(|r| !r.marker && r.payload_bytes > 0)
            .collect();
        let Some(&victim) = candidates.get(candidates.len() / 2) else {
            continue;
        };
        let byte_offset = victim.offset + RECORD_HEADER_BYTES + victim.payload_bytes / 2;
        bytes[byte_offset] ^= 0xff;
        fs::write(&segment, &bytes).or_fail(cluster, "write the damaged segment");
        let markers_after = all
            .iter()
            .filter(|r| r.marker && r.offset > victim.offset)
            .count();
        return Some(Damage {
            segment,
            record_offset: victim.offset,
            byte_offset,
            markers_after,
            data_records: all.iter().filter(|r| !r.marker).count(),
        });
    }
    None
}

/// How many times [`damage_and_prepare`] restarts a replica whose log holds no synced
/// record to damage, and writes more, before it gives up.
const DAMAGE_ATTEMPTS: usize = 5;

/// What node `id` logged since its last start.
fn log_since_start(cluster: &Cluster, id: u64) -> String {
    let log = fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
    match log.rfind(HARNESS_START) {
        Some(at) => log[at..].to_owned(),
        None => log,
    }
}

/// Restarts node `id` on its damaged data dir and checks that it refuses to start, naming
/// the damage and the repair command. Returns how long the refusal took.
fn expect_refusal(cluster: &Cluster, id: u64, damage: &Damage) -> Duration {
    let started = Instant::now();
    cluster
        .restart(id)
        .or_fail(cluster, &format!("restart of damaged node {id}"));
    wait_until_blocking(
        &format!("damaged node {id} to refuse to start"),
        REFUSAL_BOUND,
        POLL,
        || !cluster.is_running(id),
    )
    .or_fail(cluster, "refusal");
    let took = started.elapsed();
    let status = cluster.last_exit(id);
    let out = log_since_start(cluster, id);
    check!(
        cluster,
        status.is_some_and(|s| s.code() == Some(1)),
        "damaged node {id} ended with {status:?}, not exit 1:\n{out}"
    );
    let dir = cluster.data_dir(id);
    let command = format!("kvs-server repair --data-dir {}", dir.display());
    let corrupt = format!(
        "corrupt WAL data in {} at offset {}",
        damage.segment.display(),
        damage.record_offset
    );
    for needle in [command.as_str(), corrupt.as_str(), "must not vote"] {
        check!(
            cluster,
            out.contains(needle),
            "the refusal of node {id} does not say {needle:?}:\n{out}"
        );
    }
    check!(
        cluster,
        !out.contains("truncating torn WAL tail") && !out.contains(REPAIRING_LOG),
        "damaged node {id} took the damage for a torn tail, or started:\n{out}"
    );
    took
}

/// What `kvs-server repair` did.
#[derive(Debug)]
struct Prepared {
    status: ExitStatus,
    moved_to: PathBuf,
}

/// Runs `kvs-server repair --data-dir DIR` on node `id`'s data dir; returns how it ended
/// and what it printed.
fn run_repair(cluster: &Cluster, id: u64) -> (ExitStatus, String) {
    let dir = cluster.data_dir(id);
    let program = find_server_binary(None).or_fail(cluster, "find kvs-server");
    let log = cluster.root().join(format!("node-{id}-repair-command.log"));
    let out = fs::File::create(&log).or_fail(cluster, "create the repair command's log");
    let err = out.try_clone().or_fail(cluster, "clone a file handle");
    let mut child = Command::new(program)
        .arg("repair")
        .arg("--data-dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .or_fail(cluster, "spawn kvs-server repair");
    let deadline = Instant::now() + REPAIR_COMMAND_BOUND;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            other => {
                let _ = child.kill();
                let _ = child.wait();
                fail(
                    cluster,
                    format!(
                        "kvs-server repair did not finish within {REPAIR_COMMAND_BOUND:?}: \
                         {other:?}"
                    ),
                );
            }
        }
    };
    (status, fs::read_to_string(&log).unwrap_or_default())
}

/// Runs `kvs-server repair --data-dir DIR` for node `id` and checks what it left behind.
fn run_repair_command(cluster: &Cluster, id: u64, damage: &Damage) -> Prepared {
    let dir = cluster.data_dir(id);
    let (status, output) = run_repair(cluster, id);
    check!(
        cluster,
        status.success(),
        "kvs-server repair --data-dir {} ended with {status:?}:\n{output}",
        dir.display()
    );
    check!(
        cluster,
        dir.join(MARK).is_file(),
        "no {MARK} file in {} after kvs-server repair:\n{output}",
        dir.display()
    );
    check!(
        cluster,
        !dir.join("wal").exists(),
        "the damaged log is still in place after kvs-server repair:\n{output}"
    );
    let moved: Vec<PathBuf> = fs::read_dir(&dir)
        .or_fail(cluster, "list the data dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wal.damaged-"))
        })
        .collect();
    check!(
        cluster,
        moved.len() == 1,
        "expected one wal.damaged-* in {}, found {moved:?}:\n{output}",
        dir.display()
    );
    let moved_to = moved[0].clone();
    // Nothing is deleted: the damaged segment is there, damage included.
    let kept = moved_to.join(damage.segment.file_name().unwrap_or_default());
    let bytes = fs::read(&kept).or_fail(cluster, "read the segment moved aside");
    let original = fs::metadata(&damage.segment).is_ok();
    check!(
        cluster,
        !original && bytes.len() > damage.byte_offset,
        "the damaged segment was not moved aside whole to {}",
        kept.display()
    );
    check!(
        cluster,
        output.contains("moved the damaged log aside") && output.contains("marked"),
        "kvs-server repair did not say what it did:\n{output}"
    );
    Prepared { status, moved_to }
}

/// Stops follower `id` gracefully, damages its log, checks the refusal and prepares the
/// repair. Returns the damage and the refusal time.
///
/// The replica's log holds records only from its last snapshot on; if it took one just
/// before it stopped, there is nothing to damage: it is started again and a few more keys
/// are written through `writer`, up to [`DAMAGE_ATTEMPTS`] times.
async fn damage_and_prepare(
    cluster: &Cluster,
    id: u64,
    writer: &Client,
) -> (Damage, Duration, Prepared) {
    let mut attempt = 0;
    let damage = loop {
        attempt += 1;
        let status = cluster
            .terminate(id)
            .or_fail(cluster, &format!("SIGTERM of node {id}"));
        check!(
            cluster,
            status.success(),
            "node {id} exited with {status:?}"
        );
        if let Some(damage) = damage_log(cluster, &cluster.data_dir(id)) {
            break damage;
        }
        check!(
            cluster,
            attempt < DAMAGE_ATTEMPTS,
            "no record followed by a sync marker in any segment of node {id}'s log after \
             {attempt} stops"
        );
        eprintln!("  node {id}: no synced record left to damage (a snapshot); writing more");
        cluster
            .restart(id)
            .or_fail(cluster, &format!("restart of node {id}"));
        write_all(cluster, writer, &format!("more-{attempt}"), 2, 5).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    eprintln!(
        "  node {id}: flipped byte {} in the record at offset {} of {} ({} records, {} sync \
         markers after it)",
        damage.byte_offset,
        damage.record_offset,
        damage.segment.display(),
        damage.data_records,
        damage.markers_after
    );
    let refusal = expect_refusal(cluster, id, &damage);
    let prepared = run_repair_command(cluster, id, &damage);
    eprintln!(
        "  node {id}: refused in {refusal:.1?}; kvs-server repair: {} -> {}",
        prepared.status,
        prepared.moved_to.display()
    );
    (damage, refusal, prepared)
}

/// Restarts node `id` (marked for repair) and waits until it says it repairs.
async fn start_repairing(cluster: &Cluster, id: u64) {
    cluster
        .restart(id)
        .or_fail(cluster, &format!("restart of node {id} for repair"));
    wait_until(
        &format!("node {id} to say it is repairing"),
        REFUSAL_BOUND,
        POLL,
        || {
            let said = log_since_start(cluster, id).contains(REPAIRING_LOG);
            async move { said }
        },
    )
    .await
    .or_fail(cluster, "repair start");
}

/// Waits until node `id` has removed its mark and said it votes again; fails if it stops.
async fn wait_repaired(cluster: &Cluster, id: u64, bound: Duration) {
    let mark = cluster.data_dir(id).join(MARK);
    wait_until(
        &format!("node {id} to finish its repair"),
        bound,
        POLL,
        || {
            let running = cluster.is_running(id);
            let done = !mark.exists() && log_since_start(cluster, id).contains(REPAIRED_LOG);
            async move { done || !running }
        },
    )
    .await
    .or_fail(cluster, "repair");
    check!(
        cluster,
        cluster.is_running(id),
        "node {id} stopped while repairing: {:?}",
        cluster.last_exit(id)
    );
}

/// Expected local state: every acknowledged write.
fn acked_map(outcomes: &[&Outcomes]) -> std::collections::BTreeMap<String, Option<bytes::Bytes>> {
    outcomes
        .iter()
        .flat_map(|o| o.acked.iter())
        .map(|(k, v)| (k.clone(), Some(bytes::Bytes::from(v.clone()))))
        .collect()
}

/// All outcomes in one.
fn merged(parts: Vec<Outcomes>) -> Outcomes {
    let mut all = Outcomes::default();
    for part in parts {
        all.acked.extend(part.acked);
        all.unknown.extend(part.unknown);
        all.failed.extend(part.failed);
    }
    all
}

/// Writes `tasks * per_task` keys and requires every one acknowledged.
async fn write_all(
    cluster: &Cluster,
    writer: &Client,
    prefix: &str,
    tasks: usize,
    per: usize,
) -> Outcomes {
    let outcomes = Writers::spawn(writer, prefix, tasks, per).finish().await;
    check!(
        cluster,
        outcomes.acked.len() == tasks * per,
        "writes {prefix:?}: {} of {} acknowledged ({}); first problems: {:?} {:?}",
        outcomes.acked.len(),
        tasks * per,
        outcomes.figures(),
        outcomes.unknown.first(),
        outcomes.failed.first()
    );
    outcomes
}

/// Kills a replica other than `keep` (the leader if it is not `keep`) and waits for the
/// two left to agree on a leader. Returns the victim.
async fn kill_another(cluster: &Cluster, keep: u64) -> u64 {
    let ids = cluster.ids();
    let leader = wait_leader(cluster, &ids).await;
    let victim = if leader != keep {
        leader
    } else {
        ids.iter().copied().find(|&i| i != keep).unwrap_or(leader)
    };
    let proof = cluster
        .kill_verified(victim)
        .or_fail(cluster, &format!("kill -9 of node {victim}"));
    eprintln!("  killed {proof}");
    let left: Vec<u64> = ids.iter().copied().filter(|&i| i != victim).collect();
    wait_leader(cluster, &left).await;
    victim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_damaged_log_is_repaired_from_its_peers_and_votes_again() {
    repaired_under_writes(None).await;
}

/// The same with snapshots every 40 slots: the damaged replica keeps its (readable)
/// snapshot, its peers' logs are compacted, and what it lacks may come as a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_snapshot_and_a_damaged_log_is_repaired_and_votes_again() {
    repaired_under_writes(Some(40)).await;
}

/// Writes, damage, refusal, `kvs-server repair`, a repair under writes, and writes that
/// need the repaired replica's vote.
async fn repaired_under_writes(snapshot_every: Option<u64>) {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let started = Instant::now();
    let cluster = start(ClusterOptions {
        snapshot_every,
        ..fast_options(3)
    });
    let ids = cluster.ids();
    let leader = wait_leader(&cluster, &ids).await;
    let writer = client(&cluster, CHECK_TIMEOUT);

    // 1. A few hundred acknowledged writes.
    let before = write_all(&cluster, &writer, "before", 6, 50).await;

    // 2-3. A follower's log is damaged in a synced record: it refuses, then is prepared.
    let Some(damaged) = ids.iter().copied().find(|&i| i != leader) else {
        fail(&cluster, "no follower");
    };
    let (damage, refusal, _) = damage_and_prepare(&cluster, damaged, &writer).await;
    let while_down = write_all(&cluster, &writer, "while-down", 2, 10).await;

    // 4. Restarted with its usual flags while writes go on, it repairs and votes again.
    let writers = Writers::spawn(&writer, "during", 3, 100_000);
    writers.wait_acked_more(&cluster, 30, PROGRESS_BOUND).await;
    let repair_started = Instant::now();
    start_repairing(&cluster, damaged).await;
    wait_repaired(&cluster, damaged, REPAIR_BOUND).await;
    let repair_took = repair_started.elapsed();
    writers.wait_acked_more(&cluster, 50, PROGRESS_BOUND).await;
    let during = writers.stop().await;
    check!(
        &cluster,
        !during.acked.is_empty(),
        "no write was acknowledged during the repair ({})",
        during.figures()
    );
    let expected = acked_map(&[&before, &while_down, &during]);
    verify_node_holds(&cluster, damaged, &expected).await;

    // With another replica killed, every write needs the repaired one's vote.
    let victim = kill_another(&cluster, damaged).await;
    let after = write_all(&cluster, &writer, "after", 4, 25).await;
    let acked_after = after.acked.len();
    let all = merged(vec![before, while_down, during, after]);
    let checker = client(&cluster, CHECK_TIMEOUT);
    let unknown_applied = verify_linearizable(&cluster, &checker, &all).await;
    verify_node_holds(&cluster, damaged, &acked_map(&[&all])).await;
    check!(
        &cluster,
        !cluster.data_dir(damaged).join(MARK).exists(),
        "the repair mark came back"
    );

    let snapshot = cluster.data_dir(damaged).join("snapshot").exists();
    eprintln!(
        "SUMMARY repair (snapshot every {snapshot_every:?}, node {damaged} holds one: \
         {snapshot}): node {damaged} damaged at {}:{} ({} sync markers after), refused in \
         {refusal:.1?}, repaired in {repair_took:.1?} under writes; then node {victim} killed \
         and {} writes acked with the repaired node's vote; all writes {} (unknown applied=\
         {unknown_applied}) read back linearizably and held locally by node {damaged}; \
         elapsed={:.1?}",
        damage
            .segment
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        damage.record_offset,
        damage.markers_after,
        acked_after,
        all.figures(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_waits_for_every_peer() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let started = Instant::now();
    let cluster = start(fast_options(3));
    let ids = cluster.ids();
    let leader = wait_leader(&cluster, &ids).await;
    let writer = client(&cluster, CHECK_TIMEOUT);
    let before = write_all(&cluster, &writer, "before", 4, 25).await;

    let followers: Vec<u64> = ids.iter().copied().filter(|&i| i != leader).collect();
    let (damaged, other) = (followers[0], followers[1]);

    // `kvs-server repair` on the dir of a running replica is refused and changes nothing.
    let (status, output) = run_repair(&cluster, damaged);
    let dir = cluster.data_dir(damaged);
    check!(
        &cluster,
        !status.success() && !dir.join(MARK).exists() && dir.join("wal").is_dir(),
        "kvs-server repair on running node {damaged}'s dir: {status:?}, mark={}, wal={}:\n\
         {output}",
        dir.join(MARK).exists(),
        dir.join("wal").is_dir()
    );
    damage_and_prepare(&cluster, damaged, &writer).await;

    // The other follower down: the leader is up, but not every peer can answer.
    let proof = cluster
        .kill_verified(other)
        .or_fail(&cluster, &format!("kill -9 of node {other}"));
    eprintln!("  killed {proof}");
    start_repairing(&cluster, damaged).await;
    let blocked_client = client(&cluster, BLOCKED_WRITE_BUDGET);
    let (key, value) = ("blocked".to_owned(), "written with one voter".to_owned());
    let (blocked, ()) = tokio::join!(
        blocked_client.put(key.clone(), value.clone()),
        tokio::time::sleep(STILL_REPAIRING_FOR)
    );
    let mark = cluster.data_dir(damaged).join(MARK);
    let log = log_since_start(&cluster, damaged);
    check!(
        &cluster,
        cluster.is_running(damaged) && mark.exists() && !log.contains(REPAIRED_LOG),
        "node {damaged} finished its repair (or stopped) with node {other} down: mark={} \
         running={}",
        mark.exists(),
        cluster.is_running(damaged)
    );
    let mut blocked_outcome = Outcomes::default();
    let blocked_error = match blocked {
        Ok(()) => fail(
            &cluster,
            format!("a write was acknowledged with node {other} down and node {damaged} repairing"),
        ),
        Err(e) => e,
    };
    let error = blocked_error.to_string();
    if blocked_error.outcome_unknown() {
        blocked_outcome.unknown.push((key, value, error.clone()));
    } else {
        blocked_outcome.failed.push((key, value, error.clone()));
    }
    eprintln!(
        "  with node {other} down, node {damaged} still repairing after {STILL_REPAIRING_FOR:?}; \
         write: {} ({error})",
        blocked_outcome.figures()
    );

    // Killed while repairing, it repairs again: the mark is durable.
    let proof = cluster
        .kill_verified(damaged)
        .or_fail(&cluster, &format!("kill -9 of repairing node {damaged}"));
    eprintln!("  killed {proof}");
    check!(
        &cluster,
        mark.exists(),
        "the mark of node {damaged} is gone after kill -9 during its repair"
    );
    start_repairing(&cluster, damaged).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    check!(
        &cluster,
        mark.exists() && !log_since_start(&cluster, damaged).contains(REPAIRED_LOG),
        "node {damaged}, restarted during its repair with node {other} still down, finished"
    );

    // The peer back: the repair finishes, and the repaired replica votes.
    cluster
        .restart(other)
        .or_fail(&cluster, &format!("restart of node {other}"));
    let back = Instant::now();
    wait_repaired(&cluster, damaged, REPAIR_BOUND).await;
    let repair_took = back.elapsed();
    let victim = kill_another(&cluster, damaged).await;
    let after = write_all(&cluster, &writer, "after", 2, 25).await;
    let all = merged(vec![before, blocked_outcome, after]);
    let checker = client(&cluster, CHECK_TIMEOUT);
    let unknown_applied = verify_linearizable(&cluster, &checker, &all).await;
    verify_node_holds(&cluster, damaged, &acked_map(&[&all])).await;

    eprintln!(
        "SUMMARY repair-needs-every-peer: node {damaged} repairing with node {other} down: \
         mark kept for {STILL_REPAIRING_FOR:?} and the write through the cluster failed \
         ({error}); kill -9 and restart: repairing again; node {other} back -> repaired in {repair_took:.1?}; node {victim} then killed and writes \
         acked with the repaired node's vote; all writes {} (unknown applied={unknown_applied}) \
         read back linearizably; elapsed={:.1?}",
        all.figures(),
        started.elapsed()
    );
}
