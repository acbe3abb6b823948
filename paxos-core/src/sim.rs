//! Deterministic simulation of a cluster: one thread, one seed, a simulated network
//! (loss, duplication, reordering, delay, partitions including one-way cuts), a simulated
//! disk (writes become durable after a delay; a crash loses what was not), crashes and
//! restarts, snapshots and compaction, and a steady stream of proposals and reads.
//!
//! Invariants are checked as every event is handled:
//! - agreement: at most one value is chosen per slot, judged both from acceptors' durable
//!   votes (a majority voting for (slot, ballot)) and from what learners deliver;
//! - validity: only proposed commands (or no-ops) are chosen, each in at most one slot;
//! - durability: a chosen value is never replaced, across any crash and restart;
//! - order: each replica delivers slots in order without gaps, so every delivered sequence
//!   is a prefix of every other;
//! - linearizable reads: a read released by read-index reflects every command acknowledged
//!   before the read was issued.
//!
//! - membership (when membership changes are on): a vote in slot `s` exists only once the
//!   membership governing `s` is decided (every slot up to `s - delay` delivered), and a
//!   slot counts as chosen only by a majority of the voters of that membership, which the
//!   simulator derives from the delivered log on its own.
//!
//! With membership changes on, a driver adds learners (fresh ids, started empty to join),
//! promotes them, and removes voters and learners (the leader too), with stale
//! configuration ids and forced removals mixed in, through the faults.
//!
//! After the fault phase everything heals; all members must then converge on the same
//! sequence, including commands proposed after the heal, within a time bound (liveness).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use bytes::Bytes;

use crate::membership::{Change, Membership, MembershipLog, Reconfig};
use crate::replica::PlantedBug;
use crate::{
    Config, Message, NodeId, Output, PersistEntry, RecoveredState, Replica, Rng, Slot, Value,
};

/// Fault rates of a run.
#[derive(Clone, Debug)]
pub(crate) struct Faults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Message delay is uniform in 1..=delay_max_ms (random delays reorder messages).
    pub delay_max_ms: u64,
    /// Probability that a message is held back much longer (50..=400 ms), so that stale
    /// messages from an old leader or an old election arrive after things have moved on.
    pub long_delay: f64,
    /// A disk write becomes durable after 0..=disk_delay_max_ms.
    pub disk_delay_max_ms: u64,
    /// Every 100 ms, the chance of crashing one random live replica.
    pub crash_chance: f64,
    /// Every 100 ms, the chance of starting a partition (when none is active).
    pub partition_chance: f64,
    /// Probability that a message is held for a long time (1 to 4 s) and released late,
    /// long after the exchange it belonged to: late catch-up replies, old Accepts.
    pub hold: f64,
    /// Probability that a replica which just became leader crashes at once, while the
    /// writes of its election and first proposals may still be in its fsync window.
    pub crash_after_election: f64,
}

impl Faults {
    pub(crate) fn standard() -> Self {
        Faults {
            loss: 0.05,
            duplicate: 0.02,
            delay_max_ms: 12,
            long_delay: 0.03,
            disk_delay_max_ms: 15,
            crash_chance: 0.12,
            partition_chance: 0.08,
            hold: 0.0,
            crash_after_election: 0.0,
        }
    }

    /// Swarm testing: a mix of fault kinds and rates drawn from `seed` alone, so each seed
    /// stresses the engine its own way (some with no loss but many crashes, some with long
    /// holds and splits, ...), which finds more than one fixed profile.
    pub(crate) fn swarm(seed: u64) -> Self {
        let mut r = Rng::new(seed ^ 0x5EED_5EED_5EED_5EED);
        let mut pick = |on: f64, max: f64| {
            if r.chance(on) {
                (r.next_u64() % 1000) as f64 / 1000.0 * max
            } else {
                0.0
            }
        };
        Faults {
            loss: pick(0.6, 0.2),
            duplicate: pick(0.5, 0.05),
            delay_max_ms: 1 + (seed % 25),
            long_delay: pick(0.6, 0.15),
            disk_delay_max_ms: 1 + (seed.rotate_left(7) % 30),
            crash_chance: pick(0.7, 0.4),
            partition_chance: pick(0.6, 0.2),
            hold: pick(0.5, 0.02),
            crash_after_election: pick(0.5, 0.8),
        }
    }
}

/// Options of one simulated run.
#[derive(Clone, Debug)]
pub(crate) struct SimOptions {
    pub nodes: usize,
    pub seed: u64,
    /// How long faults are injected.
    pub fault_ms: u64,
    /// After healing, how long the cluster has to converge.
    pub settle_ms: u64,
    pub propose_interval_ms: u64,
    pub read_interval_ms: u64,
    /// A replica snapshots its state machine every this many delivered slots.
    pub snapshot_every: u64,
    pub faults: Faults,
    pub bug: Option<PlantedBug>,
    pub trace: bool,
    /// Ids beyond `nodes` the membership driver may add (0: membership never changes).
    pub spares: usize,
    /// The membership driver proposes a change this often.
    pub reconfig_interval_ms: u64,
}

