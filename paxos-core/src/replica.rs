//! A replica: proposer, acceptor and learner composed behind one sans-IO interface.
//!
//! The host feeds inputs (`handle_message`, `handle_timeout`, `handle_durable`, `propose`,
//! `read`, `compact`, `install_snapshot`) and drains [`Output`]s with [`Replica::poll_output`]
//! until it returns `None`. Nothing here reads a clock, a socket or OS randomness.
//!
//! # The durability gate
//! Every change to acceptor state becomes a [`PersistEntry`]; entries are grouped into one
//! [`Output::Persist`] batch per drain. A reply that depends on acceptor state (Promise,
//! Accepted) is *held* inside the replica, tagged with the batch that must be durable first,
//! and is released only by [`Replica::handle_durable`]. A host therefore cannot send a
//! promise before it is on disk: it never sees the message until then. The same gate
//! applies to the replica's own votes, so a leader counts itself only once its own log
//! write is durable, while the Accepts to its peers go out at once (the leader writes its
//! log in parallel with replication). Held replies are bounded by
//! [`Config::held_replies_max`]: at the bound, the replica takes no work that would hold
//! more, and never drops one already held.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::acceptor::Acceptor;
use crate::ballot::{Ballot, NodeId, Slot};
use crate::config::{Config, ConfigError};
use crate::learner::Learner;
use crate::message::Message;
use crate::persist::{PersistEntry, RecoveredState};
use crate::proposer::{
    recovery_plan, InFlight, Leadership, Phase1, ProposerState, Queue, ReadIndex, Role,
};
use crate::rng::Rng;
use crate::value::{Entry, Value};

/// What the host must do next. Drain with [`Replica::poll_output`] after every input, and
/// act on each output in the order given.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[must_use = "every output is an instruction the host must carry out"]
pub enum Output {
    /// Send `message` to replica `to` (best effort: the core retransmits what matters).
    Send {
        /// The destination replica.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Make `entries` durable (append them to the log and fsync), in order, then call
    /// [`Replica::handle_durable`] with `id`. Batches must become durable in `id` order.
    Persist {
        /// The batch id to report back.
        id: u64,
        /// The records to append.
        entries: Vec<PersistEntry>,
    },
    /// `value` is chosen in `slot`. Apply it to the state machine. Slots arrive in order,
    /// without gaps, each exactly once per incarnation of the replica.
    Committed {
        /// The slot.
        slot: Slot,
        /// The chosen value.
        value: Value,
    },
    /// The linearizable read `id` may now be served from the local state machine (every
    /// `Committed` output it depends on has already been handed out).
    ReadReady {
        /// The read id given to [`Replica::read`].
        id: u64,
    },
    /// The read `id` cannot be confirmed here because this replica stopped leading.
    ReadAborted {
        /// The read id.
        id: u64,
        /// Who may be leading now.
        leader_hint: Option<NodeId>,
    },
    /// These proposals were never given a slot and never will be: this replica stopped
    /// leading. They are definitely not chosen; the client may retry elsewhere.
    ProposalsDropped {
        /// The commands, in the order they were proposed.
        commands: Vec<Bytes>,
        /// Who may be leading now.
        leader_hint: Option<NodeId>,
    },
    /// Replica `to` needs slots this replica compacted away: ship it the latest snapshot.
    /// The receiving host installs it and calls [`Replica::install_snapshot`].
    SendSnapshot {
        /// The lagging replica.
        to: NodeId,
    },
}

/// Why a proposal or read was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// This replica is not the leader; try the hinted one.
    NotLeader {
        /// The replica believed to lead, if any.
        leader_hint: Option<NodeId>,
    },
    /// The proposal queue is full ([`Config::queued_commands_max`]); retry later.
    Busy,
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NotLeader {
                leader_hint: Some(l),
            } => write!(f, "not the leader; replica {l} is"),
            ProposeError::NotLeader { leader_hint: None } => {
                f.write_str("not the leader; no leader is known")
            }
            ProposeError::Busy => f.write_str("too many proposals waiting"),
        }
    }
}

impl std::error::Error for ProposeError {}

/// How far beyond its commit index a replica accepts slot numbers from peers. A leader
/// keeps at most [`Config::inflight_slots_max`] slots in flight, so correct replicas stay
/// far inside this; a message naming a slot beyond it is ignored (a lagging replica that
/// is further behind catches up first).
pub const SLOT_SPAN_MAX: Slot = 1 << 20;

/// Slot numbers and commit indexes at or above this are never legitimate.
const SLOT_MAX: Slot = 1 << 62;

/// Ballot rounds at or above this are never legitimate (an election adds one to a round).
const ROUND_MAX: u64 = 1 << 62;

/// Deliberate protocol bugs, compiled only into this crate's tests, that the simulator
/// must catch.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PlantedBug {
    /// Accept values under ballots below the promise.
    AcceptIgnoresPromise,
    /// Release an Accepted before the accepted value is durable.
    AcceptedBeforeDurable,
    /// Forget the promised ballot when restarting from disk.
    ForgetPromiseOnRestart,
    /// Send a candidate's Prepares before its own promise is durable (so a crash can make
    /// it campaign again under the same ballot).
    PrepareBeforeOwnPromiseDurable,
    /// Keep leading after a catch-up reply that carries a ballot above the leader's own.
    LeaderIgnoresHigherCatchUp,
    /// Record a value learned chosen without raising the promise to its ballot, and let an
    /// Accept rewrite a slot known chosen.
    ChosenDoesNotRaisePromise,
}

