//! Guided swarm walks over a [`World`] from a fresh cluster: the deep complement of the
//! exhaustive search.
//!
//! The exhaustive search covers every schedule up to about ten actions; the schedules that
//! broke agreement are 14 to 19 actions long from a fresh cluster. A walk goes as deep as it
//! likes, with every action the adversary has at the same grain as the exhaustive search and
//! every invariant checked after each one. Each walk draws its own adversary first (swarm
//! testing): how much it favours each kind of action, which links are cut or slow, which
//! kinds of message arrive late, which disks are slow, and whether crashes aim at the fsync
//! window. A walk whose adversary never drops gets no drops, one with a slow disk keeps its
//! writes pending for long: mixes that one fixed distribution almost never produces.
//!
//! Walks are guided by novelty: each starts from a world an earlier walk reached in a
//! situation (a coarse summary of roles, ballots, records and messages in flight) never seen
//! before, so the search keeps pushing into new situations instead of replaying the common
//! start. Everything is fixed by one seed, so a run and its violation replay exactly; a
//! violation's schedule is then shrunk to the steps it needs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::explore::Counterexample;
use super::world::{Action, World};
use crate::rng::Rng;
use crate::{Message, NodeId};

/// The kinds of action, indexing the adversary's weights.
const KINDS: usize = 9;

fn kind(a: &Action) -> usize {
    match a {
        Action::Deliver(_) | Action::Install(_) => 0,
        Action::DeliverSync(_) => 1,
        Action::Duplicate(_) => 2,
        Action::Drop(_) => 3,
        Action::Durable(_) | Action::Snapshot(_) => 4,
        Action::Timeout(_) => 5,
        // A damaged disk is a kind of crash: it shares the crash weight.
        Action::Crash(_) | Action::Corrupt(_) => 6,
        Action::Restart(_) => 7,
        Action::Propose(_) | Action::Reconfig(_) => 8,
    }
}

const MESSAGE_KINDS: [&str; 10] = [
    "prepare",
    "promise",
    "accept",
    "accepted",
    "nack",
    "heartbeat",
    "commit",
    "heartbeat-ack",
    "catch-up-request",
    "catch-up",
];

/// One walk's adversary: a weight per kind of action and a weight per directed link.
#[derive(Clone, Debug)]
pub(crate) struct Adversary {
    kinds: [u64; KINDS],
    links: BTreeMap<(NodeId, NodeId), u64>,
    /// How readily each node's timer fires (some nodes never campaign in a walk).
    timers: BTreeMap<NodeId, u64>,
    /// How readily each kind of message arrives (late catch-up replies, held Accepts).
    messages: BTreeMap<&'static str, u64>,
    /// How fast each node's disk is (a slow disk keeps its writes pending, its fsync
    /// window open, for long).
    disks: BTreeMap<NodeId, u64>,
    /// How much more likely a crash is inside a node's fsync window (writes pending).
    window: u64,
}

impl Adversary {
    /// Draws an adversary for a cluster of `nodes` replicas.
    pub(crate) fn draw(rng: &mut Rng, nodes: u64) -> Adversary {
        let mut kinds = [0u64; KINDS];
        for w in kinds.iter_mut() {
            // A quarter of the kinds are left out of a walk altogether.
            *w = if rng.chance(0.25) {
                0
            } else {
                rng.range_inclusive(1, 16)
            };
        }
        // Without deliveries nothing happens; without proposals nothing is decided; a
        // crashed node with no restart is only a smaller cluster.
        kinds[kind(&Action::Deliver(0))] = kinds[0].max(1);
        kinds[kind(&Action::Propose(0))] = kinds[8].max(4);
        kinds[kind(&Action::Restart(0))] = kinds[7].max(1);
        let mut links = BTreeMap::new();
        for from in 1..=nodes {
            for to in 1..=nodes {
                // A cut link never delivers; a slow one delivers rarely: its messages are
                // held, and arrive late.
                let w = if rng.chance(0.15) {
                    0
                } else if rng.chance(0.3) {
                    1
                } else {
                    16
                };
                links.insert((from, to), w);
            }
        }
        let mut timers = BTreeMap::new();
        for id in 1..=nodes {
            let w = if rng.chance(0.4) {
                0
            } else {
                rng.range_inclusive(1, 16)
            };
            timers.insert(id, w);
        }
        let mut messages = BTreeMap::new();
        for k in MESSAGE_KINDS {
            messages.insert(k, if rng.chance(0.25) { 1 } else { 16 });
        }
        let mut disks = BTreeMap::new();
        for id in 1..=nodes {
            disks.insert(id, if rng.chance(0.3) { 1 } else { 16 });
        }
        let window = if rng.chance(0.5) { 16 } else { 1 };
        Adversary {
            kinds,
            links,
            timers,
            messages,
            disks,
            window,
        }
    }

