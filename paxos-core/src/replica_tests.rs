//! Engine tests: given this state and this input, exactly these outputs come out, in order.

use bytes::Bytes;

use super::*;

fn b(round: u64, node: NodeId) -> Ballot {
    Ballot::new(round, node)
}

fn cmd(s: &'static str) -> Value {
    Value::Commands(vec![Bytes::from_static(s.as_bytes())])
}

fn replica(id: NodeId) -> Replica {
    match Replica::new(Config::new(id, vec![1, 2, 3]), 1, 0) {
        Ok(r) => r,
        Err(e) => panic!("config: {e}"),
    }
}

fn drain(r: &mut Replica) -> Vec<Output> {
    std::iter::from_fn(|| r.poll_output()).collect()
}

fn send(to: NodeId, message: Message) -> Output {
    Output::Send { to, message }
}

/// Replica `id` of 1, 2, 3 with `held_replies_max` set.
fn replica_holding_at_most(id: NodeId, held_replies_max: usize) -> Replica {
    let mut config = Config::new(id, vec![1, 2, 3]);
    config.held_replies_max = held_replies_max;
    match Replica::new(config, 1, 0) {
        Ok(r) => r,
        Err(e) => panic!("config: {e}"),
    }
}

/// Replica 1, elected leader under ballot 1.1 with nothing to recover, everything durable.
fn leader() -> Replica {
    elect(replica(1))
}

/// `r` (replica 1), elected leader under ballot 1.1 with nothing to recover, everything
/// durable.
fn elect(mut r: Replica) -> Replica {
    let t = r.poll_timeout();
    r.handle_timeout(t);
    let out = drain(&mut r);
    assert!(
        matches!(out.last(), Some(Output::Persist { id: 1, .. })),
        "{out:?}"
    );
    r.handle_durable(t, 1);
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
    let _ = drain(&mut r);
    r
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
    r.handle_message(t, 3, Message::CatchUpRequest { from_slot: 0 });
    assert_eq!(drain(&mut r), vec![Output::SendSnapshot { to: 3 }]);
    // Asked again at once, it does not ship a second snapshot.
    r.handle_message(t + 1, 3, Message::CatchUpRequest { from_slot: 0 });
    assert_eq!(drain(&mut r), vec![]);
    // From the snapshot on, it serves log entries.
    r.handle_message(t + 2, 3, Message::CatchUpRequest { from_slot: 1 });
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

#[test]
fn recovery_redelivers_committed_slots_after_the_snapshot() {
    let mut state = RecoveredState::default();
    state.apply(PersistEntry::Promised(b(1, 1)));
    for (slot, c) in [(0, "a"), (1, "b"), (2, "c")] {
        state.apply(PersistEntry::Accepted {
            slot,
            ballot: b(1, 1),
            value: cmd(c),
        });
    }
    state.apply(PersistEntry::Committed { upto: 2 });
    state.snapshot_slot = 1;
    let mut r = match Replica::recover(Config::new(2, vec![1, 2, 3]), 3, 0, &state) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        drain(&mut r),
        vec![Output::Committed {
            slot: 1,
            value: cmd("b"),
        }]
    );
    assert_eq!(r.promised(), b(1, 1));
    assert_eq!(r.commit_index(), 2);
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
        Message::Heartbeat {
            ballot: b(2, 99),
            commit: 0,
            read_round: 0,
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
