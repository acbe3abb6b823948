//! Tests of the nemesis' checks that need no cluster: the leadership-change verdict and the
//! fault windows.

use kvs_client::{NodeRole, NodeStatus};
use wire::BallotInfo;

use super::{leadership_moved, FaultLog, FaultWindow};
use crate::history::History;

fn status(id: u64, role: NodeRole, round: u64, owner: u64) -> NodeStatus {
    NodeStatus {
        id,
        client_addr: format!("127.0.0.1:{}", 6000 + id),
        role,
        ballot: BallotInfo { round, node: owner },
        commit_index: 0,
        applied_index: 0,
        leader: None,
        peers: Vec::new(),
        acceptor_failures: 0,
        acceptor_recoveries: 0,
        acceptor_down: false,
        uptime_ms: 0,
    }
}

use NodeRole::{Candidate, Follower, Leader};

/// Node 1 led on ballot 4.1 when it was isolated.
fn old() -> NodeStatus {
    status(1, Leader, 4, 1)
}

#[test]
fn the_leadership_moved_when_a_majority_follows_a_new_leader_on_a_higher_ballot() {
    let now = [
        status(1, Follower, 4, 1),
        status(2, Leader, 5, 2),
        status(3, Follower, 5, 2),
    ];
    let text = leadership_moved(&old(), 3, true, &now).unwrap();
    assert!(
        text.contains("from n1 (ballot 4.1) to n2 (ballot 5.2)"),
        "{text}"
    );
    assert!(text.contains("n1 is now follower"), "{text}");
}

#[test]
fn a_leader_that_kept_leading_fails_the_check() {
    // What a cut that did not cut looks like: nothing changed.
    let now = [
        status(1, Leader, 4, 1),
        status(2, Follower, 4, 1),
        status(3, Follower, 4, 1),
    ];
    let why = leadership_moved(&old(), 3, true, &now).unwrap_err();
    assert!(why.contains("no other node leads"), "{why}");
    assert!(why.contains("only [] of 3 nodes"), "{why}");
    assert!(why.contains("old leader n1 still claims to lead"), "{why}");
}

#[test]
fn an_old_leader_still_claiming_the_lead_fails_even_with_a_new_leader() {
    let now = [
        status(1, Leader, 4, 1),
        status(2, Leader, 5, 2),
        status(3, Follower, 5, 2),
    ];
    let why = leadership_moved(&old(), 3, true, &now).unwrap_err();
    assert_eq!(why, "old leader n1 still claims to lead (ballot 4.1)");
}

#[test]
fn a_new_leader_without_a_majority_above_the_old_ballot_fails() {
    // Five nodes: node 2 claims to lead on 5.2 but only it and node 3 are past 4.1.
    let now = [
        status(1, Follower, 4, 1),
        status(2, Leader, 5, 2),
        status(3, Candidate, 5, 2),
        status(4, Follower, 4, 1),
        status(5, Follower, 4, 1),
    ];
    let why = leadership_moved(&old(), 5, true, &now).unwrap_err();
    assert!(why.contains("only [2, 3] of 5 nodes"), "{why}");
}

#[test]
fn an_old_leader_that_must_answer_and_does_not_fails() {
    let now = [status(2, Leader, 5, 2), status(3, Follower, 5, 2)];
    let why = leadership_moved(&old(), 3, true, &now).unwrap_err();
    assert_eq!(why, "old leader n1 did not answer its status");
    // A paused leader cannot answer: the others' view is the whole evidence.
    assert!(leadership_moved(&old(), 3, false, &now).is_ok());
}

#[test]
fn a_leader_on_a_lower_ballot_is_not_a_new_leader() {
    let now = [status(2, Leader, 3, 2), status(3, Follower, 5, 3)];
    let why = leadership_moved(&old(), 3, false, &now).unwrap_err();
    assert!(
        why.contains("no other node leads on a ballot above 4.1"),
        "{why}"
    );
}

#[test]
fn fault_windows_open_at_the_first_fault_and_close_at_the_heal() {
    let history = History::new();
    let log = FaultLog::new(&history);
    log.note("before any fault");
    assert!(log.windows().is_empty());
    log.fault("cut a");
    log.fault("cut b, same window");
    log.heal("healed");
    log.note("a remark closes nothing");
    log.fault("kill c");
    let windows = log.windows();
    assert_eq!(windows.len(), 2);
    assert!(windows[0].start_ns <= windows[0].end_ns);
    assert!(windows[0].end_ns <= windows[1].start_ns);
    // The open window ends now.
    assert!(windows[1].end_ns <= history.elapsed_ns());
    assert_eq!(log.faults_injected(), 3);
    let w = FaultWindow {
        start_ns: 10,
        end_ns: 20,
    };
    assert!(w.contains(10, 20));
    assert!(!w.contains(9, 15));
    assert!(!w.contains(15, 21));
}
