//! Repair: a replica whose durable state was damaged votes for nothing until what it may
//! have lost can no longer matter.
//!
//! A replica whose log lost records that may have been synced (a damaged record that a
//! later sync marker proves was written before a completed fsync) may have forgotten a
//! promise it made and values it accepted. Voting again at once could break agreement: a
//! candidate still holding its forgotten promise, or a value chosen with its forgotten
//! vote, would be contradicted. So it starts with [`Replica::recover_for_repair`] and,
//! until repaired, sends no Promise, Accepted, Nack or heartbeat acknowledgement, and never
//! campaigns; it only learns chosen values (catch-up) and serves those it knows.
//!
//! It is repaired once all of these hold, and only then votes again:
//! 1. **Every peer answered** a [`Message::RepairQuery`] with its promise (a peer that is
//!    repairing too answers that it is, and campaigns for nothing). Any promise this
//!    replica forgot was given to a candidate that durably promised its own ballot first,
//!    so the highest promise `P` among the answers bounds every forgotten promise, as long
//!    as that candidate is alive to use it; a candidate that restarted lost its campaign.
//! 2. **A leader of ballot `B >= P` answered** with the next slot `N` it would assign. Its
//!    phase 1 completed with a majority of the *other* replicas (this one sent no
//!    promise): any value chosen with this replica's forgotten vote was accepted by at
//!    least one of them before it promised `B` (after promising `B` it would refuse the
//!    older ballot), so that leader re-proposed it in a slot below `N`.
//! 3. **Every slot below `N` is chosen and recorded** (learned through catch-up), and the
//!    promise of `B` is **durable**. From then on its phase-1 answers hold every value
//!    chosen where it may have voted, and it refuses every ballot below what it may have
//!    promised: it is an acceptor like any other.
//!
//! Liveness needs every peer to answer and a leader elected without this replica: with 3
//! replicas, both others up. The model checker drives this with a fault that wipes a
//! node's durable state, and finds the violation when repair is skipped.

use std::collections::BTreeMap;

use super::{Output, Replica, Timer};
use crate::ballot::{Ballot, NodeId, Slot};
use crate::config::{Config, ConfigError};
use crate::message::Message;
use crate::persist::RecoveredState;

/// What a repairing replica has learned so far.
#[derive(Clone, Debug, Default, Hash)]
pub(crate) struct Repair {
    /// Each peer's latest answer: its promise (`ZERO` from a repairing peer).
    answers: BTreeMap<NodeId, Ballot>,
    /// Each peer's latest claim to lead: its ballot and next slot.
    leaders: BTreeMap<NodeId, (Ballot, Slot)>,
    /// The leader ballot and slot chosen as the target, once every peer answered.
    target: Option<(Ballot, Slot)>,
}

impl Replica {
    /// A replica whose durable state was damaged: `state` is what survived (possibly
    /// nothing). It votes for nothing until repaired (see the module notes), then emits
    /// [`Output::Repaired`]. The host must keep a durable "repairing" mark until then, and
    /// restart with this constructor again if it stops before.
    pub fn recover_for_repair(
        config: Config,
        seed: u64,
        now_ms: u64,
        state: &RecoveredState,
    ) -> Result<Self, ConfigError> {
        let mut replica = Replica::recover(config, seed, now_ms, state)?;
        replica.repair = Some(Repair::default());
        replica.timers.stop(Timer::Election);
        replica.repair_tick();
        Ok(replica)
    }

    /// Whether this replica is repairing (and so votes for nothing).
    pub fn repairing(&self) -> bool {
        self.repair.is_some()
    }

    /// [`Timer::Repair`]: ask every peer that has not answered (and the target leader, for
    /// the chosen values still missing) again.
    pub(super) fn repair_tick(&mut self) {
        let Some(repair) = &self.repair else {
            return;
        };
        let target = repair.target;
        self.broadcast_peers(&Message::RepairQuery);
        if let Some((ballot, next)) = target {
            if self.learner.commit() < next && ballot.node != self.config.id {
                self.request_catchup(ballot.node);
            }
        }
        let at = self
            .now_ms
            .saturating_add(self.config.heartbeat_interval_ms);
        self.timers.set(Timer::Repair, at);
    }

