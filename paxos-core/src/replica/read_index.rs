//! Linearizable reads (read-index): a read waits for a round of heartbeats, started after it
//! arrived, that a majority acknowledges, and for the state machine to reach the index.

use super::{Output, ProposeError, Replica};
use crate::ballot::{Ballot, NodeId, Slot};
use crate::message::Message;

impl Replica {
    /// A read arrived (see [`Replica::read`]): queue it for the next confirmation round, or
    /// confirm it at once when this replica alone is a majority.
    pub(super) fn request_read(&mut self, id: u64) -> Result<(), ProposeError> {
        let commit = self.learner.commit();
        let me: std::collections::BTreeSet<NodeId> = [self.config.id].into_iter().collect();
        let single = self.quorum_now(&me);
        match self.proposer.read(id, commit, single) {
            None => Err(ProposeError::NotLeader {
                leader_hint: self.leader_hint(),
            }),
            Some(start_round) => {
                if start_round {
                    self.start_read_round();
                }
                Ok(())
            }
        }
    }

    /// Starts a read round: a heartbeat to every peer asking it to confirm the round.
    pub(super) fn start_read_round(&mut self) {
        let commit = self.learner.commit();
        if let Some((ballot, read_round)) = self.proposer.start_read_round(commit) {
            self.broadcast_peers(&Message::Heartbeat {
                ballot,
                commit,
                read_round,
            });
        }
    }

    /// A heartbeat acknowledgement: `from` still follows this leader, and confirms
    /// `read_round`.
    pub(super) fn on_heartbeat_ack(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        read_round: u64,
        commit: Slot,
    ) {
        // Judged only while a round is open, without copying a membership per ack.
        let (window_from, window_to) = self.window_now();
        let log = &self.membership;
        let next_round = self.proposer.on_heartbeat_ack(
            from,
            (ballot, read_round, commit),
            |acks| {
                log.governing(window_from, window_to)
                    .iter()
                    .all(|m| m.is_quorum(acks))
            },
            self.now_ms,
        );
        if next_round {
            self.start_read_round();
        }
    }

    /// Hands out every confirmed read whose index the state machine has reached.
    pub(super) fn release_reads(&mut self) {
        let delivered = self.learner.delivered();
        while let Some(id) = self.proposer.pop_ready_read(delivered) {
            self.outputs.push_back(Output::ReadReady { id });
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::replica::test_support::*;

    #[test]
    fn read_is_released_only_after_a_quorum_confirms_a_fresh_round() {
        let mut r = leader();
        let t = 1_000;
        assert_eq!(r.read(t, 7), Ok(()));
        let hb = Message::Heartbeat {
            ballot: b(1, 1),
            commit: 0,
            read_round: 1,
        };
        assert_eq!(drain(&mut r), vec![send(2, hb.clone()), send(3, hb)]);
        // An acknowledgement of an older round proves nothing about this read.
        r.handle_message(
            t,
            2,
            Message::HeartbeatAck {
                ballot: b(1, 1),
                read_round: 0,
                commit: 0,
            },
        );
        assert_eq!(drain(&mut r), vec![]);
        // A read arriving now must wait for the next round.
        assert_eq!(r.read(t, 8), Ok(()));
        assert_eq!(drain(&mut r), vec![]);
        r.handle_message(
            t,
            3,
            Message::HeartbeatAck {
                ballot: b(1, 1),
                read_round: 1,
                commit: 0,
            },
        );
        let hb2 = Message::Heartbeat {
            ballot: b(1, 1),
            commit: 0,
            read_round: 2,
        };
        assert_eq!(
            drain(&mut r),
            vec![
                send(2, hb2.clone()),
                send(3, hb2),
                Output::ReadReady { id: 7 },
            ]
        );
        r.handle_message(
            t,
            2,
            Message::HeartbeatAck {
                ballot: b(1, 1),
                read_round: 2,
                commit: 0,
            },
        );
        assert_eq!(drain(&mut r), vec![Output::ReadReady { id: 8 }]);
    }

    #[test]
    fn followers_refuse_writes_and_reads_with_a_hint() {
        let mut r = replica(2);
        r.handle_message(
            10,
            1,
            Message::Heartbeat {
                ballot: b(1, 1),
                commit: 0,
                read_round: 0,
            },
        );
        let _ = drain(&mut r);
        let hint = Err(ProposeError::NotLeader {
            leader_hint: Some(1),
        });
        assert_eq!(r.propose(11, Bytes::from_static(b"x")), hint);
        assert_eq!(r.read(11, 1), hint);
    }
}
