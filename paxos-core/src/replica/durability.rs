//! The durability gate: persist batches handed to the host, replies held until the batch
//! they depend on is durable, and the bound on how many may be held.
//!
//! A reply that depends on acceptor state (a Promise, an Accepted, and a candidate's own
//! Prepares, which depend on its own promise) is tagged with the batch that must be durable
//! first, and only [`Replica::handle_durable`] lets it out. Batches are numbered from 1 in
//! the order they are handed out, and the host reports them durable in that order.

use std::collections::VecDeque;

use super::{Output, Replica};
use crate::ballot::{Ballot, NodeId, Slot};
use crate::message::Message;
use crate::persist::PersistEntry;

/// What was handed to the disk, what is known durable, and the replies waiting between.
#[derive(Clone, Debug, Hash)]
pub(super) struct Durability {
    /// Records changed since the last batch was handed out; the acceptor and the learner
    /// append to it.
    pub pending: Vec<PersistEntry>,
    /// The id the pending records' batch will get; batches `1..next_id` were handed out.
    next_id: u64,
    /// Every batch up to and including this one is durable.
    durable_id: u64,
    /// The commit index last handed to the disk.
    commit_persisted: Slot,
    /// The highest promise known to be on disk.
    promised_durable: Ballot,
    /// Batches handed out that raise the promise when they become durable:
    /// (batch id, promise), in batch order.
    promise_batches: VecDeque<(u64, Ballot)>,
    /// Replies held until the batch they depend on is durable: (batch id, to, message),
    /// in batch order.
    held: VecDeque<(u64, NodeId, Message)>,
}

impl Durability {
    /// The gate of a replica restarted with `promised` and `commit` on disk.
    pub fn new(promised: Ballot, commit: Slot) -> Self {
        Durability {
            pending: Vec::new(),
            next_id: 1,
            durable_id: 0,
            commit_persisted: commit,
            promised_durable: promised,
            promise_batches: VecDeque::new(),
            held: VecDeque::new(),
        }
    }

    /// The highest promise known to be on disk.
    pub fn promised_durable(&self) -> Ballot {
        self.promised_durable
    }

    /// How many replies wait for the disk.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Returns `message` to send now if everything persisted so far is durable; otherwise
    /// holds it for `to` until the batch that carries (or will carry) the latest record is.
    pub fn hold_unless_durable(&mut self, to: NodeId, message: Message) -> Option<Message> {
        let gate = if self.pending.is_empty() {
            self.next_id - 1
        } else {
            self.next_id
        };
        if gate <= self.durable_id {
            return Some(message);
        }
        // Invariant: a held reply waits for a batch that exists or is about to (the pending
        // records'), never for one that will not be handed out, and gates never decrease
        // along the queue, so releasing from its front releases all that may go.
        debug_assert!(gate <= self.next_id, "gate {gate} on an unknown batch");
        debug_assert!(
            self.held.back().is_none_or(|(g, _, _)| *g <= gate),
            "held replies out of batch order"
        );
        self.held.push_back((gate, to, message));
        None
    }

    /// Batches up to and including `id` are durable. Records the promise they carry and
    /// returns the replies that waited on them, in the order they were held.
    pub fn mark_durable(&mut self, id: u64) -> Vec<(NodeId, Message)> {
        debug_assert!(id < self.next_id, "durable id {id} was never handed out");
        self.durable_id = self.durable_id.max(id.min(self.next_id - 1));
        while let Some(&(batch, ballot)) = self.promise_batches.front() {
            if batch > self.durable_id {
                break;
            }
            self.promised_durable = self.promised_durable.max(ballot);
            self.promise_batches.pop_front();
        }
        let mut released = Vec::new();
        while let Some((gate, _, _)) = self.held.front() {
            if *gate > self.durable_id {
                break;
            }
            if let Some((_, to, msg)) = self.held.pop_front() {
                released.push((to, msg));
            }
        }
        released
    }

