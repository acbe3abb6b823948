//! The proposer role: elections (phase 1), proposals (phase 2), and read-index rounds.
//!
//! The crate's `Proposer` owns the role's state machine (follower, candidate, leader),
//! every transition between those states, and the data each one keeps: a candidate's
//! promises (`candidate.rs`), a leader's slots in flight and its lease on the followers
//! (`leader.rs`), its reads (`read_index.rs`) and the commands waiting for a slot
//! (`queue.rs`). It does no IO and knows nothing of the acceptor or the disk: each method
//! returns what the [`Replica`](crate::Replica) must then send, persist, or tell its host.
//!
//! Transitions:
//! - follower or candidate → candidate: `start_candidacy` (an election timeout), and
//!   leader → candidate when a leader learns of a higher promise and re-runs phase 1;
//! - candidate → leader: `lead`, once `on_promise` reports a majority;
//! - any → follower: `step_down` (a higher ballot, a lost election, a leader that lost
//!   its majority).
//!
//! Public here are the [`Role`] a replica reports and the pure [`recovery_plan`].

mod candidate;
mod leader;
mod queue;
mod read_index;

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::ballot::{Ballot, NodeId, Slot};
use crate::config::Config;
use crate::membership::{Membership, MembershipLog, Reconfig};
use crate::rng::Rng;
use crate::value::{Entry, Value};
use candidate::Candidacy;
use leader::Leadership;
use queue::Queue;

pub use candidate::recovery_plan;
pub(crate) use candidate::{PromiseOutcome, RefusalOutcome};
pub(crate) use leader::Resend;

/// The role a replica's proposer currently plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Role {
    /// Follows a leader (or waits for one); proposes nothing.
    Follower,
    /// Running phase 1 to become leader.
    Candidate,
    /// Completed phase 1 with a majority; proposes values.
    Leader,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        })
    }
}

/// The proposer's state machine.
#[derive(Clone, Debug, Hash)]
enum State {
    /// Follows a leader, or waits for one.
    Follower,
    /// Runs phase 1.
    Candidate(Candidacy),
    /// Proposes values.
    Leader(Leadership),
}

/// What a leader's heartbeat timer calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Beat {
    /// A majority has not answered for a whole election timeout: step down.
    StepDown,
    /// Send every peer a heartbeat (under `ballot`, asking to confirm `read_round`), and
    /// retransmit to each peer the Accepts it has not acknowledged.
    Send {
        /// The leader's ballot.
        ballot: Ballot,
        /// The newest read round, for the followers to confirm.
        read_round: u64,
        /// The Accepts each peer has not acknowledged for a heartbeat interval.
        resend: Resend,
    },
}

/// The slots a leader just gave values to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Assigned {
    /// The leader's ballot.
    pub ballot: Ballot,
    /// The new slots and their values, to send Accepts for.
    pub entries: Vec<(Slot, Value)>,
    /// The next slot is governed by voters this leader's promises do not hold a majority
    /// of: it must run phase 1 again before it proposes there.
    pub rerun: bool,
}

/// What a proposer that stopped campaigning or leading leaves behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SteppedDown {
    /// Reads it can no longer confirm.
    pub reads: Vec<u64>,
    /// Commands that never got a slot (they are definitely not chosen).
    pub commands: Vec<Bytes>,
    /// A membership change that never got a slot (definitely not chosen).
    pub reconfig: Option<Reconfig>,
    /// Who may be leading now.
    pub leader_hint: Option<NodeId>,
}

