//! A lagging replica receives a large state by snapshot while writes continue: it catches
//! up, the sender's and the receiver's memory stay bounded (peak RSS is reported), and the
//! transfer causes no leader change (every replica keeps the leader's ballot).
//!
//! The state is `KVS_SNAPSHOT_MIB` MiB of 128 KiB values: 300 MiB by default (about 25 s
//! on a 2-core machine, 1.5 GB of memory over the three replicas); a smaller figure suits
//! machines with less memory (64 MiB takes about 10 s).

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::stream::{self, StreamExt};
use tests::cluster::{wait_until, Cluster, ClusterOptions};

const VALUE_BYTES: usize = 128 * 1024;
const LOAD_CONCURRENCY: usize = 16;

fn state_mib() -> usize {
    std::env::var("KVS_SNAPSHOT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// A field of `/proc/PID/status` of node `id`, in MiB.
fn status_mib(cluster: &Cluster, id: u64, field: &str) -> u64 {
    let Some(pid) = cluster.pid(id) else {
        fail(cluster, format!("node {id} has no process"));
    };
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).or_fail(cluster, &path);
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or_else(|| fail(cluster, format!("no {field} in {path}")))
}

fn value_of(i: usize) -> Bytes {
    let mut v = vec![(i % 251) as u8; VALUE_BYTES];
    v[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Bytes::from(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_receives_a_large_snapshot_while_writes_continue() {
    let started = Instant::now();
    let mib = state_mib();
    let keys = mib * 1024 * 1024 / VALUE_BYTES;
    // Default election timing: a stalled event loop would show as a leader change.
    let cluster = start(ClusterOptions {
        nodes: 3,
        snapshot_every: Some(1000),
        extra_args: [
            "--election-timeout-ms",
            "1000..2000",
            "--heartbeat-ms",
            "100",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
        ..ClusterOptions::default()
    });
    let ids = cluster.ids();
    let leader = wait_leader(&cluster, &ids).await;
    let victim = *ids.iter().find(|&&id| id != leader).expect("a follower");
    let c = client(&cluster, Duration::from_secs(30));
    c.put("before", "the victim stops")
        .await
        .or_fail(&cluster, "first put");
    wait_converged(&cluster, &ids, CONVERGE_BOUND).await;
    cluster
        .kill(victim)
        .or_fail(&cluster, &format!("kill -9 of node {victim}"));

    // The large state, written while the victim is down.
    let load_started = Instant::now();
    let failures: Vec<String> = stream::iter(0..keys)
        .map(|i| {
            let c = c.clone();
            async move { c.put(format!("big-{i:06}"), value_of(i)).await }
        })
        .buffer_unordered(LOAD_CONCURRENCY)
        .filter_map(|r| async move { r.err().map(|e| e.to_string()) })
        .collect()
        .await;
    check!(
        &cluster,
        failures.is_empty(),
        "{} puts failed: {:?}",
        failures.len(),
        failures.first()
    );
    let load_secs = load_started.elapsed().as_secs_f64();
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != victim).collect();
    wait_converged(&cluster, &survivors, CONVERGE_BOUND).await;
    // Snapshots follow every 32 MiB of applied commands: most of the state is in one.
    wait_until(
        "the survivors to snapshot most of the loaded state",
        Duration::from_secs(60),
        POLL,
        || {
            let taken = survivors.iter().all(|&id| {
                std::fs::metadata(cluster.data_dir(id).join("snapshot"))
                    .is_ok_and(|m| m.len() as usize >= keys * VALUE_BYTES / 2)
            });
            async move { taken }
        },
    )
    .await
    .or_fail(&cluster, "snapshots of the loaded state");
    let before = statuses(&cluster, &survivors).await;
    let ballot = before.get(&leader).map(|s| s.ballot);
    let rss_before: BTreeMap<u64, u64> = survivors
        .iter()
        .map(|&id| (id, status_mib(&cluster, id, "VmRSS")))
        .collect();

    // The victim comes back while writes continue; a peer ships it the snapshot.
    let writers = Writers::spawn(&c, "during", 2, 100_000);
    writers
        .wait_acked_more(&cluster, 20, Duration::from_secs(20))
        .await;
    cluster
        .restart(victim)
        .or_fail(&cluster, &format!("restart of node {victim}"));
    let restarted = Instant::now();
    wait_until(
        &format!("node {victim} to install a snapshot from a peer"),
        Duration::from_secs(120),
        POLL,
        || {
            let found = log_contains(&cluster, victim, "installed a snapshot from a peer");
            async move { found }
        },
    )
    .await
    .or_fail(&cluster, "catch-up by snapshot");
    let installed_after = restarted.elapsed();
    writers
        .wait_acked_more(&cluster, 20, Duration::from_secs(20))
        .await;
    let outcomes = writers.stop().await;
    check!(
        &cluster,
        outcomes.failed.is_empty() && outcomes.unknown.is_empty(),
        "writes during the transfer failed: {}",
        outcomes.figures()
    );
    let applied = wait_converged(&cluster, &ids, CONVERGE_BOUND).await;

    // No leader change: every replica, the victim included, is at the leader's ballot.
    let after = statuses(&cluster, &ids).await;
    for (&id, status) in &after {
        check!(
            &cluster,
            Some(status.ballot) == ballot,
            "node {id} is at ballot {:?}, the leader was at {ballot:?}: the transfer caused an election",
            status.ballot
        );
    }

    // Memory: the senders hold their state plus a few chunks; the receiver one state.
    let senders: Vec<u64> = survivors
        .iter()
        .copied()
        .filter(|&id| log_contains(&cluster, id, "shipping a snapshot to a lagging peer"))
        .collect();
    check!(&cluster, !senders.is_empty(), "no node shipped a snapshot");
    let mut report = String::new();
    for &id in &senders {
        let peak = status_mib(&cluster, id, "VmHWM");
        let base = rss_before.get(&id).copied().unwrap_or(0);
        report.push_str(&format!(
            "sender {id}: RSS {base} MiB before, peak {peak} MiB; "
        ));
        check!(
            &cluster,
            peak <= base + 96,
            "sender {id} grew from {base} MiB to a peak of {peak} MiB during the transfer"
        );
    }
    let receiver_peak = status_mib(&cluster, victim, "VmHWM");
    let leader_rss = rss_before.get(&leader).copied().unwrap_or(0);
    report.push_str(&format!(
        "receiver {victim}: peak {receiver_peak} MiB (the leader holds {leader_rss} MiB)"
    ));
    check!(
        &cluster,
        receiver_peak <= leader_rss * 3 / 2 + 96,
        "the receiver peaked at {receiver_peak} MiB for a state the leader holds in {leader_rss} MiB"
    );

    // The victim holds the loaded state and the writes made during the transfer.
    let mut expected: BTreeMap<String, Option<Bytes>> = (0..keys)
        .step_by(37)
        .map(|i| (format!("big-{i:06}"), Some(value_of(i))))
        .collect();
    for (key, value) in outcomes.acked.iter().take(200) {
        expected.insert(key.clone(), Some(Bytes::from(value.clone())));
    }
    verify_node_holds(&cluster, victim, &expected).await;

    eprintln!(
        "SUMMARY snapshot transfer: {mib} MiB in {keys} values loaded in {load_secs:.1} s; \
         snapshot installed {installed_after:.1?} after restart; {} writes acked during the \
         transfer; converged at applied_index={applied}; ballot unchanged {ballot:?}; {report}; \
         elapsed={:.1?}",
        outcomes.acked.len(),
        started.elapsed()
    );
}