    fn weight(&self, w: &World, a: &Action) -> u64 {
        let k = self.kinds[kind(a)];
        match a {
            Action::Deliver(i) | Action::DeliverSync(i) | Action::Duplicate(i) => {
                let Some((from, to, m)) = w.net.get(*i) else {
                    return 0;
                };
                let link = self.links.get(&(*from, *to)).copied().unwrap_or(1)
                    * self.messages.get(m.kind()).copied().unwrap_or(16)
                    / 16;
                // Delivering with a sync makes the receiver's writes durable: a slow disk
                // rarely gets that.
                let disk = match a {
                    Action::DeliverSync(_) => self.disks.get(to).copied().unwrap_or(1),
                    _ => 16,
                };
                k * link * disk / 16
            }
            Action::Durable(n) => k * self.disks.get(n).copied().unwrap_or(1),
            Action::Timeout(n) => k * self.timers.get(n).copied().unwrap_or(1),
            Action::Crash(n) => {
                let pending = w.nodes.iter().any(|x| x.id == *n && !x.pending.is_empty());
                if pending {
                    k * self.window
                } else {
                    k
                }
            }
            _ => k * 16,
        }
    }
}

/// The action the adversary picks among those enabled in `w`, if any has weight.
fn choose(adversary: &Adversary, w: &World, rng: &mut Rng) -> Option<Action> {
    let enabled = w.enabled();
    let weights: Vec<u64> = enabled.iter().map(|a| adversary.weight(w, a)).collect();
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return None;
    }
    let mut pick = rng.range_inclusive(0, total - 1);
    for (a, weight) in enabled.iter().zip(&weights) {
        if pick < *weight {
            return Some(*a);
        }
        pick -= weight;
    }
    None
}

/// What a run of walks covered.
#[derive(Clone, Debug)]
pub(crate) struct WalkReport {
    pub walks: u64,
    pub actions: u64,
    pub elapsed: Duration,
    /// The first walk that broke an invariant: its number and schedule.
    pub violation: Option<(u64, Counterexample)>,
}

impl std::fmt::Display for WalkReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} walks, {} actions, {:.1?}",
            self.walks, self.actions, self.elapsed
        )?;
        if let Some((seed, c)) = &self.violation {
            write!(
                f,
                "; VIOLATION in walk {seed} after {} actions: {}",
                c.actions.len(),
                c.violation
            )?;
        }
        Ok(())
    }
}

/// A coarse summary of a world, for novelty: what each node is and holds, in small
/// numbers, and which kinds of message are in flight on which links. Two worlds with the
/// same summary are "the same situation" to the guided search.
fn situation(w: &World) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for n in &w.nodes {
        match &n.replica {
            None => 0u8.hash(&mut h),
            Some(r) => {
                (r.role() as u8 + 1).hash(&mut h);
                r.ballot().round.min(4).hash(&mut h);
                r.ballot().node.hash(&mut h);
                r.promised().round.min(4).hash(&mut h);
                r.commit_index().min(3).hash(&mut h);
            }
        }
        n.durable.promised.round.min(4).hash(&mut h);
        n.durable.accepted.len().min(3).hash(&mut h);
        for (b, v) in n.durable.accepted.values() {
            b.round.min(4).hash(&mut h);
            v.hash(&mut h);
        }
        n.pending.len().min(2).hash(&mut h);
        n.applied.len().hash(&mut h);
    }
    w.values.len().hash(&mut h);
    let mut links: Vec<(&'static str, NodeId, NodeId)> =
        w.net.iter().map(|(f, t, m)| (m.kind(), *f, *t)).collect();
    links.sort_unstable();
    links.dedup();
    links.hash(&mut h);
    h.finish()
}