/// One member of a Multi-Paxos cluster: proposer, acceptor and learner.
#[derive(Clone, Debug, Hash)]
pub struct Replica {
    config: Config,
    quorum: usize,
    rng: Rng,
    acceptor: Acceptor,
    learner: Learner,
    proposer: ProposerState,
    queue: Queue,
    /// Consecutive elections lost; widens the election timeout (backoff against duels).
    failed_elections: u32,
    /// The highest round seen in any message, so a new ballot beats all of them.
    round_seen: u64,
    /// Who last acted as leader towards this replica, and when.
    leader_seen: Option<(NodeId, u64)>,

    persist_pending: Vec<PersistEntry>,
    /// The id the pending batch will get; batches `1..persist_next_id` were handed out.
    persist_next_id: u64,
    persist_durable_id: u64,
    commit_persisted: Slot,
    /// The highest promise known to be on disk, and the batches that raise it when they
    /// become durable: (batch id, promise).
    promised_durable: Ballot,
    promise_batches: VecDeque<(u64, Ballot)>,
    /// Replies held until the batch they depend on is durable: (batch id, to, message).
    /// Bounded by `config.held_replies_max` (see [`Replica::held_full`]).
    held: VecDeque<(u64, NodeId, Message)>,
    self_inbox: VecDeque<Message>,
    outputs: VecDeque<Output>,

    now_ms: u64,
    election_deadline_ms: u64,
    heartbeat_deadline_ms: u64,
    snapshot_sent_ms: BTreeMap<NodeId, u64>,

    #[cfg(test)]
    bug: Option<PlantedBug>,
}

impl Replica {
    /// A replica starting from nothing (a new cluster member with an empty log).
    pub fn new(config: Config, seed: u64, now_ms: u64) -> Result<Self, ConfigError> {
        Replica::recover(config, seed, now_ms, &RecoveredState::default())
    }

