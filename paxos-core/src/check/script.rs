//! Hand-driven schedules over a [`World`]: the scripted adversarial tests, and the
//! checkpoints the model checker starts some of its searches from.

use super::explore::codes;
use super::world::{Action, Budget, Violation, World};
use crate::replica::PlantedBug;
use crate::{NodeId, Role};

const UNLIMITED: Budget = Budget {
    crashes: 1_000,
    timeouts: 1_000,
    duplicates: 1_000,
    drops: 1_000,
    corruptions: 1_000,
};

/// A world driven by hand. Steps whose message is not in flight are skipped (the fixed
/// engine may hold back what the broken one sent), so one script serves both.
pub(crate) struct Script {
    pub w: World,
    pub done: Vec<Action>,
}

pub(crate) type Step = Result<(), Violation>;

impl Script {
    pub(crate) fn new(nodes: usize, values: &[&'static str], bug: Option<PlantedBug>) -> Script {
        Script {
            w: World::new(nodes, values, UNLIMITED, bug),
            done: Vec::new(),
        }
    }

    pub(crate) fn act(&mut self, a: Action) -> Step {
        self.done.push(a);
        self.w.apply(a)
    }

    /// Delivers the first `kind` message in flight from `from` to `to`, if there is one.
    pub(crate) fn deliver(
        &mut self,
        from: NodeId,
        to: NodeId,
        kind: &str,
    ) -> Result<bool, Violation> {
        match self.w.find(from, to, |m| m.kind() == kind) {
            Some(i) if self.w.replica(to).is_some() => self.act(Action::Deliver(i)).map(|()| true),
            _ => Ok(false),
        }
    }

    /// Makes every pending batch of `id` durable.
    pub(crate) fn durable(&mut self, id: NodeId) -> Step {
        while self.w.replica(id).is_some() && !self.w.node(id).pending.is_empty() {
            self.act(Action::Durable(id))?;
        }
        Ok(())
    }

    pub(crate) fn timeout(&mut self, id: NodeId) -> Step {
        self.act(Action::Timeout(id))
    }

    pub(crate) fn crash(&mut self, id: NodeId) -> Step {
        self.act(Action::Crash(id))
    }

    pub(crate) fn corrupt(&mut self, id: NodeId) -> Step {
        self.act(Action::Corrupt(id))
    }

    pub(crate) fn restart(&mut self, id: NodeId) -> Step {
        self.act(Action::Restart(id))
    }

    /// Proposes the next value at `id` if it leads; returns whether it did.
    pub(crate) fn propose(&mut self, id: NodeId) -> Result<bool, Violation> {
        if self.w.replica(id).map(|r| r.role()) != Some(Role::Leader) {
            return Ok(false);
        }
        self.act(Action::Propose(id)).map(|()| true)
    }

    /// Drops every message in flight from `from` to `to`.
    pub(crate) fn cut(&mut self, from: NodeId, to: NodeId) -> Step {
        while let Some(i) = self.w.find(from, to, |_| true) {
            self.act(Action::Drop(i))?;
        }
        Ok(())
    }

    /// Drops every `kind` message in flight from `from` to `to`.
    pub(crate) fn drop_kind(&mut self, from: NodeId, to: NodeId, kind: &str) -> Step {
        while let Some(i) = self.w.find(from, to, |m| m.kind() == kind) {
            self.act(Action::Drop(i))?;
        }
        Ok(())
    }

    /// Restarts every crashed node, then delivers every message and makes every write
    /// durable until nothing is left (no timer fires): the cluster's state after the
    /// schedule, with every invariant still checked.
    pub(crate) fn settle(&mut self) -> Step {
        for id in 1..=self.w.nodes.len() as u64 {
            if self.w.replica(id).is_none() {
                self.restart(id)?;
            }
        }
        for _ in 0..10_000 {
            if let Some(id) = self
                .w
                .nodes
                .iter()
                .find(|n| !n.pending.is_empty())
                .map(|n| n.id)
            {
                self.act(Action::Durable(id))?;
            } else if !self.w.net.is_empty() {
                self.act(Action::Deliver(0))?;
            } else {
                return Ok(());
            }
        }
        Err(Violation("the cluster did not quiesce".into()))
    }

    pub(crate) fn trace(&self) -> String {
        codes(&self.done)
    }
}

/// A state the model checker starts from, reached by a scripted prefix run on the engine
/// under test (with its planted bug, if any), and how deep to search from it.
pub(crate) struct Checkpoint {
    pub name: &'static str,
    pub what: &'static str,
    pub nodes: usize,
    pub values: &'static [&'static str],
    pub prefix: fn(&mut Script) -> Step,
    /// The adversary's budget from the checkpoint on.
    pub budget: Budget,
    /// The depth explored in CI.
    pub depth_ci: usize,
}