    /// The next batch for the disk: every pending record, and `commit` if it advanced
    /// since the last batch. `None` when there is nothing to write.
    pub fn take_batch(&mut self, commit: Slot) -> Option<(u64, Vec<PersistEntry>)> {
        if commit > self.commit_persisted {
            self.commit_persisted = commit;
            self.pending.push(PersistEntry::Committed { upto: commit });
        }
        if self.pending.is_empty() {
            return None;
        }
        let id = self.next_id;
        let entries = std::mem::take(&mut self.pending);
        let promised = entries.iter().filter_map(|e| match e {
            PersistEntry::Promised(b) => Some(*b),
            _ => None,
        });
        if let Some(b) = promised.max() {
            self.promise_batches.push_back((id, b));
        }
        self.next_id += 1;
        Some((id, entries))
    }

    /// A snapshot covering the slots below `slot` was installed durably: the commit index
    /// it implies needs no record of its own.
    pub fn snapshot_installed(&mut self, slot: Slot) {
        self.commit_persisted = self.commit_persisted.max(slot);
    }

    /// Checks the gate's invariants (debug builds): `commit` is the replica's commit
    /// index.
    pub fn debug_check(&self, commit: Slot) {
        // Batch ids: every durable one was handed out.
        debug_assert!(
            self.durable_id < self.next_id,
            "durable beyond what was handed out"
        );
        // What was written as committed is committed (the commit index never decreases).
        debug_assert!(
            self.commit_persisted <= commit,
            "commit {} persisted above the commit index {commit}",
            self.commit_persisted
        );
        // Held replies are gated on known, not yet durable batches. Gates never decrease
        // along the queue (asserted as each is held), so its ends bound them all.
        let gates = self.held.front().zip(self.held.back());
        debug_assert!(
            gates.is_none_or(|((first, _, _), (last, _, _))| {
                self.durable_id < *first && *last <= self.next_id
            }),
            "a held reply gated on a durable or unknown batch"
        );
        let batches = self
            .promise_batches
            .front()
            .zip(self.promise_batches.back());
        debug_assert!(
            batches.is_none_or(|((first, _), (last, _))| {
                self.durable_id < *first && *last < self.next_id
            }),
            "a promise batch already durable or never handed out"
        );
    }
}

impl Replica {
    /// Whether [`Config::held_replies_max`](crate::Config::held_replies_max) replies wait
    /// for the disk: no new work that would hold more is taken until some are released.
    pub(super) fn held_full(&self) -> bool {
        self.durability.held_len() >= self.config.held_replies_max
    }

    /// Sends `message` once everything persisted so far is durable.
    pub(super) fn send_when_durable(&mut self, to: NodeId, message: Message) {
        if let Some(message) = self.durability.hold_unless_durable(to, message) {
            self.send(to, message);
        }
    }

    /// Persist batches up to and including `id` are durable: release what waited on them.
    pub(super) fn mark_durable(&mut self, id: u64) {
        for (to, message) in self.durability.mark_durable(id) {
            self.send(to, message);
        }
    }

