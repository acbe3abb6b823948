//! A cluster of real [`Replica`]s under a fully adversarial scheduler, one action at a time.
//!
//! The [`World`] is what the model checker explores and what the scripted adversarial
//! schedules drive. Every action is one thing a hostile environment may do: deliver any
//! in-flight message (once, or keeping a copy for a later duplicate), drop one, make the
//! oldest pending persist batch of a node durable, fire a node's timer, crash a node (it
//! loses everything not reported durable), damage its disk (it loses its whole durable state
//! and restarts repairing), restart it from its durable state, or propose
//! the next client value at a leader. Each node has a clock of its own that only its timer
//! actions move, so any drift between clocks is covered.
//!
//! After every action the invariants are checked, computed from what acceptors made
//! **durable**, never from what learners believe:
//! - at most one value is ever accepted per (slot, ballot), across all acceptors;
//! - no acceptor's durable record carries a ballot above its durable promise;
//! - once a majority accepted `v` in a slot under ballot `b`, every acceptance there under
//!   a higher ballot carries `v`;
//! - a learner delivers a slot only with a value a majority accepted durably under one
//!   ballot, in slot order, and a slot's delivered value never changes, on any replica,
//!   across restarts included (so delivered sequences are prefixes of one another);
//! - a slot below a replica's durable commit index is never durably rewritten with another
//!   value;
//! - membership: a vote in slot `s` exists only once the membership that governs `s` is
//!   decided (every slot up to `s - delay` delivered), and "a majority" always means a
//!   majority of the voters of the membership that governs the slot, which the world
//!   derives from the delivered log itself (its ghost membership log).
//!
//! A world may hold spare nodes that are not members yet: the adversary asks a leader for
//! the next scripted membership change ([`Action::Reconfig`]), which starts a spare empty
//! to join when it adds it; nodes take snapshots ([`Action::Snapshot`]), and snapshots a
//! leader ships travel separately from messages ([`Action::Install`]), so a snapshot can
//! be taken or installed in the middle of a change.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::hash::{Hash, Hasher};

use bytes::Bytes;

use crate::membership::{Change, Membership, MembershipLog, Reconfig};
use crate::replica::PlantedBug;
use crate::{
    Ballot, Config, Message, NodeId, Output, PersistEntry, RecoveredState, Replica, Role, Slot,
    Value,
};

/// One step of the adversary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Action {
    /// Deliver the in-flight message at this index of the (canonically ordered) network.
    Deliver(usize),
    /// Deliver it, then make every write the receiver has pending durable (the usual fast
    /// path of a healthy replica, as one step: it shortens schedules without hiding the
    /// fsync window, which [`Action::Deliver`] and [`Action::Durable`] still open).
    DeliverSync(usize),
    /// Deliver it but keep a copy in flight, to be delivered again later.
    Duplicate(usize),
    /// Lose it.
    Drop(usize),
    /// The oldest pending persist batch of this node reaches the disk.
    Durable(NodeId),
    /// This node's next timer fires (a follower's or candidate's election timer, a leader's
    /// heartbeat); its own clock jumps there.
    Timeout(NodeId),
    /// The node crashes: its memory and every write not yet durable are lost.
    Crash(NodeId),
    /// The node restarts from its durable state.
    Restart(NodeId),
    /// A client proposes the next value at this node (enabled only where it leads).
    Propose(NodeId),
    /// The node's disk is damaged beyond its torn tail: it crashes, loses its whole durable
    /// state, and restarts repairing (the worst a damaged log can do).
    Corrupt(NodeId),
    /// A client asks this node (enabled only where it leads) for the next scripted
    /// membership change; adding a member starts that spare node, empty, to join.
    Reconfig(NodeId),
    /// The node snapshots its state machine (with its membership log) and compacts its log.
    Snapshot(NodeId),
    /// The snapshot in flight at this index reaches the node it was shipped to.
    Install(usize),
}

