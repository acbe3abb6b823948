//! A replica: proposer, acceptor and learner composed behind one sans-IO interface.
//!
//! The host feeds inputs (`handle_message`, `handle_timeout`, `handle_durable`, `propose`,
//! `read`, `compact`, `install_snapshot`) and drains [`Output`]s with [`Replica::poll_output`]
//! until it returns `None`. Nothing here reads a clock, a socket or OS randomness.
//!
//! # The durability gate
//! Every change to acceptor state becomes a [`PersistEntry`](crate::PersistEntry); entries
//! are grouped into one [`Output::Persist`] batch per drain. A reply that depends on
//! acceptor state (Promise, Accepted) is *held* inside the replica, tagged with the batch
//! that must be durable first, and is released only by [`Replica::handle_durable`]. A host
//! therefore cannot send a promise before it is on disk: it never sees the message until
//! then. The same gate applies to the replica's own votes, so a leader counts itself only
//! once its own log write is durable, while the Accepts to its peers go out at once (the
//! leader writes its log in parallel with replication). Held replies are bounded by
//! [`Config::held_replies_max`]: at the bound, the replica takes no work that would hold
//! more, and never drops one already held.
//!
//! # Where things are
//! The proposer decides every role change ([`Proposer`](crate::proposer)); the child
//! modules carry its decisions out, one responsibility each: `routing` (the plausibility
//! check and dispatch of peer messages, sending), `election` (phase 1, stepping down),
//! `replication` (phase 2, heartbeats, commit announcements), `read_index` (linearizable
//! reads), `catch_up` (lagging replicas and snapshot offers), `durability` (persist
//! batches and held replies), `timer` (the [`Timer`] kinds and their deadlines) and
//! `invariants` (what is asserted after every input).

mod catch_up;
mod durability;
mod election;
mod invariants;
mod membership;
mod output;
mod read_index;
mod repair;
mod replication;
mod routing;
#[cfg(test)]
pub(crate) mod test_support;
mod timer;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::acceptor::Acceptor;
use crate::ballot::{Ballot, NodeId, Slot};
use crate::config::{Config, ConfigError};
use crate::learner::Learner;
use crate::membership::{Membership, MembershipLog};
use crate::message::Message;
use crate::persist::RecoveredState;
use crate::proposer::{Proposer, Role};
use crate::rng::Rng;
use crate::value::Value;
use durability::Durability;
use timer::{Timer, TimerTable};

pub use output::{Output, ProposeError, ReconfigError};

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
    /// Start a replica with damaged durable state as an ordinary voter, without repair.
    RepairSkipped,
    /// Keep leading after a catch-up reply that carries a ballot above the leader's own.
    LeaderIgnoresHigherCatchUp,
    /// Record a value learned chosen without raising the promise to its ballot, and let an
    /// Accept rewrite a slot known chosen.
    ChosenDoesNotRaisePromise,
    /// A leader proposes past the reconfiguration window, in slots whose membership its
    /// delivered log does not decide yet.
    LeaderIgnoresReconfigWindow,
}

