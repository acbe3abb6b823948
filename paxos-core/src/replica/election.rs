//! Phase 1 and leadership changes: starting an election, answering and collecting
//! promises, refusals, becoming leader (with recovery of the log suffix), and stepping down.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::timer::Timer;
#[cfg(test)]
use super::PlantedBug;
use super::{Output, Replica};
use crate::ballot::{Ballot, NodeId, Slot};
use crate::message::Message;
use crate::proposer::{recovery_plan, InFlight, Leadership, Phase1, ProposerState, ReadIndex};
use crate::value::Entry;

impl Replica {
    pub(super) fn observe(&mut self, ballot: Ballot) {
        self.round_seen = self.round_seen.max(ballot.round);
    }

    /// Whether to ignore a Prepare because a live leader other than its sender is known
    /// (leader stickiness: a replica that was cut off and comes back with a high ballot must
    /// not depose a leader that is doing fine).
    pub(super) fn sticky_refuses(&self, from: NodeId, ballot: Ballot) -> bool {
        if from == self.config.id || ballot <= self.acceptor.promised() {
            return false;
        }
        if matches!(self.proposer, ProposerState::Leader(_)) {
            return true;
        }
        match self.leader_seen {
            Some((leader, at)) => {
                leader != from && self.now_ms < at + self.config.election_timeout_min_ms
            }
            None => false,
        }
    }

    pub(super) fn on_prepare(&mut self, from: NodeId, ballot: Ballot, from_slot: Slot) {
        self.observe(ballot);
        if self.sticky_refuses(from, ballot) {
            // A refusal whose `promised` is below `refused` means "I follow a live leader".
            let promised = self.acceptor.promised();
            self.send(
                from,
                Message::Nack {
                    refused: ballot,
                    promised,
                },
            );
            return;
        }
        let commit = self.learner.commit();
        let from_slot = from_slot.max(commit);
        match self
            .acceptor
            .prepare(ballot, from_slot, &mut self.persist_pending)
        {
            Err(promised) => self.send(
                from,
                Message::Nack {
                    refused: ballot,
                    promised,
                },
            ),
            Ok(accepted) => {
                if from != self.config.id {
                    self.yield_to(ballot);
                    if matches!(self.proposer, ProposerState::Follower) {
                        self.reset_election_timer();
                    }
                }
                let promise = Message::Promise {
                    ballot,
                    commit,
                    accepted,
                };
                self.send_when_durable(from, promise);
            }
        }
    }