/// A proposer: its role and what it needs to play it.
#[derive(Clone, Debug, Hash)]
pub(crate) struct Proposer {
    /// This replica's id: the node of every ballot it uses.
    id: NodeId,
    /// The role and its data.
    state: State,
    /// Commands waiting for a slot (only a leader or a re-running leader holds any).
    queue: Queue,
    /// A membership change waiting for a slot (it gets one of its own).
    reconfig: Option<Reconfig>,
    /// Election jitter, seeded by the host.
    rng: Rng,
    /// Consecutive elections lost; widens the election timeout (backoff against duels).
    failed_elections: u32,
    /// The highest round seen in any message, so a new ballot beats all of them.
    round_seen: u64,
    /// Who last acted as leader towards this replica, and when.
    leader_seen: Option<(NodeId, u64)>,
}

impl Proposer {
    /// A follower of replica `id`; its first ballot will be above `round_seen`.
    pub fn new(id: NodeId, rng: Rng, round_seen: u64) -> Self {
        Proposer {
            id,
            state: State::Follower,
            queue: Queue::default(),
            reconfig: None,
            rng,
            failed_elections: 0,
            round_seen,
            leader_seen: None,
        }
    }

    // ----- getters -----

    /// The current role.
    pub fn role(&self) -> Role {
        match self.state {
            State::Follower => Role::Follower,
            State::Candidate(_) => Role::Candidate,
            State::Leader(_) => Role::Leader,
        }
    }

    /// The ballot campaigned or led under; `None` for a follower.
    pub fn ballot(&self) -> Option<Ballot> {
        match &self.state {
            State::Candidate(c) => Some(c.ballot),
            State::Leader(l) => Some(l.ballot),
            State::Follower => None,
        }
    }

    /// A leader's ballot and the next slot it will give a batch.
    pub fn leading(&self) -> Option<(Ballot, Slot)> {
        match &self.state {
            State::Leader(l) => Some((l.ballot, l.next_slot)),
            _ => None,
        }
    }

    /// Whether this proposer leads.
    pub fn is_leader(&self) -> bool {
        matches!(self.state, State::Leader(_))
    }

    /// Commands waiting for a slot.
    pub fn queued_commands(&self) -> usize {
        self.queue.commands.len()
    }

    /// Slots proposed by this leader and not yet chosen.
    pub fn inflight_slots(&self) -> usize {
        match &self.state {
            State::Leader(l) => l.inflight.len(),
            _ => 0,
        }
    }

    /// The replica believed to lead at `now_ms`: this one, or the last that acted as
    /// leader within `election_timeout_max_ms`.
    pub fn leader_hint(&self, config: &Config, now_ms: u64) -> Option<NodeId> {
        match &self.state {
            State::Leader(_) => Some(self.id),
            State::Candidate(_) => None,
            State::Follower => self
                .leader_seen
                .filter(|(_, at)| now_ms < at + config.election_timeout_max_ms)
                .map(|(id, _)| id),
        }
    }

    /// Whether a live leader other than `from` is known at `now_ms` (this one, or one heard
    /// from within `election_timeout_min_ms`): leader stickiness, so that a replica that
    /// was cut off and comes back with a high ballot does not depose a leader doing fine.
    pub fn defends_leader_against(&self, from: NodeId, config: &Config, now_ms: u64) -> bool {
        if self.is_leader() {
            return true;
        }
        match self.leader_seen {
            Some((leader, at)) => leader != from && now_ms < at + config.election_timeout_min_ms,
            None => false,
        }
    }

    // ----- elections -----

    /// Some message carried `ballot`: a new ballot must be above its round.
    pub fn observe(&mut self, ballot: Ballot) {
        self.round_seen = self.round_seen.max(ballot.round);
    }

    /// A fresh, random election timeout. Each lost election in a row doubles the window
    /// (up to 16 times) so that duelling candidates spread out.
    pub fn election_timeout_ms(&mut self, config: &Config) -> u64 {
        let min = config.election_timeout_min_ms;
        let spread = config.election_timeout_max_ms - min;
        let widen = 1u64 << self.failed_elections.min(4);
        self.rng.range_inclusive(min, min + spread.max(1) * widen)
    }