    /// Hands every record changed since the last drain (and a commit index that advanced)
    /// to the host as one [`Output::Persist`] batch: one fsync for all of them.
    pub(super) fn emit_persist_batch(&mut self) {
        let commit = self.learner.commit();
        if let Some((id, entries)) = self.durability.take_batch(commit) {
            self.outputs.push_back(Output::Persist { id, entries });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Durability;
    use crate::replica::test_support::*;

    #[test]
    fn a_reply_waits_for_the_batch_of_the_records_before_it() {
        let mut d = Durability::new(Ballot::ZERO, 0);
        let ping = || Message::CatchUpRequest {
            from_slot: 0,
            joining: false,
        };
        assert_eq!(
            d.hold_unless_durable(2, ping()),
            Some(ping()),
            "nothing to wait for"
        );
        d.pending.push(PersistEntry::Promised(b(1, 1)));
        assert_eq!(d.hold_unless_durable(2, ping()), None, "waits for batch 1");
        assert_eq!(
            d.take_batch(0),
            Some((1, vec![PersistEntry::Promised(b(1, 1))]))
        );
        assert_eq!(
            d.hold_unless_durable(3, ping()),
            None,
            "batch 1 is not durable yet"
        );
        assert_eq!(d.take_batch(0), None, "nothing new to write");
        assert_eq!(d.held_len(), 2);
        assert_eq!(d.mark_durable(1), vec![(2, ping()), (3, ping())]);
        assert_eq!(d.promised_durable(), b(1, 1));
        assert_eq!(
            d.take_batch(4),
            Some((2, vec![PersistEntry::Committed { upto: 4 }])),
            "an advanced commit index is a record of its own"
        );
        d.debug_check(4);
    }

    #[test]
    fn promise_is_withheld_until_durable() {
        let mut r = replica(2);
        r.handle_message(
            5,
            1,
            Message::Prepare {
                ballot: b(1, 1),
                from_slot: 0,
            },
        );
        assert_eq!(
            drain(&mut r),
            vec![Output::Persist {
                id: 1,
                entries: vec![PersistEntry::Promised(b(1, 1))],
            }],
            "nothing may be sent before the promise is on disk"
        );
        r.handle_durable(6, 1);
        assert_eq!(
            drain(&mut r),
            vec![send(
                1,
                Message::Promise {
                    ballot: b(1, 1),
                    commit: 0,
                    accepted: vec![],
                }
            )]
        );
    }

    #[test]
    fn accepted_is_withheld_until_durable() {
        let mut r = replica(2);
        r.handle_message(
            1,
            1,
            Message::Accept {
                ballot: b(1, 1),
                entries: vec![(0, cmd("x"))],
                commit: 0,
            },
        );
        assert_eq!(
            drain(&mut r),
            vec![Output::Persist {
                id: 1,
                entries: vec![
                    PersistEntry::Promised(b(1, 1)),
                    PersistEntry::Accepted {
                        slot: 0,
                        ballot: b(1, 1),
                        value: cmd("x"),
                    },
                ],
            }]
        );
        r.handle_durable(2, 1);
        assert_eq!(
            drain(&mut r),
            vec![send(
                1,
                Message::Accepted {
                    ballot: b(1, 1),
                    slots: vec![0],
                }
            )]
        );
    }

    #[test]
    fn held_replies_stay_bounded_and_none_is_dropped() {
        let mut r = replica_holding_at_most(2, 3);
        let accept = |slot: Slot| Message::Accept {
            ballot: b(1, 1),
            entries: vec![(slot, cmd("x"))],
            commit: 0,
        };
        // The disk reports nothing: every Accepted waits for its batch.
        for slot in 0..3 {
            r.handle_message(1, 1, accept(slot));
            let out = drain(&mut r);
            assert!(
                matches!(out.as_slice(), [Output::Persist { .. }]),
                "slot {slot}: {out:?}"
            );
        }
        assert_eq!(r.held_replies(), 3);
        // At the bound, work that would hold another reply is ignored as if lost.
        r.handle_message(1, 1, accept(3));
        r.handle_message(
            1,
            3,
            Message::Prepare {
                ballot: b(2, 3),
                from_slot: 0,
            },
        );
        assert_eq!(
            drain(&mut r),
            vec![],
            "nothing taken while the bound is reached"
        );
        assert_eq!(r.held_replies(), 3);
        assert_eq!(r.accepted(3), None);
        assert_eq!(r.promised(), b(1, 1));
        // Every reply already held goes out once its batch is durable.
        r.handle_durable(2, 3);
        let accepted = |slot: Slot| {
            send(
                1,
                Message::Accepted {
                    ballot: b(1, 1),
                    slots: vec![slot],
                },
            )
        };
        assert_eq!(drain(&mut r), vec![accepted(0), accepted(1), accepted(2)]);
        assert_eq!(r.held_replies(), 0);
        // With room again, the leader's retransmission is accepted.
        r.handle_message(3, 1, accept(3));
        let _ = drain(&mut r);
        assert_eq!(r.held_replies(), 1);
        assert!(r.accepted(3).is_some());
    }
}
