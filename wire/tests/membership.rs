//! The membership requests and replies of the client protocol: every one survives encode
//! then decode, their errors read well for a command line, bad input is refused by
//! `validate` with a reason, and mutated encodings are errors, never panics.

use bytes::Bytes;
use proptest::prelude::*;
use wire::{
    decode, encode, validate, ClientRequest, ClientResponse, ErrorReply, MemberChange, MemberInfo,
    MemberList, Op, Reply,
};

fn add(id: u64) -> MemberChange {
    MemberChange::Add {
        id,
        peer_addr: "10.0.0.4:7001".into(),
        client_addr: "10.0.0.4:6001".into(),
    }
}

fn member_ops() -> Vec<Op> {
    vec![
        Op::MemberList,
        Op::MemberChange {
            expected: 3,
            change: add(4),
            force: false,
        },
        Op::MemberChange {
            expected: 4,
            change: MemberChange::Promote { id: 4 },
            force: false,
        },
        Op::MemberChange {
            expected: u64::MAX,
            change: MemberChange::Remove { id: 1 },
            force: true,
        },
    ]
}

fn list() -> MemberList {
    MemberList {
        config_id: 5,
        in_effect: false,
        served_by: 1,
        leader: Some(1),
        members: vec![
            MemberInfo {
                id: 1,
                peer_addr: Some("10.0.0.1:7001".into()),
                client_addr: Some("10.0.0.1:6001".into()),
                voter: true,
                applied: Some(1200),
                lag: Some(0),
            },
            MemberInfo {
                id: 4,
                peer_addr: None,
                client_addr: None,
                voter: false,
                applied: None,
                lag: None,
            },
        ],
    }
}

fn member_results() -> Vec<Result<Reply, ErrorReply>> {
    vec![
        Ok(Reply::Members(Box::new(list()))),
        Ok(Reply::MemberChanged {
            config_id: 6,
            effective_from_slot: 1264,
        }),
        Err(ErrorReply::ChangeInProgress),
        Err(ErrorReply::StaleConfig {
            expected: 3,
            current: 5,
        }),
        Err(ErrorReply::LearnerNotReady {
            id: 4,
            lag: Some(5000),
            allowed: 128,
        }),
        Err(ErrorReply::LearnerNotReady {
            id: 4,
            lag: None,
            allowed: 128,
        }),
        Err(ErrorReply::WouldLoseQuorum { live: 1, needed: 2 }),
        Err(ErrorReply::UnknownMember { id: 9 }),
        Err(ErrorReply::MemberExists { id: 2 }),
        Err(ErrorReply::AlreadyVoter { id: 2 }),
        Err(ErrorReply::LastVoter { id: 1 }),
        Err(ErrorReply::TooManyMembers {
            voters_max: 7,
            learners_max: 4,
        }),
    ]
}

#[test]
fn every_member_request_and_answer_roundtrips() {
    for (i, op) in member_ops().into_iter().enumerate() {
        let request = ClientRequest {
            id: i as u64,
            session: None,
            op,
        };
        let bytes = encode(&request).unwrap();
        assert_eq!(decode::<ClientRequest>(&bytes).unwrap(), request);
        assert!(
            !request.op.is_write(),
            "a membership change is not a key write"
        );
        assert_eq!(request.op.key(), None);
    }
    for (i, result) in member_results().into_iter().enumerate() {
        let response = ClientResponse {
            id: i as u64,
            result,
        };
        let bytes = encode(&response).unwrap();
        assert_eq!(decode::<ClientResponse>(&bytes).unwrap(), response);
        // Cut anywhere or lengthened, it is refused.
        for len in 0..bytes.len() {
            assert!(
                decode::<ClientResponse>(&bytes[..len]).is_err(),
                "{i} cut to {len}"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(decode::<ClientResponse>(&longer).is_err());
    }
}

#[test]
fn member_errors_print_for_a_cli() {
    let printed: Vec<String> = member_results()
        .into_iter()
        .filter_map(Result::err)
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        printed,
        [
            "another membership change is in progress; retry once it has taken effect",
            "stale configuration: the change expected configuration 3, the latest is 5; list \
             the members and try again",
            "learner 4 is not ready: it is 5000 slots behind the leader (at most 128 allowed); \
             wait for it to catch up",
            "learner 4 is not ready: it has not answered the leader lately (is it running and \
             reachable?)",
            "refused: after this change only 1 live voters would remain where 2 are needed for \
             a majority (use --force to override)",
            "node 9 is not a member",
            "node 2 is already a member",
            "node 2 is already a voter",
            "node 1 is the last voter and cannot be removed",
            "a membership holds at most 7 voters and 4 learners",
        ]
    );
    assert!(member_results()
        .into_iter()
        .filter_map(Result::err)
        .all(|e| e.is_membership_refusal()));
    assert!(!ErrorReply::Busy.is_membership_refusal());
}

#[test]
fn validate_refuses_bad_member_changes_with_a_reason() {
    for op in member_ops() {
        assert_eq!(validate(&op), Ok(()), "{op:?}");
    }
    let change = |change| Op::MemberChange {
        expected: 1,
        change,
        force: false,
    };
    let reason = |op: &Op| match validate(op) {
        Err(ErrorReply::Invalid { reason }) => reason,
        other => panic!("{op:?} gave {other:?}"),
    };
    assert!(reason(&change(MemberChange::Promote { id: 0 })).contains("id 0 is reserved"));
    assert!(reason(&change(add(0))).contains("id 0"));
    let bad_peer = change(MemberChange::Add {
        id: 4,
        peer_addr: "no-port".into(),
        client_addr: "h:1".into(),
    });
    assert!(reason(&bad_peer).starts_with("peer address: \"no-port\""));
    let bad_client = change(MemberChange::Add {
        id: 4,
        peer_addr: "h:1".into(),
        client_addr: "h:0".into(),
    });
    assert!(reason(&bad_client).starts_with("client address:"));
    let long = change(MemberChange::Add {
        id: 4,
        peer_addr: format!("{}:1", "h".repeat(300)),
        client_addr: "h:1".into(),
    });
    assert!(reason(&long).contains("the most is 255"));
}

fn any_change() -> impl Strategy<Value = MemberChange> {
    prop_oneof![
        (any::<u64>(), ".{0,20}", ".{0,20}").prop_map(|(id, peer_addr, client_addr)| {
            MemberChange::Add {
                id,
                peer_addr,
                client_addr,
            }
        }),
        any::<u64>().prop_map(|id| MemberChange::Promote { id }),
        any::<u64>().prop_map(|id| MemberChange::Remove { id }),
    ]
}

proptest! {
    #[test]
    fn member_changes_roundtrip(expected in any::<u64>(), change in any_change(), force in any::<bool>()) {
        let request = ClientRequest { id: 1, session: None, op: Op::MemberChange { expected, change, force } };
        let bytes = encode(&request).unwrap();
        prop_assert_eq!(decode::<ClientRequest>(&bytes).unwrap(), request);
    }

    #[test]
    fn mutated_member_answers_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let response = ClientResponse { id: 9, result: Ok(Reply::Members(Box::new(list()))) };
        let mut bytes = encode(&response).unwrap().to_vec();
        for (at, byte) in flips {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        let _ = decode::<ClientResponse>(&bytes);
        let _ = decode::<ClientResponse>(&Bytes::from(bytes)[1..]);
    }
}
