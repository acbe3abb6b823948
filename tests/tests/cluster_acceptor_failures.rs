//! Scenario 6: random acceptor failures (`--acceptor-fail-prob`) on every replica during a
//! bounded write stream. Nothing acknowledged is lost and the replicas converge.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::seq::IndexedRandom;
use tests::cluster::ClusterOptions;

const FAIL_PROB: f64 = 0.05;
const DOWN_MS: (u64, u64) = (100, 500);
/// How long the writers run.
const RUN: Duration = Duration::from_secs(10);
/// How many keys are compared on every replica (plus every unknown-outcome key).
const SAMPLE: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_acceptor_failures_lose_no_acknowledged_write_and_replicas_converge() {
    let started = Instant::now();
    let cluster = start(ClusterOptions {
        acceptor_fail_prob: Some(FAIL_PROB),
        acceptor_down_ms: Some(DOWN_MS),
        ..fast_options(3)
    });
    let ids = cluster.ids();

    // Each write gets the client's retries within a generous budget.
    let writer = client(&cluster, Duration::from_secs(8));
    let writers = Writers::spawn(&writer, "flaky", 3, 10_000);
    // Let the write stream run under failures for a bounded time.
    tokio::time::sleep(RUN).await;
    let outcomes = writers.stop().await;
    let stream_time = started.elapsed();
    check!(
        &cluster,
        outcomes.acked.len() >= 20,
        "the cluster made almost no progress under random acceptor failures: {}; first \
         errors: {:?}",
        outcomes.figures(),
        outcomes
            .unknown
            .iter()
            .map(|(_, _, e)| e)
            .chain(outcomes.failed.iter().map(|(_, _, e)| e))
            .take(3)
            .collect::<Vec<_>>()
    );

    let checker = client(&cluster, CHECK_TIMEOUT);
    let t = Instant::now();
    let unknown_applied = verify_linearizable(&cluster, &checker, &outcomes).await;
    let read_back = t.elapsed();
    let t = Instant::now();
    let applied = wait_converged(&cluster, &ids, CONVERGE_BOUND).await;
    let converge = t.elapsed();
    let mut sample: Vec<String> = outcomes
        .acked
        .choose_multiple(&mut rand::rng(), SAMPLE)
        .map(|(k, _)| k.clone())
        .collect();
    sample.extend(outcomes.unknown.iter().map(|(k, _, _)| k.clone()));
    sample.extend(outcomes.failed.iter().take(50).map(|(k, _, _)| k.clone()));
    let t = Instant::now();
    verify_replicas_agree(&cluster, &checker, &ids, &sample).await;
    let compare = t.elapsed();

    let all = statuses(&cluster, &ids).await;
    let counters: Vec<(u64, u64, u64)> = all
        .values()
        .map(|s| (s.id, s.acceptor_failures, s.acceptor_recoveries))
        .collect();
    check!(
        &cluster,
        all.len() == ids.len()
            && all
                .values()
                .all(|s| s.acceptor_failures > 0 && s.acceptor_recoveries > 0),
        "every node should report injected acceptor failures and recoveries; (id, failures, \
         recoveries): {counters:?}"
    );

    eprintln!(
        "SUMMARY acceptor-failures p={FAIL_PROB} down={DOWN_MS:?}ms: writes {} in \
         {stream_time:.1?} (unknown applied={unknown_applied}); read back in {read_back:.1?}; converged \
         at applied_index={applied} in {converge:.1?}; replicas compared in {compare:.1?}; (node, failures, recoveries)={counters:?}; elapsed={:.1?}",
        outcomes.figures(),
        started.elapsed()
    );
}