    /// Whether `ballot` is above the one this proposer campaigns or leads under (it must
    /// then step down).
    pub fn outranked_by(&self, ballot: Ballot) -> bool {
        matches!(self.ballot(), Some(mine) if mine < ballot)
    }

    /// `leader` acted as leader at `now_ms`. A follower notes it (and its election backoff
    /// ends); returns whether it did, so the caller restarts the election timer.
    pub fn heard_from_leader(&mut self, leader: NodeId, now_ms: u64) -> bool {
        if !matches!(self.state, State::Follower) {
            return false;
        }
        self.leader_seen = Some((leader, now_ms));
        self.failed_elections = 0;
        true
    }

    /// The election timer expired; a candidate counts that as an election lost.
    pub fn election_timed_out(&mut self) {
        if matches!(self.state, State::Candidate(_)) {
            self.failed_elections = self.failed_elections.saturating_add(1);
        }
    }

    /// Becomes a candidate for the slots from `from_slot` on, under a ballot above every
    /// round seen and above `promised_round` (this replica's own promise), needing a
    /// majority of each membership in `required`. Returns the ballot, and the reads a
    /// leader re-running phase 1 can no longer confirm. Commands waiting for a slot stay
    /// queued.
    pub fn start_candidacy(
        &mut self,
        promised_round: u64,
        from_slot: Slot,
        required: Vec<Membership>,
    ) -> (Ballot, Vec<u64>) {
        let aborted = match &mut self.state {
            State::Leader(l) => l.reads.drain_all(),
            _ => Vec::new(),
        };
        let round = self.round_seen.max(promised_round) + 1;
        self.round_seen = round;
        let ballot = Ballot::new(round, self.id);
        // Invariant: each candidacy's ballot is above every ballot this proposer used.
        debug_assert!(
            self.ballot().is_none_or(|b| b < ballot),
            "ballot {ballot} not above the last one"
        );
        self.state = State::Candidate(Candidacy::new(ballot, from_slot, required));
        self.leader_seen = None;
        (ballot, aborted)
    }