/// One member of a Multi-Paxos cluster: proposer, acceptor and learner.
///
/// Its methods, by kind:
/// - constructors: [`Replica::new`] (an empty log), [`Replica::recover`] (from disk);
/// - getters, which change nothing: [`id`](Replica::id), [`config`](Replica::config),
///   [`role`](Replica::role), [`ballot`](Replica::ballot),
///   [`promised`](Replica::promised), [`commit_index`](Replica::commit_index),
///   [`delivered_index`](Replica::delivered_index), [`log_start`](Replica::log_start),
///   [`leader_hint`](Replica::leader_hint), [`inflight_slots`](Replica::inflight_slots),
///   [`held_replies`](Replica::held_replies),
///   [`queued_commands`](Replica::queued_commands), [`accepted`](Replica::accepted);
/// - inputs: [`handle_message`](Replica::handle_message),
///   [`handle_timeout`](Replica::handle_timeout),
///   [`handle_durable`](Replica::handle_durable), [`propose`](Replica::propose),
///   [`read`](Replica::read), [`compact`](Replica::compact),
///   [`install_snapshot`](Replica::install_snapshot);
/// - outputs: after every input, drain [`poll_output`](Replica::poll_output) until it
///   returns `None` and carry out each output in order; then ask
///   [`poll_timeout`](Replica::poll_timeout) when to call `handle_timeout` next.
#[derive(Clone, Debug, Hash)]
pub struct Replica {
    /// The configuration in force (validated).
    config: Config,
    /// The memberships that govern the log from what was delivered on (replicated state:
    /// changes are values in the log).
    membership: MembershipLog,
    /// This replica joins an existing cluster and knows no membership yet; it waits for
    /// a snapshot, which carries one.
    joining: bool,
    /// Whether this replica was ever a member in its membership log (so that leaving it
    /// means it was removed), and whether [`Output::Removed`] was given.
    member_seen: bool,
    removed: bool,
    /// The promise and the accepted values: the state that must survive a crash.
    acceptor: Acceptor,
    /// The commit index and what was delivered to the host.
    learner: Learner,
    /// The role (follower, candidate, leader) and what it needs to play it.
    proposer: Proposer,

    /// Persist batches, and the replies that wait for them (bounded by
    /// `config.held_replies_max`, see [`Replica::held_full`]).
    durability: Durability,
    /// Messages this replica sent itself (its own votes), handled before the next drain.
    self_inbox: VecDeque<Message>,
    /// Outputs not yet drained by the host, in order.
    outputs: VecDeque<Output>,

    /// The latest time any input carried (time never goes back for the core).
    now_ms: u64,
    /// The deadline of each timer.
    timers: TimerTable,
    /// When a snapshot was last offered to each peer (at most one per
    /// [`Config::snapshot_resend_interval_ms`]): a rate limit, not a timer, since nothing
    /// happens when it runs out.
    snapshot_sent_ms: BTreeMap<NodeId, u64>,
    /// Set while this replica repairs damaged durable state: it votes for nothing.
    repair: Option<repair::Repair>,

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
    ///
    /// Its membership comes from `state.membership` (the host's snapshot), or, for a
    /// cluster that never took a snapshot, from the voters in `config.members`; changes
    /// chosen since are applied again as the log is re-delivered.
    pub fn recover(
        config: Config,
        seed: u64,
        now_ms: u64,
        state: &RecoveredState,
    ) -> Result<Self, ConfigError> {
        let membership = match &state.membership {
            Some(log) => {
                config.validate_limits()?;
                log.clone()
            }
            None => {
                config.validate()?;
                MembershipLog::new(
                    config.reconfig_delay_slots,
                    Membership::initial(&config.members, &BTreeMap::new()),
                )
            }
        };
        Ok(Replica::assemble(config, seed, now_ms, state, membership))
    }

    /// A replica joining an existing cluster with an empty log: it knows no membership
    /// until the leader sends it a snapshot (the host installs it with
    /// [`Replica::install_snapshot`]), and it votes only once the membership says so
    /// (`config.members` is not used).
    pub fn join(config: Config, seed: u64, now_ms: u64) -> Result<Self, ConfigError> {
        config.validate_limits()?;
        let mut replica = Replica::assemble(
            config,
            seed,
            now_ms,
            &RecoveredState::default(),
            MembershipLog::unknown(),
        );
        replica.joining = true;
        Ok(replica)
    }

