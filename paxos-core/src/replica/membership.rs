//! Membership changes as a replica carries them out: proposing one (with the leader's
//! checks that keep the cluster live), applying one when it is delivered, the memberships
//! a candidate or a read round must hear from, and a leader handing over when it no
//! longer votes. The rule itself is in [`crate::membership`].

use std::collections::BTreeSet;

use bytes::Bytes;

use super::{Output, ReconfigError, Replica};
use crate::ballot::{NodeId, Slot};
use crate::membership::{Change, Membership, Reconfig};
use crate::message::Message;
use crate::proposer::Role;

impl Replica {
    /// Asks to change the membership. On the leader, the change is checked against the
    /// latest membership and queued for a slot of its own; [`Output::Reconfigured`] comes
    /// out once it is chosen and delivered (applied, or refused because another change
    /// came first), or [`Output::ReconfigDropped`] if this replica stops leading before
    /// it gets a slot.
    ///
    /// Refused at once, nothing changed: on a replica that does not lead; while another
    /// change is waiting, in flight, or not yet in effect; a change that cannot apply to
    /// the latest membership (a stale expected id, an id that exists or does not); a
    /// promotion of a learner that is not caught up within
    /// [`Config::promote_lag_max`](crate::Config::promote_lag_max) slots; and, unless
    /// `force`, a change after which the voters that answered lately would not be a
    /// majority.
    pub fn propose_reconfig(
        &mut self,
        now_ms: u64,
        reconfig: Reconfig,
        force: bool,
    ) -> Result<(), ReconfigError> {
        self.tick(now_ms);
        if !self.proposer.is_leader() {
            return Err(ReconfigError::NotLeader {
                leader_hint: self.leader_hint(),
            });
        }
        let delivered = self.learner.delivered();
        if self.proposer.reconfig_pending() || self.membership.latest_from() > delivered {
            return Err(ReconfigError::InProgress);
        }
        let latest = self.membership.latest();
        let next = latest.apply(&reconfig).map_err(ReconfigError::Refused)?;
        let Some((alive, peer_commit)) = self.proposer.peer_view(&self.config, &next, now_ms)
        else {
            return Err(ReconfigError::NotLeader { leader_hint: None });
        };
        if let Change::Promote { id } = reconfig.change {
            let allowed = self.config.promote_lag_max;
            let commit = self.learner.commit();
            let theirs = peer_commit.get(&id).copied();
            let lag = theirs.map(|c| commit.saturating_sub(c));
            // It must hold what this leader compacted away (it installed a snapshot), and
            // have learned something if there is anything to learn.
            let empty =
                theirs.is_none_or(|c| (c == 0 && commit > 0) || c < self.acceptor.log_start());
            if !alive.contains(&id) || empty || lag.is_none_or(|l| l > allowed) {
                // A learner that has not answered lately: its last lag means nothing.
                let lag = lag.filter(|_| alive.contains(&id));
                return Err(ReconfigError::LearnerNotReady { id, lag, allowed });
            }
        }
        if !force && !next.is_quorum(&alive) {
            let live = alive.iter().filter(|&&id| next.is_voter(id)).count();
            return Err(ReconfigError::WouldLoseQuorum {
                live,
                needed: next.quorum(),
            });
        }
        self.proposer.enqueue_reconfig(reconfig);
        Ok(())
    }

    /// The change chosen in `slot` is being delivered: apply it (or record its refusal)
    /// and tell the host.
    pub(super) fn apply_reconfig(&mut self, slot: Slot, reconfig: Reconfig) {
        let outcome = if self.joining {
            // Without a membership there is nothing to apply it to; the snapshot this
            // replica waits for carries its effect.
            return;
        } else {
            self.membership.apply_chosen(slot, &reconfig)
        };
        let latest = self.membership.latest().clone();
        self.member_seen |= latest.contains(self.config.id);
        self.outputs.push_back(Output::Reconfigured {
            slot,
            reconfig,
            outcome,
            latest,
        });
    }

