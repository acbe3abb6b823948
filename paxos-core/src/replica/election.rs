//! Phase 1 and leadership changes, as the replica carries them out: answering Prepares
//! (the acceptor's side), starting an election, counting promises and refusals, taking
//! the lead, and stepping down. The proposer decides each transition
//! ([`Proposer`](crate::proposer::Proposer)); this module turns its decisions into
//! messages, timers and outputs.

use super::timer::Timer;
#[cfg(test)]
use super::PlantedBug;
use super::{Output, Replica};
use crate::ballot::{Ballot, NodeId, Slot};
use crate::message::Message;
use crate::proposer::{PromiseOutcome, RefusalOutcome, Role};
use crate::value::Entry;

impl Replica {
    /// Whether to ignore a Prepare because a live leader other than its sender is known
    /// (leader stickiness: a replica that was cut off and comes back with a high ballot must
    /// not depose a leader that is doing fine).
    pub(super) fn sticky_refuses(&self, from: NodeId, ballot: Ballot) -> bool {
        if from == self.config.id || ballot <= self.acceptor.promised() {
            return false;
        }
        self.proposer
            .defends_leader_against(from, &self.config, self.now_ms)
    }

    /// Phase 1a arrived (from a peer, or from this replica's own candidacy): promise, and
    /// answer once the promise is durable, or refuse.
    pub(super) fn on_prepare(&mut self, from: NodeId, ballot: Ballot, from_slot: Slot) {
        self.proposer.observe(ballot);
        if self.joining {
            // Without a membership it cannot tell whether it votes: it votes for nothing
            // (a voter that lost its disk must never come back as an empty acceptor).
            return;
        }
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
            .prepare(ballot, from_slot, &mut self.durability.pending)
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
                    if self.proposer.role() == Role::Follower {
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

    /// Phase 1b arrived: count it towards this replica's candidacy.
    pub(super) fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit: Slot,
        accepted: Vec<Entry>,
    ) {
        let my_commit = self.learner.commit();
        let promise = (commit, accepted);
        match self.proposer.on_promise(from, ballot, promise, my_commit) {
            PromiseOutcome::Pending => {}
            PromiseOutcome::Elected => self.become_leader(),
            PromiseOutcome::Outranked(_) => self.become_follower(),
            PromiseOutcome::Behind => {
                // Give up, catch up, and let the election timer retry.
                self.become_follower();
                self.request_catchup(from);
            }
        }
    }

    /// A refusal arrived: the election may be lost, or a leader must re-run phase 1.
    pub(super) fn on_nack(&mut self, from: NodeId, refused: Ballot, promised: Ballot) {
        match self.proposer.on_refusal(from, refused, promised) {
            RefusalOutcome::Ignored => {}
            RefusalOutcome::Lost => self.become_follower(),
            RefusalOutcome::Rerun => self.start_election(),
        }
    }

    /// Arms [`Timer::Election`] a fresh random timeout from now.
    pub(super) fn reset_election_timer(&mut self) {
        let deadline_ms = self.now_ms + self.proposer.election_timeout_ms(&self.config);
        self.timers.set(Timer::Election, deadline_ms);
    }

    /// Stops campaigning or leading: aborts the reads and hands back the commands this
    /// replica can no longer serve, and waits for a leader (or its own next election).
    pub(super) fn become_follower(&mut self) {
        let stepped = self.proposer.step_down();
        let leader_hint = stepped.leader_hint;
        for id in stepped.reads {
            self.outputs
                .push_back(Output::ReadAborted { id, leader_hint });
        }
        if !stepped.commands.is_empty() {
            self.outputs.push_back(Output::ProposalsDropped {
                commands: stepped.commands,
                leader_hint,
            });
        }
        if let Some(reconfig) = stepped.reconfig {
            self.outputs.push_back(Output::ReconfigDropped {
                reconfig,
                leader_hint,
            });
        }
        self.timers.stop(Timer::Heartbeat);
        self.timers.stop(Timer::PrepareResend);
        self.reset_election_timer();
    }

    /// Steps down if a higher ballot than the one this replica campaigns or leads under is
    /// active.
    pub(super) fn yield_to(&mut self, ballot: Ballot) {
        if self.proposer.outranked_by(ballot) {
            self.become_follower();
        }
    }

    /// [`Timer::Election`] expired: no leader was heard from for a whole election timeout
    /// (a candidate counts that as an election lost, which widens its next timeout).
    pub(super) fn on_election_timeout(&mut self) {
        if self.repair.is_some() {
            // A repairing replica campaigns for nothing.
            return;
        }
        if !self.may_campaign() {
            // A learner, a replica that joins or was removed: it never campaigns, and
            // keeps its timer armed for when it may (after a promotion).
            self.reset_election_timer();
            return;
        }
        self.proposer.election_timed_out();
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

    /// Becomes a candidate under a new ballot: promises it to itself, and asks every voter
    /// of the memberships it needs (those governing the slots it may propose in once
    /// elected) once that promise is durable.
    pub(super) fn start_election(&mut self) {
        let from_slot = self.learner.commit();
        let promised_round = self.acceptor.promised().round;
        let required = self.governing_now();
        let voters: Vec<NodeId> = required
            .iter()
            .flat_map(|m| m.voters())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let (ballot, aborted) = self
            .proposer
            .start_candidacy(promised_round, from_slot, required);
        for id in aborted {
            self.outputs.push_back(Output::ReadAborted {
                id,
                leader_hint: None,
            });
        }
        self.reset_election_timer();
        self.timers.stop(Timer::Heartbeat);
        let resend_ms = self.now_ms + self.config.heartbeat_interval_ms;
        self.timers.set(Timer::PrepareResend, resend_ms);
        // Invariant: no ballot is used twice, across restarts included. The round of a new
        // ballot comes from the durable promise after a restart, so this replica's own
        // promise of `ballot` must be on disk before any peer hears of `ballot`: a crash
        // before that leaves no trace of it anywhere, and reusing it is then harmless.
        self.on_prepare(self.config.id, ballot, from_slot);
        debug_assert!(
            self.acceptor.promised() == ballot,
            "own promise of {ballot} not taken"
        );
        let prepare = Message::Prepare { ballot, from_slot };
        for to in voters {
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

    /// [`Timer::PrepareResend`] expired: a candidate asks again the acceptors that have not
    /// answered.
    pub(super) fn resend_prepares(&mut self) {
        let resend_ms = self.now_ms + self.config.heartbeat_interval_ms;
        self.timers.set(Timer::PrepareResend, resend_ms);
        if self.held_full() {
            return; // the next heartbeat interval tries again
        }
        let Some((ballot, from_slot, missing)) = self.proposer.prepare_resend() else {
            return;
        };
        let msg = Message::Prepare { ballot, from_slot };
        for to in missing {
            // Held like the first Prepares until this replica's own promise is durable.
            self.send_when_durable(to, msg.clone());
        }
    }

    /// A majority promised: lead, re-proposing the recovered log suffix.
    pub(super) fn become_leader(&mut self) {
        let commit = self.learner.commit();
        let delivered = self.learner.delivered();
        let now = self.now_ms;
        let peers = self.peers();
        let Some((ballot, plan)) =
            self.proposer
                .lead(&self.membership, (commit, delivered), &peers, now)
        else {
            return;
        };
        // Invariant: a leader's ballot is its durable promise. Its own Prepares, hence
        // every promise it counted, waited for its promise to be durable; and any higher
        // promise would have made it step down.
        debug_assert!(
            self.bug_planted() || self.durability.promised_durable() == ballot,
            "leading under {ballot} with durable promise {}",
            self.durability.promised_durable()
        );
        self.timers.stop(Timer::Election);
        self.timers.stop(Timer::PrepareResend);
        self.timers
            .set(Timer::Heartbeat, now + self.config.heartbeat_interval_ms);
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
