//! Jepsen-style nemesis scenarios against real `kvs-server` processes: a workload records every
//! operation while faults are injected, then the history is checked for linearizability.
//!
//! Each scenario runs ~20 s of faults (`NEMESIS_SECS=N` for a soak, `NEMESIS_SEED=S` to replay
//! the random choices). Run them one at a time (`--test-threads=1`): each starts its own
//! cluster. A failing scenario keeps its cluster directory (node logs and data, history,
//! checker report, fault log) and names it in the panic message.

use std::time::Duration;

use tests::nemesis::{Fault, Schedule};
use tests::scenario::{self, Expect, Scenario};
use tests::workload::{RegisterConfig, SetConfig, Workload};

fn registers() -> Workload {
    Workload::Register(RegisterConfig::default())
}

fn registers_with_directed_readers(directed_readers: usize) -> Workload {
    Workload::Register(RegisterConfig {
        directed_readers,
        ..RegisterConfig::default()
    })
}

#[test]
fn leader_isolation() {
    let summary = scenario::run(Scenario::new(
        "leader isolation",
        3,
        registers(),
        Schedule::Repeat(Fault::IsolateLeader),
    ));
    assert!(summary.faults_injected > 0, "no fault was injected");
}

#[test]
fn ring_partition_of_five_nodes() {
    let summary = scenario::run(Scenario::new(
        "ring partition (5 nodes)",
        5,
        registers(),
        Schedule::Repeat(Fault::Ring),
    ));
    assert!(summary.faults_injected > 0, "no fault was injected");
}

#[test]
fn sigstop_of_the_leader() {
    // A directed reader keeps asking the paused (then resumed) leader: it wakes up believing
    // it still leads and must not answer a linearizable read from its own state.
    let summary = scenario::run(Scenario::new(
        "SIGSTOP of the leader",
        3,
        registers_with_directed_readers(1),
        Schedule::Repeat(Fault::PauseLeader),
    ));
    assert!(summary.faults_injected > 0, "no fault was injected");
    assert!(
        summary.directed.0 > 0,
        "no read was directed at a paused leader"
    );
}

#[test]
fn kill_9_loop_over_random_nodes() {
    let mut s = Scenario::new(
        "kill -9 loop",
        3,
        registers(),
        Schedule::Repeat(Fault::KillRandom),
    );
    // Frequent snapshots: restarted nodes recover from snapshot + log and may need a snapshot
    // shipped to catch up.
    s.snapshot_every = Some(200);
    let summary = scenario::run(s);
    assert!(summary.faults_injected > 0, "no fault was injected");
}

#[test]
fn random_acceptor_failures() {
    let mut s = Scenario::new("random acceptor failures", 3, registers(), Schedule::None);
    s.acceptor_failures = Some((0.03, (100, 500)));
    let summary = scenario::run(s);
    assert!(
        summary.acceptor_failures > 0,
        "no acceptor failure happened"
    );
}

#[test]
fn mixed_random_faults() {
    let mut s = Scenario::new(
        "mixed random faults (5 nodes)",
        5,
        registers_with_directed_readers(1),
        Schedule::Mixed(Fault::all_for(5)),
    );
    s.hold = (Duration::from_millis(1000), Duration::from_millis(3000));
    s.snapshot_every = Some(500);
    let summary = scenario::run(s);
    assert!(summary.faults_injected >= 3, "too few faults injected");
}

#[test]
fn set_workload_under_faults() {
    let summary = scenario::run(Scenario::new(
        "set workload under mixed faults",
        3,
        Workload::Set(SetConfig::default()),
        Schedule::Mixed(Fault::all_for(3)),
    ));
    assert!(summary.faults_injected > 0, "no fault was injected");
    let set = summary.set_check.expect("the set was checked");
    assert!(set.present > 0, "the final set is empty");
}

#[test]
fn isolated_old_leader_does_not_serve_a_stale_linearizable_read() {
    // The leader is cut from its peers but not from clients; writes go on through the others
    // (the nemesis' probe writes a fresh value through them, then reads the old leader
    // directly), and directed readers keep reading from the old leader.
    let mut s = Scenario::new(
        "isolated old leader, no stale linearizable read",
        3,
        registers_with_directed_readers(2),
        Schedule::Repeat(Fault::IsolateLeaderFromPeers),
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
fn the_checker_catches_the_planted_bug() {
    // Same partition scenario, but every server answers linearizable reads from local state
    // (--unsafe-local-reads). The checker must call the history not linearizable.
    let mut s = Scenario::new(
        "planted bug: --unsafe-local-reads",
        3,
        registers_with_directed_readers(2),
        Schedule::Repeat(Fault::IsolateLeaderFromPeers),
    );
    s.hold = (Duration::from_millis(2500), Duration::from_millis(4000));
    s.unsafe_local_reads = true;
    s.expect = Expect::Violation;
    let summary = scenario::run(s);
    assert!(
        summary.violation_found,
        "the checker missed the planted bug: {}",
        summary.verdict
    );
}