impl Action {
    /// A compact code: `d3`, `D3`, `x3`, `f2`, `t1`, `c1`, `r1`, `p1`.
    pub(crate) fn code(&self) -> String {
        match self {
            Action::Deliver(i) => format!("d{i}"),
            Action::DeliverSync(i) => format!("S{i}"),
            Action::Duplicate(i) => format!("D{i}"),
            Action::Drop(i) => format!("x{i}"),
            Action::Durable(n) => format!("f{n}"),
            Action::Timeout(n) => format!("t{n}"),
            Action::Crash(n) => format!("c{n}"),
            Action::Restart(n) => format!("r{n}"),
            Action::Propose(n) => format!("p{n}"),
            Action::Corrupt(n) => format!("z{n}"),
            Action::Reconfig(n) => format!("m{n}"),
            Action::Snapshot(n) => format!("s{n}"),
            Action::Install(i) => format!("i{i}"),
        }
    }

    /// Parses [`Action::code`].
    pub(crate) fn parse(code: &str) -> Option<Action> {
        let (kind, rest) = code.split_at(code.char_indices().nth(1)?.0);
        let n: u64 = rest.parse().ok()?;
        let i = usize::try_from(n).ok()?;
        Some(match kind {
            "d" => Action::Deliver(i),
            "S" => Action::DeliverSync(i),
            "D" => Action::Duplicate(i),
            "x" => Action::Drop(i),
            "f" => Action::Durable(n),
            "t" => Action::Timeout(n),
            "c" => Action::Crash(n),
            "r" => Action::Restart(n),
            "p" => Action::Propose(n),
            "z" => Action::Corrupt(n),
            "m" => Action::Reconfig(n),
            "s" => Action::Snapshot(n),
            "i" => Action::Install(i),
            _ => return None,
        })
    }
}

/// How much of each fault the adversary may use (part of the explored state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Budget {
    pub crashes: u32,
    pub timeouts: u32,
    pub duplicates: u32,
    pub drops: u32,
    /// Damaged disks (see [`Action::Corrupt`]).
    pub corruptions: u32,
}

/// A broken invariant, with what shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One replica and its host: durable state, writes in flight, the state machine.
#[derive(Clone, Debug, Hash)]
pub(crate) struct Node {
    pub id: NodeId,
    pub replica: Option<Replica>,
    /// What survives a crash, replayed.
    pub durable: RecoveredState,
    /// Persist batches handed out and not yet durable, oldest first.
    pub pending: VecDeque<(u64, Vec<PersistEntry>)>,
    /// The values this incarnation delivered, slot by slot from slot 0.
    pub applied: Vec<Value>,
    pub now_ms: u64,
    pub incarnation: u32,
    /// Restarts must repair: the node's disk was damaged and it has not finished repairing.
    pub repairing: bool,
    /// A spare that was never started (it is not a member and holds nothing).
    pub spare: bool,
    /// The host's membership log as of what it applied (`None` for a joiner without one).
    pub mlog: Option<MembershipLog>,
    /// The durable snapshot: every applied value below its slot, and the membership log.
    pub snapshot: Option<(Vec<Value>, MembershipLog)>,
}

/// A whole cluster, its network and the adversary's remaining budget.
#[derive(Clone, Debug)]
pub(crate) struct World {
    pub nodes: Vec<Node>,
    /// Messages in flight: (from, to, message), kept in a canonical order.
    pub net: Vec<(NodeId, NodeId, Message)>,
    /// Values clients will still propose, in order.
    pub values: VecDeque<Bytes>,
    pub budget: Budget,
    /// How many of the nodes (ids 1..=initial) the cluster started with; the others are
    /// spares.
    pub initial: usize,
    /// Membership changes clients will still ask for, in order.
    pub changes: VecDeque<Change>,
    /// Snapshots shipped and not yet installed: (to, slot, values, membership log).
    pub snaps: Vec<(NodeId, Slot, Vec<Value>, MembershipLog)>,
    /// The membership log derived from the delivered log alone (never forgets).
    pub ghost: MembershipLog,
    /// Every acceptance ever made durable: (slot, ballot) -> (value, acceptors).
    pub votes: BTreeMap<(Slot, Ballot), (Value, BTreeSet<NodeId>)>,
    /// The value each slot was first delivered with, by any replica.
    pub delivered: BTreeMap<Slot, Value>,
    pub bug: Option<PlantedBug>,
    /// A human-readable line per action, kept only when tracing.
    pub trace: Option<Vec<String>>,
    /// Who the last delivery went to (scratch, not part of the state).
    last_delivered: Option<(NodeId, NodeId, ())>,
}