impl SimOptions {
    pub(crate) fn new(nodes: usize, seed: u64) -> Self {
        SimOptions {
            nodes,
            seed,
            fault_ms: 6_000,
            settle_ms: 20_000,
            propose_interval_ms: 4,
            read_interval_ms: 25,
            snapshot_every: 40,
            faults: Faults::standard(),
            bug: None,
            trace: false,
            spares: 0,
            reconfig_interval_ms: 250,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stats {
    pub slots_chosen: u64,
    pub commands_chosen: u64,
    pub proposals_accepted: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub messages_sent: u64,
    pub messages_lost: u64,
    pub reads_checked: u64,
    pub snapshots_installed: u64,
    /// Membership changes applied (as delivered), and proposals the leader refused.
    pub reconfigs_applied: u64,
    pub reconfigs_refused: u64,
}

enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        message: Message,
    },
    Snapshot {
        to: NodeId,
        slot: Slot,
        values: Vec<Value>,
        membership: MembershipLog,
    },
    Durable {
        node: NodeId,
        id: u64,
        incarnation: u64,
    },
    Restart {
        node: NodeId,
    },
    Heal,
}

struct Node {
    id: NodeId,
    replica: Option<Replica>,
    incarnation: u64,
    /// What survives a crash.
    disk: Vec<PersistEntry>,
    /// The highest promise on disk.
    durable_promised: crate::Ballot,
    /// The ballot this replica last led under (to spot a fresh election).
    led: Option<crate::Ballot>,
    /// Batches handed out but not durable yet.
    in_flight_writes: BTreeMap<u64, Vec<PersistEntry>>,
    last_write_done_ms: u64,
    /// The durable state-machine snapshot: every value below `snapshot.0`, and the
    /// membership log as of that slot (`None` for a joiner that has none yet).
    snapshot: (Slot, Vec<Value>, Option<MembershipLog>),
    /// The host's membership log as of what it applied (a host keeps its own, applying
    /// each delivered change, so that its snapshots carry the right one).
    mlog: Option<MembershipLog>,
    /// Started (an initial member, or a joiner the driver started), and not yet removed.
    started: bool,
    removed: bool,
    /// The state machine: the delivered values, slot by slot, from slot 0.
    applied: Vec<Value>,
    /// Reads issued here: read id -> the applied length it must reach.
    reads: HashMap<u64, u64>,
}

struct Sim {
    opts: SimOptions,
    rng: Rng,
    now_ms: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    nodes: Vec<Node>,
    members: Vec<NodeId>,
    /// Every id, spares included (partitions cut their links too).
    all_ids: Vec<NodeId>,
    /// The membership log derived by the simulator from the delivered log alone.
    ghost: MembershipLog,
    blocked: BTreeSet<(NodeId, NodeId)>,
    faults_on: bool,
    stats: Stats,
    // Oracles.
    proposed: HashMap<Bytes, NodeId>,
    votes: BTreeMap<(Slot, crate::Ballot), (Value, BTreeSet<NodeId>)>,
    chosen_by_votes: BTreeMap<Slot, (crate::Ballot, Value)>,
    delivered: BTreeMap<Slot, Value>,
    command_slot: HashMap<Bytes, Slot>,
    /// The highest applied length that any acknowledged command requires.
    acked_len: u64,
    next_command: u64,
    next_read: u64,
    trace: Vec<String>,
}

/// Runs one seed. `Err` carries a description of the first violated invariant.
pub(crate) fn run(opts: SimOptions) -> Result<Stats, String> {
    let mut sim = Sim::new(opts);
    let result = sim.run_all();
    match result {
        Ok(()) => Ok(sim.stats),
        Err(e) => {
            let mut msg = format!(
                "seed {} ({} replicas) failed at {} ms: {e}",
                sim.opts.seed, sim.opts.nodes, sim.now_ms
            );
            if sim.opts.trace {
                let path = std::env::temp_dir().join(format!("paxos-sim-{}.trace", sim.opts.seed));
                match std::fs::write(&path, sim.trace.join("\n")) {
                    Ok(()) => {
                        let _ = write!(msg, " (full trace in {})", path.display());
                    }
                    Err(e) => {
                        let _ = write!(msg, " (could not write the trace: {e})");
                    }
                }
            }
            Err(msg)
        }
    }
}

impl Sim {
    fn new(opts: SimOptions) -> Self {
        let members: Vec<NodeId> = (1..=opts.nodes as u64).collect();
        let all_ids: Vec<NodeId> = (1..=(opts.nodes + opts.spares) as u64).collect();
        let initial = MembershipLog::new(
            SIM_RECONFIG_DELAY,
            Membership::initial(&members, &BTreeMap::new()),
        );
        let mut sim = Sim {
            all_ids: all_ids.clone(),
            ghost: initial.clone(),
            rng: Rng::new(opts.seed),
            now_ms: 0,
            seq: 0,
            events: BTreeMap::new(),
            nodes: Vec::new(),
            members: members.clone(),
            blocked: BTreeSet::new(),
            faults_on: true,
            stats: Stats::default(),
            proposed: HashMap::new(),
            votes: BTreeMap::new(),
            chosen_by_votes: BTreeMap::new(),
            delivered: BTreeMap::new(),
            command_slot: HashMap::new(),
            acked_len: 0,
            next_command: 0,
            next_read: 0,
            trace: Vec::new(),
            opts,
        };
        for &id in &all_ids {
            let member = members.contains(&id);
            let replica = member.then(|| {
                let state = RecoveredState {
                    membership: Some(initial.clone()),
                    ..RecoveredState::default()
                };
                sim.boot(id, &state)
            });
            let mlog = member.then(|| initial.clone());
            sim.nodes.push(Node {
                id,
                replica,
                mlog: mlog.clone(),
                started: member,
                removed: false,
                incarnation: 0,
                disk: Vec::new(),
                durable_promised: crate::Ballot::ZERO,
                led: None,
                in_flight_writes: BTreeMap::new(),
                last_write_done_ms: 0,
                snapshot: (0, Vec::new(), mlog),
                applied: Vec::new(),
                reads: HashMap::new(),
            });
        }
        sim
    }

