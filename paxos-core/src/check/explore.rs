//! Breadth-first, exhaustive exploration of a [`World`] up to a depth, with state hashing.
//!
//! Every enabled action is taken from every state reached; a state whose fingerprint was
//! seen before is not explored again. Breadth-first order makes the first counterexample
//! found a shortest one. A counterexample is the list of actions from the initial world; it
//! replays exactly, because the engine, the world and the order of enabled actions are
//! deterministic.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::world::{Action, Violation, World};

/// When to stop exploring.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Actions from the initial world, at most.
    pub depth_max: usize,
    /// Distinct states, at most (a guard against running out of memory).
    pub states_max: usize,
}

/// A schedule that breaks an invariant.
#[derive(Clone, Debug)]
pub(crate) struct Counterexample {
    pub actions: Vec<Action>,
    pub violation: Violation,
}

impl Counterexample {
    /// The schedule as action codes, for `MC_REPLAY`.
    pub(crate) fn codes(&self) -> String {
        codes(&self.actions)
    }
}

/// Action codes separated by spaces.
pub(crate) fn codes(actions: &[Action]) -> String {
    actions
        .iter()
        .map(Action::code)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What an exploration covered.
#[derive(Clone, Debug)]
pub(crate) struct Report {
    /// Distinct states reached (the initial one included).
    pub states: usize,
    /// Actions taken (edges explored).
    pub transitions: u64,
    /// The deepest level fully explored.
    pub depth: usize,
    pub elapsed: Duration,
    /// Every reachable state was explored (no state had a successor left unexplored).
    pub exhausted: bool,
    /// The state limit stopped the exploration early.
    pub truncated: bool,
    pub violation: Option<Counterexample>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} states, {} transitions, depth {}{}{}, {:.1?}",
            self.states,
            self.transitions,
            self.depth,
            if self.exhausted {
                " (state space exhausted)"
            } else {
                ""
            },
            if self.truncated {
                " (TRUNCATED at the state limit)"
            } else {
                ""
            },
            self.elapsed
        )?;
        if let Some(c) = &self.violation {
            write!(
                f,
                "; VIOLATION after {} actions: {}",
                c.actions.len(),
                c.violation
            )?;
        }
        Ok(())
    }
}

const ROOT: u32 = u32::MAX;

/// Explores every schedule of `init` up to `limits`, stopping at the first violation.
pub(crate) fn explore(init: &World, limits: Limits) -> Report {
    let started = Instant::now();
    let mut visited: HashSet<u128> = HashSet::new();
    visited.insert(init.fingerprint());
    // How each explored state was reached: (parent's index, action).
    let mut arena: Vec<(u32, Action)> = Vec::new();
    let mut frontier: Vec<(World, u32)> = vec![(init.clone(), ROOT)];
    let mut report = Report {
        states: 1,
        transitions: 0,
        depth: 0,
        elapsed: Duration::ZERO,
        exhausted: false,
        truncated: false,
        violation: None,
    };
    while report.depth < limits.depth_max {
        let mut next: Vec<(World, u32)> = Vec::new();
        for (world, at) in frontier.drain(..) {
            for action in world.enabled() {
                report.transitions += 1;
                let mut succ = world.clone();
                let result = succ.apply(action);
                if let Err(violation) = result {
                    let mut actions = path(&arena, at);
                    actions.push(action);
                    report.violation = Some(Counterexample { actions, violation });
                    report.elapsed = started.elapsed();
                    report.states = visited.len();
                    return report;
                }
                if visited.insert(succ.fingerprint()) {
                    assert!(arena.len() < ROOT as usize, "state arena overflow");
                    arena.push((at, action));
                    next.push((succ, (arena.len() - 1) as u32));
                }
            }
            if visited.len() >= limits.states_max {
                report.truncated = true;
                break;
            }
        }
        if report.truncated {
            break;
        }
        report.depth += 1;
        if next.is_empty() {
            report.exhausted = true;
            break;
        }
        frontier = next;
    }
    report.states = visited.len();
    report.elapsed = started.elapsed();
    report
}

fn path(arena: &[(u32, Action)], mut at: u32) -> Vec<Action> {
    let mut out = Vec::new();
    while at != ROOT {
        let (parent, action) = arena[at as usize];
        out.push(action);
        at = parent;
    }
    out.reverse();
    out
}

/// Replays `actions` from `init` with a trace, and renders what happened step by step.
/// Returns the rendering and the violation, if the schedule breaks an invariant.
pub(crate) fn replay(init: &World, actions: &[Action]) -> (String, Option<Violation>) {
    let mut w = init.clone().with_trace();
    let mut out = String::new();
    let _ = writeln!(out, "start: {}", w.describe());
    for (step, &action) in actions.iter().enumerate() {
        let before = w.trace.as_ref().map_or(0, Vec::len);
        let result = w.apply(action);
        let _ = writeln!(out, "{:>3}. [{}]", step + 1, action.code());
        for line in w.trace.as_ref().map_or(&[][..], |t| &t[before..]) {
            let _ = writeln!(out, "       {line}");
        }
        let _ = writeln!(out, "       => {}", w.describe());
        if let Err(v) = result {
            let _ = writeln!(out, "VIOLATION: {v}");
            return (out, Some(v));
        }
    }
    (out, None)
}
