//! Every message type survives encode then decode, and decode refuses what is not exactly
//! one message.

use bytes::Bytes;
use wire::{
    decode, encode, validate, BallotInfo, ClientRequest, ClientResponse, ErrorReply, NodeRole,
    NodeStatus, Op, PeerReachability, ReadConsistency, Reply, Session, WireError, KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
};

fn roundtrip<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(msg).expect("encodes");
    let back: T = decode(&bytes).expect("decodes");
    assert_eq!(&back, msg);
}

fn key(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn all_ops() -> Vec<Op> {
    vec![
        Op::Get {
            key: key("k"),
            consistency: ReadConsistency::Linearizable,
        },
        Op::Get {
            key: key("k"),
            consistency: ReadConsistency::Stale,
        },
        Op::Put {
            key: key("k"),
            value: key("v"),
        },
        Op::Put {
            key: key("k"),
            value: Bytes::new(),
        },
        Op::Delete { key: key("k") },
        Op::Cas {
            key: key("k"),
            expected: Some(key("old")),
            new: key("new"),
        },
        Op::Cas {
            key: key("k"),
            expected: None,
            new: key("new"),
        },
        Op::Status,
        Op::RegisterSession,
    ]
}

fn status() -> NodeStatus {
    NodeStatus {
        id: 2,
        client_addr: "127.0.0.1:7002".into(),
        role: NodeRole::Follower,
        ballot: BallotInfo { round: 5, node: 1 },
        commit_index: 1_000,
        applied_index: 998,
        leader: Some(1),
        peers: vec![
            PeerReachability {
                id: 1,
                reachable: true,
            },
            PeerReachability {
                id: 3,
                reachable: false,
            },
        ],
        acceptor_failures: 3,
        acceptor_recoveries: 2,
        acceptor_down: true,
        uptime_ms: u64::MAX,
    }
}

fn all_results() -> Vec<Result<Reply, ErrorReply>> {
    vec![
        Ok(Reply::Value {
            value: Some(key("v")),
            stale: false,
        }),
        Ok(Reply::Value {
            value: None,
            stale: true,
        }),
        Ok(Reply::Written),
        Ok(Reply::Deleted { existed: true }),
        Ok(Reply::Deleted { existed: false }),
        Ok(Reply::Swapped),
        Ok(Reply::Mismatch {
            current: Some(key("other")),
        }),
        Ok(Reply::Mismatch { current: None }),
        Ok(Reply::Status(Box::new(status()))),
        Ok(Reply::SessionRegistered { client_id: 17 }),
        Err(ErrorReply::NotLeader {
            leader: Some(1),
            leader_addr: Some("10.0.0.1:7001".into()),
        }),
        Err(ErrorReply::NotLeader {
            leader: None,
            leader_addr: None,
        }),
        Err(ErrorReply::Unavailable {
            reason: "no quorum".into(),
        }),
        Err(ErrorReply::TooLarge {
            what: "value".into(),
            size: 2_000_000,
            max: 1_048_576,
        }),
        Err(ErrorReply::Busy),
        Err(ErrorReply::Invalid {
            reason: "the key is empty".into(),
        }),
        Err(ErrorReply::ShuttingDown),
        Err(ErrorReply::Timeout),
        Err(ErrorReply::SessionExpired {
            client_id: 17,
            seq: 3,
        }),
    ]
}

#[test]
fn every_request_roundtrips() {
    for (i, op) in all_ops().into_iter().enumerate() {
        roundtrip(&ClientRequest {
            id: i as u64,
            session: None,
            op: op.clone(),
        });
        roundtrip(&ClientRequest {
            id: u64::MAX - i as u64,
            session: Some(Session {
                client_id: 0xdead_beef,
                seq: i as u64,
            }),
            op,
        });
    }
}

#[test]
fn every_response_roundtrips() {
    for (i, result) in all_results().into_iter().enumerate() {
        roundtrip(&ClientResponse {
            id: i as u64,
            result,
        });
    }
    for role in [
        NodeRole::Leader,
        NodeRole::Follower,
        NodeRole::Candidate,
        NodeRole::Down,
    ] {
        roundtrip(&NodeStatus {
            role,
            leader: None,
            peers: vec![],
            ..status()
        });
    }
}

#[test]
fn largest_request_fits_a_default_frame() {
    let request = ClientRequest {
        id: u64::MAX,
        session: Some(Session {
            client_id: u64::MAX,
            seq: u64::MAX,
        }),
        op: Op::Cas {
            key: Bytes::from(vec![b'k'; KEY_BYTES_MAX]),
            expected: Some(Bytes::from(vec![1; VALUE_BYTES_MAX])),
            new: Bytes::from(vec![2; VALUE_BYTES_MAX]),
        },
    };
    assert_eq!(validate(&request.op), Ok(()));
    let bytes = encode(&request).unwrap();
    assert!(bytes.len() <= wire::FRAME_BYTES_MAX_DEFAULT);
    assert_eq!(decode::<ClientRequest>(&bytes).unwrap(), request);
}

#[test]
fn trailing_bytes_are_rejected() {
    let request = ClientRequest {
        id: 1,
        session: None,
        op: Op::Status,
    };
    let mut bytes = encode(&request).unwrap().to_vec();
    let used = bytes.len();
    bytes.extend_from_slice(&[0, 0]);
    match decode::<ClientRequest>(&bytes) {
        Err(WireError::TrailingBytes {
            used: u,
            trailing: 2,
        }) => assert_eq!(u, used),
        other => panic!("expected trailing bytes error, got {other:?}"),
    }
}

#[test]
fn truncated_and_empty_inputs_are_rejected() {
    let response = ClientResponse {
        id: 9,
        result: Ok(Reply::Status(Box::new(status()))),
    };
    let bytes = encode(&response).unwrap();
    for len in 0..bytes.len() {
        assert!(
            decode::<ClientResponse>(&bytes[..len]).is_err(),
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn validate_checks_limits() {
    let big_key = Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]);
    let big_value = Bytes::from(vec![0; VALUE_BYTES_MAX + 1]);
    for op in all_ops() {
        assert_eq!(validate(&op), Ok(()), "{op:?}");
    }
    assert!(matches!(
        validate(&Op::Get {
            key: Bytes::new(),
            consistency: ReadConsistency::Stale
        }),
        Err(ErrorReply::Invalid { .. })
    ));
    assert_eq!(
        validate(&Op::Delete {
            key: big_key.clone()
        }),
        Err(ErrorReply::TooLarge {
            what: "key".into(),
            size: KEY_BYTES_MAX as u64 + 1,
            max: KEY_BYTES_MAX as u64
        })
    );
    assert!(matches!(
        validate(&Op::Put { key: key("k"), value: big_value.clone() }),
        Err(ErrorReply::TooLarge { ref what, .. }) if what == "value"
    ));
    assert!(matches!(
        validate(&Op::Cas { key: key("k"), expected: Some(big_value.clone()), new: key("v") }),
        Err(ErrorReply::TooLarge { ref what, .. }) if what == "expected value"
    ));
    assert!(matches!(
        validate(&Op::Cas { key: key("k"), expected: None, new: big_value }),
        Err(ErrorReply::TooLarge { ref what, .. }) if what == "value"
    ));
    assert_eq!(
        validate(&Op::Put {
            key: Bytes::from(vec![1; KEY_BYTES_MAX]),
            value: Bytes::new()
        }),
        Ok(())
    );
}

#[test]
fn errors_print_for_a_cli() {
    let printed: Vec<String> = all_results()
        .into_iter()
        .filter_map(Result::err)
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        printed,
        [
            "not the leader; the leader is node 1 at 10.0.0.1:7001",
            "not the leader; the leader is unknown",
            "unavailable: no quorum",
            "value too large: 2000000 bytes, the maximum is 1048576 bytes",
            "busy: too many requests in flight, retry later",
            "invalid request: the key is empty",
            "the node is shutting down",
            "timed out: the outcome is unknown (the operation may or may not have been applied)",
            "session expired: write 3 of session 17 is no longer remembered, so it was not \
             applied now (an earlier attempt may or may not have been)",
        ]
    );
}

#[test]
fn op_helpers() {
    assert_eq!(Op::Status.key(), None);
    assert!(!Op::Status.is_write());
    assert_eq!(Op::RegisterSession.key(), None);
    assert!(!Op::RegisterSession.is_write());
    assert_eq!(wire::validate(&Op::RegisterSession), Ok(()));
    let writes: Vec<bool> = all_ops().iter().map(Op::is_write).collect();
    assert_eq!(
        writes,
        [false, false, true, true, true, true, true, false, false]
    );
}