/// The timing the model uses: small numbers keep the explored clocks few.
pub(crate) fn model_config(id: NodeId, members: &[NodeId]) -> Config {
    let mut c = Config::new(id, members.to_vec());
    c.reconfig_delay_slots = MODEL_RECONFIG_DELAY;
    c.promote_lag_max = 1;
    c.heartbeat_interval_ms = 10;
    c.election_timeout_min_ms = 11;
    c.election_timeout_max_ms = 20;
    c.snapshot_resend_interval_ms = 10;
    c
}

/// The reconfiguration delay in the model: small, so a change takes effect within the
/// schedules explored, and not 1, so a leader may pipeline past a change.
pub(crate) const MODEL_RECONFIG_DELAY: Slot = 2;

fn message_key(m: &Message) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.hash(&mut h);
    h.finish()
}

impl World {
    /// `nodes` fresh replicas (ids 1..=nodes) that will propose `values` in order.
    pub(crate) fn new(
        nodes: usize,
        values: &[&'static str],
        budget: Budget,
        bug: Option<PlantedBug>,
    ) -> World {
        World::with_spares(nodes, 0, values, &[], budget, bug)
    }

    /// `nodes` fresh members and `spares` more nodes (the next ids) that are not members
    /// until a scripted change in `changes` adds them.
    pub(crate) fn with_spares(
        nodes: usize,
        spares: usize,
        values: &[&'static str],
        changes: &[Change],
        budget: Budget,
        bug: Option<PlantedBug>,
    ) -> World {
        let members: Vec<NodeId> = (1..=nodes as u64).collect();
        let initial = MembershipLog::new(
            MODEL_RECONFIG_DELAY,
            Membership::initial(&members, &BTreeMap::new()),
        );
        let mut w = World {
            initial: nodes,
            changes: changes.iter().cloned().collect(),
            snaps: Vec::new(),
            ghost: initial.clone(),
            nodes: Vec::new(),
            net: Vec::new(),
            values: values
                .iter()
                .map(|v| Bytes::from_static(v.as_bytes()))
                .collect(),
            budget,
            votes: BTreeMap::new(),
            delivered: BTreeMap::new(),
            bug,
            trace: None,
            last_delivered: None,
        };
        for id in 1..=(nodes + spares) as u64 {
            let spare = id > nodes as u64;
            w.nodes.push(Node {
                id,
                replica: None,
                durable: RecoveredState {
                    membership: (!spare).then(|| initial.clone()),
                    ..RecoveredState::default()
                },
                pending: VecDeque::new(),
                applied: Vec::new(),
                now_ms: 0,
                incarnation: 0,
                repairing: false,
                spare,
                mlog: (!spare).then(|| initial.clone()),
                snapshot: None,
            });
        }
        for &id in &members {
            // Booting cannot fail the invariants: there is nothing to redeliver.
            let _ = w.boot(id);
        }
        w
    }

    /// Keeps a readable trace of every action from now on.
    pub(crate) fn with_trace(mut self) -> World {
        self.trace = Some(Vec::new());
        self
    }

    /// The members the cluster started with (the configured ones).
    fn members(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.id <= self.initial as NodeId)
            .map(|n| n.id)
            .collect()
    }

    fn idx(&self, id: NodeId) -> usize {
        (id - 1) as usize
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[self.idx(id)]
    }

    pub(crate) fn replica(&self, id: NodeId) -> Option<&Replica> {
        self.node(id).replica.as_ref()
    }

    /// A 128-bit fingerprint of everything that can influence what happens next, and of
    /// the ghost state the invariants read.
    pub(crate) fn fingerprint(&self) -> u128 {
        let mut a = std::collections::hash_map::DefaultHasher::new();
        let mut b = std::collections::hash_map::DefaultHasher::new();
        0xA5u8.hash(&mut b);
        for h in [&mut a, &mut b] {
            self.nodes.hash(h);
            self.net.hash(h);
            self.values.hash(h);
            self.budget.hash(h);
            self.changes.hash(h);
            self.snaps.hash(h);
            self.votes.hash(h);
            self.delivered.hash(h);
        }
        (u128::from(a.finish()) << 64) | u128::from(b.finish())
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            t.push(line());
        }
    }

