//! Scenario 1: every operation works through every endpoint of 3- and 5-replica clusters.
//!
//! Each request goes through a client that knows a single endpoint, so requests sent to a
//! follower only succeed by following its redirect to the leader.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use kvs_client::{CasOutcome, Client};
use tests::cluster::{wait_until, Cluster};

/// Bound on a stale read on some replica catching up with an acknowledged write.
const STALE_BOUND: Duration = Duration::from_secs(10);

/// Waits until node `id`'s local state holds `expected` for `key`.
async fn wait_stale(cluster: &Cluster, id: u64, key: &str, expected: Option<&str>) {
    let client = node_client(cluster, id, Duration::from_secs(2));
    let expected = expected.map(|v| Bytes::from(v.to_owned()));
    wait_until(
        &format!("node {id} to serve {key:?} = {expected:?} from its local state"),
        STALE_BOUND,
        POLL,
        || {
            let client = client.clone();
            let expected = expected.clone();
            async move { client.get_stale(key.to_owned()).await.ok() == Some(expected) }
        },
    )
    .await
    .or_fail(cluster, "stale read");
}

async fn get(cluster: &Cluster, client: &Client, key: &str) -> Option<Bytes> {
    client.get(key.to_owned()).await.or_fail(
        cluster,
        &format!("get {key:?} via {:?}", client.endpoints()),
    )
}

async fn cas(
    cluster: &Cluster,
    client: &Client,
    key: &str,
    expected: Option<&str>,
    new: &str,
) -> CasOutcome {
    client
        .compare_and_swap(
            key.to_owned(),
            expected.map(|e| Bytes::from(e.to_owned())),
            new.to_owned(),
        )
        .await
        .or_fail(
            cluster,
            &format!(
                "cas {key:?} {expected:?} -> {new:?} via {:?}",
                client.endpoints()
            ),
        )
}

fn mismatch(current: Option<&str>) -> CasOutcome {
    CasOutcome::Mismatch {
        current: current.map(|c| Bytes::from(c.to_owned())),
    }
}

async fn every_operation_through_every_endpoint(nodes: usize) {
    let started = Instant::now();
    let cluster = start(fast_options(nodes));
    let ids = cluster.ids();
    let leader = wait_leader(&cluster, &ids).await;
    let clients: Vec<Client> = ids
        .iter()
        .map(|&id| node_client(&cluster, id, CHECK_TIMEOUT))
        .collect();
    let mut ops = 0u64;

    // Writes through every endpoint; linearizable reads of each through every endpoint.
    let mut redirect_hints = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let key = format!("key-via-{id}");
        clients[i]
            .put(key.clone(), format!("first value via {id}"))
            .await
            .or_fail(&cluster, &format!("put {key:?} via node {id}"));
        let value = format!("second value via {id}");
        clients[i]
            .put(key.clone(), value.clone())
            .await
            .or_fail(&cluster, &format!("overwrite {key:?} via node {id}"));
        ops += 2;
        redirect_hints.push((id, clients[i].leader()));
        for (j, &other) in ids.iter().enumerate() {
            let got = get(&cluster, &clients[j], &key).await;
            ops += 1;
            check!(
                &cluster,
                got.as_deref() == Some(value.as_bytes()),
                "linearizable get {key:?} via node {other} after the put via node {id} \
                 returned {got:?}, expected {value:?}"
            );
        }
        for &other in &ids {
            wait_stale(&cluster, other, &key, Some(&value)).await;
            ops += 1;
        }
    }
    // Followers answered by redirecting to the leader: each single-endpoint client now
    // believes the leader's endpoint leads (checked only if the leader did not change).
    if agreed_leader(&cluster, &ids).await == Some(leader) {
        let leader_endpoint = cluster
            .client_endpoint(leader)
            .or_fail(&cluster, "endpoint");
        for (id, hint) in &redirect_hints {
            check!(
                &cluster,
                hint.as_deref() == Some(leader_endpoint.as_str()),
                "the client of node {id} should have been redirected to the leader \
                 {leader} at {leader_endpoint}; it believes {hint:?} leads"
            );
        }
    } else {
        eprintln!("  leadership moved during the test; redirect targets not compared");
    }

    // Deletes through every endpoint.
    for (i, &id) in ids.iter().enumerate() {
        let key = format!("key-via-{id}");
        let deleter = &clients[(i + 1) % ids.len()];
        let existed = deleter
            .delete(key.clone())
            .await
            .or_fail(&cluster, &format!("delete {key:?}"));
        check!(&cluster, existed, "delete of existing {key:?} said absent");
        let again = deleter
            .delete(key.clone())
            .await
            .or_fail(&cluster, &format!("second delete {key:?}"));
        check!(&cluster, !again, "second delete of {key:?} said it existed");
        ops += 2;
        for (j, &other) in ids.iter().enumerate() {
            let got = get(&cluster, &clients[j], &key).await;
            ops += 1;
            check!(
                &cluster,
                got.is_none(),
                "deleted {key:?} still reads {got:?} via node {other}"
            );
        }
        for &other in &ids {
            wait_stale(&cluster, other, &key, None).await;
            ops += 1;
        }
    }

    // Compare-and-swap, both forms, through every endpoint.
    for (i, &id) in ids.iter().enumerate() {
        let c = &clients[i];
        let key = format!("cas-via-{id}");
        let steps: [(Option<&str>, &str, CasOutcome); 5] = [
            (None, "one", CasOutcome::Swapped),
            (None, "two", mismatch(Some("one"))),
            (Some("one"), "two", CasOutcome::Swapped),
            (Some("one"), "three", mismatch(Some("two"))),
            (Some("two"), "three", CasOutcome::Swapped),
        ];
        for (expected, new, want) in steps {
            let got = cas(&cluster, c, &key, expected, new).await;
            ops += 1;
            check!(
                &cluster,
                got == want,
                "cas {key:?} expecting {expected:?} -> {new:?} via node {id}: got {got:?}, \
                 wanted {want:?}"
            );
        }
        let absent_key = format!("cas-absent-via-{id}");
        let got = cas(&cluster, c, &absent_key, Some("anything"), "x").await;
        check!(
            &cluster,
            got == mismatch(None),
            "cas on absent {absent_key:?} expecting a value: got {got:?}"
        );
        let other = &clients[(i + 1) % ids.len()];
        let got = get(&cluster, other, &key).await;
        let absent = get(&cluster, other, &absent_key).await;
        ops += 3;
        check!(
            &cluster,
            got.as_deref() == Some(&b"three"[..]) && absent.is_none(),
            "after the CAS sequence {key:?} reads {got:?} (want \"three\") and \
             {absent_key:?} reads {absent:?} (want None)"
        );
        for &node in &ids {
            wait_stale(&cluster, node, &key, Some("three")).await;
            ops += 1;
        }
    }

    eprintln!(
        "SUMMARY basics/{nodes} replicas: ops acknowledged={ops} unknown=0 failed=0 \
         elapsed={:.1?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_serve_every_operation_through_every_endpoint() {
    every_operation_through_every_endpoint(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_serve_every_operation_through_every_endpoint() {
    every_operation_through_every_endpoint(5).await;
}