    fn config(&self, id: NodeId) -> Config {
        let mut c = Config::new(id, self.members.clone());
        c.heartbeat_interval_ms = 20;
        c.election_timeout_min_ms = 100;
        c.election_timeout_max_ms = 200;
        c.batch_bytes_max = 64;
        c.inflight_slots_max = 8;
        c.inflight_bytes_max = 256;
        c.catchup_entries_max = 16;
        c.snapshot_resend_interval_ms = 200;
        c.reconfig_delay_slots = SIM_RECONFIG_DELAY;
        c
    }

    fn boot(&mut self, id: NodeId, state: &RecoveredState) -> Replica {
        let seed = self.rng.next_u64();
        let config = self.config(id);
        let booted = if state.membership.is_none() {
            Replica::join(config, seed, self.now_ms)
        } else {
            Replica::recover(config, seed, self.now_ms, state)
        };
        let mut r = match booted {
            Ok(r) => r,
            Err(e) => panic!("simulator built an invalid config: {e}"),
        };
        if let Some(bug) = self.opts.bug {
            r.plant_bug(bug);
        }
        r
    }

    fn idx(&self, id: NodeId) -> usize {
        (id - 1) as usize
    }

    fn schedule(&mut self, at_ms: u64, event: Event) {
        self.seq += 1;
        self.events.insert((at_ms, self.seq), event);
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.opts.trace {
            let l = format!("{:>6} {}", self.now_ms, line());
            self.trace.push(l);
        }
    }

    fn run_all(&mut self) -> Result<(), String> {
        let fault_end = self.opts.fault_ms;
        let mut next_propose = 1;
        let mut next_read = 7;
        let mut next_fault = 100;
        let mut next_reconfig = if self.opts.spares > 0 {
            self.opts.reconfig_interval_ms
        } else {
            u64::MAX
        };
        // Phase 1: faults on.
        while self.now_ms < fault_end {
            let t = self
                .next_time()
                .min(next_propose)
                .min(next_read)
                .min(next_fault)
                .min(next_reconfig);
            self.now_ms = t.max(self.now_ms);
            if self.now_ms >= fault_end {
                break;
            }
            if self.now_ms >= next_propose {
                next_propose = self.now_ms + self.opts.propose_interval_ms;
                self.propose_random()?;
            }
            if self.now_ms >= next_read {
                next_read = self.now_ms + self.opts.read_interval_ms;
                self.read_random()?;
            }
            if self.now_ms >= next_fault {
                next_fault = self.now_ms + 100;
                self.inject_fault();
            }
            if self.now_ms >= next_reconfig {
                next_reconfig = self.now_ms + self.opts.reconfig_interval_ms;
                self.reconfigure_random()?;
            }
            self.step()?;
        }
        // Phase 2: heal everything, then require convergence.
        self.faults_on = false;
        self.blocked.clear();
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if n.replica.is_none() && n.started && !n.removed {
                let id = n.id;
                self.restart(id)?;
            }
        }
        self.log(|| "heal: all faults off, all replicas up".into());
        let deadline = self.now_ms + self.opts.settle_ms;
        // A client keeps proposing fresh commands (a proposal may be dropped by a replica
        // that stops leading) until three of them are chosen; then every replica must
        // reach the same state, including those commands.
        let mut finals: Vec<Bytes> = Vec::new();
        let mut next_try = self.now_ms;
        while self.now_ms < deadline {
            let chosen = self.chosen_finals(&finals);
            if chosen.len() < 3 && self.now_ms >= next_try && finals.len() < 200 {
                next_try = self.now_ms + 50;
                if let Some(c) = self.propose_random()? {
                    finals.push(c);
                }
            }
            if chosen.len() >= 3 && self.converged(&chosen) {
                return Ok(());
            }
            let mut t = self.next_time();
            if chosen.len() < 3 {
                t = t.min(next_try);
            }
            // Time always moves forward, so a quiet cluster cannot stall the run.
            self.now_ms = t.max(self.now_ms + 1);
            self.step()?;
        }
        let lens: Vec<usize> = self.nodes.iter().map(|n| n.applied.len()).collect();
        Err(format!(
            "liveness: no convergence {} ms after healing ({} commands proposed after the heal, {} chosen, applied lengths {lens:?})",
            self.opts.settle_ms,
            finals.len(),
            self.chosen_finals(&finals).len()
        ))
    }

    fn chosen_finals(&self, finals: &[Bytes]) -> Vec<Slot> {
        finals
            .iter()
            .filter_map(|c| self.command_slot.get(c).copied())
            .collect()
    }