    /// Every action the adversary may take now, in a fixed order.
    pub(crate) fn enabled(&self) -> Vec<Action> {
        let mut out = Vec::new();
        for (i, (from, to, m)) in self.net.iter().enumerate() {
            if i > 0 && self.net[i - 1] == (*from, *to, m.clone()) {
                continue; // an identical copy: the same successors
            }
            if self.node(*to).replica.is_none() {
                continue; // waits for the restart (or is never delivered)
            }
            out.push(Action::Deliver(i));
            out.push(Action::DeliverSync(i));
            if self.budget.duplicates > 0 {
                out.push(Action::Duplicate(i));
            }
            if self.budget.drops > 0 {
                out.push(Action::Drop(i));
            }
        }
        for n in &self.nodes {
            match &n.replica {
                Some(r) => {
                    if !n.pending.is_empty() {
                        out.push(Action::Durable(n.id));
                    }
                    if self.budget.timeouts > 0 {
                        out.push(Action::Timeout(n.id));
                    }
                    if self.budget.crashes > 0 {
                        out.push(Action::Crash(n.id));
                    }
                    if self.budget.corruptions > 0 {
                        out.push(Action::Corrupt(n.id));
                    }
                    if !self.values.is_empty() && r.role() == Role::Leader {
                        out.push(Action::Propose(n.id));
                    }
                    if !self.changes.is_empty() && r.role() == Role::Leader {
                        out.push(Action::Reconfig(n.id));
                    }
                    let membership_world = !self.changes.is_empty() || self.ghost.latest().id > 1;
                    if membership_world
                        && n.mlog.is_some()
                        && n.snapshot.as_ref().map_or(0, |(v, _)| v.len()) < n.applied.len()
                    {
                        out.push(Action::Snapshot(n.id));
                    }
                }
                None if n.spare => {}
                None => out.push(Action::Restart(n.id)),
            }
        }
        for (i, (to, ..)) in self.snaps.iter().enumerate() {
            if self.node(*to).replica.is_some() {
                out.push(Action::Install(i));
            }
        }
        out
    }

