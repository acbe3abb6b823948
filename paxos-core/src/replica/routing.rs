//! How messages enter and leave a replica: the plausibility check on what peers send, the
//! dispatch of each message to its role's handler, and sending (to a peer, or to this
//! replica itself through the self-inbox, so its own votes take the same path as a peer's).

use super::{Output, Replica, ROUND_MAX, SLOT_MAX, SLOT_SPAN_MAX};
use crate::ballot::{Ballot, NodeId, Slot};
use crate::message::Message;

impl Replica {
    /// Whether every ballot and slot in `message` is one a correct replica could send: a
    /// forged or corrupt slot near `u64::MAX` must neither overflow arithmetic nor make a
    /// leader fill a huge range of slots with no-ops, and a round near `u64::MAX` must not
    /// make the next election's round overflow.
    pub(super) fn plausible(&self, message: &Message) -> bool {
        // Any node id may appear in a ballot: a replica that lags behind a membership change
        // does not know every member yet, and a vote counts only where its voter governs.
        let ballot_ok = |b: &Ballot| b.round < ROUND_MAX;
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
            Message::CatchUpRequest { from_slot, .. } => commit_ok(from_slot),
            Message::HandOver { ballot } => ballot_ok(ballot),
            Message::CatchUp { entries, commit } => {
                commit_ok(commit)
                    && entries
                        .iter()
                        .all(|e| ballot_ok(&e.ballot) && e.slot < SLOT_MAX)
            }
            Message::RepairQuery => true,
            Message::RepairInfo {
                promised, leading, ..
            } => {
                ballot_ok(promised)
                    && leading.is_none_or(|(b, next)| ballot_ok(&b) && commit_ok(&next))
            }
        }
    }

    /// Sends `message` to `to`: an output for a peer, the self-inbox for this replica.
    pub(super) fn send(&mut self, to: NodeId, message: Message) {
        if to == self.config.id {
            self.self_inbox.push_back(message);
        } else {
            self.outputs.push_back(Output::Send { to, message });
        }
    }

    /// Sends `message` to every member, this replica included (voters and learners of
    /// every membership that governs a slot from what was delivered on).
    pub(super) fn broadcast(&mut self, message: &Message) {
        let mut all = self.membership.all_members();
        all.insert(self.config.id);
        for to in all {
            self.send(to, message.clone());
        }
    }

    /// Sends `message` to every member but this replica.
    pub(super) fn broadcast_peers(&mut self, message: &Message) {
        for to in self.peers() {
            self.send(to, message.clone());
        }
    }

    /// Handles the replica's messages to itself until none are left.
    pub(super) fn pump(&mut self) {
        while let Some(m) = self.self_inbox.pop_front() {
            self.on_message(self.config.id, m);
        }
    }

    /// Hands `message` from `from` to the handler of its kind.
    pub(super) fn on_message(&mut self, from: NodeId, message: Message) {
        if self.repair.is_some() {
            self.on_message_repairing(from, message);
            return;
        }
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
            Message::CatchUpRequest { from_slot, joining } => {
                self.on_catchup_request(from, from_slot, joining)
            }
            Message::HandOver { ballot } => self.on_hand_over(ballot),
            Message::CatchUp { entries, commit } => self.on_catchup(from, entries, commit),
            Message::RepairQuery => self.on_repair_query(from),
            Message::RepairInfo { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::replica::test_support::*;

    #[test]
    fn forged_slots_and_rounds_near_the_limit_are_ignored() {
        let mut r = leader();
        let forged = [
            Message::Promise {
                ballot: b(1, 1),
                commit: 0,
                accepted: vec![Entry {
                    slot: u64::MAX - 1,
                    ballot: b(1, 2),
                    value: Value::Noop,
                }],
            },
            Message::Accept {
                ballot: b(9, 2),
                entries: vec![(u64::MAX, Value::Noop)],
                commit: 0,
            },
            Message::Prepare {
                ballot: b(u64::MAX, 2),
                from_slot: 0,
            },
            Message::CatchUp {
                entries: vec![],
                commit: u64::MAX,
            },
        ];
        for m in forged {
            r.handle_message(5, 2, m.clone());
            assert_eq!(drain(&mut r), vec![], "{m:?} must be ignored");
            assert_eq!((r.role(), r.ballot()), (Role::Leader, b(1, 1)));
        }
        // A plausible message still works.
        r.handle_message(
            5,
            2,
            Message::HeartbeatAck {
                ballot: b(1, 1),
                read_round: 0,
                commit: 0,
            },
        );
        assert_eq!(r.role(), Role::Leader);
    }
}