/// Guided walks: each walk starts from a world some earlier walk reached in a situation
/// never seen before (starting with `init`), so the search keeps pushing into new
/// situations instead of replaying the common start. Stops at the first violation, after
/// `walks` walks, or after `time_max`. A violation's schedule is the whole path from
/// `init`, and replays exactly.
pub(crate) fn guided(
    init: &World,
    seed: u64,
    walks: u64,
    steps: usize,
    time_max: Duration,
) -> WalkReport {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    // Each start is kept as its path from `init` (a few hundred bytes rather than a whole
    // world) and replayed when picked.
    let mut corpus: Vec<Vec<Action>> = vec![Vec::new()];
    let mut seen = std::collections::HashSet::new();
    seen.insert(situation(init));
    let mut report = WalkReport {
        walks: 0,
        actions: 0,
        elapsed: Duration::ZERO,
        violation: None,
    };
    while report.walks < walks && started.elapsed() < time_max {
        report.walks += 1;
        let walk_seed = rng.next_u64();
        let from = rng.range_inclusive(0, corpus.len() as u64 - 1) as usize;
        let mut wrng = Rng::new(walk_seed);
        let adversary = Adversary::draw(&mut wrng, init.nodes.len() as u64);
        let mut path = corpus[from].clone();
        let mut w = init.clone();
        for (i, a) in path.iter().enumerate() {
            // Every step of a recorded path passed the checks when it was walked: a replay
            // that breaks one means the engine is not deterministic, itself a bug.
            if let Err(v) = w.apply(*a) {
                report.violation = Some((
                    report.walks,
                    Counterexample {
                        actions: path[..=i].to_vec(),
                        violation: super::world::Violation(format!(
                            "replaying a recorded schedule gave a different result (the engine is not deterministic): {v}"
                        )),
                    },
                ));
                report.elapsed = started.elapsed();
                return report;
            }
        }
        for _ in 0..steps {
            let Some(action) = choose(&adversary, &w, &mut wrng) else {
                break;
            };
            path.push(action);
            report.actions += 1;
            if let Err(violation) = w.apply(action) {
                report.violation = Some((
                    report.walks,
                    Counterexample {
                        actions: path,
                        violation,
                    },
                ));
                report.elapsed = started.elapsed();
                return report;
            }
            if seen.insert(situation(&w)) && corpus.len() < CORPUS_MAX {
                corpus.push(path.clone());
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// The most worlds the guided search keeps to start from.
const CORPUS_MAX: usize = 200_000;

/// One step of a schedule being shortened: the action, and for a message action the
/// message itself (its index shifts as other steps are removed).
type Step = (Action, Option<(NodeId, NodeId, Message)>);

fn with_index(a: Action, i: usize) -> Action {
    match a {
        Action::Deliver(_) => Action::Deliver(i),
        Action::DeliverSync(_) => Action::DeliverSync(i),
        Action::Duplicate(_) => Action::Duplicate(i),
        Action::Drop(_) => Action::Drop(i),
        other => other,
    }
}

/// Replays `steps` from `init`, finding each message where it is now; returns the actions
/// as taken and the violation, if every step is possible where it is taken and one breaks
/// an invariant.
fn violates(init: &World, steps: &[Step]) -> Option<Counterexample> {
    let mut w = init.clone();
    let mut actions = Vec::new();
    for (a, m) in steps {
        let a = match m {
            Some(m) => with_index(*a, w.net.iter().position(|x| x == m)?),
            None => *a,
        };
        if !w.enabled().contains(&a) {
            return None;
        }
        actions.push(a);
        if let Err(violation) = w.apply(a) {
            return Some(Counterexample { actions, violation });
        }
    }
    None
}

/// Shortens a counterexample: removes runs of steps (long runs first, then shorter ones)
/// as long as what is left still breaks an invariant, so the schedule a person reads holds
/// only what the violation needs. The result replays exactly like any schedule.
pub(crate) fn shrink(init: &World, c: &Counterexample) -> Counterexample {
    // Name each message action by its message, so removing a step does not change what
    // the later ones deliver.
    let mut w = init.clone();
    let mut steps: Vec<Step> = Vec::new();
    for a in &c.actions {
        let m = match a {
            Action::Deliver(i)
            | Action::DeliverSync(i)
            | Action::Duplicate(i)
            | Action::Drop(i) => w.net.get(*i).cloned(),
            _ => None,
        };
        steps.push((*a, m));
        if w.apply(*a).is_err() {
            break;
        }
    }
    let mut best = c.clone();
    loop {
        let before = steps.len();
        for chunk in [16, 8, 4, 2, 1] {
            let mut i = 0;
            while i < steps.len() {
                let end = (i + chunk).min(steps.len());
                let mut shorter = steps.clone();
                shorter.drain(i..end);
                match violates(init, &shorter) {
                    Some(found) => {
                        shorter.truncate(found.actions.len());
                        steps = shorter;
                        best = found;
                    }
                    None => i += chunk,
                }
            }
        }
        if steps.len() == before {
            return best;
        }
    }
}