    /// Carries out `action`; `Err` names the first invariant it breaks.
    pub(crate) fn apply(&mut self, action: Action) -> Result<(), Violation> {
        match action {
            Action::DeliverSync(i) => {
                self.apply(Action::Deliver(i))?;
                let Some((_, to, _)) = self.last_delivered.take() else {
                    return Ok(());
                };
                while self.replica(to).is_some() && !self.node(to).pending.is_empty() {
                    self.make_durable(to)?;
                }
                Ok(())
            }
            Action::Deliver(i) | Action::Duplicate(i) | Action::Drop(i) => {
                let Some((from, to, message)) = self.net.get(i).cloned() else {
                    return Err(Violation(format!("no message #{i} in flight")));
                };
                if !matches!(action, Action::Duplicate(_)) {
                    self.net.remove(i);
                }
                match action {
                    Action::Drop(_) => {
                        self.budget.drops = self.budget.drops.saturating_sub(1);
                        self.log(|| format!("drop {from}->{to} {message:?}"));
                        return Ok(());
                    }
                    Action::Duplicate(_) => {
                        self.budget.duplicates = self.budget.duplicates.saturating_sub(1)
                    }
                    _ => {}
                }
                self.log(|| format!("deliver {from}->{to} {message:?}"));
                self.last_delivered = Some((from, to, ()));
                let k = self.idx(to);
                let now = self.nodes[k].now_ms;
                let Some(r) = self.nodes[k].replica.as_mut() else {
                    return Err(Violation(format!("message to node {to}, which is down")));
                };
                r.handle_message(now, from, message);
                self.drain(to)
            }
            Action::Durable(id) => self.make_durable(id),
            Action::Timeout(id) => {
                self.budget.timeouts = self.budget.timeouts.saturating_sub(1);
                let k = self.idx(id);
                let n = &mut self.nodes[k];
                let Some(r) = n.replica.as_mut() else {
                    return Err(Violation(format!("timer of node {id}, which is down")));
                };
                // A follower's or candidate's clock jumps to its election deadline (a
                // candidate's Prepare resends are covered by duplicated deliveries); a
                // leader's to its next heartbeat.
                let t = match r.role() {
                    Role::Leader => r.poll_timeout(),
                    _ => r.poll_timeout().max(r.election_deadline_ms()),
                }
                .max(n.now_ms);
                n.now_ms = t;
                r.handle_timeout(t);
                let role = r.role();
                self.log(|| format!("timeout at node {id} (t={t} ms), now {role}"));
                self.drain(id)
            }
            Action::Crash(id) => {
                self.budget.crashes = self.budget.crashes.saturating_sub(1);
                let k = self.idx(id);
                let n = &mut self.nodes[k];
                n.replica = None;
                let lost = n.pending.len();
                n.pending.clear();
                n.applied.clear();
                n.incarnation += 1;
                self.log(|| format!("crash node {id} ({lost} pending batches lost)"));
                Ok(())
            }
            Action::Restart(id) => {
                self.log(|| format!("restart node {id} from disk"));
                self.boot(id)
            }
            Action::Corrupt(id) => {
                self.budget.corruptions = self.budget.corruptions.saturating_sub(1);
                let k = self.idx(id);
                let n = &mut self.nodes[k];
                n.replica = None;
                n.pending.clear();
                n.applied.clear();
                n.durable = RecoveredState::default();
                n.snapshot = None;
                n.incarnation += 1;
                n.repairing = true;
                self.log(|| format!("node {id}: disk damaged, durable state lost; repairing"));
                self.boot(id)
            }
            Action::Reconfig(id) => self.reconfigure(id),
            Action::Snapshot(id) => {
                let k = self.idx(id);
                let n = &mut self.nodes[k];
                let Some(mlog) = n.mlog.clone() else {
                    return Err(Violation(format!(
                        "snapshot at node {id}, which has no membership"
                    )));
                };
                let slot = n.applied.len() as Slot;
                n.snapshot = Some((n.applied.clone(), mlog.clone()));
                n.durable.snapshot_slot = slot;
                n.durable.membership = Some(mlog);
                if let Some(r) = n.replica.as_mut() {
                    r.compact(slot);
                }
                self.log(|| format!("node {id} snapshots at slot {slot}"));
                self.drain(id)
            }
            Action::Install(i) => {
                if i >= self.snaps.len() {
                    return Err(Violation(format!("no snapshot #{i} in flight")));
                }
                let (to, slot, values, mlog) = self.snaps.remove(i);
                self.install(to, slot, values, mlog)
            }
            Action::Propose(id) => {
                let k = self.idx(id);
                let now = self.nodes[k].now_ms;
                let Some(value) = self.values.pop_front() else {
                    return Err(Violation("no value left to propose".into()));
                };
                let Some(r) = self.nodes[k].replica.as_mut() else {
                    return Err(Violation(format!("proposal at node {id}, which is down")));
                };
                if let Err(e) = r.propose(now, value.clone()) {
                    return Err(Violation(format!("proposal at node {id} refused: {e}")));
                }
                self.log(|| format!("propose {value:?} at node {id}"));
                self.drain(id)
            }
        }
    }