    /// Every member of the latest membership has applied the same log, which holds the
    /// chosen slots.
    fn converged(&self, chosen_slots: &[Slot]) -> bool {
        let need = chosen_slots.iter().max().map_or(0, |s| s + 1);
        let members: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| self.ghost.latest().contains(n.id))
            .collect();
        let Some(first) = members.first() else {
            return false;
        };
        let len0 = first.applied.len();
        len0 as u64 >= need
            && members
                .iter()
                .all(|n| n.applied.len() == len0 && n.replica.is_some())
    }

    fn next_time(&self) -> u64 {
        let ev = self.events.keys().next().map_or(u64::MAX, |k| k.0);
        let timers = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref().map(|r| r.poll_timeout()))
            .min()
            .unwrap_or(u64::MAX);
        ev.min(timers)
    }

    /// Handles every event and timer due at `now_ms`.
    fn step(&mut self) -> Result<(), String> {
        while let Some((&(t, s), _)) = self.events.iter().next() {
            if t > self.now_ms {
                break;
            }
            let Some(ev) = self.events.remove(&(t, s)) else {
                break;
            };
            self.handle_event(ev)?;
        }
        for i in 0..self.nodes.len() {
            let now = self.now_ms;
            let due = self.nodes[i]
                .replica
                .as_ref()
                .is_some_and(|r| r.poll_timeout() <= now);
            if due {
                if let Some(r) = self.nodes[i].replica.as_mut() {
                    r.handle_timeout(now);
                }
                let id = self.nodes[i].id;
                self.drain(id)?;
            }
        }
        Ok(())
    }

    /// A replica that just became leader may crash at once, inside its fsync window.
    fn maybe_crash_new_leader(&mut self) {
        if !self.faults_on || self.opts.faults.crash_after_election == 0.0 {
            return;
        }
        for i in 0..self.nodes.len() {
            let Some(r) = self.nodes[i].replica.as_ref() else {
                continue;
            };
            let leading = (r.role() == crate::Role::Leader).then(|| r.ballot());
            if leading.is_none() || leading == self.nodes[i].led {
                self.nodes[i].led = leading.or(self.nodes[i].led);
                continue;
            }
            self.nodes[i].led = leading;
            let writing = !self.nodes[i].in_flight_writes.is_empty();
            if writing && self.rng.chance(self.opts.faults.crash_after_election) {
                let id = self.nodes[i].id;
                self.log(|| format!("node {id} crashes right after its election"));
                self.crash(id);
            }
        }
    }

    fn handle_event(&mut self, ev: Event) -> Result<(), String> {
        let r = self.handle_event_inner(ev);
        self.maybe_crash_new_leader();
        r
    }

    fn handle_event_inner(&mut self, ev: Event) -> Result<(), String> {
        let now = self.now_ms;
        match ev {
            Event::Deliver { from, to, message } => {
                let i = self.idx(to);
                if self.nodes[i].replica.is_none() {
                    return Ok(()); // a crashed replica receives nothing
                }
                if self.opts.trace {
                    let line = format!("{from}->{to} {message:?}");
                    self.log(|| line);
                }
                if let Some(r) = self.nodes[i].replica.as_mut() {
                    r.handle_message(now, from, message);
                }
                self.drain(to)?;
            }
            Event::Durable {
                node,
                id,
                incarnation,
            } => {
                let i = self.idx(node);
                if self.nodes[i].incarnation != incarnation || self.nodes[i].replica.is_none() {
                    return Ok(());
                }
                let done: Vec<u64> = self.nodes[i]
                    .in_flight_writes
                    .range(..=id)
                    .map(|(k, _)| *k)
                    .collect();
                for k in done {
                    if let Some(entries) = self.nodes[i].in_flight_writes.remove(&k) {
                        for e in &entries {
                            if let PersistEntry::Promised(b) = e {
                                let n = &mut self.nodes[i];
                                n.durable_promised = n.durable_promised.max(*b);
                            }
                            if let PersistEntry::Accepted { slot, ballot, .. } = e {
                                let promised = self.nodes[i].durable_promised;
                                if *ballot > promised {
                                    return Err(format!(
                                        "node {node} durably holds slot {slot} under ballot {ballot}, above its durable promise {promised}"
                                    ));
                                }
                            }
                            self.record_vote(node, e)?;
                        }
                        self.nodes[i].disk.extend(entries);
                    }
                }
                if let Some(r) = self.nodes[i].replica.as_mut() {
                    r.handle_durable(now, id);
                }
                self.drain(node)?;
            }
            Event::Snapshot {
                to,
                slot,
                values,
                membership,
            } => {
                let i = self.idx(to);
                let joining = self.nodes[i].mlog.is_none();
                if self.nodes[i].replica.is_none()
                    || (slot <= self.nodes[i].applied.len() as u64 && !joining)
                {
                    return Ok(());
                }
                for (s, v) in values.iter().enumerate() {
                    self.check_delivery_value(s as u64, v)?;
                }
                self.log(|| format!("node {to} installs snapshot at {slot}"));
                self.stats.snapshots_installed += 1;
                self.nodes[i].applied = values.clone();
                self.nodes[i].mlog = Some(membership.clone());
                self.nodes[i].snapshot = (slot, values, Some(membership.clone()));
                self.rewrite_disk(i);
                if let Some(r) = self.nodes[i].replica.as_mut() {
                    r.install_snapshot(now, slot, membership);
                }
                self.drain(to)?;
            }
            Event::Restart { node } => {
                if self.nodes[self.idx(node)].replica.is_none() {
                    self.restart(node)?;
                }
            }
            Event::Heal => {
                self.log(|| "partition healed".into());
                self.blocked.clear();
            }
        }
        Ok(())
    }

    fn restart(&mut self, id: NodeId) -> Result<(), String> {
        let i = self.idx(id);
        let mut state = RecoveredState::default();
        for e in self.nodes[i].disk.clone() {
            state.apply(e);
        }
        state.snapshot_slot = self.nodes[i].snapshot.0;
        state.membership = self.nodes[i].snapshot.2.clone();
        let replica = self.boot(id, &state);
        let n = &mut self.nodes[i];
        n.applied = n.snapshot.1.clone();
        n.mlog = n.snapshot.2.clone();
        n.replica = Some(replica);
        n.reads.clear();
        self.log(|| format!("node {id} restarts from disk"));
        self.drain(id)
    }

    fn crash(&mut self, id: NodeId) {
        let i = self.idx(id);
        let n = &mut self.nodes[i];
        n.replica = None;
        n.incarnation += 1;
        n.in_flight_writes.clear();
        n.reads.clear();
        self.stats.crashes += 1;
        let down = self.rng.range_inclusive(20, 1_500);
        self.log(|| format!("node {id} crashes for {down} ms"));
        self.schedule(self.now_ms + down, Event::Restart { node: id });
    }

    fn inject_fault(&mut self) {
        if self.rng.chance(self.opts.faults.crash_chance) {
            // Half the crashes hit a replica in the middle of a disk write, where losing
            // what was not yet durable matters most.
            let writing: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|n| n.replica.is_some() && !n.in_flight_writes.is_empty())
                .map(|n| n.id)
                .collect();
            let id = if !writing.is_empty() && self.rng.chance(0.5) {
                writing[self.rng.range_inclusive(0, writing.len() as u64 - 1) as usize]
            } else {
                self.rng.range_inclusive(1, self.opts.nodes as u64)
            };
            if self.nodes[self.idx(id)].replica.is_some() {
                self.crash(id);
            }
        }
        if self.blocked.is_empty() && self.rng.chance(self.opts.faults.partition_chance) {
            self.stats.partitions += 1;
            let n = self.opts.nodes as u64;
            let shape = self.rng.range_inclusive(0, if n >= 5 { 4 } else { 3 });
            match shape {
                0 => {
                    // Isolate one replica both ways.
                    let x = self.rng.range_inclusive(1, n);
                    for &m in &self.all_ids {
                        if m != x {
                            self.blocked.insert((x, m));
                            self.blocked.insert((m, x));
                        }
                    }
                }
                1 => {
                    // Split into a random minority and majority.
                    let mut side: Vec<NodeId> = Vec::new();
                    for &m in &self.all_ids {
                        if self.rng.chance(0.4) {
                            side.push(m);
                        }
                    }
                    for &a in &side {
                        for &b in &self.all_ids {
                            if !side.contains(&b) {
                                self.blocked.insert((a, b));
                                self.blocked.insert((b, a));
                            }
                        }
                    }
                }
                2 => {
                    // One-way isolation: a replica can send but not receive, or the reverse
                    // (a leader that keeps talking but hears nobody).
                    let x = self.rng.range_inclusive(1, n);
                    let outgoing = self.rng.chance(0.5);
                    for &m in &self.all_ids {
                        if m != x {
                            self.blocked.insert(if outgoing { (x, m) } else { (m, x) });
                        }
                    }
                }
                4 => {
                    // A 5-node split: two against three, so both sides hold ballots and
                    // promises the other never saw; healing it mixes two histories.
                    let mut order: Vec<NodeId> = self.members.clone();
                    for i in (1..order.len()).rev() {
                        let j = self.rng.range_inclusive(0, i as u64) as usize;
                        order.swap(i, j);
                    }
                    let (two, three) = order.split_at(2);
                    for &a in two {
                        for &b in three {
                            self.blocked.insert((a, b));
                            self.blocked.insert((b, a));
                        }
                    }
                }
                _ => {
                    // Cut one link in one direction.
                    let a = self.rng.range_inclusive(1, n);
                    let b = self.rng.range_inclusive(1, n);
                    if a != b {
                        self.blocked.insert((a, b));
                    }
                }
            }
            let blocked = self.blocked.clone();
            self.log(|| format!("partition {blocked:?}"));
            let heal = self.rng.range_inclusive(100, 2_000);
            self.schedule(self.now_ms + heal, Event::Heal);
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, message: Message) {
        self.stats.messages_sent += 1;
        let f = self.opts.faults.clone();
        if self.faults_on && (self.blocked.contains(&(from, to)) || self.rng.chance(f.loss)) {
            self.stats.messages_lost += 1;
            return;
        }
        let copies = if self.faults_on && self.rng.chance(f.duplicate) {
            2
        } else {
            1
        };
        let max_delay = if self.faults_on { f.delay_max_ms } else { 3 };
        for _ in 0..copies {
            let delay = if self.faults_on && self.rng.chance(f.hold) {
                self.rng.range_inclusive(1_000, 4_000)
            } else if self.faults_on && self.rng.chance(f.long_delay) {
                self.rng.range_inclusive(50, 400)
            } else {
                self.rng.range_inclusive(1, max_delay)
            };
            let at = self.now_ms + delay;
            self.schedule(
                at,
                Event::Deliver {
                    from,
                    to,
                    message: message.clone(),
                },
            );
        }
    }

    /// Carries out every output of replica `id`.
    fn drain(&mut self, id: NodeId) -> Result<(), String> {
        let i = self.idx(id);
        loop {
            let Some(out) = self.nodes[i].replica.as_mut().and_then(|r| r.poll_output()) else {
                return Ok(());
            };
            match out {
                Output::Send { to, message } => self.send(id, to, message),
                Output::Persist { id: batch, entries } => {
                    let delay = self
                        .rng
                        .range_inclusive(0, self.opts.faults.disk_delay_max_ms);
                    let n = &mut self.nodes[i];
                    let done = (self.now_ms + delay).max(n.last_write_done_ms);
                    n.last_write_done_ms = done;
                    n.in_flight_writes.insert(batch, entries);
                    let incarnation = n.incarnation;
                    self.schedule(
                        done,
                        Event::Durable {
                            node: id,
                            id: batch,
                            incarnation,
                        },
                    );
                }
                Output::Committed { slot, value } => self.apply(i, slot, value)?,
                Output::ReadReady { id: read } => {
                    let n = &mut self.nodes[i];
                    let Some(need) = n.reads.remove(&read) else {
                        return Err(format!("node {id} released read {read} it was never asked"));
                    };
                    let have = n.applied.len() as u64;
                    if have < need {
                        return Err(format!(
                            "stale linearizable read {read} on node {id}: state machine has {have} slots, an acknowledged command needs {need}"
                        ));
                    }
                    self.stats.reads_checked += 1;
                }
                Output::ReadAborted { id: read, .. } => {
                    self.nodes[i].reads.remove(&read);
                }
                Output::ProposalsDropped { .. }
                | Output::Repaired
                | Output::ReconfigDropped { .. } => {}
                Output::Reconfigured { slot, outcome, .. } => {
                    if outcome.is_ok() {
                        self.stats.reconfigs_applied += 1;
                    }
                    let line = format!("node {id} applies the change of slot {slot}: {outcome:?}");
                    self.log(|| line);
                }
                Output::Removed => {
                    // A removed replica is stopped for good (its id is never reused).
                    self.log(|| format!("node {id} was removed and stops"));
                    let n = &mut self.nodes[i];
                    n.replica = None;
                    n.removed = true;
                    n.incarnation += 1;
                    n.in_flight_writes.clear();
                    n.reads.clear();
                    return Ok(());
                }
                Output::SendSnapshot { to } => {
                    let n = &self.nodes[i];
                    let (slot, values, membership) = n.snapshot.clone();
                    let Some(membership) = membership else {
                        continue; // a joiner has no snapshot to give
                    };
                    self.stats.messages_sent += 1;
                    if self.faults_on && self.blocked.contains(&(id, to)) {
                        continue;
                    }
                    let at = self.now_ms + self.rng.range_inclusive(1, 20);
                    self.log(|| format!("node {id} ships snapshot at {slot} to {to}"));
                    self.schedule(
                        at,
                        Event::Snapshot {
                            to,
                            slot,
                            values,
                            membership,
                        },
                    );
                }
            }
        }
    }

    fn check_delivery_value(&mut self, slot: Slot, value: &Value) -> Result<(), String> {
        match self.delivered.get(&slot) {
            Some(v) if v != value => Err(format!(
                "agreement: slot {slot} delivered as {v:?} and as {value:?}"
            )),
            Some(_) => Ok(()),
            None => {
                if let Some((_, c)) = self.chosen_by_votes.get(&slot) {
                    if c != value {
                        return Err(format!(
                            "agreement: slot {slot} chosen by votes as {c:?} but delivered as {value:?}"
                        ));
                    }
                }
                for cmd in value.commands() {
                    if !self.proposed.contains_key(cmd) {
                        return Err(format!(
                            "validity: slot {slot} holds {cmd:?}, never proposed"
                        ));
                    }
                    if let Some(other) = self.command_slot.insert(cmd.clone(), slot) {
                        if other != slot {
                            return Err(format!(
                                "validity: command {cmd:?} chosen in slots {other} and {slot}"
                            ));
                        }
                    }
                }
                self.delivered.insert(slot, value.clone());
                // Invariant: the delivered log is contiguous from slot 0, so the simulator's
                // own membership log follows it slot by slot.
                if self.delivered.len() as u64 != slot + 1 {
                    return Err(format!("slot {slot} delivered before an earlier slot"));
                }
                if let Value::Reconfig(r) = value {
                    let _ = self.ghost.apply_chosen(slot, r);
                }
                self.stats.slots_chosen += 1;
                self.stats.commands_chosen += value.commands().len() as u64;
                Ok(())
            }
        }
    }

    fn apply(&mut self, i: usize, slot: Slot, value: Value) -> Result<(), String> {
        let id = self.nodes[i].id;
        let expected = self.nodes[i].applied.len() as u64;
        if slot != expected {
            return Err(format!(
                "order: node {id} delivered slot {slot}, expected {expected}"
            ));
        }
        self.check_delivery_value(slot, &value)?;
        if let (Value::Reconfig(r), Some(log)) = (&value, self.nodes[i].mlog.as_mut()) {
            let _ = log.apply_chosen(slot, r);
        }
        // A command counts as acknowledged once its proposer applies it (that is when a
        // server would answer the client).
        for cmd in value.commands() {
            if self.proposed.get(cmd) == Some(&id) {
                self.acked_len = self.acked_len.max(slot + 1);
            }
        }
        self.nodes[i].applied.push(value);
        let len = self.nodes[i].applied.len() as u64;
        if len.is_multiple_of(self.opts.snapshot_every) {
            let mlog = self.nodes[i].mlog.clone();
            self.nodes[i].snapshot = (len, self.nodes[i].applied.clone(), mlog);
            self.rewrite_disk(i);
            if let Some(r) = self.nodes[i].replica.as_mut() {
                r.compact(len);
            }
        }
        Ok(())
    }

    /// Compaction of the simulated log after a snapshot, as a host's WAL rewrite does.
    fn rewrite_disk(&mut self, i: usize) {
        let mut state = RecoveredState::default();
        for e in std::mem::take(&mut self.nodes[i].disk) {
            state.apply(e);
        }
        state.snapshot_slot = self.nodes[i].snapshot.0;
        self.nodes[i].disk = state.to_entries();
    }

    fn record_vote(&mut self, node: NodeId, e: &PersistEntry) -> Result<(), String> {
        let PersistEntry::Accepted {
            slot,
            ballot,
            value,
        } = e
        else {
            return Ok(());
        };
        // The membership that governs the slot must be decided: every slot up to
        // `slot - delay` delivered (the delivered log is contiguous from 0).
        let decided = self.delivered.len() as u64;
        if *slot >= decided + self.ghost.delay() {
            return Err(format!(
                "membership window: node {node} voted in slot {slot} while only slots below {decided} were delivered (delay {})",
                self.ghost.delay()
            ));
        }
        let governing = self.ghost.at(*slot).clone();
        let entry = self
            .votes
            .entry((*slot, *ballot))
            .or_insert_with(|| (value.clone(), BTreeSet::new()));
        if &entry.0 != value {
            return Err(format!(
                "two values under one ballot {ballot} in slot {slot}: {:?} and {value:?}",
                entry.0
            ));
        }
        entry.1.insert(node);
        let majority = governing.is_quorum(&entry.1);
        if let Some((cb, c)) = self.chosen_by_votes.get(slot) {
            if ballot > cb && c != value {
                return Err(format!(
                    "slot {slot}: {c:?} was chosen under {cb}, yet {value:?} was accepted under the higher ballot {ballot}"
                ));
            }
        }
        if majority {
            match self.chosen_by_votes.get(slot).map(|(_, c)| c) {
                Some(c) if c != value => {
                    return Err(format!(
                        "agreement: slot {slot} chosen as {c:?} and, by a majority under {ballot}, as {value:?}"
                    ))
                }
                Some(_) => {}
                None => {
                    if let Some(d) = self.delivered.get(slot) {
                        if d != value {
                            return Err(format!(
                                "agreement: slot {slot} delivered as {d:?} but a majority chose {value:?}"
                            ));
                        }
                    }
                    self.chosen_by_votes.insert(*slot, (*ballot, value.clone()));
                }
            }
        }
        Ok(())
    }

    fn live_nodes(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.replica.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// A client sends a new command to a random live replica, following one redirect.
    fn propose_random(&mut self) -> Result<Option<Bytes>, String> {
        let live = self.live_nodes();
        if live.is_empty() {
            return Ok(None);
        }
        let mut target = live[self.rng.range_inclusive(0, live.len() as u64 - 1) as usize];
        let cmd = Bytes::from(format!("c{}", self.next_command));
        for _ in 0..2 {
            let i = self.idx(target);
            let now = self.now_ms;
            let Some(r) = self.nodes[i].replica.as_mut() else {
                return Ok(None);
            };
            match r.propose(now, cmd.clone()) {
                Ok(()) => {
                    self.next_command += 1;
                    self.proposed.insert(cmd.clone(), target);
                    self.stats.proposals_accepted += 1;
                    self.drain(target)?;
                    return Ok(Some(cmd));
                }
                Err(crate::ProposeError::NotLeader {
                    leader_hint: Some(l),
                }) if l != target && self.nodes[self.idx(l)].replica.is_some() => target = l,
                Err(_) => return Ok(None),
            }
        }
        Ok(None)
    }

    /// The membership driver: asks the leader for a random change that the latest
    /// membership allows (sometimes with a stale id, sometimes forced), and starts a new
    /// learner's replica empty, to join.
    fn reconfigure_random(&mut self) -> Result<(), String> {
        let Some(leader) = self
            .nodes
            .iter()
            .find(|n| {
                n.replica
                    .as_ref()
                    .is_some_and(|r| r.role() == crate::Role::Leader)
            })
            .map(|n| n.id)
        else {
            return Ok(());
        };
        let latest = self.ghost.latest().clone();
        let voters: Vec<NodeId> = latest.voters().collect();
        let learners: Vec<NodeId> = latest.learners().collect();
        let fresh = self
            .nodes
            .iter()
            .find(|n| !n.started && !latest.contains(n.id))
            .map(|n| n.id);
        let pick = |rng: &mut Rng, ids: &[NodeId]| {
            ids[rng.range_inclusive(0, ids.len() as u64 - 1) as usize]
        };
        let roll = self.rng.range_inclusive(0, 99);
        let change = if !learners.is_empty() && roll < 60 {
            Change::Promote {
                id: pick(&mut self.rng, &learners),
            }
        } else if !learners.is_empty() && roll < 70 {
            Change::Remove {
                id: pick(&mut self.rng, &learners),
            }
        } else if let (Some(id), true) = (fresh, voters.len() < self.opts.nodes + 1 || roll < 85) {
            Change::AddLearner {
                id,
                meta: Bytes::new(),
            }
        } else if voters.len() > 2 {
            Change::Remove {
                id: pick(&mut self.rng, &voters),
            }
        } else {
            return Ok(());
        };
        let i = self.idx(leader);
        let now = self.now_ms;
        let stale = self.rng.chance(0.1);
        let force = self.rng.chance(0.2);
        let Some(r) = self.nodes[i].replica.as_mut() else {
            return Ok(());
        };
        let expected = r.membership_log().latest().id - u64::from(stale);
        let reconfig = Reconfig {
            expected,
            change: change.clone(),
        };
        match r.propose_reconfig(now, reconfig, force) {
            Ok(()) => {
                self.log(|| {
                    format!(
                        "node {leader} proposes {change:?} (expected {expected}, force {force})"
                    )
                });
                if let Change::AddLearner { id, .. } = change {
                    // The operator starts the new member empty, to join.
                    let j = self.idx(id);
                    let replica = self.boot(id, &RecoveredState::default());
                    let n = &mut self.nodes[j];
                    n.started = true;
                    n.replica = Some(replica);
                    self.drain(leader)?;
                    return self.drain(id);
                }
            }
            Err(e) => {
                self.stats.reconfigs_refused += 1;
                self.log(|| format!("node {leader} refuses {change:?}: {e}"));
            }
        }
        self.drain(leader)
    }

    fn read_random(&mut self) -> Result<(), String> {
        let live = self.live_nodes();
        if live.is_empty() {
            return Ok(());
        }
        let target = live[self.rng.range_inclusive(0, live.len() as u64 - 1) as usize];
        let i = self.idx(target);
        let id = self.next_read;
        self.next_read += 1;
        let now = self.now_ms;
        let need = self.acked_len;
        let Some(r) = self.nodes[i].replica.as_mut() else {
            return Ok(());
        };
        if r.read(now, id).is_ok() {
            self.nodes[i].reads.insert(id, need);
            self.drain(target)?;
        }
        Ok(())
    }
}

