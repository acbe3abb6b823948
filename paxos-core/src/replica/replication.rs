//! Phase 2 and the leader's lease on the log: assigning queued commands to slots, Accepts
//! and their retransmission, counting Accepted votes, commit announcements, and a
//! follower's side of all of it (accepting, following, heartbeats).

use super::timer::Timer;
#[cfg(test)]
use super::PlantedBug;
use super::Replica;
#[cfg(test)]
use super::SLOT_SPAN_MAX;
use crate::ballot::{Ballot, NodeId, Slot};
use crate::message::Message;
use crate::proposer::Beat;
use crate::value::Value;

impl Replica {
    /// Phase 2a arrived: accept (and answer once durable), or refuse.
    pub(super) fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        entries: Vec<(Slot, Value)>,
        commit: Slot,
    ) {
        self.proposer.observe(ballot);
        if self.joining {
            // It votes for nothing until it has a membership; it only learns that there
            // is a log to catch up with (and asks for the snapshot).
            if ballot >= self.acceptor.promised() {
                self.follow(from, ballot, commit);
            }
            return;
        }
        let learner = &self.learner;
        match self.acceptor.accept(
            ballot,
            &entries,
            |slot| learner.is_chosen(slot),
            &mut self.durability.pending,
        ) {
            Err(promised) => self.send(
                from,
                Message::Nack {
                    refused: ballot,
                    promised,
                },
            ),
            Ok(slots) => {
                if from != self.config.id {
                    self.follow(from, ballot, commit);
                }
                let accepted = Message::Accepted { ballot, slots };
                #[cfg(test)]
                if self.bug == Some(PlantedBug::AcceptedBeforeDurable) {
                    self.send(from, accepted);
                    return;
                }
                self.send_when_durable(from, accepted);
            }
        }
    }

    /// `from` acts as leader under `ballot` (not below our promise): follow it.
    pub(super) fn follow(&mut self, from: NodeId, ballot: Ballot, commit: Slot) {
        self.yield_to(ballot);
        if self.proposer.heard_from_leader(from, self.now_ms) {
            self.reset_election_timer();
        }
        if self.learner.on_commit_hint(&self.acceptor, ballot, commit) {
            self.request_catchup(from);
        }
    }

    /// Phase 2b arrived: the slots a majority accepted are chosen.
    pub(super) fn on_accepted(&mut self, from: NodeId, ballot: Ballot, slots: Vec<Slot>) {
        let chosen = self
            .proposer
            .on_accepted(from, ballot, slots, &self.membership, self.now_ms);
        for (slot, value) in chosen {
            self.learner.learn(
                &mut self.acceptor,
                slot,
                ballot,
                &value,
                &mut self.durability.pending,
            );
        }
    }

    /// A leader's heartbeat: follow it and acknowledge (confirming its read round).
    pub(super) fn on_heartbeat(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit: Slot,
        read_round: u64,
    ) {
        if self.refuse_stale(from, ballot) {
            return;
        }
        self.follow(from, ballot, commit);
        if self.joining {
            return; // confirms nothing before it knows whether it votes
        }
        let commit = self.learner.commit();
        self.send(
            from,
            Message::HeartbeatAck {
                ballot,
                read_round,
                commit,
            },
        );
    }

    /// A leader's message under a ballot below this acceptor's promise is answered with a
    /// Nack (so that leader learns it was superseded) and otherwise ignored.
    pub(super) fn refuse_stale(&mut self, from: NodeId, ballot: Ballot) -> bool {
        self.proposer.observe(ballot);
        let promised = self.acceptor.promised();
        if ballot >= promised {
            return false;
        }
        self.send(
            from,
            Message::Nack {
                refused: ballot,
                promised,
            },
        );
        true
    }

    /// A leader's commit announcement: follow it; no reply.
    pub(super) fn on_commit(&mut self, from: NodeId, ballot: Ballot, commit: Slot) {
        if self.refuse_stale(from, ballot) {
            return;
        }
        self.follow(from, ballot, commit);
    }

    /// Gives queued commands slots, as far as the in-flight limit allows, and not while too
    /// many replies wait for the disk (the leader's own Accepted of a new slot is held).
    pub(super) fn assign_slots(&mut self) {
        if self.held_full() {
            return;
        }
        let (commit, delivered) = (self.learner.commit(), self.learner.delivered());
        #[cfg(test)]
        let delivered = if self.bug == Some(PlantedBug::LeaderIgnoresReconfigWindow) {
            delivered.saturating_add(SLOT_SPAN_MAX)
        } else {
            delivered
        };
        let Some(assigned) = self.proposer.assign_slots(
            &self.config,
            &self.membership,
            (commit, delivered),
            self.now_ms,
        ) else {
            return;
        };
        if !assigned.entries.is_empty() {
            self.send_accepts(assigned.ballot, assigned.entries, None);
        }
        if assigned.rerun {
            // The next slot is governed by voters whose majority has not promised this
            // ballot (a membership change took effect): phase 1 again, above it.
            self.start_election();
        } else {
            self.hand_over_if_leaving();
        }
    }

    /// Sends `entries` as Accept messages no larger than about one batch each, to `to` or
    /// to every member.
    pub(super) fn send_accepts(
        &mut self,
        ballot: Ballot,
        entries: Vec<(Slot, Value)>,
        to: Option<NodeId>,
    ) {
        let commit = self.learner.commit();
        let mut chunk: Vec<(Slot, Value)> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut pending = entries.into_iter().peekable();
        while let Some((slot, value)) = pending.next() {
            chunk_bytes += value.payload_bytes();
            chunk.push((slot, value));
            let full = chunk_bytes >= self.config.batch_bytes_max;
            if full || pending.peek().is_none() {
                let msg = Message::Accept {
                    ballot,
                    entries: std::mem::take(&mut chunk),
                    commit,
                };
                chunk_bytes = 0;
                match to {
                    Some(to) => self.send(to, msg),
                    None => self.broadcast(&msg),
                }
            }
        }
    }

    /// [`Timer::Heartbeat`] expired: a leader that still has a majority sends heartbeats
    /// and retransmits unacknowledged Accepts; one that lost it steps down.
    pub(super) fn leader_tick(&mut self) {
        let now = self.now_ms;
        let commit = self.learner.commit();
        let peers = self.peers();
        match self
            .proposer
            .heartbeat(&self.config, &self.membership, &peers, commit, now)
        {
            None => {}
            Some(Beat::StepDown) => self.become_follower(),
            Some(Beat::Send {
                ballot,
                read_round,
                resend,
            }) => {
                self.timers
                    .set(Timer::Heartbeat, now + self.config.heartbeat_interval_ms);
                self.broadcast_peers(&Message::Heartbeat {
                    ballot,
                    commit,
                    read_round,
                });
                for (to, entries) in resend {
                    self.send_accepts(ballot, entries, Some(to));
                }
            }
        }
    }

    /// Slots learned chosen some other way (catch-up) are no longer in flight, and a commit
    /// index that advanced is announced to the followers.
    pub(super) fn retire_chosen(&mut self) {
        let commit = self.learner.commit();
        if let Some(ballot) = self.proposer.retire_chosen(commit) {
            self.broadcast_peers(&Message::Commit { ballot, commit });
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::replica::test_support::*;

    #[test]
    fn acceptor_refuses_a_lower_ballot() {
        let mut r = replica(2);
        r.handle_message(
            1,
            3,
            Message::Prepare {
                ballot: b(2, 3),
                from_slot: 0,
            },
        );
        let _ = drain(&mut r);
        r.handle_durable(2, 1);
        let _ = drain(&mut r);
        r.handle_message(
            3,
            1,
            Message::Accept {
                ballot: b(1, 1),
                entries: vec![(0, cmd("x"))],
                commit: 0,
            },
        );
        assert_eq!(
            drain(&mut r),
            vec![send(
                1,
                Message::Nack {
                    refused: b(1, 1),
                    promised: b(2, 3),
                }
            )]
        );
        assert_eq!(r.accepted(0), None);
    }

    #[test]
    fn leader_counts_its_own_vote_only_once_durable() {
        let mut r = leader();
        let t = 1_000;
        assert_eq!(r.propose(t, Bytes::from_static(b"x")), Ok(()));
        let accept = Message::Accept {
            ballot: b(1, 1),
            entries: vec![(0, cmd("x"))],
            commit: 0,
        };
        assert_eq!(
            drain(&mut r),
            vec![
                send(2, accept.clone()),
                send(3, accept),
                Output::Persist {
                    id: 2,
                    entries: vec![PersistEntry::Accepted {
                        slot: 0,
                        ballot: b(1, 1),
                        value: cmd("x"),
                    }],
                },
            ],
            "Accepts go out before the leader's own write completes"
        );
        r.handle_message(
            t,
            2,
            Message::Accepted {
                ballot: b(1, 1),
                slots: vec![0],
            },
        );
        assert_eq!(
            drain(&mut r),
            vec![],
            "one durable vote of three is not a majority"
        );
        r.handle_durable(t, 2);
        let out = drain(&mut r);
        assert_eq!(
            out,
            vec![
                send(
                    2,
                    Message::Commit {
                        ballot: b(1, 1),
                        commit: 1,
                    }
                ),
                send(
                    3,
                    Message::Commit {
                        ballot: b(1, 1),
                        commit: 1,
                    }
                ),
                Output::Persist {
                    id: 3,
                    entries: vec![PersistEntry::Committed { upto: 1 }],
                },
                Output::Committed {
                    slot: 0,
                    value: cmd("x"),
                },
            ]
        );
    }

    #[test]
    fn a_commit_announcement_advances_a_follower_without_a_reply() {
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
        let _ = drain(&mut r);
        r.handle_durable(2, 1);
        let _ = drain(&mut r);
        r.handle_message(
            3,
            1,
            Message::Commit {
                ballot: b(1, 1),
                commit: 1,
            },
        );
        assert_eq!(
            drain(&mut r),
            vec![
                Output::Persist {
                    id: 2,
                    entries: vec![PersistEntry::Committed { upto: 1 }],
                },
                Output::Committed {
                    slot: 0,
                    value: cmd("x"),
                },
            ],
            "no reply is sent for a commit announcement"
        );
    }

    #[test]
    fn single_replica_cluster_commits_alone() {
        let mut r = match Replica::new(Config::new(1, vec![1]), 1, 0) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        let t = r.poll_timeout();
        r.handle_timeout(t);
        assert_eq!(
            drain(&mut r),
            vec![Output::Persist {
                id: 1,
                entries: vec![PersistEntry::Promised(b(1, 1))],
            }]
        );
        r.handle_durable(t, 1);
        assert_eq!(r.role(), Role::Leader);
        assert_eq!(r.propose(t, Bytes::from_static(b"solo")), Ok(()));
        // The read started before the write was acknowledged, so it need not wait for it.
        assert_eq!(r.read(t, 1), Ok(()));
        let out = drain(&mut r);
        assert_eq!(
            out,
            vec![
                Output::Persist {
                    id: 2,
                    entries: vec![PersistEntry::Accepted {
                        slot: 0,
                        ballot: b(1, 1),
                        value: cmd("solo"),
                    }],
                },
                Output::ReadReady { id: 1 },
            ]
        );
        r.handle_durable(t, 2);
        assert_eq!(
            drain(&mut r),
            vec![
                Output::Persist {
                    id: 3,
                    entries: vec![PersistEntry::Committed { upto: 1 }],
                },
                Output::Committed {
                    slot: 0,
                    value: cmd("solo"),
                },
            ]
        );
    }

    #[test]
    fn a_leader_at_the_held_bound_keeps_proposals_queued() {
        let mut r = elect(replica_holding_at_most(1, 1));
        let t = 1_000;
        assert_eq!(r.propose(t, Bytes::from_static(b"x")), Ok(()));
        let out = drain(&mut r);
        assert!(
            matches!(out.last(), Some(Output::Persist { id: 2, .. })),
            "{out:?}"
        );
        assert_eq!(
            r.held_replies(),
            1,
            "the leader's own Accepted waits for its write"
        );
        assert_eq!(r.propose(t, Bytes::from_static(b"y")), Ok(()));
        assert_eq!(
            drain(&mut r),
            vec![],
            "no new slot while the bound is reached"
        );
        assert_eq!((r.queued_commands(), r.inflight_slots()), (1, 1));
        r.handle_durable(t, 2);
        let accept = Message::Accept {
            ballot: b(1, 1),
            entries: vec![(1, cmd("y"))],
            commit: 0,
        };
        assert_eq!(
            drain(&mut r),
            vec![
                send(2, accept.clone()),
                send(3, accept),
                Output::Persist {
                    id: 3,
                    entries: vec![PersistEntry::Accepted {
                        slot: 1,
                        ballot: b(1, 1),
                        value: cmd("y"),
                    }],
                },
            ]
        );
        assert_eq!(r.queued_commands(), 0);
    }
}