    fn boot(&mut self, id: NodeId) -> Result<(), Violation> {
        let k = self.idx(id);
        let members = self.members();
        let n = &mut self.nodes[k];
        let seed = id * 1_000 + u64::from(n.incarnation);
        let config = model_config(id, &members);
        n.applied = n
            .snapshot
            .as_ref()
            .map(|(v, _)| v.clone())
            .unwrap_or_default();
        n.mlog = n.durable.membership.clone();
        // A spare that was added joins; a member whose disk was damaged (no membership
        // left) starts from the configured members, as a host without a snapshot does.
        let joiner = !members.contains(&id);
        let booted = if n.durable.membership.is_none() && joiner && !n.repairing {
            Replica::join(config, seed, n.now_ms)
        } else if n.repairing && self.bug != Some(PlantedBug::RepairSkipped) {
            Replica::recover_for_repair(config, seed, n.now_ms, &n.durable)
        } else {
            Replica::recover(config, seed, n.now_ms, &n.durable)
        };
        let mut r = match booted {
            Ok(r) => r,
            Err(e) => return Err(Violation(format!("model config refused: {e}"))),
        };
        if let Some(bug) = self.bug {
            r.plant_bug(bug);
        }
        self.nodes[k].replica = Some(r);
        self.drain(id)
    }

    fn make_durable(&mut self, id: NodeId) -> Result<(), Violation> {
        let k = self.idx(id);
        let Some((batch, entries)) = self.nodes[k].pending.pop_front() else {
            return Err(Violation(format!("node {id} has nothing pending")));
        };
        self.log(|| format!("node {id}: batch {batch} durable {entries:?}"));
        for e in entries {
            self.record_durable(id, e)?;
        }
        let now = self.nodes[k].now_ms;
        if let Some(r) = self.nodes[k].replica.as_mut() {
            r.handle_durable(now, batch);
        }
        self.drain(id)?;
        self.check_durable(id)
    }

    /// The next scripted membership change, asked of leader `id` (against its latest
    /// membership, forced past the liveness check: the adversary wants every change it
    /// can get). A refusal changes nothing. Adding a member starts that spare, empty.
    fn reconfigure(&mut self, id: NodeId) -> Result<(), Violation> {
        let k = self.idx(id);
        let now = self.nodes[k].now_ms;
        let Some(change) = self.changes.front().cloned() else {
            return Err(Violation("no membership change left".into()));
        };
        let Some(r) = self.nodes[k].replica.as_mut() else {
            return Err(Violation(format!("change at node {id}, which is down")));
        };
        let reconfig = Reconfig {
            expected: r.membership_log().latest().id,
            change: change.clone(),
        };
        if let Err(e) = r.propose_reconfig(now, reconfig, true) {
            self.log(|| format!("node {id} refuses {change:?}: {e}"));
            return Ok(());
        }
        self.changes.pop_front();
        self.log(|| format!("node {id} proposes {change:?}"));
        if let Change::AddLearner { id: new, .. } = change {
            let j = self.idx(new);
            if self.nodes[j].spare {
                self.nodes[j].spare = false;
                self.drain(id)?;
                return self.boot(new);
            }
        }
        self.drain(id)
    }