    /// What a repairing replica does with a message: learn, never vote.
    pub(super) fn on_message_repairing(&mut self, from: NodeId, message: Message) {
        match message {
            Message::Prepare { ballot, .. }
            | Message::Nack {
                promised: ballot, ..
            }
            | Message::HeartbeatAck { ballot, .. }
            | Message::Promise { ballot, .. }
            | Message::Accepted { ballot, .. } => self.proposer.observe(ballot),
            Message::Accept { ballot, commit, .. }
            | Message::Heartbeat { ballot, commit, .. }
            | Message::Commit { ballot, commit } => {
                self.proposer.observe(ballot);
                if self.learner.on_commit_hint(&self.acceptor, ballot, commit) {
                    self.request_catchup(from);
                }
            }
            Message::CatchUpRequest { from_slot, joining } => {
                self.on_catchup_request(from, from_slot, joining)
            }
            Message::HandOver { .. } => {}
            Message::CatchUp { entries, commit } => self.on_catchup(from, entries, commit),
            Message::RepairQuery => self.on_repair_query(from),
            Message::RepairInfo {
                promised,
                leading,
                repairing,
            } => self.on_repair_info(from, promised, leading, repairing),
        }
        self.try_finish_repair();
    }

    /// Any replica answers a repair query with its promise and, if it leads, where its log
    /// ends.
    pub(super) fn on_repair_query(&mut self, from: NodeId) {
        let info = Message::RepairInfo {
            promised: self.acceptor.promised(),
            leading: self.proposer.leading(),
            repairing: self.repair.is_some(),
        };
        self.send(from, info);
    }

    fn on_repair_info(
        &mut self,
        from: NodeId,
        promised: Ballot,
        leading: Option<(Ballot, Slot)>,
        repairing: bool,
    ) {
        let peers = self.peers().len();
        let own = self.acceptor.promised();
        let Some(repair) = self.repair.as_mut() else {
            return;
        };
        let promised = if repairing { Ballot::ZERO } else { promised };
        let answer = repair.answers.entry(from).or_insert(promised);
        *answer = (*answer).max(promised);
        match leading {
            Some(l) => {
                repair.leaders.insert(from, l);
            }
            None => {
                repair.leaders.remove(&from);
            }
        }
        if repair.answers.len() < peers {
            return;
        }
        let floor = repair.answers.values().copied().fold(own, Ballot::max);
        let best = repair
            .leaders
            .values()
            .filter(|(b, _)| *b >= floor)
            .max_by_key(|(b, _)| *b)
            .copied();
        if let Some((ballot, next)) = best {
            if repair.target.is_none_or(|(t, _)| ballot > t) {
                repair.target = Some((ballot, next));
                if self.learner.commit() < next {
                    self.request_catchup(ballot.node);
                }
            }
        }
    }

    /// Promises the target ballot once every slot below the target's slot is recorded
    /// chosen, and ends the repair once that promise is durable.
    pub(super) fn try_finish_repair(&mut self) {
        let Some((ballot, next)) = self.repair.as_ref().and_then(|r| r.target) else {
            return;
        };
        if self.learner.commit() < next {
            return;
        }
        if self.acceptor.promised() < ballot {
            let from = self.learner.commit();
            // Raising a promise never fails; the entries it returns are not needed.
            let _ = self
                .acceptor
                .prepare(ballot, from, &mut self.durability.pending);
        }
        if self.durability.promised_durable() < ballot || !self.durability.pending.is_empty() {
            return;
        }
        // Invariant: a repaired replica's durable promise covers every promise it may have
        // forgotten, and its log every value chosen where it may have voted.
        debug_assert!(self.durability.promised_durable() >= ballot);
        self.repair = None;
        self.timers.stop(Timer::Repair);
        self.outputs.push_back(Output::Repaired);
        self.reset_election_timer();
    }
}