impl Checkpoint {
    /// The world at this checkpoint, on the engine with `bug` planted.
    pub(crate) fn world(&self, bug: Option<PlantedBug>) -> Result<World, Violation> {
        let mut s = Script::new(self.nodes, self.values, bug);
        (self.prefix)(&mut s)?;
        let mut w = s.w;
        w.budget = self.budget;
        Ok(w)
    }
}

fn fresh(_: &mut Script) -> Step {
    Ok(())
}

/// Node 1 campaigns under 1.1 and is elected with node 3's promise; it proposes `x`; node
/// 2 receives the Accept and makes it durable. (With Prepares sent early, node 1 leads
/// before its own promise is durable.)
fn leader_with_a_proposal(s: &mut Script) -> Step {
    s.timeout(1)?;
    s.deliver(1, 2, "prepare")?;
    s.deliver(1, 3, "prepare")?;
    s.durable(2)?;
    s.durable(3)?;
    s.deliver(2, 1, "promise")?;
    s.deliver(3, 1, "promise")?;
    if s.propose(1)? {
        s.deliver(1, 2, "accept")?;
        s.durable(2)?;
    }
    Ok(())
}

/// As [`leader_with_a_proposal`], then node 1 crashes (losing whatever was not on its disk)
/// and restarts from its durable state.
fn restarted_leader(s: &mut Script) -> Step {
    leader_with_a_proposal(s)?;
    s.crash(1)?;
    s.restart(1)
}

/// Node 1 leads 1.1 with node 3 and proposes `x`, then crashes before `x` is on its disk;
/// node 2 leads 2.2 with node 1 and gets `y` chosen. Node 3 is still promised to 1.1, and
/// node 1's old Accept of `x` to node 3 is still in flight.
fn second_leader_chose(s: &mut Script) -> Step {
    s.timeout(1)?;
    s.durable(1)?;
    s.deliver(1, 3, "prepare")?;
    s.durable(3)?;
    s.deliver(3, 1, "promise")?;
    s.durable(1)?;
    s.propose(1)?;
    s.crash(1)?;
    s.restart(1)?;
    s.cut(1, 2)?;
    s.timeout(2)?;
    s.durable(2)?;
    s.deliver(2, 1, "prepare")?;
    s.durable(1)?;
    s.deliver(1, 2, "promise")?;
    s.propose(2)?;
    s.deliver(2, 1, "accept")?;
    s.durable(1)?;
    s.durable(2)?;
    s.deliver(1, 2, "accepted")?;
    s.drop_kind(2, 1, "commit")?;
    s.drop_kind(2, 1, "heartbeat")?;
    s.drop_kind(2, 3, "prepare")?;
    Ok(())
}

/// Five nodes, two leaders whose terms overlap: node 5 led 1.5 and got `a` chosen in slot
/// 0 by nodes 3-5; node 1, lagging, asked node 5 for slot 0 (that request is still in
/// flight), then led 3.1 with nodes 2 and 3 and got node 2 to accept `x` in slot 1; node 5,
/// refused by node 3, led 4.5 with nodes 3 and 4 and got `y` chosen in slot 1. Node 1 still
/// leads 3.1 and has heard nothing of 4.5.
pub(crate) fn overlapping_leaders(s: &mut Script) -> Step {
    s.timeout(5)?;
    s.durable(5)?;
    for n in [3, 4] {
        s.deliver(5, n, "prepare")?;
        s.durable(n)?;
        s.deliver(n, 5, "promise")?;
    }
    s.propose(5)?;
    for n in [3, 4] {
        s.deliver(5, n, "accept")?;
        s.durable(n)?;
        s.deliver(n, 5, "accepted")?;
    }
    s.durable(5)?;
    s.deliver(5, 1, "heartbeat")?;
    s.deliver(5, 1, "commit")?;
    s.durable(1)?;
    for n in [1, 2, 3] {
        s.cut(5, n)?;
    }
    s.timeout(3)?;
    s.durable(3)?;
    for n in [1, 2, 4, 5] {
        s.cut(3, n)?;
    }
    s.timeout(1)?;
    s.durable(1)?;
    s.deliver(1, 3, "prepare")?;
    s.deliver(3, 1, "nack")?;
    for n in [2, 3, 4] {
        s.cut(1, n)?;
    }
    s.drop_kind(1, 5, "prepare")?;
    s.timeout(1)?;
    s.durable(1)?;
    for n in [2, 3] {
        s.deliver(1, n, "prepare")?;
        s.durable(n)?;
        s.deliver(n, 1, "promise")?;
    }
    s.durable(1)?;
    s.propose(1)?;
    for _ in 0..2 {
        s.deliver(1, 2, "accept")?;
    }
    s.durable(2)?;
    s.durable(1)?;
    for n in [3, 4] {
        s.cut(1, n)?;
    }
    for kind in ["accept", "heartbeat", "commit"] {
        s.drop_kind(1, 5, kind)?; // the old catch-up request to node 5 stays in flight
    }
    s.drop_kind(1, 2, "heartbeat")?;
    s.propose(5)?;
    s.deliver(5, 3, "accept")?;
    s.deliver(3, 5, "nack")?;
    s.durable(5)?;
    for n in [3, 4] {
        s.deliver(5, n, "prepare")?;
        s.durable(n)?;
        s.deliver(n, 5, "promise")?;
    }
    s.durable(5)?;
    for _ in 0..2 {
        for n in [3, 4] {
            s.deliver(5, n, "accept")?;
            s.durable(n)?;
            s.deliver(n, 5, "accepted")?;
        }
        s.durable(5)?;
    }
    for n in [1, 2] {
        s.cut(5, n)?;
    }
    for n in [3, 4] {
        s.drop_kind(5, n, "heartbeat")?;
        s.drop_kind(5, n, "commit")?;
        s.drop_kind(n, 5, "catch-up-request")?;
        s.drop_kind(n, 5, "heartbeat-ack")?;
    }
    Ok(())
}

