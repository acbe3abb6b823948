//! Scenario 6: random acceptor failures (`--acceptor-fail-prob P`: each replica fails with
//! probability P within each second it is up; `--acceptor-fail-mode crash|amnesia`).
//!
//! - Frequent failures on every replica during a bounded write stream, in each mode:
//!   nothing acknowledged is lost and the replicas converge.
//! - The README's example setting (0.05 per second per replica, the dev cluster's timing):
//!   first idle, then with a client writing steadily. The fraction of status polls (every
//!   100 ms) at which some replica leads, and the share of writes that succeed, are printed
//!   as a SUMMARY line; a leader must be present most of the time, some writes must
//!   succeed, and every acknowledged write must be readable with its value at the end.
//!
//! Environment: `KVS_ACCEPTOR_FAILURES_SECS=N` runs the measurement for N seconds, half
//! idle and half writing (default 30, for CI; the full measurement is 60), and
//! `KVS_ACCEPTOR_FAIL_MODE=crash|amnesia` picks its mode (default `crash`, the server's):
//!
//! ```sh
//! cargo build --bins
//! KVS_ACCEPTOR_FAILURES_SECS=60 KVS_ACCEPTOR_FAIL_MODE=amnesia cargo test -p tests \
//!     --test cluster_acceptor_failures readme_setting -- --nocapture
//! ```

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::*;
use kvs_client::{Client, NodeRole};
use rand::seq::IndexedRandom;
use tests::cluster::{Cluster, ClusterOptions};

/// Failures per second of uptime of each replica in the write-stream tests: high enough
/// that every replica fails several times within the run.
const FAIL_PROB: f64 = 0.8;
const DOWN_MS: (u64, u64) = (100, 500);
/// How long the writers run.
const RUN: Duration = Duration::from_secs(8);
/// How many keys are compared on every replica (plus every unknown-outcome key).
const SAMPLE: usize = 200;

