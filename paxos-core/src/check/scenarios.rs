//! Adversarial schedules scripted step by step: each once made replicas deliver different
//! values for one slot. Every schedule runs on the real engine inside a [`World`], whose
//! invariants are checked after every step; each is run twice, on the engine as it is
//! (nothing may break) and with the bug put back (the checks must catch it).

use super::script::{chosen_by_two, overlapping_leaders, Script, Step};
use super::world::Violation;
use crate::replica::PlantedBug;
use crate::{Ballot, Message, Role};

/// Runs a schedule; on a violation, returns it with the schedule that led there.
fn run(
    script: fn(&mut Script) -> Step,
    nodes: usize,
    values: &[&'static str],
    bug: Option<PlantedBug>,
) -> Result<Script, (Violation, String)> {
    let mut s = Script::new(nodes, values, bug);
    match script(&mut s).and_then(|()| s.settle()) {
        Ok(()) => Ok(s),
        Err(v) => Err((v, s.trace())),
    }
}

fn expect_caught(
    script: fn(&mut Script) -> Step,
    nodes: usize,
    values: &[&'static str],
    bug: PlantedBug,
) -> Violation {
    match run(script, nodes, values, Some(bug)) {
        Err((v, trace)) => {
            eprintln!("{bug:?} caught: {v}\n  schedule: {trace}");
            v
        }
        Ok(s) => panic!(
            "the checks missed {bug:?}; schedule {}; final state {}",
            s.trace(),
            s.w.describe()
        ),
    }
}

fn expect_safe(script: fn(&mut Script) -> Step, nodes: usize, values: &[&'static str]) -> Script {
    match run(script, nodes, values, None) {
        Ok(s) => s,
        Err((v, trace)) => panic!("{v}\n  schedule: {trace}"),
    }
}

// ----- 1. A restarted candidate must not reuse its ballot -----

/// Node 1 wins an election on its peers' promises while its own promise is still waiting
/// for the disk, proposes `x`, and node 2 accepts it. Node 1 crashes before its promise is
/// durable, restarts, campaigns again (its round comes from its durable promise, so it
/// computes the same ballot), and gets `y` chosen by nodes 1 and 3. Node 3's commit
/// announcement under that ballot then makes node 2 deliver its `x`.
fn reused_ballot(s: &mut Script) -> Step {
    s.timeout(1)?; // node 1 campaigns under 1.1; its own promise is pending
    s.deliver(1, 2, "prepare")?;
    s.deliver(1, 3, "prepare")?;
    s.durable(2)?;
    s.durable(3)?;
    s.deliver(2, 1, "promise")?;
    s.deliver(3, 1, "promise")?;
    if s.propose(1)? {
        s.deliver(1, 2, "accept")?;
        s.durable(2)?; // node 2 holds x under 1.1
    }
    s.crash(1)?; // before node 1's promise reached the disk
    s.restart(1)?;
    s.cut(1, 2)?;
    s.cut(1, 3)?;
    s.cut(2, 1)?;
    s.cut(3, 1)?;
    s.timeout(1)?; // campaigns again
    s.durable(1)?;
    s.deliver(1, 3, "prepare")?;
    s.durable(3)?;
    s.deliver(3, 1, "promise")?;
    s.durable(1)?;
    s.propose(1)?; // y
    s.deliver(1, 3, "accept")?;
    s.durable(3)?;
    s.durable(1)?;
    s.deliver(3, 1, "accepted")?;
    s.deliver(1, 2, "heartbeat")?;
    s.deliver(1, 2, "commit")?;
    Ok(())
}

#[test]
fn a_restarted_candidate_never_reuses_its_ballot() {
    let s = expect_safe(reused_ballot, 3, &["x", "y"]);
    // Node 1 campaigned twice; whatever the second ballot, every replica agrees on slot 0.
    let values: Vec<_> = s.w.nodes.iter().map(|n| n.applied.first()).collect();
    assert!(values.iter().all(|v| v == &values[0]), "{values:?}");
    assert!(values[0].is_some(), "slot 0 was chosen: {}", s.w.describe());
}

#[test]
fn no_prepare_leaves_before_the_candidates_own_promise_is_durable() {
    let mut s = Script::new(3, &["x"], None);
    assert_eq!(s.timeout(1), Ok(()));
    assert!(s.w.net.is_empty(), "Prepares went out early: {:?}", s.w.net);
    assert_eq!(s.durable(1), Ok(()));
    let prepares = s.w.net.iter().filter(|(_, _, m)| m.kind() == "prepare");
    assert_eq!(prepares.count(), 2);
}

#[test]
fn the_checks_catch_a_reused_ballot() {
    let v = expect_caught(
        reused_ballot,
        3,
        &["x", "y"],
        PlantedBug::PrepareBeforeOwnPromiseDurable,
    );
    assert!(
        v.0.contains("two values accepted") || v.0.contains("agreement"),
        "{v}"
    );
}

// ----- 2. A leader must step down on anything learned from a higher ballot -----

/// Five nodes. Node 5 leads under 1.5 and gets `a` chosen in slot 0 by nodes 3, 4 and 5;
/// its commit announcement makes node 1 ask node 5 for slot 0 (a request that stays in
/// flight). Node 3 campaigns under 2.3 unheard, which refuses node 1's first try and so
/// lifts node 1 to 3.1; node 1 then leads under 3.1 with nodes 2 and 3, re-proposes `a` in
/// slot 0 and proposes `x` in slot 1, which node 2 accepts. Node 5 proposes `y` in slot 1,
/// is refused by node 3, campaigns under 4.5 and gets `y` chosen by nodes 3, 4 and 5. Only
/// now does node 1's old catch-up request reach node 5; the reply carries slot 1 = `y`
/// under 4.5. A leader that takes it and keeps leading announces commit 2 under 3.1, and
/// node 2, which holds `x` under 3.1, delivers `x`.
fn late_catchup(s: &mut Script) -> Step {
    overlapping_leaders(s)?;
    s.deliver(1, 5, "catch-up-request")?; // the old request, answered now
    s.deliver(5, 1, "catch-up")?;
    s.durable(1)?;
    s.deliver(1, 2, "commit")?;
    s.deliver(1, 2, "heartbeat")?;
    Ok(())
}

#[test]
fn a_leader_steps_down_on_a_catch_up_reply_from_a_higher_ballot() {
    let s = expect_safe(late_catchup, 5, &["a", "x", "y"]);
    assert_ne!(
        s.w.replica(1).map(|r| r.role()),
        Some(Role::Leader),
        "node 1 learned of ballot 3.5 and must have stepped down: {}",
        s.w.describe()
    );
    assert!(s.w.delivered.len() >= 2, "{:?}", s.w.delivered);
}

#[test]
fn the_checks_catch_a_leader_that_keeps_leading_after_a_higher_catch_up() {
    let v = expect_caught(
        late_catchup,
        5,
        &["a", "x", "y"],
        PlantedBug::LeaderIgnoresHigherCatchUp,
    );
    assert!(v.0.contains("agreement") || v.0.contains("majority"), "{v}");
}

// ----- 3. A value known chosen is never overwritten by a stale Accept -----

/// Node 1 leads under 1.1 with node 3 and proposes `x` in slot 0; the Accept to node 3
/// stays in flight. Node 1 crashes before `x` is on its disk and comes back. Node 2 gets
/// `y` chosen in slot 0 under 2.2 with node 1. Node 3, still promised to 1.1, learns slot
/// 0 = `y` under 2.2 by catch-up. Then the old Accept of `x` under 1.1 arrives: an
/// acceptor that did not raise its promise to 2.2 overwrites the chosen slot, serves `x`
/// to its peers, and after a restart delivers `x` for a slot it delivered as `y`.
fn stale_accept(s: &mut Script) -> Step {
    s.timeout(1)?; // 1.1
    s.durable(1)?;
    s.deliver(1, 3, "prepare")?;
    s.durable(3)?;
    s.deliver(3, 1, "promise")?;
    s.durable(1)?;
    s.propose(1)?; // x -> slot 0; the Accept to node 3 stays in flight
    s.crash(1)?;
    s.restart(1)?;
    s.cut(1, 2)?;
    s.timeout(2)?; // 2.2
    s.durable(2)?;
    s.deliver(2, 1, "prepare")?;
    s.durable(1)?;
    s.deliver(1, 2, "promise")?;
    s.propose(2)?; // y -> slot 0
    s.deliver(2, 1, "accept")?;
    s.durable(1)?;
    s.durable(2)?;
    s.deliver(1, 2, "accepted")?;
    s.deliver(2, 3, "heartbeat")?; // node 3 hears of 2.2 without promising it
    s.deliver(2, 3, "commit")?;
    s.deliver(3, 2, "catch-up-request")?;
    s.deliver(2, 3, "catch-up")?; // slot 0 = y under 2.2
    s.durable(3)?;
    s.deliver(1, 3, "accept")?; // the stale Accept of x under 1.1
    s.durable(3)?;
    s.crash(3)?;
    s.restart(3)?;
    Ok(())
}

#[test]
fn a_stale_accept_never_overwrites_a_chosen_slot() {
    let s = expect_safe(stale_accept, 3, &["x", "y"]);
    let n3 = s.w.node(3);
    let slot0 = n3.durable.accepted.get(&0).cloned();
    assert!(
        slot0
            .as_ref()
            .is_some_and(|(b, _)| *b <= n3.durable.promised),
        "node 3 must have promised the ballot of its slot 0 record: {:?}",
        n3.durable
    );
    assert_eq!(slot0.map(|(_, v)| v).as_ref(), s.w.delivered.get(&0));
    assert_eq!(
        n3.applied.first(),
        s.w.delivered.get(&0),
        "node 3 after its restart"
    );
}

#[test]
fn the_checks_catch_a_stale_accept_over_a_chosen_slot() {
    let v = expect_caught(
        stale_accept,
        3,
        &["x", "y"],
        PlantedBug::ChosenDoesNotRaisePromise,
    );
    assert!(
        v.0.contains("above its durable promise") || v.0.contains("rewrote"),
        "{v}"
    );
}

/// The acceptor itself refuses what would rewrite a slot it knows chosen, whatever its
/// promise: the last line of defence, checked directly.
#[test]
fn an_accept_for_a_known_chosen_slot_does_not_change_it() {
    let mut s = Script::new(3, &["x"], None);
    let steps = |s: &mut Script| -> Step {
        s.timeout(1)?;
        s.durable(1)?;
        s.deliver(1, 2, "prepare")?;
        s.durable(2)?;
        s.deliver(2, 1, "promise")?;
        s.durable(1)?;
        s.propose(1)?;
        s.deliver(1, 2, "accept")?;
        s.durable(2)?;
        s.deliver(2, 1, "accepted")?;
        s.durable(1)
    };
    assert_eq!(steps(&mut s), Ok(()));
    let r1 = s.w.replica(1).map(|r| (r.commit_index(), r.ballot()));
    assert_eq!(r1, Some((1, Ballot::new(1, 1))));
    // A forged or very late Accept under the same ballot with another value.
    let forged = Message::Accept {
        ballot: Ballot::new(1, 1),
        entries: vec![(0, crate::Value::Noop)],
        commit: 0,
    };
    s.w.net.push((1, 2, forged));
    let k = s.w.find(
        1,
        2,
        |m| matches!(m, Message::Accept { entries, .. } if entries[0].1 == crate::Value::Noop),
    );
    assert!(k.is_some());
    // Node 2 does not know slot 0 is chosen yet, so it may take it; node 1 (which knows)
    // must not. Send the same to node 1 through its own handler.
    if let Some(r) = s.w.nodes[0].replica.as_mut() {
        r.handle_message(
            0,
            2,
            Message::Accept {
                ballot: Ballot::new(1, 1),
                entries: vec![(0, crate::Value::Noop)],
                commit: 0,
            },
        );
        while r.poll_output().is_some() {}
        assert_eq!(
            r.accepted(0).map(|(_, v)| v.clone()),
            s.w.delivered.get(&0).cloned(),
            "a chosen slot was rewritten"
        );
    }
}

// ----- 4. A node that lost its durable state votes only once repaired -----

/// Node 1 leads 1.1 and gets `x` chosen in slot 0 by nodes 1 and 2; node 3 hears nothing.
/// Node 2's disk is damaged: it loses everything, including its vote for `x`. Node 3
/// campaigns under 1.3. If node 2 promised at once (reporting nothing) node 3 would lead
/// with nodes 2 and 3, never see `x`, and get `y` chosen in slot 0. A repairing node 2
/// stays silent, so node 3 needs node 1, which reports `x`.
fn damaged_voter(s: &mut Script) -> Step {
    chosen_by_two(s)?; // x chosen by nodes 1 and 2; node 3 heard nothing
    s.cut(1, 2)?;
    s.cut(2, 1)?;
    s.corrupt(2)?; // node 2 forgets its promise and its vote
    s.timeout(3)?; // 1.3
    s.durable(3)?;
    s.drop_kind(3, 1, "prepare")?; // node 1 is slow to hear of it
    s.deliver(3, 2, "prepare")?;
    s.durable(2)?;
    s.deliver(2, 3, "promise")?;
    s.durable(3)?;
    s.propose(3)?; // y, if node 3 leads
    s.deliver(3, 2, "accept")?;
    s.durable(2)?;
    s.durable(3)?;
    Ok(())
}

#[test]
fn a_damaged_node_votes_only_once_repaired() {
    let s = expect_safe(damaged_voter, 3, &["x", "y"]);
    assert_ne!(
        s.w.replica(3).map(|r| r.role()),
        Some(Role::Leader),
        "node 3 could not lead without node 1: {}",
        s.w.describe()
    );
    assert!(
        s.w.replica(2).is_some_and(|r| r.repairing()),
        "node 2 is still repairing: {}",
        s.w.describe()
    );
    assert_eq!(
        s.w.delivered.get(&0).map(|v| format!("{v:?}")),
        Some("Commands([b\"x\"])".into())
    );
}

#[test]
fn the_checks_catch_a_damaged_node_that_votes_at_once() {
    let v = expect_caught(damaged_voter, 3, &["x", "y"], PlantedBug::RepairSkipped);
    assert!(
        v.0.contains("was chosen under") || v.0.contains("agreement"),
        "{v}"
    );
}

/// Repair finishes: once node 1 leads again and every peer answered, node 2 catches up
/// to the leader's log, makes its promise durable, and votes again.
#[test]
fn a_damaged_node_finishes_its_repair_and_votes_again() {
    let steps = |s: &mut Script| -> Step {
        damaged_voter(s)?;
        s.settle()
    };
    let s = expect_safe(steps, 3, &["x", "y"]);
    let mut s = s;
    // Node 1 still leads 1.1 (it never heard of 1.3): heartbeats and repair queries flow.
    for _ in 0..6 {
        let _ = s.timeout(1);
        let _ = s.timeout(2);
        let _ = s.settle();
    }
    let r2 = s.w.replica(2).map(|r| (r.repairing(), r.commit_index()));
    assert_eq!(r2, Some((false, 1)), "{}", s.w.describe());
}