    /// A promise of `ballot` from `from`, with its commit index and accepted entries;
    /// `my_commit` is this replica's commit index.
    pub fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        promise: (Slot, Vec<Entry>),
        my_commit: Slot,
    ) -> PromiseOutcome {
        let State::Candidate(c) = &mut self.state else {
            return PromiseOutcome::Pending;
        };
        if c.ballot != ballot {
            return PromiseOutcome::Pending;
        }
        let outcome = c.on_promise(from, promise, my_commit);
        if let PromiseOutcome::Outranked(higher) = outcome {
            self.observe(higher);
        }
        outcome
    }

    /// `from` refused ballot `refused`, having promised `promised`. A refusal whose
    /// `promised` is below `refused` means "I follow a live leader".
    pub fn on_refusal(
        &mut self,
        from: NodeId,
        refused: Ballot,
        promised: Ballot,
    ) -> RefusalOutcome {
        self.observe(promised);
        if self.ballot() != Some(refused) {
            return RefusalOutcome::Ignored; // about a ballot no longer in use
        }
        let outcome = match &mut self.state {
            State::Candidate(_) if promised > refused => RefusalOutcome::Lost,
            State::Candidate(c) => c.on_refusal(from),
            // Some acceptor promised a higher ballot (often a replica coming back from a
            // partition). Re-run phase 1 at once above it, rather than stepping down: the
            // followers still follow this leader.
            State::Leader(_) if promised > refused => RefusalOutcome::Rerun,
            State::Leader(_) | State::Follower => RefusalOutcome::Ignored,
        };
        if outcome == RefusalOutcome::Lost {
            self.failed_elections = self.failed_elections.saturating_add(1);
        }
        outcome
    }

    /// A candidate's Prepare (ballot, first slot) and the voters that have not answered
    /// it; `None` unless campaigning.
    pub fn prepare_resend(&self) -> Option<(Ballot, Slot, Vec<NodeId>)> {
        let State::Candidate(c) = &self.state else {
            return None;
        };
        Some((c.ballot, c.from_slot, c.unanswered()))
    }

    /// A candidate whose ballot a majority promised becomes leader at `now_ms`. Returns its
    /// ballot and the recovered log suffix to re-propose from the first slot not known
    /// chosen (`commit`) on, gaps filled with no-ops, as far as it may propose now: up to
    /// the slots whose membership `log` does not determine yet (below `delivered` plus the
    /// delay) and that its promises cover. The rest of the suffix waits in the leadership
    /// (see [`Proposer::assign_slots`]). `None` unless campaigning.
    pub fn lead(
        &mut self,
        log: &MembershipLog,
        (commit, delivered): (Slot, Slot),
        peers: &BTreeSet<NodeId>,
        now_ms: u64,
    ) -> Option<(Ballot, Vec<(Slot, Value)>)> {
        let State::Candidate(c) = &self.state else {
            return None;
        };
        let promised_by = c.promisers();
        debug_assert!(c.is_quorum(&promised_by), "leading without a majority");
        let ballot = c.ballot;
        let (plan, plan_end) = recovery_plan(
            c.from_slot.max(commit),
            c.promises.values().map(|(_, e)| e.as_slice()),
        );
        let horizon = delivered.saturating_add(log.delay());
        let now_end = plan
            .iter()
            .position(|(slot, _)| *slot >= horizon || !log.at(*slot).is_quorum(&promised_by))
            .unwrap_or(plan.len());
        let mut plan = plan;
        let later: BTreeMap<Slot, Value> = plan
            .split_off(now_end)
            .into_iter()
            .filter(|(_, v)| *v != Value::Noop)
            .collect();
        let next_slot = plan.last().map_or(c.from_slot.max(commit), |(s, _)| s + 1);
        let leadership = Leadership::new(
            ballot,
            (&plan, next_slot),
            (later, plan_end.max(next_slot)),
            promised_by,
            peers,
            commit,
            now_ms,
        );
        self.state = State::Leader(leadership);
        self.failed_elections = 0;
        self.leader_seen = Some((self.id, now_ms));
        Some((ballot, plan))
    }

    /// Stops campaigning or leading: becomes a follower. Returns the reads to abort and
    /// the commands to hand back, with who may lead now.
    pub fn step_down(&mut self) -> SteppedDown {
        let leader_hint = self
            .leader_seen
            .map(|(id, _)| id)
            .filter(|id| *id != self.id);
        let reads = match &mut self.state {
            State::Leader(l) => l.reads.drain_all(),
            _ => Vec::new(),
        };
        let commands = self.queue.commands.drain(..).collect();
        let reconfig = self.reconfig.take();
        self.state = State::Follower;
        SteppedDown {
            reads,
            commands,
            reconfig,
            leader_hint,
        }
    }

    // ----- replication -----

    /// Queues a client command for a slot (the caller checked this proposer leads and
    /// the queue has room).
    pub fn enqueue(&mut self, command: Bytes) {
        debug_assert!(self.is_leader(), "a command queued on a {}", self.role());
        self.queue.commands.push_back(command);
    }

    /// Queues a membership change for a slot of its own (the caller checked this
    /// proposer leads and no other change waits or is in flight).
    pub fn enqueue_reconfig(&mut self, reconfig: Reconfig) {
        debug_assert!(self.is_leader() && self.reconfig.is_none());
        self.reconfig = Some(reconfig);
    }

    /// Whether a membership change waits for a slot or is in flight.
    pub fn reconfig_pending(&self) -> bool {
        self.reconfig.is_some()
            || matches!(&self.state, State::Leader(l)
                if l.inflight.values().any(|f| matches!(f.value, Value::Reconfig(_))))
    }

    /// Gives slots, as far as the in-flight limits allow, first to what recovery left to
    /// re-propose, then to a waiting membership change, then to queued commands in
    /// batches, and then, while the latest membership does not govern the next slot yet,
    /// to no-ops (so a change takes effect without waiting for client traffic).
    ///
    /// The next slot `s` is given a value only if the membership that governs it is known
    /// (`s` is below `delivered` plus the delay: every slot that decides it was delivered),
    /// and this leader votes in it, and the promises of this leader's ballot hold a
    /// majority of its voters. Without that majority the leader must run phase 1 again
    /// (`rerun`); without a vote it is handing over (see [`Proposer::handing_over`]).
    /// `None` unless leading.
    pub fn assign_slots(
        &mut self,
        config: &Config,
        log: &MembershipLog,
        (commit, delivered): (Slot, Slot),
        now_ms: u64,
    ) -> Option<Assigned> {
        let State::Leader(l) = &mut self.state else {
            return None;
        };
        let horizon = delivered.saturating_add(log.delay());
        let mut entries = Vec::new();
        let mut rerun = false;
        while l.has_room(config) {
            let slot = l.next_slot;
            if slot >= horizon {
                break;
            }
            let governing = log.at(slot);
            if !governing.is_voter(self.id) {
                break;
            }
            if !governing.is_quorum(&l.promised_by) {
                rerun = true;
                break;
            }
            let value = if slot < l.recovery_end {
                l.deferred.remove(&slot).unwrap_or(Value::Noop)
            } else if let Some(r) = self.reconfig.take() {
                Value::Reconfig(r)
            } else if let Some(batch) = self
                .queue
                .next_batch(config.batch_bytes_max, config.batch_commands_max)
            {
                batch
            } else if log.latest_from() > slot {
                Value::Noop
            } else {
                break;
            };
            let slot = l.propose(value.clone(), now_ms);
            entries.push((slot, value));
        }
        if !entries.is_empty() {
            // The Accepts carry the commit index: it counts as announced.
            l.commit_sent = commit;
        }
        Some(Assigned {
            ballot: l.ballot,
            entries,
            rerun,
        })
    }

    /// A leader that no longer votes in the membership governing its next slot, with
    /// nothing left in flight: it must hand over. Returns the voter to hand over to (the
    /// one that reported the highest commit index), if any.
    pub fn handing_over(&self, log: &MembershipLog) -> Option<Option<NodeId>> {
        let State::Leader(l) = &self.state else {
            return None;
        };
        let governing = log.at(l.next_slot);
        if governing.is_voter(self.id) || !l.inflight.is_empty() {
            return None;
        }
        let successor = governing
            .voters()
            .max_by_key(|v| (l.peer_commit.get(v).copied().unwrap_or(0), u64::MAX - v));
        Some(successor)
    }

    /// Each peer's commit index as its last heartbeat acknowledgement reported it; `None`
    /// unless leading.
    pub fn peer_commits(&self) -> Option<&BTreeMap<NodeId, Slot>> {
        match &self.state {
            State::Leader(l) => Some(&l.peer_commit),
            _ => None,
        }
    }

    /// A leader's view of its peers for a membership change: which members of
    /// `membership` answered lately (this replica included), and each peer's reported
    /// commit index. `None` unless leading.
    pub fn peer_view(
        &self,
        config: &Config,
        membership: &Membership,
        now_ms: u64,
    ) -> Option<(BTreeSet<NodeId>, &BTreeMap<NodeId, Slot>)> {
        let State::Leader(l) = &self.state else {
            return None;
        };
        Some((l.alive(config, membership, now_ms), &l.peer_commit))
    }

    /// `from` accepted `slots` under `ballot`. Returns the slots now chosen, with their
    /// values (nothing unless this proposer leads under `ballot`).
    pub fn on_accepted(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        slots: Vec<Slot>,
        log: &MembershipLog,
        now_ms: u64,
    ) -> Vec<(Slot, Value)> {
        match &mut self.state {
            State::Leader(l) if l.ballot == ballot => l.on_accepted(from, slots, log, now_ms),
            _ => Vec::new(),
        }
    }

    /// Every slot below `commit` is chosen. Returns the ballot to announce `commit` under
    /// if the followers have not heard of it yet; `None` otherwise or unless leading.
    pub fn retire_chosen(&mut self, commit: Slot) -> Option<Ballot> {
        let State::Leader(l) = &mut self.state else {
            return None;
        };
        l.retire_below(commit).then_some(l.ballot)
    }

    /// The heartbeat timer expired at `now_ms`; `commit` is this replica's commit index,
    /// `log` its memberships and `peers` every other member. `None` unless leading.
    pub fn heartbeat(
        &mut self,
        config: &Config,
        log: &MembershipLog,
        peers: &BTreeSet<NodeId>,
        commit: Slot,
        now_ms: u64,
    ) -> Option<Beat> {
        let State::Leader(l) = &mut self.state else {
            return None;
        };
        if !l.majority_alive(config, log.at(l.next_slot), now_ms) {
            return Some(Beat::StepDown);
        }
        l.commit_sent = commit;
        Some(Beat::Send {
            ballot: l.ballot,
            read_round: l.reads.round,
            resend: l.due_for_resend(config, peers, now_ms),
        })
    }

    // ----- reads -----

    /// Read `id` arrived; `commit` is this replica's commit index, and `single` says this
    /// replica alone is a majority of every membership that matters. Returns whether a
    /// read round must be started for it; `None` unless leading.
    pub fn read(&mut self, id: u64, commit: Slot, single: bool) -> Option<bool> {
        let State::Leader(l) = &mut self.state else {
            return None;
        };
        // A new leader's commit index may lag what it re-proposed in recovery, some of
        // which may already be chosen: the read waits for all of it.
        let index = commit.max(l.recovery_end);
        Some(l.reads.add(id, index, single))
    }

    /// Starts a read round; its heartbeats carry `commit`, which counts as announced.
    /// Returns the ballot and round number to send; `None` unless leading.
    pub fn start_read_round(&mut self, commit: Slot) -> Option<(Ballot, u64)> {
        let State::Leader(l) = &mut self.state else {
            return None;
        };
        let round = l.reads.start_round(self.id);
        l.commit_sent = l.commit_sent.max(commit);
        Some((l.ballot, round))
    }

    /// `from` acknowledged this leader's heartbeat under `ballot` for read round `round`,
    /// with its commit index `commit`; `is_quorum` says whether a set of acknowledgements
    /// confirms a round. Returns whether the next read round must start.
    pub fn on_heartbeat_ack(
        &mut self,
        from: NodeId,
        (ballot, round, commit): (Ballot, u64, Slot),
        is_quorum: impl Fn(&BTreeSet<NodeId>) -> bool,
        now_ms: u64,
    ) -> bool {
        match &mut self.state {
            State::Leader(l) if l.ballot == ballot => {
                l.last_ack_ms.insert(from, now_ms);
                l.peer_commit.insert(from, commit);
                l.reads.on_ack(from, round, is_quorum)
            }
            _ => false,
        }
    }

    /// The next confirmed read the state machine has caught up with (every slot below
    /// `delivered` was handed out).
    pub fn pop_ready_read(&mut self, delivered: Slot) -> Option<u64> {
        match &mut self.state {
            State::Leader(l) => l.reads.pop_ready(delivered),
            _ => None,
        }
    }

    /// Checks the proposer's own invariants (debug builds): a leader's bookkeeping adds
    /// up, and a follower holds no commands (stepping down hands them back; a leader that
    /// re-runs phase 1 keeps them for when it leads again).
    pub fn debug_check(&self) {
        if let State::Leader(l) = &self.state {
            l.debug_check();
        }
        debug_assert!(
            !matches!(self.state, State::Follower) || self.queue.commands.is_empty(),
            "a follower holds queued commands"
        );
    }
}
