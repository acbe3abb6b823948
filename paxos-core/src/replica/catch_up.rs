//! Catch-up of a lagging or recovering replica: asking a peer for chosen slots, serving
//! such requests (or asking the host to ship a snapshot for compacted slots), and learning
//! from the replies.

use super::timer::Timer;
#[cfg(test)]
use super::PlantedBug;
use super::{Output, Replica};
use crate::ballot::{NodeId, Slot};
use crate::message::Message;
use crate::value::Entry;

impl Replica {
    /// Asks `from` for the chosen slots from this replica's commit index on, unless a
    /// request is still outstanding ([`Timer::CatchUp`] gives one up after
    /// `election_timeout_min_ms`).
    pub(super) fn request_catchup(&mut self, from: NodeId) {
        if from == self.config.id || self.timers.is_pending(Timer::CatchUp, self.now_ms) {
            return;
        }
        let deadline_ms = self.now_ms + self.config.election_timeout_min_ms;
        self.timers.set(Timer::CatchUp, deadline_ms);
        let from_slot = self.learner.commit();
        let joining = self.joining;
        self.send(from, Message::CatchUpRequest { from_slot, joining });
    }

    /// `from` asks for the chosen slots from `from_slot` on: send what this replica knows
    /// chosen (about one batch at most), or, if it compacted some of them away or the
    /// requester joins and needs a membership, have the host ship a snapshot (at most
    /// once per `snapshot_resend_interval_ms` per peer).
    pub(super) fn on_catchup_request(&mut self, from: NodeId, from_slot: Slot, joining: bool) {
        if joining && self.joining {
            return; // it needs a membership, which this replica does not have either
        }
        if joining || from_slot < self.acceptor.log_start() {
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
    pub(super) fn on_catchup(&mut self, from: NodeId, entries: Vec<Entry>, commit: Slot) {
        self.timers.stop(Timer::CatchUp);
        if let Some(highest) = entries.iter().map(|e| e.ballot).max() {
            self.proposer.observe(highest);
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
                &mut self.durability.pending,
            );
        }
        if self.learner.commit() < commit {
            self.request_catchup(from);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::replica::test_support::*;

    #[test]
    fn lagging_follower_is_offered_a_snapshot_for_compacted_slots() {
        let mut r = leader();
        let t = 1_000;
        for c in ["a", "b", "c"] {
            assert_eq!(r.propose(t, Bytes::from(c)), Ok(()));
            let _ = drain(&mut r);
        }
        r.handle_durable(t, 2);
        r.handle_message(
            t,
            2,
            Message::Accepted {
                ballot: b(1, 1),
                slots: vec![0],
            },
        );
        let _ = drain(&mut r);
        assert_eq!(r.commit_index(), 1);
        r.compact(1);
        assert_eq!(r.log_start(), 1);
        r.handle_message(
            t,
            3,
            Message::CatchUpRequest {
                from_slot: 0,
                joining: false,
            },
        );
        assert_eq!(drain(&mut r), vec![Output::SendSnapshot { to: 3 }]);
        // Asked again at once, it does not ship a second snapshot.
        r.handle_message(
            t + 1,
            3,
            Message::CatchUpRequest {
                from_slot: 0,
                joining: false,
            },
        );
        assert_eq!(drain(&mut r), vec![]);
        // From the snapshot on, it serves log entries.
        r.handle_message(
            t + 2,
            3,
            Message::CatchUpRequest {
                from_slot: 1,
                joining: false,
            },
        );
        assert_eq!(
            drain(&mut r),
            vec![send(
                3,
                Message::CatchUp {
                    entries: vec![],
                    commit: 1,
                }
            )]
        );
    }
}
