//! The nemesis scenarios of `tests/tests/nemesis.rs` with TLS on every link: client ports
//! with `--client-cert-auth`, peer ports with mutual TLS, and every client of the scenario
//! (workload, nemesis, probes, final reads) connecting with the cluster's CA and a client
//! certificate. The proxies forward the TLS bytes as they are, so partitions cut TLS
//! connections mid-stream and every reconnection runs a new TLS handshake.
//!
//! Each scenario runs 10 s of faults (`NEMESIS_SECS=N` for more, `NEMESIS_SEED=S` to
//! replay), is checked for linearizability by the same checker, and must serve the same
//! minimums as without TLS (scaled to its fault time). The planted bug must still be caught
//! over TLS. Run one at a time (`--test-threads=1`).

use std::time::Duration;

use tests::nemesis::{Fault, Schedule};
use tests::scenario::{self, Expect, Minimums, Scenario};
use tests::workload::{RegisterConfig, SetConfig, Workload};

/// Fault time of each scenario unless `NEMESIS_SECS` says otherwise.
const FAULT_TIME: Duration = Duration::from_secs(10);

fn registers(directed_readers: usize) -> Workload {
    Workload::Register(RegisterConfig {
        directed_readers,
        ..RegisterConfig::default()
    })
}

/// A scenario with TLS everywhere, bounded in time, requiring `minimums` (per 20 s of
/// faults, as in the plain suite).
fn tls(
    name: &str,
    nodes: usize,
    workload: Workload,
    schedule: Schedule,
    minimums: [u64; 4],
) -> Scenario {
    let mut s = Scenario::new(&format!("{name}, TLS"), nodes, workload, schedule);
    s.tls = true;
    s.fault_time = Some(scenario::fault_time_from_env(FAULT_TIME));
    let [ok, acked_writes, ok_in_faults, acked_writes_in_faults] = minimums;
    s.minimums = Minimums {
        ok,
        acked_writes,
        ok_in_faults,
        acked_writes_in_faults,
    };
    s
}

#[test]
fn leader_isolation_over_tls() {
    let s = tls(
        "leader isolation",
        3,
        registers(0),
        Schedule::Repeat(Fault::IsolateLeader),
        [1100, 400, 650, 250],
    );
    let summary = scenario::run(s);
    assert!(summary.faults_injected > 0, "no fault was injected");
    assert!(summary.checks.leadership_changes_verified > 0);
}

#[test]
fn ring_partition_of_five_nodes_over_tls() {
    let s = tls(
        "ring partition (5 nodes)",
        5,
        registers(0),
        Schedule::Repeat(Fault::Ring),
        [1100, 400, 650, 250],
    );
    let summary = scenario::run(s);
    assert!(summary.faults_injected > 0, "no fault was injected");
    assert!(summary.checks.cuts_verified > 0);
}

#[test]
fn sigstop_of_the_leader_over_tls() {
    let mut s = tls(
        "SIGSTOP of the leader",
        3,
        registers(1),
        Schedule::Repeat(Fault::PauseLeader),
        [1300, 460, 850, 320],
    );
    s.hold = (Duration::from_millis(4000), Duration::from_millis(6000));
    let summary = scenario::run(s);
    assert!(summary.faults_injected > 0, "no fault was injected");
    assert!(
        summary.directed.0 > 0,
        "no read was directed at a paused leader"
    );
    assert!(summary.checks.pause_writes_verified > 0);
}

#[test]
fn kill_9_loop_over_tls() {
    let mut s = tls(
        "kill -9 loop",
        3,
        registers(0),
        Schedule::Repeat(Fault::KillRandom),
        [1100, 400, 500, 180],
    );
    s.snapshot_every = Some(200);
    let summary = scenario::run(s);
    assert!(summary.faults_injected > 0, "no fault was injected");
    assert!(summary.checks.kills_verified > 0);
}

#[test]
fn random_acceptor_failures_over_tls() {
    let mut s = tls(
        "random acceptor failures",
        3,
        registers(0),
        Schedule::None,
        [1000, 370, 1000, 370],
    );
    s.acceptor_failures = Some((0.5, (100, 500)));
    let summary = scenario::run(s);
    assert!(
        summary.acceptor_failures > 0,
        "no acceptor failure happened"
    );
}

#[test]
fn mixed_random_faults_over_tls() {
    let mut s = tls(
        "mixed random faults (5 nodes)",
        5,
        registers(1),
        Schedule::Mixed(Fault::all_for(5)),
        [1300, 400, 300, 90],
    );
    s.hold = (Duration::from_millis(1000), Duration::from_millis(3000));
    s.snapshot_every = Some(500);
    let summary = scenario::run(s);
    assert!(summary.faults_injected >= 2, "too few faults injected");
}

#[test]
fn set_workload_under_faults_over_tls() {
    let s = tls(
        "set workload under mixed faults",
        3,
        Workload::Set(SetConfig::default()),
        Schedule::Mixed(Fault::all_for(3)),
        [700, 140, 180, 35],
    );
    let summary = scenario::run(s);
    assert!(summary.faults_injected > 0, "no fault was injected");
    let set = summary.set_check.expect("the set was checked");
    assert!(set.present > 0, "the final set is empty");
}

#[test]
fn isolated_old_leader_does_not_serve_a_stale_read_over_tls() {
    let mut s = tls(
        "isolated old leader, no stale linearizable read",
        3,
        registers(2),
        Schedule::Repeat(Fault::IsolateLeaderFromPeers),
        [950, 340, 470, 190],
    );
    s.hold = (Duration::from_millis(2500), Duration::from_millis(4000));
    let summary = scenario::run(s);
    assert!(summary.probes.rounds > 0, "no probe reached the old leader");
    assert_eq!(summary.probes.stale, 0, "the old leader served stale reads");
    assert!(
        summary.directed.0 > 0,
        "no read was directed at the old leader"
    );
}

#[test]
fn the_checker_catches_the_planted_bug_over_tls() {
    let mut s = tls(
        "planted bug: --unsafe-local-reads",
        3,
        registers(2),
        Schedule::Repeat(Fault::IsolateLeaderFromPeers),
        [1400, 250, 700, 90],
    );
    s.hold = (Duration::from_millis(2500), Duration::from_millis(4000));
    s.unsafe_local_reads = true;
    s.expect = Expect::Violation;
    // As long as in the plain suite: the stale read needs a partition at the right time.
    s.fault_time = Some(scenario::fault_time_from_env(scenario::DEFAULT_FAULT_TIME));
    let summary = scenario::run(s);
    assert!(
        summary.violation_found,
        "the checker missed the planted bug: {}",
        summary.verdict
    );
}
