//! Linearizable reads (read-index): a read waits for a round of heartbeats, started after it
//! arrived, that a majority acknowledges, and for the state machine to reach the index.

use super::{Output, ProposeError, Replica};
use crate::ballot::{Ballot, NodeId, Slot};
use crate::message::Message;
use crate::proposer::ProposerState;

impl Replica {
    /// A read arrived (see [`Replica::read`]): queue it for the next confirmation round, or
    /// confirm it at once when this replica alone is a majority.
    pub(super) fn request_read(&mut self, id: u64) -> Result<(), ProposeError> {
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

    pub(super) fn start_read_round(&mut self) {
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

    pub(super) fn on_heartbeat_ack(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        read_round: u64,
        _commit: Slot,
    ) {
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

    /// Hands out every confirmed read whose index the state machine has reached.
    pub(super) fn release_reads(&mut self) {
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