/// The reconfiguration delay in simulated clusters: below the leaders' in-flight limit,
/// so the window bounds pipelining and changes take effect within a run.
const SIM_RECONFIG_DELAY: Slot = 4;

/// Seeds to run: `SIM_SEED` replays one; otherwise `SIM_SEEDS` (default `default_count`)
/// seeds starting at `SIM_SEED_BASE` (default 0).
pub(crate) fn seeds(default_count: u64) -> Vec<u64> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(seed) = var("SIM_SEED") {
        return vec![seed];
    }
    let count = var("SIM_SEEDS").unwrap_or(default_count);
    let base = var("SIM_SEED_BASE").unwrap_or(0);
    (base..base + count).collect()
}

/// Runs many seeds, summarising them; returns the failures.
pub(crate) fn run_many(
    nodes: usize,
    seeds: &[u64],
    bug: Option<PlantedBug>,
) -> (Stats, Vec<String>) {
    run_many_with(nodes, seeds, bug, Faults::standard())
}

/// [`run_many`] with other fault rates.
pub(crate) fn run_many_with(
    nodes: usize,
    seeds: &[u64],
    bug: Option<PlantedBug>,
    faults: Faults,
) -> (Stats, Vec<String>) {
    let trace = std::env::var("SIM_TRACE").is_ok();
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for &seed in seeds {
        let mut opts = SimOptions::new(nodes, seed);
        opts.bug = bug;
        opts.faults = faults.clone();
        opts.trace = trace;
        match run(opts) {
            Ok(s) => {
                total.slots_chosen += s.slots_chosen;
                total.commands_chosen += s.commands_chosen;
                total.proposals_accepted += s.proposals_accepted;
                total.crashes += s.crashes;
                total.partitions += s.partitions;
                total.messages_sent += s.messages_sent;
                total.messages_lost += s.messages_lost;
                total.reads_checked += s.reads_checked;
                total.snapshots_installed += s.snapshots_installed;
                total.reconfigs_applied += s.reconfigs_applied;
                total.reconfigs_refused += s.reconfigs_refused;
            }
            Err(e) => failures.push(e),
        }
    }
    (total, failures)
}
