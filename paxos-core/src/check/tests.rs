//! Model-checking runs: every checkpoint explored exhaustively to its depth on the engine
//! as it is (no violation allowed), and every planted bug found from some checkpoint.

use super::explore::{explore, replay, Limits, Report};
use super::script::{checkpoints, Checkpoint};
use std::time::Duration;

use super::walk::{guided, shrink, WalkReport};
use super::world::{Action, Budget, World};
use crate::replica::PlantedBug;
use crate::NodeId;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Distinct states a search may reach before it stops as truncated (`MC_STATES_MAX` changes
/// it). The next level's worlds are kept whole in memory, a few KiB each: 3 million keeps
/// a search within a few GiB instead of running the machine out of memory.
fn states_max() -> usize {
    env_u64("MC_STATES_MAX").map_or(3_000_000, |n| n as usize)
}

fn run(cp: &Checkpoint, bug: Option<PlantedBug>, depth: usize) -> Report {
    let world = match cp.world(bug) {
        Ok(w) => w,
        Err(v) => panic!("checkpoint {} broke an invariant on the way: {v}", cp.name),
    };
    explore(
        &world,
        Limits {
            depth_max: depth,
            states_max: states_max(),
        },
    )
}

/// `MC_DEPTH` raises every checkpoint's depth (`MC_DEPTH=12` for a deeper run);
/// `MC_CHECKPOINT` restricts the run to one checkpoint.
fn selected() -> Vec<(Checkpoint, usize)> {
    let only = std::env::var("MC_CHECKPOINT").ok();
    checkpoints()
        .into_iter()
        .filter(|c| only.as_deref().is_none_or(|o| o == c.name))
        .map(|c| {
            let d = env_u64("MC_DEPTH").map_or(c.depth_ci, |d| d as usize);
            (c, d)
        })
        .collect()
}

#[test]
fn model_check_the_engine() {
    for (cp, depth) in selected() {
        let report = run(&cp, None, depth);
        eprintln!("model check {} ({}): {report}", cp.name, cp.what);
        if let Some(c) = &report.violation {
            let world = cp.world(None).unwrap_or_else(|v| panic!("{v}"));
            let (text, _) = replay(&world, &c.actions);
            panic!(
                "{text}\nreplay: MC_CHECKPOINT={} MC_REPLAY=\"{}\" cargo test -p paxos-core mc_replay -- --nocapture",
                cp.name,
                c.codes()
            );
        }
        assert!(
            !report.truncated,
            "{}: the state limit cut the search",
            cp.name
        );
        assert!(
            report.states > 1_000 || report.exhausted,
            "{}: {report}",
            cp.name
        );
    }
}

/// Replays `MC_REPLAY` (action codes) from `MC_CHECKPOINT`, with `MC_BUG` planted, printing
/// every step. Without `MC_REPLAY` it replays nothing and checks the checkpoint builds.
#[test]
fn mc_replay() {
    let name = std::env::var("MC_CHECKPOINT").unwrap_or_else(|_| "fresh-3".into());
    let bug = std::env::var("MC_BUG")
        .ok()
        .and_then(|b| planted().into_iter().find(|p| format!("{p:?}") == b));
    // fresh-5 is where the 5-replica guided walks start; every other name is a checkpoint.
    let world = if name == "fresh-5" {
        World::new(5, &["a", "x", "y"], WALK_BUDGET, bug)
    } else {
        let Some(cp) = checkpoints().into_iter().find(|c| c.name == name) else {
            panic!("no checkpoint named {name}");
        };
        cp.world(bug).unwrap_or_else(|v| panic!("{v}"))
    };
    let codes = std::env::var("MC_REPLAY").unwrap_or_default();
    let actions: Vec<Action> = codes.split_whitespace().filter_map(Action::parse).collect();
    let (text, violation) = replay(&world, &actions);
    eprintln!("{text}");
    if let Some(v) = violation {
        eprintln!("replayed violation: {v}");
    }
}

fn planted() -> Vec<PlantedBug> {
    vec![
        PlantedBug::PrepareBeforeOwnPromiseDurable,
        PlantedBug::LeaderIgnoresHigherCatchUp,
        PlantedBug::ChosenDoesNotRaisePromise,
        PlantedBug::AcceptIgnoresPromise,
        PlantedBug::AcceptedBeforeDurable,
        PlantedBug::ForgetPromiseOnRestart,
    ]
}

/// Each planted bug is found from one of `from` (checkpoint names) within its CI depth,
/// and its counterexample replays to the same violation.
fn assert_found(bug: PlantedBug, from: &[&str]) {
    let mut tried = Vec::new();
    for cp in checkpoints().into_iter().filter(|c| from.contains(&c.name)) {
        let depth = env_u64("MC_DEPTH").map_or(cp.depth_ci, |d| d as usize);
        let report = run(&cp, Some(bug), depth);
        if let Some(c) = &report.violation {
            let world = cp.world(Some(bug)).unwrap_or_else(|v| panic!("{v}"));
            let (text, replayed) = replay(&world, &c.actions);
            assert_eq!(
                replayed.as_ref(),
                Some(&c.violation),
                "replay differs:\n{text}"
            );
            eprintln!(
                "{bug:?} found from {} after {} actions ({report}):\n{text}replay: MC_CHECKPOINT={} MC_BUG={bug:?} MC_REPLAY=\"{}\"",
                cp.name,
                c.actions.len(),
                cp.name,
                c.codes()
            );
            return;
        }
        tried.push(format!("{}: {report}", cp.name));
    }
    panic!("the model checker missed {bug:?}: {tried:#?}");
}

#[test]
fn mc_finds_a_reused_ballot() {
    assert_found(
        PlantedBug::PrepareBeforeOwnPromiseDurable,
        &["restarted-leader-3"],
    );
}

#[test]
fn mc_finds_a_leader_that_ignores_a_higher_catch_up() {
    assert_found(
        PlantedBug::LeaderIgnoresHigherCatchUp,
        &["overlapping-leaders-5"],
    );
}

#[test]
fn mc_finds_a_chosen_value_that_does_not_raise_the_promise() {
    assert_found(PlantedBug::ChosenDoesNotRaisePromise, &["second-leader-3"]);
}

#[test]
fn mc_finds_an_accepted_sent_before_it_is_durable() {
    assert_found(PlantedBug::AcceptedBeforeDurable, &["fresh-3", "leader-3"]);
}

/// The adversary's budget for walks: more of everything than the exhaustive search affords.
const WALK_BUDGET: Budget = Budget {
    crashes: 3,
    timeouts: 8,
    duplicates: 2,
    drops: 6,
    corruptions: 0,
};

/// Guided walks from a fresh cluster; `WALKS` raises their number for a deeper run.
fn guided_run(nodes: usize, bug: Option<PlantedBug>, walks: u64) -> (World, WalkReport) {
    let seed = env_u64("WALK_SEED").unwrap_or(1);
    guided_with(nodes, WALK_BUDGET, seed, bug, walks)
}

/// `walks` guided walks (`WALKS` overrides) from `nodes` fresh replicas under `budget`.
fn guided_with(
    nodes: usize,
    budget: Budget,
    seed: u64,
    bug: Option<PlantedBug>,
    walks: u64,
) -> (World, WalkReport) {
    let values: &[&'static str] = if nodes == 3 {
        &["x", "y"]
    } else {
        &["a", "x", "y"]
    };
    let world = World::new(nodes, values, budget, bug);
    let walks = env_u64("WALKS").unwrap_or(walks);
    let report = guided(&world, seed, walks, 20, Duration::from_secs(600));
    (world, report)
}

/// The engine as it is survives guided walks from fresh 3- and 5-replica clusters.
#[test]
fn guided_walks_on_the_engine() {
    for (nodes, walks) in [(3, 150_000), (5, 60_000)] {
        let (world, report) = guided_run(nodes, None, walks);
        eprintln!("guided walks, {nodes} fresh replicas: {report}");
        if let Some((_, c)) = &report.violation {
            let (text, _) = replay(&world, &c.actions);
            panic!(
                "{text}\nreplay: MC_CHECKPOINT=fresh-{nodes} MC_REPLAY=\"{}\" cargo test -p paxos-core mc_replay -- --nocapture",
                c.codes()
            );
        }
        assert_eq!(report.walks, env_u64("WALKS").unwrap_or(walks), "{report}");
    }
}

/// Guided walks find a planted bug from a fresh 3-replica cluster, with no scripted
/// prefix, and the schedule replays to the same violation.
fn assert_walks_find(bug: PlantedBug) {
    let (world, report) = guided_run(3, Some(bug), 2_000_000);
    assert_walks_found(bug, "fresh-3", &world, &report);
}

/// The walks of `report` from `world` (named `from`) found a violation with `bug`
/// planted: it shrinks, and the shrunk schedule replays to the same violation.
fn assert_walks_found(bug: PlantedBug, from: &str, world: &World, report: &WalkReport) {
    let Some((_, found)) = &report.violation else {
        panic!("guided walks missed {bug:?}: {report}");
    };
    let c = shrink(world, found);
    assert!(c.actions.len() <= found.actions.len());
    let (text, replayed) = replay(world, &c.actions);
    assert_eq!(
        replayed.as_ref(),
        Some(&c.violation),
        "replay differs:\n{text}"
    );
    eprintln!(
        "{bug:?} found by guided walks from {from} ({report}), shrunk to {} actions:\n{text}replay: MC_BUG={bug:?} MC_REPLAY=\"{}\"",
        c.actions.len(),
        c.codes()
    );
}

/// The reused ballot needs a crash inside a candidate's own fsync window followed by a
/// second campaign: rare from a fresh cluster (once in 139,794 walks with one seed, not in
/// 2.7 million with two others), so the walks start where a leader restarted.
#[test]
fn walks_find_a_reused_ballot_from_a_restarted_leader() {
    let bug = PlantedBug::PrepareBeforeOwnPromiseDurable;
    let Some(cp) = checkpoints()
        .into_iter()
        .find(|c| c.name == "restarted-leader-3")
    else {
        panic!("no restarted-leader-3 checkpoint");
    };
    let world = cp.world(Some(bug)).unwrap_or_else(|v| panic!("{v}"));
    let report = guided(&world, 1, 200_000, 20, Duration::from_secs(300));
    assert_walks_found(bug, "restarted-leader-3", &world, &report);
}

#[test]
fn walks_find_a_chosen_value_that_does_not_raise_the_promise_from_a_fresh_cluster() {
    assert_walks_find(PlantedBug::ChosenDoesNotRaisePromise);
}

#[test]
fn walks_find_the_older_planted_bugs_from_a_fresh_cluster() {
    for bug in [
        PlantedBug::AcceptIgnoresPromise,
        PlantedBug::AcceptedBeforeDurable,
        PlantedBug::ForgetPromiseOnRestart,
    ] {
        assert_walks_find(bug);
    }
}

/// Walks where disks get damaged: a node loses its whole durable state and must repair.
fn repair_walks(nodes: usize, bug: Option<PlantedBug>, walks: u64) -> (World, WalkReport) {
    let budget = Budget {
        corruptions: 2,
        ..WALK_BUDGET
    };
    guided_with(nodes, budget, 7, bug, walks)
}

/// A node whose disk is damaged (all durable state lost) repairs before it votes again:
/// guided walks with up to two damaged disks find nothing on the engine.
#[test]
fn guided_walks_with_damaged_disks_on_the_engine() {
    for (nodes, walks) in [(3, 60_000), (5, 25_000)] {
        let (world, report) = repair_walks(nodes, None, walks);
        eprintln!("guided walks with damaged disks, {nodes} replicas: {report}");
        if let Some((_, c)) = &report.violation {
            let c = shrink(&world, c);
            let (text, _) = replay(&world, &c.actions);
            panic!("{text}");
        }
    }
}

#[test]
fn mc_finds_a_damaged_node_that_votes_without_repair() {
    assert_found(PlantedBug::RepairSkipped, &["chosen-by-two-3"]);
}

/// A world of three members and a spare (node 4) with the scripted changes that take the
/// cluster from {1,2,3} to {1,2,3,4} (4 added as a learner, then promoted) and back to
/// three voters ({1,2,4}, 3 removed): snapshots are taken and shipped as the adversary
/// likes, so one can be taken or installed in the middle of a change.
fn membership_world(bug: Option<PlantedBug>) -> World {
    use crate::membership::Change;
    let changes = [
        Change::AddLearner {
            id: 4,
            meta: bytes::Bytes::new(),
        },
        Change::Promote { id: 4 },
        Change::Remove { id: 3 },
    ];
    World::with_spares(3, 1, &["x", "y"], &changes, WALK_BUDGET, bug)
}

/// Drives `w` with a fixed fair policy (make writes durable, deliver, install snapshots,
/// ask for the next change, snapshot, and otherwise fire node 1's or the leader's timer)
/// until every change was applied and took effect, with `crash` run once, after
/// `crash_after` steps. Returns the number of steps.
fn drive_membership(w: &mut World, crash_after: usize, crash: &[Action]) -> Result<usize, String> {
    drive_until(w, crash_after, crash, &|w: &World| {
        w.changes.is_empty()
            && w.ghost.latest().id == 4
            && (w.delivered.len() as u64) >= w.ghost.latest_from()
            && w.nodes
                .iter()
                .filter(|n| [1, 2, 4].contains(&n.id))
                .all(|n| n.replica.is_some() && n.applied.len() == w.delivered.len())
    })
}

/// [`drive_membership`]'s policy, until `done` holds.
fn drive_until(
    w: &mut World,
    crash_after: usize,
    crash: &[Action],
    done: &dyn Fn(&World) -> bool,
) -> Result<usize, String> {
    let mut crashed = false;
    let mut turn = 0usize;
    for step in 0..20_000 {
        if !crashed && step == crash_after {
            crashed = true;
            for a in crash {
                if matches!(a, Action::Crash(n) if w.replica(*n).is_none()) {
                    continue; // already down
                }
                w.apply(*a).map_err(|v| format!("step {step}: {v}"))?;
            }
            continue;
        }
        if done(w) {
            return Ok(step);
        }
        let enabled = w.enabled();
        let pick = |f: &dyn Fn(&Action) -> bool| enabled.iter().copied().find(|a| f(a));
        let action = pick(&|a| matches!(a, Action::Restart(_)))
            .or_else(|| pick(&|a| matches!(a, Action::Durable(_))))
            .or_else(|| pick(&|a| matches!(a, Action::Deliver(_))))
            .or_else(|| pick(&|a| matches!(a, Action::Install(_))))
            .or_else(|| {
                turn += 1;
                None
            })
            .or_else(|| match turn % 4 {
                // A refused change is a no-op: take turns with the rest.
                0 => pick(&|a| matches!(a, Action::Reconfig(_))),
                1 => pick(&|a| matches!(a, Action::Snapshot(_))),
                2 => pick(&|a| matches!(a, Action::Propose(_))),
                _ => None,
            })
            .or_else(|| {
                // The leader's heartbeat, and in turn the timer of a node that does not
                // vote (its catch-up requests); with no leader, the lowest live voter's.
                let leader = w
                    .nodes
                    .iter()
                    .find(|n| {
                        n.replica
                            .as_ref()
                            .is_some_and(|r| r.role() == crate::Role::Leader)
                    })
                    .map(|n| n.id);
                let learners: Vec<NodeId> = w
                    .nodes
                    .iter()
                    .filter(|n| {
                        n.replica
                            .as_ref()
                            .is_some_and(|r| !r.membership().is_voter(n.id))
                    })
                    .map(|n| n.id)
                    .collect();
                let voter = w
                    .nodes
                    .iter()
                    .find(|n| {
                        n.replica
                            .as_ref()
                            .is_some_and(|r| r.membership().is_voter(n.id))
                    })
                    .map(|n| n.id);
                match leader {
                    Some(_) if turn % 2 == 1 && !learners.is_empty() => {
                        Some(Action::Timeout(learners[(turn / 2) % learners.len()]))
                    }
                    Some(l) => Some(Action::Timeout(l)),
                    None => voter.map(Action::Timeout),
                }
            });
        let Some(action) = action else {
            return Err("nothing to do".into());
        };
        w.budget.timeouts = w.budget.timeouts.max(1);
        w.apply(action)
            .map_err(|v| format!("step {step} ({}): {v}", action.code()))?;
    }
    Err(format!(
        "the changes did not complete: {} left, latest membership {:?} from slot {}, {} slots delivered; {}",
        w.changes.len(),
        w.ghost.latest(),
        w.ghost.latest_from(),
        w.delivered.len(),
        w.describe()
    ))
}

/// 3 -> 4 -> 3 members under the fair policy, and again with a crash of the leader, of the
/// learner right after it installed its snapshot, and of a voter inside its fsync window:
/// every change takes effect, every invariant holds, the members end on the same log.
#[test]
fn membership_3_to_4_to_3_completes_through_crashes() {
    let mut w = membership_world(None);
    let steps = drive_membership(&mut w, usize::MAX, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(w.ghost.latest().voters().collect::<Vec<_>>(), vec![1, 2, 4]);
    eprintln!("3 -> 4 -> 3 without faults: {steps} steps");
    for (after, crash) in [
        (20, vec![Action::Crash(1)]),
        (40, vec![Action::Crash(4)]),
        (60, vec![Action::Crash(2), Action::Crash(1)]),
        (90, vec![Action::Crash(1)]),
        (130, vec![Action::Crash(4), Action::Crash(1)]),
    ] {
        let mut w = membership_world(None);
        w.budget.crashes = 10;
        let steps = drive_membership(&mut w, after, &crash)
            .unwrap_or_else(|e| panic!("crash {crash:?} after {after} steps: {e}"));
        eprintln!("3 -> 4 -> 3 with {crash:?} after {after} steps: {steps} steps");
    }
}

/// Guided walks over membership changes (add, promote, remove, with snapshots taken and
/// installed in the middle, crashes, timeouts, duplicates and drops) find nothing on the
/// engine.
#[test]
fn guided_walks_with_membership_changes_on_the_engine() {
    let world = membership_world(None);
    let walks = env_u64("WALKS").unwrap_or(40_000);
    let report = guided(&world, 3, walks, 40, Duration::from_secs(600));
    eprintln!("guided walks with membership changes: {report}");
    if let Some((_, c)) = &report.violation {
        let c = shrink(&world, c);
        let (text, _) = replay(&world, &c.actions);
        panic!("{text}");
    }
}

/// The same walks find a leader that proposes past the reconfiguration window.
#[test]
fn walks_find_a_leader_that_ignores_the_reconfiguration_window() {
    let bug = PlantedBug::LeaderIgnoresReconfigWindow;
    let world = membership_world(Some(bug));
    let report = guided(&world, 3, 200_000, 40, Duration::from_secs(300));
    assert_walks_found(bug, "the membership world", &world, &report);
}

/// Exhaustive search from two points in the middle of the 3 -> 4 -> 3 change, with a crash
/// and timeouts at the adversary's disposal (`MC_DEPTH` goes deeper):
/// - `learner-joining`: node 4 was just added (as a learner), started empty, and has no
///   membership or snapshot yet;
/// - `promotion-pending`: node 4's promotion is chosen but not yet in effect (slots still
///   governed by {1,2,3} are in flight while {1,2,3,4} is decided).
#[test]
fn model_check_membership_changes() {
    type Stop = fn(&World) -> bool;
    let points: [(&str, Stop, usize); 2] = [
        (
            "learner-joining",
            |w| w.changes.len() == 2 && w.replica(4).is_some(),
            4,
        ),
        (
            "promotion-pending",
            |w| w.ghost.latest().id == 3 && (w.delivered.len() as u64) < w.ghost.latest_from(),
            4,
        ),
    ];
    for (name, stop, depth_ci) in points {
        let mut w = membership_world(None);
        drive_until(&mut w, usize::MAX, &[], &stop).unwrap_or_else(|e| panic!("{name}: {e}"));
        w.budget = Budget {
            crashes: 1,
            timeouts: 2,
            duplicates: 0,
            drops: 0,
            corruptions: 0,
        };
        let depth = env_u64("MC_DEPTH").map_or(depth_ci, |d| d as usize);
        let report = explore(
            &w,
            Limits {
                depth_max: depth,
                states_max: states_max(),
            },
        );
        eprintln!("model check from {name}: {report}");
        if let Some(c) = &report.violation {
            let (text, _) = replay(&w, &c.actions);
            panic!("{name}: {text}");
        }
        assert!(!report.truncated, "{name}: the state limit cut the search");
        assert!(report.states > 1_000, "{name}: {report}");
    }
}
