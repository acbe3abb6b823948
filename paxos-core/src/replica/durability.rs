//! The durability gate: persist batches handed to the host, replies held until the batch
//! they depend on is durable, and the bound on how many may be held.

use super::{Output, Replica};
use crate::ballot::NodeId;
use crate::message::Message;
use crate::persist::PersistEntry;

impl Replica {
    /// Whether [`Config::held_replies_max`] replies wait for the disk: no new work that
    /// would hold more is taken until some are released.
    pub(super) fn held_full(&self) -> bool {
        self.held.len() >= self.config.held_replies_max
    }

    /// Sends `message` once everything persisted so far is durable.
    pub(super) fn send_when_durable(&mut self, to: NodeId, message: Message) {
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

    /// Persist batches up to and including `id` are durable: record the promise they carry
    /// and release the replies that waited on them.
    pub(super) fn mark_durable(&mut self, id: u64) {
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
    }

    /// Hands every record changed since the last drain (and a commit index that advanced)
    /// to the host as one [`Output::Persist`] batch: one fsync for all of them.
    pub(super) fn emit_persist_batch(&mut self) {
        let commit = self.learner.commit();
        if commit > self.commit_persisted {
            self.commit_persisted = commit;
            self.persist_pending
                .push(PersistEntry::Committed { upto: commit });
        }
        if self.persist_pending.is_empty() {
            return;
        }
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
}

#[cfg(test)]
mod tests {
    use crate::replica::test_support::*;

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