    /// A shipped snapshot reaches `to`, which installs it durably if it is newer than what
    /// it applied (or it has no membership yet).
    fn install(
        &mut self,
        to: NodeId,
        slot: Slot,
        values: Vec<Value>,
        mlog: MembershipLog,
    ) -> Result<(), Violation> {
        let k = self.idx(to);
        let n = &mut self.nodes[k];
        if n.replica.is_none() || (slot <= n.applied.len() as Slot && n.mlog.is_some()) {
            return Ok(());
        }
        for (s, v) in values.iter().enumerate() {
            if self.delivered.get(&(s as Slot)) != Some(v) {
                return Err(Violation(format!(
                    "a snapshot shipped to node {to} holds {v:?} in slot {s}, never delivered so"
                )));
            }
        }
        let n = &mut self.nodes[k];
        n.applied = values.clone();
        n.mlog = Some(mlog.clone());
        n.snapshot = Some((values, mlog.clone()));
        n.durable.snapshot_slot = slot;
        n.durable.membership = Some(mlog.clone());
        let now = n.now_ms;
        if let Some(r) = n.replica.as_mut() {
            r.install_snapshot(now, slot, mlog);
        }
        self.log(|| format!("node {to} installs a snapshot at slot {slot}"));
        self.drain(to)
    }

    /// One record reaches node `id`'s disk: update the ghost vote record.
    fn record_durable(&mut self, id: NodeId, e: PersistEntry) -> Result<(), Violation> {
        let k = self.idx(id);
        if let PersistEntry::Accepted {
            slot,
            ballot,
            value,
        } = &e
        {
            // The membership that governs the slot must be decided: every slot up to
            // `slot - delay` delivered (the delivered log is contiguous from 0).
            let decided = self.delivered.len() as Slot;
            if *slot >= decided + self.ghost.delay() {
                return Err(Violation(format!(
                    "membership window: node {id} durably accepted slot {slot} while only slots below {decided} were delivered"
                )));
            }
            let d = &self.nodes[k].durable;
            if *slot < d.commit {
                if let Some((_, old)) = d.accepted.get(slot) {
                    if old != value {
                        return Err(Violation(format!(
                            "node {id} durably rewrote slot {slot}, below its commit index {}, from {old:?} to {value:?}",
                            d.commit
                        )));
                    }
                }
            }
            let entry = self
                .votes
                .entry((*slot, *ballot))
                .or_insert_with(|| (value.clone(), BTreeSet::new()));
            if &entry.0 != value {
                return Err(Violation(format!(
                    "two values accepted in slot {slot} under ballot {ballot}: {:?} and {value:?}",
                    entry.0
                )));
            }
            entry.1.insert(id);
            self.check_chosen_stable(*slot)?;
        }
        self.nodes[k].durable.apply(e);
        Ok(())
    }

    /// Once a majority accepted a value in `slot` under some ballot, every acceptance there
    /// under a higher ballot carries the same value.
    fn check_chosen_stable(&self, slot: Slot) -> Result<(), Violation> {
        let governing = self.ghost.at(slot);
        let mut chosen: Option<(Ballot, &Value)> = None;
        for ((s, ballot), (value, voters)) in self.votes.range((slot, Ballot::ZERO)..) {
            if *s != slot {
                break;
            }
            if let Some((cb, cv)) = chosen {
                if cv != value {
                    return Err(Violation(format!(
                        "slot {slot}: {cv:?} was chosen under {cb}, yet {value:?} was accepted under the higher ballot {ballot}"
                    )));
                }
            } else if governing.is_quorum(voters) {
                chosen = Some((*ballot, value));
            }
        }
        Ok(())
    }

    /// No durable record above the durable promise.
    fn check_durable(&self, id: NodeId) -> Result<(), Violation> {
        let d = &self.node(id).durable;
        if let Some((slot, (ballot, _))) = d.accepted.iter().find(|(_, (b, _))| *b > d.promised) {
            return Err(Violation(format!(
                "node {id} durably holds slot {slot} under ballot {ballot}, above its durable promise {}",
                d.promised
            )));
        }
        Ok(())
    }

    /// Whether a majority durably accepted `value` in `slot` under one ballot.
    fn chosen_by_votes(&self, slot: Slot, value: &Value) -> bool {
        let governing = self.ghost.at(slot);
        self.votes
            .range((slot, Ballot::ZERO)..)
            .take_while(|((s, _), _)| *s == slot)
            .any(|(_, (v, voters))| v == value && governing.is_quorum(voters))
    }

