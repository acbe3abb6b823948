//! Scenario 5: a replica that was down while the others compacted their logs catches up by
//! installing a snapshot shipped by a peer.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use tests::cluster::{wait_until, ClusterOptions};

const SNAPSHOT_EVERY: u64 = 50;
const EARLY_KEYS: usize = 20;
const LATE_TASKS: usize = 2;
const LATE_PER_TASK: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_replica_catches_up_by_snapshot() {
    let started = Instant::now();
    let cluster = start(ClusterOptions {
        snapshot_every: Some(SNAPSHOT_EVERY),
        ..fast_options(3)
    });
    let ids = cluster.ids();
    let leader = wait_leader(&cluster, &ids).await;
    let victim = *ids.iter().find(|&&id| id != leader).expect("a follower");
    let c = client(&cluster, CHECK_TIMEOUT);

    // Early keys, replicated everywhere before the victim stops.
    let mut expected: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    for i in 0..EARLY_KEYS {
        let (key, value) = (format!("early-{i}"), format!("early value {i}"));
        c.put(key.clone(), value.clone())
            .await
            .or_fail(&cluster, &format!("put {key:?}"));
        expected.insert(key, Some(Bytes::from(value)));
    }
    let victim_applied = wait_converged(&cluster, &ids, CONVERGE_BOUND).await;
    cluster
        .kill(victim)
        .or_fail(&cluster, &format!("kill -9 of node {victim}"));

    // While it is down: rewrite some early keys, delete others, write many new ones.
    for i in 0..5 {
        let (key, value) = (format!("early-{i}"), format!("early value {i}, rewritten"));
        c.put(key.clone(), value.clone())
            .await
            .or_fail(&cluster, &format!("rewrite {key:?}"));
        expected.insert(key, Some(Bytes::from(value)));
    }
    for i in 5..10 {
        let key = format!("early-{i}");
        let existed = c
            .delete(key.clone())
            .await
            .or_fail(&cluster, &format!("delete {key:?}"));
        check!(&cluster, existed, "{key:?} should have existed");
        expected.insert(key, None);
    }
    let late = Writers::spawn(&c, "late", LATE_TASKS, LATE_PER_TASK)
        .finish()
        .await;
    check!(
        &cluster,
        late.acked.len() == LATE_TASKS * LATE_PER_TASK,
        "with two of three replicas up every write should succeed: {}; first errors: {:?}",
        late.figures(),
        late.unknown
            .iter()
            .map(|(_, _, e)| e)
            .chain(late.failed.iter().map(|(_, _, e)| e))
            .take(3)
            .collect::<Vec<_>>()
    );
    for (key, value) in &late.acked {
        expected.insert(key.clone(), Some(Bytes::from(value.clone())));
    }

    // The survivors compacted their logs beyond what the victim has.
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != victim).collect();
    let leader_applied = wait_converged(&cluster, &survivors, CONVERGE_BOUND).await;
    check!(
        &cluster,
        leader_applied >= victim_applied + 2 * SNAPSHOT_EVERY,
        "the survivors applied only up to slot {leader_applied} (victim stopped at \
         {victim_applied}); not enough to compact past it"
    );
    for &id in &survivors {
        check!(
            &cluster,
            log_contains(&cluster, id, "snapshot taken"),
            "node {id} never took a snapshot with --snapshot-every {SNAPSHOT_EVERY}"
        );
    }

    cluster
        .restart(victim)
        .or_fail(&cluster, &format!("restart of node {victim}"));
    let restarted = Instant::now();
    wait_until(
        &format!("node {victim} to install a snapshot from a peer"),
        Duration::from_secs(20),
        POLL,
        || {
            let found = log_contains(&cluster, victim, "installed a snapshot from a peer");
            async move { found }
        },
    )
    .await
    .or_fail(&cluster, "catch-up by snapshot");
    let installed_after = restarted.elapsed();
    let applied = wait_converged(&cluster, &ids, CONVERGE_BOUND).await;
    let all = statuses(&cluster, &ids).await;
    let leader_now = agreed_leader(&cluster, &ids).await.unwrap_or(leader);
    check!(
        &cluster,
        all.get(&victim).map(|s| s.applied_index) == all.get(&leader_now).map(|s| s.applied_index),
        "node {victim}'s applied index differs from the leader {leader_now}'s: {:?} vs {:?}",
        all.get(&victim).map(|s| s.applied_index),
        all.get(&leader_now).map(|s| s.applied_index)
    );

    // Its local state has the early keys (rewritten, deleted, untouched) and the late ones.
    verify_node_holds(&cluster, victim, &expected).await;

    eprintln!(
        "SUMMARY snapshot catch-up: writes acked={} unknown=0 failed=0 (+{EARLY_KEYS} early, 5 \
         rewritten, 5 deleted); victim {victim} stopped at applied {victim_applied}, cluster \
         reached {leader_applied}; snapshot installed {installed_after:.1?} after restart; \
         converged at applied_index={applied}; elapsed={:.1?}",
        late.acked.len(),
        started.elapsed()
    );
}