    /// A replica restarting from its durable state (replayed from its log by the host,
    /// with `snapshot_slot` set to what the host's state-machine snapshot covers).
    ///
    /// The first drain re-delivers, as [`Output::Committed`], every recorded chosen slot
    /// from the snapshot on, so the host can rebuild its state machine.
    pub fn recover(
        config: Config,
        seed: u64,
        now_ms: u64,
        state: &RecoveredState,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let learner = Learner::recover(state);
        let mut replica = Replica {
            quorum: config.quorum(),
            rng: Rng::new(seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            acceptor: Acceptor::recover(state),
            commit_persisted: learner.commit(),
            learner,
            proposer: ProposerState::Follower,
            queue: Queue::default(),
            failed_elections: 0,
            round_seen: state.promised.round,
            leader_seen: None,
            persist_pending: Vec::new(),
            persist_next_id: 1,
            persist_durable_id: 0,
            promised_durable: state.promised,
            promise_batches: VecDeque::new(),
            held: VecDeque::new(),
            self_inbox: VecDeque::new(),
            outputs: VecDeque::new(),
            now_ms,
            election_deadline_ms: now_ms,
            heartbeat_deadline_ms: now_ms,
            snapshot_sent_ms: BTreeMap::new(),
            config,
            #[cfg(test)]
            bug: None,
        };
        replica.election_deadline_ms = now_ms + replica.election_timeout_ms();
        Ok(replica)
    }

    /// When a follower or candidate next starts an election (for the model checker, which
    /// fires that timer directly).
    #[cfg(test)]
    pub(crate) fn election_deadline_ms(&self) -> u64 {
        self.election_deadline_ms
    }

    #[cfg(test)]
    pub(crate) fn plant_bug(&mut self, bug: PlantedBug) {
        self.bug = Some(bug);
        self.acceptor.ignore_promises = bug == PlantedBug::AcceptIgnoresPromise;
        self.acceptor.chosen_keeps_promise = bug == PlantedBug::ChosenDoesNotRaisePromise;
        if bug == PlantedBug::ForgetPromiseOnRestart {
            self.acceptor.forget_promise();
        }
    }

    // ----- status -----

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The proposer's current role.
    pub fn role(&self) -> Role {
        match self.proposer {
            ProposerState::Follower => Role::Follower,
            ProposerState::Candidate(_) => Role::Candidate,
            ProposerState::Leader(_) => Role::Leader,
        }
    }

    /// The ballot this replica leads or campaigns under, or else the one it promised.
    pub fn ballot(&self) -> Ballot {
        match &self.proposer {
            ProposerState::Candidate(p) => p.ballot,
            ProposerState::Leader(l) => l.ballot,
            ProposerState::Follower => self.acceptor.promised(),
        }
    }

    /// The acceptor's promised ballot.
    pub fn promised(&self) -> Ballot {
        self.acceptor.promised()
    }

    /// Every slot below this is known to be chosen.
    pub fn commit_index(&self) -> Slot {
        self.learner.commit()
    }

    /// Every slot below this has been handed to the host as [`Output::Committed`].
    pub fn delivered_index(&self) -> Slot {
        self.learner.delivered()
    }

    /// The first slot still in the log (earlier ones were compacted).
    pub fn log_start(&self) -> Slot {
        self.acceptor.log_start()
    }

    /// The replica believed to lead: this one, or the last that acted as leader recently.
    pub fn leader_hint(&self) -> Option<NodeId> {
        match &self.proposer {
            ProposerState::Leader(_) => Some(self.config.id),
            ProposerState::Candidate(_) => None,
            ProposerState::Follower => self
                .leader_seen
                .filter(|(_, at)| self.now_ms < at + self.config.election_timeout_max_ms)
                .map(|(id, _)| id),
        }
    }

    /// Slots proposed by this leader and not yet chosen.
    pub fn inflight_slots(&self) -> usize {
        match &self.proposer {
            ProposerState::Leader(l) => l.inflight.len(),
            _ => 0,
        }
    }

    /// Replies (Promise, Accepted, own Prepares) waiting for a persist batch to become
    /// durable; at most about [`Config::held_replies_max`].
    pub fn held_replies(&self) -> usize {
        self.held.len()
    }

    /// Commands waiting for a slot.
    pub fn queued_commands(&self) -> usize {
        self.queue.commands.len()
    }

    /// The acceptor's accepted ballot and value in `slot`, if it still holds one.
    pub fn accepted(&self, slot: Slot) -> Option<&(Ballot, Value)> {
        self.acceptor.get(slot)
    }

    // ----- inputs -----

    /// Proposes a command. On the leader it is queued and given a slot (batched with others)
    /// on the next [`Replica::poll_output`]; it is then chosen, or lost with a leadership
    /// change (the host cannot tell which until it sees it committed or times out).
    pub fn propose(&mut self, now_ms: u64, command: Bytes) -> Result<(), ProposeError> {
        self.tick(now_ms);
        if !matches!(self.proposer, ProposerState::Leader(_)) {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_hint(),
            });
        }
        if self.queue.commands.len() >= self.config.queued_commands_max {
            return Err(ProposeError::Busy);
        }
        self.queue.commands.push_back(command);
        Ok(())
    }

    /// Asks to serve a linearizable read (read-index). On the leader the read waits for a
    /// majority to confirm this replica still leads, in a round started after this call, and
    /// for the state machine to reach the commit index; then [`Output::ReadReady`] comes out.
    /// Many reads share one confirmation round.
    pub fn read(&mut self, now_ms: u64, id: u64) -> Result<(), ProposeError> {
        self.tick(now_ms);
        let commit = self.learner.commit();
        let single = self.quorum == 1;
        let ProposerState::Leader(l) = &mut self.proposer else {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_hint(),
            });
        };
        let index = commit.max(l.recovery_end);
        if single {
            l.reads.confirmed.push_back((id, index));
        } else {
            l.reads.waiting.push((id, index));
            if !l.reads.round_open {
                self.start_read_round();
            }
        }
        Ok(())
    }

    /// A message from replica `from` arrived. Messages from non-members are ignored, and
    /// so are messages carrying values no correct replica sends (see [`SLOT_SPAN_MAX`]).
    pub fn handle_message(&mut self, now_ms: u64, from: NodeId, message: Message) {
        self.tick(now_ms);
        if from == self.config.id || !self.config.members.contains(&from) {
            return;
        }
        if !self.plausible(&message) {
            return;
        }
        if self.held_full() && matches!(message, Message::Prepare { .. } | Message::Accept { .. }) {
            // Its reply would wait for the disk behind too many others: ignore it as if it
            // were lost on the way. The sender retries, and Paxos tolerates the loss.
            return;
        }
        self.on_message(from, message);
        self.pump();
    }

    /// Persist batches up to and including `id` are durable: release what waited on them.
    pub fn handle_durable(&mut self, now_ms: u64, id: u64) {
        self.tick(now_ms);
        debug_assert!(id < self.persist_next_id, "durable id was never handed out");
        self.persist_durable_id = self
            .persist_durable_id
            .max(id.min(self.persist_next_id - 1));
        while let Some(&(batch, ballot)) = self.promise_batches.front() {
            if batch > self.persist_durable_id {
                break;
            }
            self.promised_durable = self.promised_durable.max(ballot);
            self.promise_batches.pop_front();
        }
        while let Some((gate, _, _)) = self.held.front() {
            if *gate > self.persist_durable_id {
                break;
            }
            if let Some((_, to, msg)) = self.held.pop_front() {
                self.send(to, msg);
            }
        }
        self.pump();
    }

    /// The earliest time at which [`Replica::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> u64 {
        let role_deadline = match self.proposer {
            ProposerState::Leader(_) => self.heartbeat_deadline_ms,
            ProposerState::Candidate(_) => {
                self.heartbeat_deadline_ms.min(self.election_deadline_ms)
            }
            ProposerState::Follower => self.election_deadline_ms,
        };
        match self.learner.catchup_deadline() {
            Some(d) => role_deadline.min(d),
            None => role_deadline,
        }
    }

    /// Time passed. Call when `now_ms` reaches [`Replica::poll_timeout`] (calling more
    /// often is harmless).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.tick(now_ms);
        if let Some(d) = self.learner.catchup_deadline() {
            if self.now_ms >= d {
                self.learner.catchup_done();
            }
        }
        match &self.proposer {
            ProposerState::Leader(_) => {
                if self.now_ms >= self.heartbeat_deadline_ms {
                    self.leader_tick();
                }
            }
            ProposerState::Candidate(_) => {
                if self.now_ms >= self.election_deadline_ms {
                    self.failed_elections = self.failed_elections.saturating_add(1);
                    self.start_election_unless_held_full();
                } else if self.now_ms >= self.heartbeat_deadline_ms {
                    self.resend_prepares();
                }
            }
            ProposerState::Follower => {
                if self.now_ms >= self.election_deadline_ms {
                    self.start_election_unless_held_full();
                }
            }
        }
        self.pump();
    }

    /// The host's state machine is durably snapshotted up to `slot` (exclusive): forget the
    /// log below it. `slot` is clipped to what was delivered.
    pub fn compact(&mut self, slot: Slot) {
        let slot = slot.min(self.learner.delivered());
        self.acceptor.compact(slot);
    }

    /// The host durably installed a snapshot, received from a peer, covering every slot
    /// below `slot`. Delivery continues from there. A snapshot not newer than what was
    /// delivered is ignored.
    pub fn install_snapshot(&mut self, now_ms: u64, slot: Slot) {
        self.tick(now_ms);
        if slot <= self.learner.delivered() {
            return;
        }
        self.acceptor.compact(slot);
        self.learner.install_snapshot(slot);
        self.commit_persisted = self.commit_persisted.max(slot);
    }

    /// The next thing the host must do, or `None` when there is nothing left for now.
    /// Batches queued proposals into slots and groups persistence before handing them out.
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.outputs.is_empty() {
            self.flush();
        }
        self.outputs.pop_front()
    }

    // ----- internals: plumbing -----

    /// Whether every ballot and slot in `message` is one a correct replica could send: a
    /// forged or corrupt slot near `u64::MAX` must neither overflow arithmetic nor make a
    /// leader fill a huge range of slots with no-ops, and a round near `u64::MAX` must not
    /// make the next election's round overflow.
    fn plausible(&self, message: &Message) -> bool {
        let members = &self.config.members;
        let ballot_ok =
            |b: &Ballot| *b == Ballot::ZERO || (b.round < ROUND_MAX && members.contains(&b.node));
        // Slots a peer may mention: below the commit index plus the span.
        let slot_limit = self.learner.commit().saturating_add(SLOT_SPAN_MAX);
        let slot_ok = |s: &Slot| *s < SLOT_MAX && *s <= slot_limit;
        let commit_ok = |c: &Slot| *c < SLOT_MAX;
        match message {
            Message::Prepare { ballot, from_slot } => ballot_ok(ballot) && commit_ok(from_slot),
            Message::Promise {
                ballot,
                commit,
                accepted,
            } => {
                ballot_ok(ballot)
                    && commit_ok(commit)
                    && accepted
                        .iter()
                        .all(|e| ballot_ok(&e.ballot) && slot_ok(&e.slot))
            }
            Message::Accept {
                ballot,
                entries,
                commit,
            } => ballot_ok(ballot) && commit_ok(commit) && entries.iter().all(|(s, _)| slot_ok(s)),
            Message::Accepted { ballot, slots } => ballot_ok(ballot) && slots.iter().all(slot_ok),
            Message::Nack { refused, promised } => ballot_ok(refused) && ballot_ok(promised),
            Message::Heartbeat { ballot, commit, .. } | Message::Commit { ballot, commit } => {
                ballot_ok(ballot) && commit_ok(commit)
            }
            Message::HeartbeatAck { ballot, commit, .. } => ballot_ok(ballot) && commit_ok(commit),
            Message::CatchUpRequest { from_slot } => commit_ok(from_slot),
            Message::CatchUp { entries, commit } => {
                commit_ok(commit)
                    && entries
                        .iter()
                        .all(|e| ballot_ok(&e.ballot) && e.slot < SLOT_MAX)
            }
        }
    }

    fn tick(&mut self, now_ms: u64) {
        // Time never goes backwards for the core, even if the host's clock does.
        self.now_ms = self.now_ms.max(now_ms);
    }

    fn send(&mut self, to: NodeId, message: Message) {
        if to == self.config.id {
            self.self_inbox.push_back(message);
        } else {
            self.outputs.push_back(Output::Send { to, message });
        }
    }

    fn broadcast(&mut self, message: &Message) {
        for i in 0..self.config.members.len() {
            let to = self.config.members[i];
            self.send(to, message.clone());
        }
    }

    fn broadcast_peers(&mut self, message: &Message) {
        for i in 0..self.config.members.len() {
            let to = self.config.members[i];
            if to != self.config.id {
                self.send(to, message.clone());
            }
        }
    }

    /// Whether [`Config::held_replies_max`] replies wait for the disk: no new work that
    /// would hold more is taken until some are released.
    fn held_full(&self) -> bool {
        self.held.len() >= self.config.held_replies_max
    }

    /// Sends `message` once everything persisted so far is durable.
    fn send_when_durable(&mut self, to: NodeId, message: Message) {
        let gate = if self.persist_pending.is_empty() {
            self.persist_next_id - 1
        } else {
            self.persist_next_id
        };
        if gate <= self.persist_durable_id {
            self.send(to, message);
        } else {
            self.held.push_back((gate, to, message));
        }
    }

    /// Handles the replica's messages to itself until none are left.
    fn pump(&mut self) {
        while let Some(m) = self.self_inbox.pop_front() {
            self.on_message(self.config.id, m);
        }
    }

    fn flush(&mut self) {
        self.assign_slots();
        self.pump();
        let commit = self.learner.commit();
        if let ProposerState::Leader(l) = &mut self.proposer {
            // Slots learned chosen some other way (catch-up) are no longer in flight.
            let still = l.inflight.split_off(&commit);
            let done = std::mem::replace(&mut l.inflight, still);
            let done_bytes: usize = done.values().map(|f| f.value.payload_bytes()).sum();
            l.inflight_bytes = l.inflight_bytes.saturating_sub(done_bytes);
            if l.commit_sent < commit {
                l.commit_sent = commit;
                let announce = Message::Commit {
                    ballot: l.ballot,
                    commit,
                };
                self.broadcast_peers(&announce);
            }
        }
        if commit > self.commit_persisted {
            self.commit_persisted = commit;
            self.persist_pending
                .push(PersistEntry::Committed { upto: commit });
        }
        if !self.persist_pending.is_empty() {
            let entries = std::mem::take(&mut self.persist_pending);
            let promised = entries.iter().filter_map(|e| match e {
                PersistEntry::Promised(b) => Some(*b),
                _ => None,
            });
            if let Some(b) = promised.max() {
                self.promise_batches.push_back((self.persist_next_id, b));
            }
            self.outputs.push_back(Output::Persist {
                id: self.persist_next_id,
                entries,
            });
            self.persist_next_id += 1;
        }
        while let Some((slot, value)) = self.learner.next_delivery(&self.acceptor) {
            self.outputs.push_back(Output::Committed { slot, value });
        }
        let delivered = self.learner.delivered();
        if let ProposerState::Leader(l) = &mut self.proposer {
            while let Some(&(id, index)) = l.reads.confirmed.front() {
                if index > delivered {
                    break;
                }
                l.reads.confirmed.pop_front();
                self.outputs.push_back(Output::ReadReady { id });
            }
        }
    }

    fn election_timeout_ms(&mut self) -> u64 {
        let min = self.config.election_timeout_min_ms;
        let spread = self.config.election_timeout_max_ms - min;
        // Each lost election doubles the window (up to 16x) so duelling candidates spread out.
        let widen = 1u64 << self.failed_elections.min(4);
        self.rng.range_inclusive(min, min + spread.max(1) * widen)
    }

    fn reset_election_timer(&mut self) {
        self.election_deadline_ms = self.now_ms + self.election_timeout_ms();
    }

    fn my_ballot(&self) -> Option<Ballot> {
        match &self.proposer {
            ProposerState::Candidate(p) => Some(p.ballot),
            ProposerState::Leader(l) => Some(l.ballot),
            ProposerState::Follower => None,
        }
    }

    fn request_catchup(&mut self, from: NodeId) {
        if from == self.config.id || self.learner.catchup_pending(self.now_ms) {
            return;
        }
        let deadline = self.now_ms + self.config.election_timeout_min_ms;
        self.learner.catchup_sent(from, deadline);
        let from_slot = self.learner.commit();
        self.send(from, Message::CatchUpRequest { from_slot });
    }

    // ----- internals: role changes -----

    fn become_follower(&mut self) {
        let hint = self.leader_hint_from_seen();
        if let ProposerState::Leader(l) = &mut self.proposer {
            let ids = l.reads.drain_all();
            for id in ids {
                self.outputs.push_back(Output::ReadAborted {
                    id,
                    leader_hint: hint,
                });
            }
        }
        if !self.queue.commands.is_empty() {
            let commands: Vec<Bytes> = self.queue.commands.drain(..).collect();
            self.outputs.push_back(Output::ProposalsDropped {
                commands,
                leader_hint: hint,
            });
        }
        self.proposer = ProposerState::Follower;
        self.reset_election_timer();
    }

    fn leader_hint_from_seen(&self) -> Option<NodeId> {
        self.leader_seen
            .map(|(id, _)| id)
            .filter(|id| *id != self.config.id)
    }

    /// Steps down if a higher ballot than the one this replica campaigns or leads under is
    /// active.
    fn yield_to(&mut self, ballot: Ballot) {
        if matches!(self.my_ballot(), Some(mine) if mine < ballot) {
            self.become_follower();
        }
    }

    /// Starts an election, or, while too many replies wait for the disk (its Prepares would
    /// wait behind them), tries again after another election timeout.
    fn start_election_unless_held_full(&mut self) {
        if self.held_full() {
            self.reset_election_timer();
        } else {
            self.start_election();
        }
    }

    fn start_election(&mut self) {
        if let ProposerState::Leader(l) = &mut self.proposer {
            let ids = l.reads.drain_all();
            for id in ids {
                self.outputs.push_back(Output::ReadAborted {
                    id,
                    leader_hint: None,
                });
            }
        }
        let round = self.round_seen.max(self.acceptor.promised().round) + 1;
        self.round_seen = round;
        let ballot = Ballot::new(round, self.config.id);
        let from_slot = self.learner.commit();
        self.proposer = ProposerState::Candidate(Phase1 {
            ballot,
            from_slot,
            promises: BTreeMap::new(),
            refusals: BTreeSet::new(),
        });
        self.leader_seen = None;
        self.reset_election_timer();
        self.heartbeat_deadline_ms = self.now_ms + self.config.heartbeat_interval_ms;
        // Invariant: no ballot is used twice, across restarts included. The round of a new
        // ballot comes from the durable promise after a restart, so this replica's own
        // promise of `ballot` must be on disk before any peer hears of `ballot`: a crash
        // before that leaves no trace of it anywhere, and reusing it is then harmless.
        self.on_prepare(self.config.id, ballot, from_slot);
        debug_assert!(self.acceptor.promised() == ballot, "own promise not taken");
        let prepare = Message::Prepare { ballot, from_slot };
        for i in 0..self.config.members.len() {
            let to = self.config.members[i];
            if to == self.config.id {
                continue;
            }
            #[cfg(test)]
            if self.bug == Some(PlantedBug::PrepareBeforeOwnPromiseDurable) {
                self.send(to, prepare.clone());
                continue;
            }
            self.send_when_durable(to, prepare.clone());
        }
    }

    fn resend_prepares(&mut self) {
        self.heartbeat_deadline_ms = self.now_ms + self.config.heartbeat_interval_ms;
        if self.held_full() {
            return; // the next heartbeat interval tries again
        }
        let ProposerState::Candidate(p) = &self.proposer else {
            return;
        };
        let msg = Message::Prepare {
            ballot: p.ballot,
            from_slot: p.from_slot,
        };
        let missing: Vec<NodeId> = self
            .config
            .members
            .iter()
            .copied()
            .filter(|m| !p.promises.contains_key(m) && !p.refusals.contains(m))
            .collect();
        for to in missing {
            // Held like the first Prepares until this replica's own promise is durable.
            self.send_when_durable(to, msg.clone());
        }
    }

    fn become_leader(&mut self) {
        let ProposerState::Candidate(p) = &self.proposer else {
            return;
        };
        let ballot = p.ballot;
        #[cfg(test)]
        let planted = self.bug.is_some();
        #[cfg(not(test))]
        let planted = false;
        debug_assert!(
            planted || self.promised_durable >= ballot,
            "leading under {ballot} before this replica's promise of it is durable"
        );
        let (plan, next_slot) = recovery_plan(
            p.from_slot.max(self.learner.commit()),
            p.promises.values().map(|(_, e)| e.as_slice()),
        );
        let now = self.now_ms;
        let inflight: BTreeMap<Slot, InFlight> = plan
            .iter()
            .map(|(slot, value)| {
                let f = InFlight {
                    value: value.clone(),
                    acks: BTreeSet::new(),
                    sent_at_ms: now,
                };
                (*slot, f)
            })
            .collect();
        let last_ack_ms = self.config.members.iter().map(|&m| (m, now)).collect();
        self.proposer = ProposerState::Leader(Leadership {
            ballot,
            next_slot,
            recovery_end: next_slot,
            inflight_bytes: inflight.values().map(|f| f.value.payload_bytes()).sum(),
            inflight,
            reads: ReadIndex::default(),
            last_ack_ms,
            commit_sent: self.learner.commit(),
        });
        self.failed_elections = 0;
        self.leader_seen = Some((self.config.id, now));
        self.heartbeat_deadline_ms = now + self.config.heartbeat_interval_ms;
        let commit = self.learner.commit();
        // Followers learn of the new leader at once, even when there is nothing to recover.
        self.broadcast_peers(&Message::Heartbeat {
            ballot,
            commit,
            read_round: 0,
        });
        self.send_accepts(ballot, plan, None);
    }

    /// Sends `entries` as Accept messages no larger than about one batch each, to `to` or
    /// to every member.
    fn send_accepts(&mut self, ballot: Ballot, entries: Vec<(Slot, Value)>, to: Option<NodeId>) {
        let commit = self.learner.commit();
        let mut chunk: Vec<(Slot, Value)> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut pending = entries.into_iter().peekable();
        while let Some((slot, value)) = pending.next() {
            chunk_bytes += value.payload_bytes();
            chunk.push((slot, value));
            let full = chunk_bytes >= self.config.batch_bytes_max;
            if full || pending.peek().is_none() {
                let msg = Message::Accept {
                    ballot,
                    entries: std::mem::take(&mut chunk),
                    commit,
                };
                chunk_bytes = 0;
                match to {
                    Some(to) => self.send(to, msg),
                    None => self.broadcast(&msg),
                }
            }
        }
    }

    /// Gives queued commands slots, as far as the in-flight limit allows, and not while too
    /// many replies wait for the disk (the leader's own Accepted of a new slot is held).
    fn assign_slots(&mut self) {
        if self.held_full() {
            return;
        }
        let ProposerState::Leader(l) = &mut self.proposer else {
            return;
        };
        let mut entries = Vec::new();
        while l.inflight.len() < self.config.inflight_slots_max
            && (l.inflight.is_empty() || l.inflight_bytes < self.config.inflight_bytes_max)
        {
            let Some(value) = self
                .queue
                .next_batch(self.config.batch_bytes_max, self.config.batch_commands_max)
            else {
                break;
            };
            l.inflight_bytes += value.payload_bytes();
            let slot = l.next_slot;
            l.next_slot += 1;
            l.inflight.insert(
                slot,
                InFlight {
                    value: value.clone(),
                    acks: BTreeSet::new(),
                    sent_at_ms: self.now_ms,
                },
            );
            entries.push((slot, value));
        }
        if !entries.is_empty() {
            let ballot = l.ballot;
            l.commit_sent = self.learner.commit();
            self.send_accepts(ballot, entries, None);
        }
    }

    fn leader_tick(&mut self) {
        let now = self.now_ms;
        let ProposerState::Leader(l) = &mut self.proposer else {
            return;
        };
        // Step down when a majority has not answered for a whole election timeout: clients
        // are then told to go elsewhere instead of waiting on a leader that cannot commit.
        let horizon = self.config.election_timeout_max_ms;
        let alive = self
            .config
            .members
            .iter()
            .filter(|&&m| {
                m == self.config.id || l.last_ack_ms.get(&m).is_some_and(|&t| t + horizon > now)
            })
            .count();
        if alive < self.quorum {
            self.become_follower();
            return;
        }
        self.heartbeat_deadline_ms = now + self.config.heartbeat_interval_ms;
        let ballot = l.ballot;
        let commit = self.learner.commit();
        l.commit_sent = commit;
        let hb = Message::Heartbeat {
            ballot,
            commit,
            read_round: l.reads.round,
        };
        // Retransmit Accepts that some peer has not acknowledged for a heartbeat interval.
        let mut resend: BTreeMap<NodeId, Vec<(Slot, Value)>> = BTreeMap::new();
        for (&slot, f) in l.inflight.iter_mut() {
            if f.sent_at_ms + self.config.heartbeat_interval_ms > now {
                continue;
            }
            f.sent_at_ms = now;
            for &m in &self.config.members {
                if m != self.config.id && !f.acks.contains(&m) {
                    resend.entry(m).or_default().push((slot, f.value.clone()));
                }
            }
        }
        self.broadcast_peers(&hb);
        for (to, entries) in resend {
            self.send_accepts(ballot, entries, Some(to));
        }
    }

    fn start_read_round(&mut self) {
        let commit = self.learner.commit();
        let ProposerState::Leader(l) = &mut self.proposer else {
            return;
        };
        l.reads.round += 1;
        l.reads.round_open = true;
        l.reads.round_acks.clear();
        l.reads.round_acks.insert(self.config.id);
        l.reads.in_round = std::mem::take(&mut l.reads.waiting);
        let hb = Message::Heartbeat {
            ballot: l.ballot,
            commit,
            read_round: l.reads.round,
        };
        l.commit_sent = l.commit_sent.max(commit);
        self.broadcast_peers(&hb);
    }

    // ----- internals: message handlers -----

    fn on_message(&mut self, from: NodeId, message: Message) {
        match message {
            Message::Prepare { ballot, from_slot } => self.on_prepare(from, ballot, from_slot),
            Message::Promise {
                ballot,
                commit,
                accepted,
            } => self.on_promise(from, ballot, commit, accepted),
            Message::Accept {
                ballot,
                entries,
                commit,
            } => self.on_accept(from, ballot, entries, commit),
            Message::Accepted { ballot, slots } => self.on_accepted(from, ballot, slots),
            Message::Nack { refused, promised } => self.on_nack(from, refused, promised),
            Message::Heartbeat {
                ballot,
                commit,
                read_round,
            } => self.on_heartbeat(from, ballot, commit, read_round),
            Message::Commit { ballot, commit } => self.on_commit(from, ballot, commit),
            Message::HeartbeatAck {
                ballot,
                read_round,
                commit,
            } => self.on_heartbeat_ack(from, ballot, read_round, commit),
            Message::CatchUpRequest { from_slot } => self.on_catchup_request(from, from_slot),
            Message::CatchUp { entries, commit } => self.on_catchup(from, entries, commit),
        }
    }

    fn observe(&mut self, ballot: Ballot) {
        self.round_seen = self.round_seen.max(ballot.round);
    }

    /// Whether to ignore a Prepare because a live leader other than its sender is known
    /// (leader stickiness: a replica that was cut off and comes back with a high ballot must
    /// not depose a leader that is doing fine).
    fn sticky_refuses(&self, from: NodeId, ballot: Ballot) -> bool {
        if from == self.config.id || ballot <= self.acceptor.promised() {
            return false;
        }
        if matches!(self.proposer, ProposerState::Leader(_)) {
            return true;
        }
        match self.leader_seen {
            Some((leader, at)) => {
                leader != from && self.now_ms < at + self.config.election_timeout_min_ms
            }
            None => false,
        }
    }

    fn on_prepare(&mut self, from: NodeId, ballot: Ballot, from_slot: Slot) {
        self.observe(ballot);
        if self.sticky_refuses(from, ballot) {
            // A refusal whose `promised` is below `refused` means "I follow a live leader".
            let promised = self.acceptor.promised();
            self.send(
                from,
                Message::Nack {
                    refused: ballot,
                    promised,
                },
            );
            return;
        }
        let commit = self.learner.commit();
        let from_slot = from_slot.max(commit);
        match self
            .acceptor
            .prepare(ballot, from_slot, &mut self.persist_pending)
        {
            Err(promised) => self.send(
                from,
                Message::Nack {
                    refused: ballot,
                    promised,
                },
            ),
            Ok(accepted) => {
                if from != self.config.id {
                    self.yield_to(ballot);
                    if matches!(self.proposer, ProposerState::Follower) {
                        self.reset_election_timer();
                    }
                }
                let promise = Message::Promise {
                    ballot,
                    commit,
                    accepted,
                };
                self.send_when_durable(from, promise);
            }
        }
    }

    fn on_promise(&mut self, from: NodeId, ballot: Ballot, commit: Slot, accepted: Vec<Entry>) {
        let my_commit = self.learner.commit();
        let ProposerState::Candidate(p) = &mut self.proposer else {
            return;
        };
        if p.ballot != ballot {
            return;
        }
        if let Some(higher) = accepted.iter().map(|e| e.ballot).find(|b| *b > ballot) {
            // An acceptor never holds a record above its promise; a Promise that reports
            // one comes from a broken or forged peer. Treat it as news of a higher ballot.
            self.observe(higher);
            self.become_follower();
            return;
        }
        if commit > my_commit {
            // A peer knows more chosen slots than this candidate: a leader must know the
            // whole chosen prefix, so give up, catch up, and let the timer retry.
            self.become_follower();
            self.request_catchup(from);
            return;
        }
        p.promises.insert(from, (commit, accepted));
        if p.promises.len() >= self.quorum {
            self.become_leader();
        }
    }

    fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        entries: Vec<(Slot, Value)>,
        commit: Slot,
    ) {
        self.observe(ballot);
        let learner = &self.learner;
        match self.acceptor.accept(
            ballot,
            &entries,
            |slot| learner.is_chosen(slot),
            &mut self.persist_pending,
        ) {
            Err(promised) => self.send(
                from,
                Message::Nack {
                    refused: ballot,
                    promised,
                },
            ),
            Ok(slots) => {
                if from != self.config.id {
                    self.follow(from, ballot, commit);
                }
                let accepted = Message::Accepted { ballot, slots };
                #[cfg(test)]
                if self.bug == Some(PlantedBug::AcceptedBeforeDurable) {
                    self.send(from, accepted);
                    return;
                }
                self.send_when_durable(from, accepted);
            }
        }
    }

    /// `from` acts as leader under `ballot` (not below our promise): follow it.
    fn follow(&mut self, from: NodeId, ballot: Ballot, commit: Slot) {
        self.yield_to(ballot);
        if matches!(self.proposer, ProposerState::Follower) {
            self.leader_seen = Some((from, self.now_ms));
            self.failed_elections = 0;
            self.reset_election_timer();
        }
        if self.learner.on_commit_hint(&self.acceptor, ballot, commit) {
            self.request_catchup(from);
        }
    }

    fn on_accepted(&mut self, from: NodeId, ballot: Ballot, slots: Vec<Slot>) {
        let now = self.now_ms;
        let ProposerState::Leader(l) = &mut self.proposer else {
            return;
        };
        if l.ballot != ballot {
            return;
        }
        l.last_ack_ms.insert(from, now);
        for slot in slots {
            let Some(f) = l.inflight.get_mut(&slot) else {
                continue;
            };
            f.acks.insert(from);
            if f.acks.len() >= self.quorum {
                if let Some(f) = l.inflight.remove(&slot) {
                    l.inflight_bytes = l.inflight_bytes.saturating_sub(f.value.payload_bytes());
                    self.learner.learn(
                        &mut self.acceptor,
                        slot,
                        ballot,
                        &f.value,
                        &mut self.persist_pending,
                    );
                }
            }
        }
    }

    fn on_nack(&mut self, from: NodeId, refused: Ballot, promised: Ballot) {
        self.observe(promised);
        if self.my_ballot() != Some(refused) {
            return; // about a ballot this replica no longer uses
        }
        let quorum = self.quorum;
        let members = self.config.members.len();
        match &mut self.proposer {
            ProposerState::Candidate(p) => {
                if promised > refused {
                    self.failed_elections = self.failed_elections.saturating_add(1);
                    self.become_follower();
                } else {
                    p.refusals.insert(from);
                    if members - p.refusals.len() < quorum {
                        self.failed_elections = self.failed_elections.saturating_add(1);
                        self.become_follower();
                    }
                }
            }
            ProposerState::Leader(_) => {
                if promised > refused {
                    // Some acceptor promised a higher ballot (often a replica coming back
                    // from a partition). Re-run phase 1 at once above it, rather than
                    // stepping down: the followers still follow this replica.
                    self.start_election();
                }
            }
            ProposerState::Follower => {}
        }
    }

    fn on_heartbeat(&mut self, from: NodeId, ballot: Ballot, commit: Slot, read_round: u64) {
        if self.refuse_stale(from, ballot) {
            return;
        }
        self.follow(from, ballot, commit);
        let commit = self.learner.commit();
        self.send(
            from,
            Message::HeartbeatAck {
                ballot,
                read_round,
                commit,
            },
        );
    }

    /// A leader's message under a ballot below this acceptor's promise is answered with a
    /// Nack (so that leader learns it was superseded) and otherwise ignored.
    fn refuse_stale(&mut self, from: NodeId, ballot: Ballot) -> bool {
        self.observe(ballot);
        let promised = self.acceptor.promised();
        if ballot >= promised {
            return false;
        }
        self.send(
            from,
            Message::Nack {
                refused: ballot,
                promised,
            },
        );
        true
    }

    fn on_commit(&mut self, from: NodeId, ballot: Ballot, commit: Slot) {
        if self.refuse_stale(from, ballot) {
            return;
        }
        self.follow(from, ballot, commit);
    }

    fn on_heartbeat_ack(&mut self, from: NodeId, ballot: Ballot, read_round: u64, _commit: Slot) {
        let now = self.now_ms;
        let ProposerState::Leader(l) = &mut self.proposer else {
            return;
        };
        if l.ballot != ballot {
            return;
        }
        l.last_ack_ms.insert(from, now);
        if !l.reads.round_open || read_round != l.reads.round {
            return;
        }
        l.reads.round_acks.insert(from);
        if l.reads.round_acks.len() >= self.quorum {
            l.reads.round_open = false;
            let confirmed = std::mem::take(&mut l.reads.in_round);
            l.reads.confirmed.extend(confirmed);
            if !l.reads.waiting.is_empty() {
                self.start_read_round();
            }
        }
    }

    fn on_catchup_request(&mut self, from: NodeId, from_slot: Slot) {
        if from_slot < self.acceptor.log_start() {
            let due = self
                .snapshot_sent_ms
                .get(&from)
                .is_none_or(|&t| self.now_ms >= t + self.config.snapshot_resend_interval_ms);
            if due {
                self.snapshot_sent_ms.insert(from, self.now_ms);
                self.outputs.push_back(Output::SendSnapshot { to: from });
            }
            return;
        }
        let commit = self.learner.commit();
        let end = commit.min(from_slot.saturating_add(self.config.catchup_entries_max as u64));
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for slot in from_slot..end {
            let Some((ballot, value)) = self.acceptor.get(slot) else {
                break;
            };
            if !entries.is_empty() && bytes + value.payload_bytes() > self.config.batch_bytes_max {
                break; // keep every reply within about one batch
            }
            bytes += value.payload_bytes();
            entries.push(Entry {
                slot,
                ballot: *ballot,
                value: value.clone(),
            });
        }
        self.send(from, Message::CatchUp { entries, commit });
    }

    /// A catch-up reply. It is safe whatever request it answers, however late: its entries
    /// are chosen values, and learning a chosen value is always safe for a learner. What is
    /// not safe is a leader that keeps leading after it learns of a higher ballot: its
    /// commit announcements tell followers that their votes under its ballot are chosen,
    /// which is false for a slot chosen under the higher ballot with another value. So a
    /// leader or candidate steps down *before* it records anything from a higher ballot.
    fn on_catchup(&mut self, from: NodeId, entries: Vec<Entry>, commit: Slot) {
        self.learner.catchup_done();
        if let Some(highest) = entries.iter().map(|e| e.ballot).max() {
            self.observe(highest);
            #[cfg(test)]
            let planted = self.bug == Some(PlantedBug::LeaderIgnoresHigherCatchUp);
            #[cfg(not(test))]
            let planted = false;
            if !planted {
                self.yield_to(highest);
            }
        }
        for e in entries {
            self.learner.learn(
                &mut self.acceptor,
                e.slot,
                e.ballot,
                &e.value,
                &mut self.persist_pending,
            );
        }
        if self.learner.commit() < commit {
            self.request_catchup(from);
        }
    }
}

#[cfg(test)]
#[path = "replica_tests.rs"]
mod tests;