    /// Carries out every output of node `id`.
    fn drain(&mut self, id: NodeId) -> Result<(), Violation> {
        let k = self.idx(id);
        let mut sent = false;
        loop {
            let Some(out) = self.nodes[k].replica.as_mut().and_then(|r| r.poll_output()) else {
                break;
            };
            match out {
                Output::Send { to, message } => {
                    self.log(|| format!("node {id} sends {to} {message:?}"));
                    self.net.push((id, to, message));
                    sent = true;
                }
                Output::Persist { id: batch, entries } => {
                    self.log(|| format!("node {id} writes batch {batch} {entries:?}"));
                    self.nodes[k].pending.push_back((batch, entries));
                }
                Output::Committed { slot, value } => self.deliver(id, slot, value)?,
                Output::Repaired => {
                    self.log(|| format!("node {id} repaired"));
                    self.nodes[k].repairing = false;
                }
                Output::ReadReady { .. }
                | Output::ReadAborted { .. }
                | Output::ProposalsDropped { .. }
                | Output::ReconfigDropped { .. }
                | Output::Reconfigured { .. }
                | Output::Removed => {}
                Output::SendSnapshot { to } => {
                    if let Some((values, mlog)) = self.nodes[k].snapshot.clone() {
                        let slot = values.len() as Slot;
                        self.log(|| format!("node {id} ships its snapshot at {slot} to {to}"));
                        self.snaps.push((to, slot, values, mlog));
                    }
                }
            }
        }
        if sent {
            self.net.sort_by_key(|(f, t, m)| (*t, *f, message_key(m)));
        }
        Ok(())
    }

    fn deliver(&mut self, id: NodeId, slot: Slot, value: Value) -> Result<(), Violation> {
        let k = self.idx(id);
        let expected = self.nodes[k].applied.len() as u64;
        if slot != expected {
            return Err(Violation(format!(
                "node {id} delivered slot {slot} out of order (expected {expected})"
            )));
        }
        self.log(|| format!("node {id} delivers slot {slot} = {value:?}"));
        match self.delivered.get(&slot) {
            Some(v) if *v != value => {
                return Err(Violation(format!(
                    "agreement: node {id} delivered slot {slot} as {value:?}, but it was delivered as {v:?} before"
                )))
            }
            Some(_) => {}
            None => {
                self.delivered.insert(slot, value.clone());
                if let Value::Reconfig(r) = &value {
                    let _ = self.ghost.apply_chosen(slot, r);
                }
            }
        }
        if !self.chosen_by_votes(slot, &value) {
            return Err(Violation(format!(
                "node {id} delivered slot {slot} as {value:?}, which no majority durably accepted under one ballot"
            )));
        }
        if let (Value::Reconfig(r), Some(log)) = (&value, self.nodes[k].mlog.as_mut()) {
            let _ = log.apply_chosen(slot, r);
        }
        self.nodes[k].applied.push(value);
        Ok(())
    }

    /// A one-line summary of every node, for traces.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        for n in &self.nodes {
            let s = match &n.replica {
                Some(r) => format!(
                    "n{} {} {} promised {} commit {} applied {} pending {}",
                    n.id,
                    r.role(),
                    r.ballot(),
                    r.promised(),
                    r.commit_index(),
                    n.applied.len(),
                    n.pending.len()
                ),
                None => format!("n{} down (durable promise {})", n.id, n.durable.promised),
            };
            parts.push(s);
        }
        parts.join(" | ")
    }

    /// The index of the first in-flight message from `from` to `to` that `pick` accepts.
    pub(crate) fn find(
        &self,
        from: NodeId,
        to: NodeId,
        pick: impl Fn(&Message) -> bool,
    ) -> Option<usize> {
        self.net
            .iter()
            .position(|(f, t, m)| *f == from && *t == to && pick(m))
    }
}