    pub(super) fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit: Slot,
        accepted: Vec<Entry>,
    ) {
        let my_commit = self.learner.commit();
        let ProposerState::Candidate(p) = &mut self.proposer else {
            return;
        };
        if p.ballot != ballot {
            return;
        }
        if let Some(higher) = accepted.iter().map(|e| e.ballot).find(|b| *b > ballot) {
            // An acceptor never holds a record above its promise; a Promise that reports
            // one comes from a broken or forged peer. Treat it as news of a higher ballot.
            self.observe(higher);
            self.become_follower();
            return;
        }
        if commit > my_commit {
            // A peer knows more chosen slots than this candidate: a leader must know the
            // whole chosen prefix, so give up, catch up, and let the timer retry.
            self.become_follower();
            self.request_catchup(from);
            return;
        }
        p.promises.insert(from, (commit, accepted));
        if p.promises.len() >= self.quorum {
            self.become_leader();
        }
    }

    pub(super) fn on_nack(&mut self, from: NodeId, refused: Ballot, promised: Ballot) {
        self.observe(promised);
        if self.my_ballot() != Some(refused) {
            return; // about a ballot this replica no longer uses
        }
        let quorum = self.quorum;
        let members = self.config.members.len();
        match &mut self.proposer {
            ProposerState::Candidate(p) => {
                if promised > refused {
                    self.failed_elections = self.failed_elections.saturating_add(1);
                    self.become_follower();
                } else {
                    p.refusals.insert(from);
                    if members - p.refusals.len() < quorum {
                        self.failed_elections = self.failed_elections.saturating_add(1);
                        self.become_follower();
                    }
                }
            }
            ProposerState::Leader(_) => {
                if promised > refused {
                    // Some acceptor promised a higher ballot (often a replica coming back
                    // from a partition). Re-run phase 1 at once above it, rather than
                    // stepping down: the followers still follow this replica.
                    self.start_election();
                }
            }
            ProposerState::Follower => {}
        }
    }

    pub(super) fn election_timeout_ms(&mut self) -> u64 {
        let min = self.config.election_timeout_min_ms;
        let spread = self.config.election_timeout_max_ms - min;
        // Each lost election doubles the window (up to 16x) so duelling candidates spread out.
        let widen = 1u64 << self.failed_elections.min(4);
        self.rng.range_inclusive(min, min + spread.max(1) * widen)
    }

    pub(super) fn reset_election_timer(&mut self) {
        let deadline_ms = self.now_ms + self.election_timeout_ms();
        self.timers.set(Timer::Election, deadline_ms);
    }

    pub(super) fn my_ballot(&self) -> Option<Ballot> {
        match &self.proposer {
            ProposerState::Candidate(p) => Some(p.ballot),
            ProposerState::Leader(l) => Some(l.ballot),
            ProposerState::Follower => None,
        }
    }

    pub(super) fn become_follower(&mut self) {
        let hint = self.leader_hint_from_seen();
        if let ProposerState::Leader(l) = &mut self.proposer {
            let ids = l.reads.drain_all();
            for id in ids {
                self.outputs.push_back(Output::ReadAborted {
                    id,
                    leader_hint: hint,
                });
            }
        }
        if !self.queue.commands.is_empty() {
            let commands: Vec<Bytes> = self.queue.commands.drain(..).collect();
            self.outputs.push_back(Output::ProposalsDropped {
                commands,
                leader_hint: hint,
            });
        }
        self.proposer = ProposerState::Follower;
        self.timers.stop(Timer::Heartbeat);
        self.timers.stop(Timer::PrepareResend);
        self.reset_election_timer();
    }

    pub(super) fn leader_hint_from_seen(&self) -> Option<NodeId> {
        self.leader_seen
            .map(|(id, _)| id)
            .filter(|id| *id != self.config.id)
    }

    /// Steps down if a higher ballot than the one this replica campaigns or leads under is
    /// active.
    pub(super) fn yield_to(&mut self, ballot: Ballot) {
        if matches!(self.my_ballot(), Some(mine) if mine < ballot) {
            self.become_follower();
        }
    }

    /// [`Timer::Election`] expired: no leader was heard from for a whole election timeout
    /// (a candidate counts that as an election lost, which widens its next timeout).
    pub(super) fn on_election_timeout(&mut self) {
        if matches!(self.proposer, ProposerState::Candidate(_)) {
            self.failed_elections = self.failed_elections.saturating_add(1);
        }
        self.start_election_unless_held_full();
    }

    /// Starts an election, or, while too many replies wait for the disk (its Prepares would
    /// wait behind them), tries again after another election timeout.
    pub(super) fn start_election_unless_held_full(&mut self) {
        if self.held_full() {
            self.reset_election_timer();
        } else {
            self.start_election();
        }
    }

    pub(super) fn start_election(&mut self) {
        if let ProposerState::Leader(l) = &mut self.proposer {
            let ids = l.reads.drain_all();
            for id in ids {
                self.outputs.push_back(Output::ReadAborted {
                    id,
                    leader_hint: None,
                });
            }
        }
        let round = self.round_seen.max(self.acceptor.promised().round) + 1;
        self.round_seen = round;
        let ballot = Ballot::new(round, self.config.id);
        let from_slot = self.learner.commit();
        self.proposer = ProposerState::Candidate(Phase1 {
            ballot,
            from_slot,
            promises: BTreeMap::new(),
            refusals: BTreeSet::new(),
        });
        self.leader_seen = None;
        self.reset_election_timer();
        self.timers.stop(Timer::Heartbeat);
        let resend_ms = self.now_ms + self.config.heartbeat_interval_ms;
        self.timers.set(Timer::PrepareResend, resend_ms);
        // Invariant: no ballot is used twice, across restarts included. The round of a new
        // ballot comes from the durable promise after a restart, so this replica's own
        // promise of `ballot` must be on disk before any peer hears of `ballot`: a crash
        // before that leaves no trace of it anywhere, and reusing it is then harmless.
        self.on_prepare(self.config.id, ballot, from_slot);
        debug_assert!(self.acceptor.promised() == ballot, "own promise not taken");
        let prepare = Message::Prepare { ballot, from_slot };
        for i in 0..self.config.members.len() {
            let to = self.config.members[i];
            if to == self.config.id {
                continue;
            }
            #[cfg(test)]
            if self.bug == Some(PlantedBug::PrepareBeforeOwnPromiseDurable) {
                self.send(to, prepare.clone());
                continue;
            }
            self.send_when_durable(to, prepare.clone());
        }
    }

    pub(super) fn resend_prepares(&mut self) {
        let resend_ms = self.now_ms + self.config.heartbeat_interval_ms;
        self.timers.set(Timer::PrepareResend, resend_ms);
        if self.held_full() {
            return; // the next heartbeat interval tries again
        }
        let ProposerState::Candidate(p) = &self.proposer else {
            return;
        };
        let msg = Message::Prepare {
            ballot: p.ballot,
            from_slot: p.from_slot,
        };
        let missing: Vec<NodeId> = self
            .config
            .members
            .iter()
            .copied()
            .filter(|m| !p.promises.contains_key(m) && !p.refusals.contains(m))
            .collect();
        for to in missing {
            // Held like the first Prepares until this replica's own promise is durable.
            self.send_when_durable(to, msg.clone());
        }
    }

    pub(super) fn become_leader(&mut self) {
        let ProposerState::Candidate(p) = &self.proposer else {
            return;
        };
        let ballot = p.ballot;
        #[cfg(test)]
        let planted = self.bug.is_some();
        #[cfg(not(test))]
        let planted = false;
        debug_assert!(
            planted || self.promised_durable >= ballot,
            "leading under {ballot} before this replica's promise of it is durable"
        );
        let (plan, next_slot) = recovery_plan(
            p.from_slot.max(self.learner.commit()),
            p.promises.values().map(|(_, e)| e.as_slice()),
        );
        let now = self.now_ms;
        let inflight: BTreeMap<Slot, InFlight> = plan
            .iter()
            .map(|(slot, value)| {
                let f = InFlight {
                    value: value.clone(),
                    acks: BTreeSet::new(),
                    sent_at_ms: now,
                };
                (*slot, f)
            })
            .collect();
        let last_ack_ms = self.config.members.iter().map(|&m| (m, now)).collect();
        self.proposer = ProposerState::Leader(Leadership {
            ballot,
            next_slot,
            recovery_end: next_slot,
            inflight_bytes: inflight.values().map(|f| f.value.payload_bytes()).sum(),
            inflight,
            reads: ReadIndex::default(),
            last_ack_ms,
            commit_sent: self.learner.commit(),
        });
        self.failed_elections = 0;
        self.leader_seen = Some((self.config.id, now));
        self.timers.stop(Timer::Election);
        self.timers.stop(Timer::PrepareResend);
        self.timers
            .set(Timer::Heartbeat, now + self.config.heartbeat_interval_ms);
        let commit = self.learner.commit();
        // Followers learn of the new leader at once, even when there is nothing to recover.
        self.broadcast_peers(&Message::Heartbeat {
            ballot,
            commit,
            read_round: 0,
        });
        self.send_accepts(ballot, plan, None);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::replica::test_support::*;

    #[test]
    fn election_sends_prepares_and_persists_its_own_promise() {
        let mut r = replica(1);
        let t = r.poll_timeout();
        assert!(
            (300..=600).contains(&t),
            "election timeout {t} outside the configured range"
        );
        r.handle_timeout(t - 1);
        assert_eq!(drain(&mut r), vec![], "no election before the timeout");
        r.handle_timeout(t);
        let prepare = Message::Prepare {
            ballot: b(1, 1),
            from_slot: 0,
        };
        // The ballot must not be heard of before this replica's own promise of it is on disk:
        // a crash before that would let it campaign under the same ballot again.
        assert_eq!(
            drain(&mut r),
            vec![Output::Persist {
                id: 1,
                entries: vec![PersistEntry::Promised(b(1, 1))],
            }],
            "no Prepare before the candidate's own promise is durable"
        );
        assert_eq!(r.role(), Role::Candidate);
        r.handle_durable(t, 1);
        assert_eq!(
            drain(&mut r),
            vec![send(2, prepare.clone()), send(3, prepare)]
        );
        assert_eq!(r.role(), Role::Candidate);
        r.handle_message(
            t,
            2,
            Message::Promise {
                ballot: b(1, 1),
                commit: 0,
                accepted: vec![],
            },
        );
        assert_eq!(r.role(), Role::Leader);
    }

    #[test]
    fn candidate_resends_prepares_only_once_its_promise_is_durable() {
        let mut r = replica(1);
        let t = r.poll_timeout();
        r.handle_timeout(t);
        let _ = drain(&mut r);
        // The heartbeat interval passes with the promise still not on disk: nothing goes out.
        let resend = r.poll_timeout();
        assert!(
            resend < t + 300,
            "a resend deadline comes before the next election"
        );
        r.handle_timeout(resend);
        assert_eq!(drain(&mut r), vec![]);
        r.handle_durable(resend, 1);
        let prepares = drain(&mut r)
            .into_iter()
            .filter(|o| {
                matches!(
                    o,
                    Output::Send {
                        message: Message::Prepare { .. },
                        ..
                    }
                )
            })
            .count();
        assert_eq!(
            prepares, 4,
            "both the first Prepares and the resends, once durable"
        );
    }

    #[test]
    fn new_leader_reproposes_what_it_learned_and_fills_gaps_with_noops() {
        let mut r = replica(1);
        // Replica 3 led under ballot 1.3 and got a value accepted in slot 2.
        r.handle_message(
            10,
            3,
            Message::Heartbeat {
                ballot: b(1, 3),
                commit: 0,
                read_round: 0,
            },
        );
        assert_eq!(
            drain(&mut r),
            vec![send(
                3,
                Message::HeartbeatAck {
                    ballot: b(1, 3),
                    read_round: 0,
                    commit: 0,
                }
            )]
        );
        // Replica 3 falls silent; replica 1 campaigns above every round it has seen.
        let t = r.poll_timeout();
        r.handle_timeout(t);
        let _ = drain(&mut r);
        r.handle_durable(t, 1);
        let prepare = Message::Prepare {
            ballot: b(2, 1),
            from_slot: 0,
        };
        assert_eq!(
            drain(&mut r),
            vec![send(2, prepare.clone()), send(3, prepare)]
        );
        r.handle_message(
            t,
            2,
            Message::Promise {
                ballot: b(2, 1),
                commit: 0,
                accepted: vec![Entry {
                    slot: 2,
                    ballot: b(1, 3),
                    value: cmd("from the old leader"),
                }],
            },
        );
        assert_eq!(r.role(), Role::Leader);
        let plan = vec![
            (0, Value::Noop),
            (1, Value::Noop),
            (2, cmd("from the old leader")),
        ];
        let heartbeat = Message::Heartbeat {
            ballot: b(2, 1),
            commit: 0,
            read_round: 0,
        };
        let accept = Message::Accept {
            ballot: b(2, 1),
            entries: plan.clone(),
            commit: 0,
        };
        assert_eq!(
            drain(&mut r),
            vec![
                send(2, heartbeat.clone()),
                send(3, heartbeat),
                send(2, accept.clone()),
                send(3, accept),
                Output::Persist {
                    id: 2,
                    entries: plan
                        .into_iter()
                        .map(|(slot, value)| PersistEntry::Accepted {
                            slot,
                            ballot: b(2, 1),
                            value,
                        })
                        .collect(),
                },
            ]
        );
    }

    #[test]
    fn leader_steps_down_on_a_higher_ballot_and_drops_unslotted_proposals() {
        let mut r = leader();
        let t = 1_000;
        assert_eq!(r.read(t, 9), Ok(()));
        let _ = drain(&mut r);
        assert_eq!(r.propose(t, Bytes::from_static(b"late")), Ok(()));
        r.handle_message(
            t,
            3,
            Message::Heartbeat {
                ballot: b(5, 3),
                commit: 0,
                read_round: 0,
            },
        );
        assert_eq!(r.role(), Role::Follower);
        assert_eq!(
            drain(&mut r),
            vec![
                Output::ReadAborted {
                    id: 9,
                    leader_hint: None,
                },
                Output::ProposalsDropped {
                    commands: vec![Bytes::from_static(b"late")],
                    leader_hint: None,
                },
                send(
                    3,
                    Message::HeartbeatAck {
                        ballot: b(5, 3),
                        read_round: 0,
                        commit: 0,
                    }
                ),
            ]
        );
        assert_eq!(r.leader_hint(), Some(3));
    }
}