    fn assemble(
        config: Config,
        seed: u64,
        now_ms: u64,
        state: &RecoveredState,
        membership: MembershipLog,
    ) -> Self {
        let learner = Learner::recover(state);
        let durability = Durability::new(state.promised, learner.commit());
        let member_seen = membership.all_members().contains(&config.id);
        let mut replica = Replica {
            membership,
            joining: false,
            member_seen,
            removed: false,
            acceptor: Acceptor::recover(state),
            learner,
            proposer: Proposer::new(
                config.id,
                Rng::new(seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                state.promised.round,
            ),
            durability,
            self_inbox: VecDeque::new(),
            outputs: VecDeque::new(),
            now_ms,
            timers: TimerTable::default(),
            snapshot_sent_ms: BTreeMap::new(),
            repair: None,
            config,
            #[cfg(test)]
            bug: None,
        };
        replica.reset_election_timer();
        replica
    }

    /// When a follower or candidate next starts an election (for the model checker, which
    /// fires that timer directly); 0 for a leader, which runs no election timer.
    #[cfg(test)]
    pub(crate) fn election_deadline_ms(&self) -> u64 {
        self.timers.get(Timer::Election).unwrap_or(0)
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
        self.proposer.role()
    }

    /// The ballot this replica leads or campaigns under, or else the one it promised.
    pub fn ballot(&self) -> Ballot {
        self.proposer
            .ballot()
            .unwrap_or_else(|| self.acceptor.promised())
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
        self.proposer.leader_hint(&self.config, self.now_ms)
    }

    /// Slots proposed by this leader and not yet chosen.
    pub fn inflight_slots(&self) -> usize {
        self.proposer.inflight_slots()
    }

    /// Replies (Promise, Accepted, own Prepares) waiting for a persist batch to become
    /// durable; at most about [`Config::held_replies_max`].
    pub fn held_replies(&self) -> usize {
        self.durability.held_len()
    }

    /// Commands waiting for a slot.
    pub fn queued_commands(&self) -> usize {
        self.proposer.queued_commands()
    }

    /// The acceptor's accepted ballot and value in `slot`, if it still holds one.
    pub fn accepted(&self, slot: Slot) -> Option<&(Ballot, Value)> {
        self.acceptor.get(slot)
    }

    /// The memberships that govern the log from what was delivered on.
    pub fn membership_log(&self) -> &MembershipLog {
        &self.membership
    }

    /// The membership that governs the next slot to deliver.
    pub fn membership(&self) -> &Membership {
        self.membership.at(self.learner.delivered())
    }

    /// Whether this replica joins a cluster and has not received its membership yet.
    pub fn joining(&self) -> bool {
        self.joining
    }

    /// Every other member this replica knows of (voters and learners, of the memberships
    /// that govern slots from what was delivered on).
    pub fn peers(&self) -> BTreeSet<NodeId> {
        let mut all = self.membership.all_members();
        all.remove(&self.config.id);
        all
    }

    // ----- inputs -----

    /// Proposes a command. On the leader it is queued and given a slot (batched with others)
    /// on the next [`Replica::poll_output`]; it is then chosen, or lost with a leadership
    /// change (the host cannot tell which until it sees it committed or times out).
    pub fn propose(&mut self, now_ms: u64, command: Bytes) -> Result<(), ProposeError> {
        self.tick(now_ms);
        if !self.proposer.is_leader() {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader_hint(),
            });
        }
        if self.proposer.queued_commands() >= self.config.queued_commands_max {
            return Err(ProposeError::Busy);
        }
        self.proposer.enqueue(command);
        Ok(())
    }

    /// Asks to serve a linearizable read (read-index). On the leader the read waits for a
    /// majority to confirm this replica still leads, in a round started after this call, and
    /// for the state machine to reach the commit index; then [`Output::ReadReady`] comes out.
    /// Many reads share one confirmation round.
    pub fn read(&mut self, now_ms: u64, id: u64) -> Result<(), ProposeError> {
        self.tick(now_ms);
        self.request_read(id)
    }

    /// A message from replica `from` arrived. Messages carrying values no correct replica
    /// sends are ignored (see [`SLOT_SPAN_MAX`]). Messages from replicas this one does
    /// not know as members are handled: it may lag behind a membership change, and only
    /// votes of the voters that govern a slot ever count (the host authenticates peers).
    pub fn handle_message(&mut self, now_ms: u64, from: NodeId, message: Message) {
        self.tick(now_ms);
        if from == self.config.id {
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
        self.debug_check();
    }

    /// Persist batches up to and including `id` are durable: release what waited on them.
    pub fn handle_durable(&mut self, now_ms: u64, id: u64) {
        self.tick(now_ms);
        self.mark_durable(id);
        self.try_finish_repair();
        self.pump();
        self.debug_check();
    }

    /// The earliest time at which [`Replica::handle_timeout`] has work to do. Some timer is
    /// always armed: a follower's or candidate's election timeout, or a leader's heartbeat.
    pub fn poll_timeout(&self) -> u64 {
        self.timers.next_deadline_ms().unwrap_or(u64::MAX)
    }

    /// Time passed. Call when `now_ms` reaches [`Replica::poll_timeout`] (calling more
    /// often is harmless). Every expired timer is handled, in a fixed order.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.tick(now_ms);
        for timer in Timer::ALL {
            if self.timers.is_expired(timer, self.now_ms) {
                self.timers.stop(timer);
                self.on_timer(timer);
            }
        }
        self.pump();
        self.debug_check();
    }

    /// The host's state machine is durably snapshotted up to `slot` (exclusive): forget the
    /// log below it. `slot` is clipped to what was delivered.
    pub fn compact(&mut self, slot: Slot) {
        let slot = slot.min(self.learner.delivered());
        self.acceptor.compact(slot);
    }

    /// The host durably installed a snapshot, received from a peer, covering every slot
    /// below `slot`, with the membership log stored in it. Delivery continues from there.
    /// A snapshot not newer than what was delivered is ignored (unless this replica joins
    /// and has no membership yet).
    pub fn install_snapshot(&mut self, now_ms: u64, slot: Slot, membership: MembershipLog) {
        self.tick(now_ms);
        if slot <= self.learner.delivered() && !self.joining {
            return;
        }
        self.acceptor.compact(slot);
        self.learner.install_snapshot(slot);
        self.durability.snapshot_installed(slot);
        self.membership = membership;
        self.membership.forget_before(slot);
        self.joining = false;
        self.member_seen |= self.membership.all_members().contains(&self.config.id);
        if self.repair.is_none() {
            // A repairing replica campaigns for nothing: it runs no election timer.
            self.reset_election_timer();
        }
    }

    /// The next thing the host must do, or `None` when there is nothing left for now.
    /// Batches queued proposals into slots and groups persistence before handing them out.
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.outputs.is_empty() {
            self.flush();
        }
        self.outputs.pop_front()
    }

    // ----- plumbing shared by the handlers -----

    /// What an expired timer sets off (it was stopped first; its handler re-arms it).
    fn on_timer(&mut self, timer: Timer) {
        match timer {
            // The request is given up; the next gap found sends another.
            Timer::CatchUp => {}
            Timer::Election => self.on_election_timeout(),
            Timer::Heartbeat => self.leader_tick(),
            Timer::PrepareResend => self.resend_prepares(),
            Timer::Repair => self.repair_tick(),
        }
    }

    /// Whether a planted bug may break the invariants this replica asserts (always false
    /// outside this crate's tests).
    fn bug_planted(&self) -> bool {
        #[cfg(test)]
        return self.bug.is_some();
        #[cfg(not(test))]
        return false;
    }

    /// An input arrived at `now_ms`.
    fn tick(&mut self, now_ms: u64) {
        // Time never goes backwards for the core, even if the host's clock does.
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Turns the state changes of the inputs since the last drain into outputs, in the
    /// order the host must carry them out: new slots and their Accepts, commit
    /// announcements, one persist batch, committed values, then reads they unblock.
    fn flush(&mut self) {
        self.assign_slots();
        self.pump();
        self.retire_chosen();
        self.emit_persist_batch();
        let mut next_slot = self.learner.delivered();
        while let Some((slot, value)) = self.learner.next_delivery(&self.acceptor) {
            // Invariant: slots are delivered in order, without gaps, each once.
            debug_assert_eq!(slot, next_slot, "slot {slot} delivered out of order");
            next_slot += 1;
            let reconfig = match &value {
                Value::Reconfig(r) => Some(r.clone()),
                _ => None,
            };
            self.outputs.push_back(Output::Committed { slot, value });
            if let Some(reconfig) = reconfig {
                self.apply_reconfig(slot, reconfig);
            }
        }
        self.after_delivery();
        self.release_reads();
        self.debug_check();
    }
}