    /// After a drain delivered slots: forget memberships no slot from `delay` slots back
    /// on needs (a member that just left stays a peer that long, so the leader keeps
    /// telling it the commit index until it delivers its own removal), and notice when
    /// this replica is no longer a member.
    pub(super) fn after_delivery(&mut self) {
        let delivered = self.learner.delivered();
        self.membership
            .forget_before(delivered.saturating_sub(self.membership.delay()));
        let me = self.config.id;
        if self.member_seen
            && !self.removed
            && !self.membership.at(delivered).contains(me)
            && !self.membership.latest().contains(me)
        {
            self.removed = true;
            self.outputs.push_back(Output::Removed);
        }
    }

    /// The first slot whose membership this replica does not know yet: every slot that
    /// decides the membership of the slots below was delivered.
    pub(super) fn membership_horizon(&self) -> Slot {
        self.learner
            .delivered()
            .saturating_add(self.membership.delay())
    }

    /// The slots from the commit index up to the horizon: a candidate needs a majority
    /// of every membership that governs one of them, and so does a read round.
    pub(super) fn window_now(&self) -> (Slot, Slot) {
        let from = self.learner.commit();
        (from, self.membership_horizon().max(from + 1))
    }

    /// The memberships that govern [`Replica::window_now`].
    pub(super) fn governing_now(&self) -> Vec<Membership> {
        let (from, to) = self.window_now();
        self.membership
            .governing(from, to)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Whether this replica may campaign: it knows its membership, votes in the one
    /// that governs its next slot, and is not repairing.
    pub(super) fn may_campaign(&self) -> bool {
        !self.joining
            && self.repair.is_none()
            && self
                .membership
                .at(self.learner.commit())
                .is_voter(self.config.id)
    }

    /// Whether `ids` hold a majority of every membership in [`Replica::governing_now`].
    pub(super) fn quorum_now(&self, ids: &BTreeSet<NodeId>) -> bool {
        let (from, to) = self.window_now();
        self.membership
            .governing(from, to)
            .iter()
            .all(|m| m.is_quorum(ids))
    }

    /// A leader that no longer votes, with nothing in flight, steps down and asks the
    /// most caught-up voter to campaign at once.
    pub(super) fn hand_over_if_leaving(&mut self) {
        let Some(successor) = self.proposer.handing_over(&self.membership) else {
            return;
        };
        let ballot = self.proposer.ballot();
        if let Some(ballot) = ballot {
            // Announce the commit index before stepping down: every slot below the next
            // one is chosen (nothing is in flight), and the successor must know it, or its
            // election still covers slots governed by a membership this replica votes in,
            // whose majority it may not reach once this replica has stopped. Commits of a
            // leader that stepped down are never announced otherwise. Safe as any Commit:
            // it names only slots this leader's learner knows chosen.
            let commit = self.learner.commit();
            self.broadcast_peers(&Message::Commit { ballot, commit });
        }
        self.become_follower();
        if let (Some(to), Some(ballot)) = (successor, ballot) {
            self.send(to, Message::HandOver { ballot });
        }
    }

    /// The leader of `ballot` hands over to this replica: campaign now, if it may and
    /// still follows that leader (a stale or forged hand-over only costs an election).
    pub(super) fn on_hand_over(&mut self, ballot: crate::ballot::Ballot) {
        if self.proposer.role() == Role::Follower
            && ballot >= self.acceptor.promised()
            && self.may_campaign()
        {
            self.start_election_unless_held_full();
        }
    }

    /// On the leader: each peer's commit index, as its last heartbeat acknowledgement
    /// reported it (how far each member has caught up). `None` unless leading.
    pub fn peer_commits(&self) -> Option<&std::collections::BTreeMap<NodeId, Slot>> {
        self.proposer.peer_commits()
    }

    /// The host record of member `id` in the latest membership (empty if unknown).
    pub fn member_meta(&self, id: NodeId) -> Bytes {
        self.membership
            .latest()
            .members
            .get(&id)
            .map(|m| m.meta.clone())
            .unwrap_or_default()
    }
}
