//! Jepsen-style nemesis scenarios against real `kvs-server` processes: a workload records every
//! operation while faults are injected, then the history is checked for linearizability.
//!
//! Each scenario runs ~20 s of faults (`NEMESIS_SECS=N` for a soak, `NEMESIS_SEED=S` to replay
//! the random choices). Run them one at a time (`--test-threads=1`): each starts its own
//! cluster. A failing scenario keeps its cluster directory (node logs and data, history,
//! checker report, fault log) and names it in the panic message.
//!
//! Every fault is checked to have taken effect (see `tests::nemesis`), and every scenario
//! requires a minimum of served operations: successful operations and acknowledged writes, in
//! total and inside the fault windows. The minimums below are about a fifth of what a healthy
//! run serves on the project's 2-core machine (the typical counts are in the comments, per
//! 20 s of faults); they scale with `NEMESIS_SECS`.

use std::time::Duration;

use tests::nemesis::{Fault, Schedule};
use tests::scenario::{self, Expect, Minimums, Scenario};
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

/// Minimums: successful operations, acknowledged writes, and both inside fault windows.
fn at_least(
    ok: u64,
    acked_writes: u64,
    ok_in_faults: u64,
    acked_writes_in_faults: u64,
) -> Minimums {
    Minimums {
        ok,
        acked_writes,
        ok_in_faults,
        acked_writes_in_faults,
    }
}

#[test]
fn leader_isolation() {
    let mut s = Scenario::new(
        "leader isolation",
        3,
        registers(),
        Schedule::Repeat(Fault::IsolateLeader),
    );
    // Typical: 5400 ok, 2060 acknowledged writes; in faults 3400 and 1290.
    s.minimums = at_least(1100, 400, 650, 250);
    let summary = scenario::run(s);
    assert!(summary.faults_injected > 0, "no fault was injected");
    assert!(summary.checks.leadership_changes_verified > 0);
}

#[test]
fn ring_partition_of_five_nodes() {
    let mut s = Scenario::new(
        "ring partition (5 nodes)",
        5,
        registers(),
        Schedule::Repeat(Fault::Ring),
    );
    // Typical: 5600 ok, 2080 acknowledged writes; in faults 3440 and 1260.
    s.minimums = at_least(1100, 400, 650, 250);
    let summary = scenario::run(s);
    assert!(summary.faults_injected > 0, "no fault was injected");
    assert!(summary.checks.cuts_verified > 0);
}

#[test]
fn sigstop_of_the_leader() {
    // A directed reader keeps asking the paused (then resumed) leader: it wakes up believing
    // it still leads and must not answer a linearizable read from its own state.
    let mut s = Scenario::new(
        "SIGSTOP of the leader",
        3,
        registers_with_directed_readers(1),
        Schedule::Repeat(Fault::PauseLeader),
    );
    // Pauses longer than the clients' 2.5 s request timeout. A client waits for the stopped
    // leader one attempt timeout (1 s), then leaves it for the other nodes, which elected a new
    // leader within ~0.3 s; it no longer takes the stopped node for the leader, and its stale
    // reads avoid it. So the workload is served inside the pauses too, nearly as fast as
    // outside (the nemesis also checks that a write through the other nodes is acknowledged
    // during every pause, `pause_writes_verified`).
    s.hold = (Duration::from_millis(4000), Duration::from_millis(6000));
    // Typical: 6600 ok, 2340 acknowledged writes; in the pauses 4400 and 1630. (Before the
    // client left a silent leader, the pauses got 2..200 ok and no acknowledged write.)
    s.minimums = at_least(1300, 460, 850, 320);
    let summary = scenario::run(s);
    assert!(summary.faults_injected > 0, "no fault was injected");
    assert!(
        summary.directed.0 > 0,
        "no read was directed at a paused leader"
    );
    assert!(summary.checks.pause_writes_verified > 0);
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
    // Typical: 5550 ok, 2060 acknowledged writes; in faults 3410 and 1260 (lower when a
    // round kills every node).
    s.minimums = at_least(1100, 400, 500, 180);
    let summary = scenario::run(s);
    assert!(summary.faults_injected > 0, "no fault was injected");
    assert!(summary.checks.kills_verified > 0);
}

#[test]
fn random_acceptor_failures() {
    let mut s = Scenario::new("random acceptor failures", 3, registers(), Schedule::None);
    // Each replica fails about every 2 s of uptime (the probability is per second).
    s.acceptor_failures = Some((0.5, (100, 500)));
    // The servers fail their acceptors all along, so the whole run is one fault window.
    // Typical: 4950 ok, 1880 acknowledged writes (about 35 failures).
    s.minimums = at_least(1000, 370, 1000, 370);
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
    // Typical: 6660 ok, 2050 acknowledged writes; in faults 4390 and 1350 (much lower when
    // the draw holds several leader pauses).
    s.minimums = at_least(1300, 400, 300, 90);
    let summary = scenario::run(s);
    assert!(summary.faults_injected >= 3, "too few faults injected");
}

#[test]
fn set_workload_under_faults() {
    let mut s = Scenario::new(
        "set workload under mixed faults",
        3,
        Workload::Set(SetConfig::default()),
        Schedule::Mixed(Fault::all_for(3)),
    );
    // Typical: 3510 ok, 730 acknowledged adds; in faults 1770 and 360.
    s.minimums = at_least(700, 140, 180, 35);
    let summary = scenario::run(s);
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
    // Typical: 4820 ok, 1720 acknowledged writes; in faults 2350 and 960.
    s.minimums = at_least(950, 340, 470, 190);
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
    // Typical: 7070 ok, 1270 acknowledged writes; in faults 3680 and 460.
    s.minimums = at_least(1400, 250, 700, 90);
    let summary = scenario::run(s);
    assert!(
        summary.violation_found,
        "the checker missed the planted bug: {}",
        summary.verdict
    );
}

#[test]
fn a_cut_that_does_not_cut_fails_the_scenario() {
    // The proxies only pretend to cut: the leader keeps its peers and its clients. The
    // workload and the checker see nothing wrong, so the fault checks alone must fail it.
    let mut s = Scenario::new(
        "fake cuts (must be caught)",
        3,
        registers(),
        Schedule::Repeat(Fault::IsolateLeader),
    );
    s.fake_network_faults = true;
    s.fault_time = Some(Duration::from_secs(4));
    s.hold = (Duration::from_millis(1000), Duration::from_millis(1000));
    let failure = match scenario::try_run(s) {
        Ok(summary) => panic!("a scenario whose cuts did not cut passed:\n{summary}"),
        Err(failure) => failure,
    };
    let reasons = failure.reasons.join("\n");
    eprintln!("the fake cuts were caught, as required:\n{reasons}");
    assert!(
        reasons.contains("a cut did not take effect: link n"),
        "the leak of a cut link was not reported: {reasons}"
    );
    assert!(
        reasons.contains("did not lose the leadership"),
        "the leader keeping its leadership was not reported: {reasons}"
    );
    assert!(
        reasons.contains("not one leadership change was verified"),
        "{reasons}"
    );
    assert!(
        failure.summary.linearizable,
        "only the fault checks should fail"
    );
    // Nothing to investigate: the failure was the point.
    std::fs::remove_dir_all(&failure.evidence).expect("remove the kept directory");
}