#[cfg(test)]
mod tests {
    use crate::replica::test_support::*;

    #[test]
    fn recovery_redelivers_committed_slots_after_the_snapshot() {
        let mut state = RecoveredState::default();
        state.apply(PersistEntry::Promised(b(1, 1)));
        for (slot, c) in [(0, "a"), (1, "b"), (2, "c")] {
            state.apply(PersistEntry::Accepted {
                slot,
                ballot: b(1, 1),
                value: cmd(c),
            });
        }
        state.apply(PersistEntry::Committed { upto: 2 });
        state.snapshot_slot = 1;
        let mut r = match Replica::recover(Config::new(2, vec![1, 2, 3]), 3, 0, &state) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            drain(&mut r),
            vec![Output::Committed {
                slot: 1,
                value: cmd("b"),
            }]
        );
        assert_eq!(r.promised(), b(1, 1));
        assert_eq!(r.commit_index(), 2);
    }
}

#[cfg(test)]
mod membership_tests {
    use crate::replica::test_support::*;

    /// A repairing replica that installs a snapshot (with the membership it carries) still
    /// runs no election timer: it campaigns for nothing until repaired.
    #[test]
    fn a_repairing_replica_that_installs_a_snapshot_arms_no_election_timer() {
        let state = RecoveredState::default();
        let mut r = Replica::recover_for_repair(Config::new(2, vec![1, 2, 3]), 3, 0, &state)
            .unwrap_or_else(|e| panic!("{e}"));
        let log = r.membership_log().clone();
        r.install_snapshot(10, 5, log);
        r.handle_timeout(10); // the debug checks assert that timers follow the role
        assert!(r.repairing());
        assert_eq!(r.election_deadline_ms(), 0, "an election timer is armed");
        assert_eq!(r.delivered_index(), 5);
    }

    /// A joining replica votes for nothing and confirms nothing until a snapshot gives it
    /// a membership: it only asks for that snapshot.
    #[test]
    fn a_joining_replica_votes_for_nothing_until_it_has_a_membership() {
        let mut r = Replica::join(Config::new(4, vec![]), 3, 0).unwrap_or_else(|e| panic!("{e}"));
        let _ = drain(&mut r);
        r.handle_message(
            1,
            1,
            Message::Prepare {
                ballot: b(1, 1),
                from_slot: 0,
            },
        );
        r.handle_message(
            2,
            1,
            Message::Accept {
                ballot: b(1, 1),
                entries: vec![(0, cmd("x"))],
                commit: 1,
            },
        );
        r.handle_message(
            3,
            1,
            Message::Heartbeat {
                ballot: b(1, 1),
                commit: 1,
                read_round: 1,
            },
        );
        let out = drain(&mut r);
        assert_eq!(
            out,
            vec![send(
                1,
                Message::CatchUpRequest {
                    from_slot: 0,
                    joining: true,
                }
            )],
            "no promise, no vote, no acknowledgement: only the request for a snapshot"
        );
        assert_eq!(r.promised(), Ballot::ZERO);
        assert!(r.accepted(0).is_none());
    }
}