/// The README's example: `kvs-server dev --acceptor-fail-prob 0.05`.
const README_FAIL_PROB: f64 = 0.05;
/// The measurement's length in seconds, half idle and half writing.
const SECS_ENV: &str = "KVS_ACCEPTOR_FAILURES_SECS";
const SECS_DEFAULT: u64 = 30;
/// The failure mode of the measurement.
const MODE_ENV: &str = "KVS_ACCEPTOR_FAIL_MODE";
/// How often every replica's status is polled.
const STATUS_POLL: Duration = Duration::from_millis(100);
/// One write is started this often, whatever became of the earlier ones.
const WRITE_EVERY: Duration = Duration::from_millis(50);
/// The budget of one write (leader search and retries included).
const WRITE_BUDGET: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_acceptor_crashes_lose_no_acknowledged_write_and_replicas_converge() {
    write_stream_under_failures("crash").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_acceptor_amnesia_loses_no_acknowledged_write_and_replicas_converge() {
    write_stream_under_failures("amnesia").await;
}

async fn write_stream_under_failures(mode: &str) {
    let started = Instant::now();
    let cluster = start(ClusterOptions {
        acceptor_fail_prob: Some(FAIL_PROB),
        acceptor_fail_mode: Some(mode.to_owned()),
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
        "the cluster made almost no progress under random acceptor failures ({mode}): {}; \
         first errors: {:?}",
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
    check!(
        &cluster,
        ids.iter()
            .all(|&id| log_contains(&cluster, id, &format!("mode={mode}"))),
        "every node should log its failures as {mode} failures"
    );

    eprintln!(
        "SUMMARY acceptor-failures mode={mode} p={FAIL_PROB}/s down={DOWN_MS:?}ms: writes {} \
         in {stream_time:.1?} (unknown applied={unknown_applied}); read back in \
         {read_back:.1?}; converged at applied_index={applied} in {converge:.1?}; replicas \
         compared in {compare:.1?}; (node, failures, recoveries)={counters:?}; log batches \
         lost to crashes={}; elapsed={:.1?}",
        outcomes.figures(),
        lost_batches(&cluster, &ids),
        started.elapsed()
    );
}

/// Log batches that injected crashes dropped before they reached the disk, summed over the
/// recoveries the nodes logged (`lost_batches=N`).
fn lost_batches(cluster: &Cluster, ids: &[u64]) -> u64 {
    ids.iter()
        .filter_map(|&id| std::fs::read_to_string(cluster.log_path(id)).ok())
        .flat_map(|log| {
            log.split("lost_batches=")
                .skip(1)
                .filter_map(|rest| {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    digits.parse::<u64>().ok()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The fraction of status polls at which some replica reported itself leader.
#[derive(Debug, Default, Clone, Copy)]
struct LeaderPresence {
    polls: u64,
    with_leader: u64,
}

impl LeaderPresence {
    fn fraction(&self) -> f64 {
        if self.polls == 0 {
            return 0.0;
        }
        self.with_leader as f64 / self.polls as f64
    }
}

impl std::fmt::Display for LeaderPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1}% ({}/{} polls)",
            100.0 * self.fraction(),
            self.with_leader,
            self.polls
        )
    }
}

/// Polls every replica's status each [`STATUS_POLL`] for `span`; a poll counts as having a
/// leader when some replica answers that it leads (a replica that is down says so).
async fn poll_leader(
    cluster: &Cluster,
    probe: &Client,
    ids: &[u64],
    span: Duration,
) -> LeaderPresence {
    let endpoints: Vec<String> = ids
        .iter()
        .map(|&id| cluster.client_endpoint(id).or_fail(cluster, "endpoint"))
        .collect();
    let mut presence = LeaderPresence::default();
    let mut ticks = tokio::time::interval(STATUS_POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + span;
    while Instant::now() < end {
        ticks.tick().await;
        let asks = endpoints
            .iter()
            .map(|e| tokio::time::timeout(Duration::from_millis(500), probe.status_of(e)));
        let answers = futures::future::join_all(asks).await;
        let leads = answers
            .into_iter()
            .any(|a| matches!(a, Ok(Ok(s)) if s.role == NodeRole::Leader));
        presence.polls += 1;
        presence.with_leader += u64::from(leads);
    }
    presence
}

/// Starts one write every [`WRITE_EVERY`] for `span` (each with [`WRITE_BUDGET`]), waits
/// for all of them, and returns their outcomes.
async fn write_steadily(client: &Client, span: Duration) -> Outcomes {
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticks = tokio::time::interval(WRITE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + span;
    let mut i = 0u64;
    while Instant::now() < end {
        ticks.tick().await;
        let client = client.clone();
        let key = format!("steady-{i}");
        i += 1;
        tasks.spawn(async move {
            let value = format!("value of {key} #{}", rand::random::<u32>());
            let result = client.put(key.clone(), value.clone()).await;
            (key, value, result)
        });
    }
    let mut out = Outcomes::default();
    while let Some(joined) = tasks.join_next().await {
        let (key, value, result) = joined.expect("writer task panicked");
        match result {
            Ok(()) => out.acked.push((key, value)),
            Err(e) if e.outcome_unknown() => out.unknown.push((key, value, e.to_string())),
            Err(e) => out.failed.push((key, value, e.to_string())),
        }
    }
    out
}

fn measurement_secs() -> u64 {
    match std::env::var(SECS_ENV) {
        Err(_) => SECS_DEFAULT,
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(n) if n >= 2 => n,
            _ => panic!("{SECS_ENV} must be a whole number of seconds, at least 2; got {s:?}"),
        },
    }
}

fn measurement_mode() -> String {
    let mode = std::env::var(MODE_ENV).unwrap_or_else(|_| "crash".to_owned());
    assert!(
        mode == "crash" || mode == "amnesia",
        "{MODE_ENV} must be crash or amnesia, got {mode:?}"
    );
    mode
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_readme_setting_a_leader_is_present_most_of_the_time() {
    let secs = measurement_secs();
    let mode = measurement_mode();
    let half = Duration::from_secs(secs) / 2;
    // The dev cluster's timing: the server defaults (heartbeat 100 ms, election timeout
    // 1000..2000 ms, down 200..2000 ms), no proxies.
    let cluster = start(ClusterOptions {
        proxies: false,
        acceptor_fail_prob: Some(README_FAIL_PROB),
        acceptor_fail_mode: Some(mode.clone()),
        ..ClusterOptions::default()
    });
    let ids = cluster.ids();
    wait_leader(&cluster, &ids).await;
    let probe = client(&cluster, Duration::from_millis(500));

    let idle = poll_leader(&cluster, &probe, &ids, half).await;
    let writer = client(&cluster, WRITE_BUDGET);
    let (busy, outcomes) = tokio::join!(
        poll_leader(&cluster, &probe, &ids, half),
        write_steadily(&writer, half)
    );
    let all = statuses(&cluster, &ids).await;
    let failures: u64 = all.values().map(|s| s.acceptor_failures).sum();
    let attempted = outcomes.all_keys().len();
    let success = outcomes.acked.len() as f64 / attempted.max(1) as f64;
    let overall = LeaderPresence {
        polls: idle.polls + busy.polls,
        with_leader: idle.with_leader + busy.with_leader,
    };
    eprintln!(
        "SUMMARY acceptor-failures readme-setting mode={mode} p={README_FAIL_PROB}/s per \
         replica, {secs} s: leader present {overall} (idle {idle}, writing {busy}); writes \
         succeeded {:.1}% ({}; one started every {WRITE_EVERY:?}, {WRITE_BUDGET:?} budget); \
         acceptor failures {failures}, log batches lost to crashes {}",
        100.0 * success,
        outcomes.figures(),
        lost_batches(&cluster, &ids),
    );

    check!(
        &cluster,
        overall.polls > 0 && overall.with_leader * 2 > overall.polls,
        "a leader should be present most of the time at {README_FAIL_PROB} failures per \
         second per replica; present {overall} (idle {idle}, writing {busy}), {failures} \
         acceptor failures"
    );
    check!(
        &cluster,
        !outcomes.acked.is_empty(),
        "no write succeeded: {}",
        outcomes.figures()
    );
    // Every acknowledged write is readable with its value (failures go on meanwhile).
    let checker = client(&cluster, CHECK_TIMEOUT);
    verify_linearizable(&cluster, &checker, &outcomes).await;
}