/// Node 1 leads 1.1 and `x` is chosen in slot 0 by nodes 1 and 2, while node 3 heard
/// nothing (every message to it was lost).
pub(crate) fn chosen_by_two(s: &mut Script) -> Step {
    s.cut(1, 3)?;
    s.timeout(1)?;
    s.durable(1)?;
    s.cut(1, 3)?;
    s.deliver(1, 2, "prepare")?;
    s.durable(2)?;
    s.deliver(2, 1, "promise")?;
    s.durable(1)?;
    s.propose(1)?;
    s.cut(1, 3)?;
    s.deliver(1, 2, "accept")?;
    s.durable(2)?;
    s.durable(1)?;
    s.deliver(2, 1, "accepted")?;
    s.cut(1, 3)
}

/// The checkpoints the model checker explores from.
pub(crate) fn checkpoints() -> Vec<Checkpoint> {
    vec![
        Checkpoint {
            name: "fresh-3",
            what: "three fresh replicas",
            nodes: 3,
            values: &["x", "y"],
            prefix: fresh,
            budget: Budget {
                crashes: 2,
                timeouts: 2,
                duplicates: 0,
                drops: 0,
                corruptions: 0,
            },
            depth_ci: 9,
        },
        Checkpoint {
            name: "leader-3",
            what: "node 1 elected, x proposed and accepted by node 2",
            nodes: 3,
            values: &["x", "y"],
            prefix: leader_with_a_proposal,
            budget: Budget {
                crashes: 2,
                timeouts: 2,
                duplicates: 1,
                drops: 0,
                corruptions: 0,
            },
            depth_ci: 7,
        },
        Checkpoint {
            name: "restarted-leader-3",
            what: "node 1 elected, x accepted by node 2, then node 1 crashed and restarted",
            nodes: 3,
            values: &["x", "y"],
            prefix: restarted_leader,
            budget: Budget {
                crashes: 1,
                timeouts: 2,
                duplicates: 1,
                drops: 0,
                corruptions: 0,
            },
            depth_ci: 7,
        },
        Checkpoint {
            name: "second-leader-3",
            what: "y chosen under 2.2 while node 3 is promised to 1.1 with an old Accept of x in flight",
            nodes: 3,
            values: &["x", "y"],
            prefix: second_leader_chose,
            budget: Budget {
                crashes: 1,
                timeouts: 1,
                duplicates: 1,
                drops: 0,
                corruptions: 0,
            },
            depth_ci: 6,
        },
        Checkpoint {
            name: "chosen-by-two-3",
            what: "x chosen by nodes 1 and 2 under 1.1, node 3 unaware; a disk may be damaged",
            nodes: 3,
            values: &["x", "y"],
            prefix: chosen_by_two,
            budget: Budget {
                crashes: 0,
                timeouts: 2,
                duplicates: 0,
                drops: 0,
                corruptions: 1,
            },
            depth_ci: 7,
        },
        Checkpoint {
            name: "overlapping-leaders-5",
            what: "five replicas: y chosen under 4.5 while node 1 still leads 3.1 with x accepted in the same slot, an old catch-up request in flight",
            nodes: 5,
            values: &["a", "x", "y"],
            prefix: overlapping_leaders,
            budget: Budget {
                crashes: 1,
                timeouts: 1,
                duplicates: 0,
                drops: 0,
                corruptions: 0,
            },
            depth_ci: 6,
        },
    ]
}
