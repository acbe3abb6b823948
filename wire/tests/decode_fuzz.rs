//! Decoders are total: arbitrary or mutated bytes give an error, never a panic; and
//! arbitrary requests roundtrip.

use bytes::Bytes;
use proptest::prelude::*;
use wire::{
    decode, encode, ClientRequest, ClientResponse, ErrorReply, HandshakeRefusal, Hello, HelloReply,
    Op, PeerRole, ReadConsistency, Reply, Session,
};

fn any_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any_bytes(16), any::<bool>()).prop_map(|(key, stale)| Op::Get {
            key,
            consistency: if stale {
                ReadConsistency::Stale
            } else {
                ReadConsistency::Linearizable
            },
        }),
        (any_bytes(16), any_bytes(64)).prop_map(|(key, value)| Op::Put { key, value }),
        any_bytes(16).prop_map(|key| Op::Delete { key }),
        (
            any_bytes(16),
            proptest::option::of(any_bytes(32)),
            any_bytes(32)
        )
            .prop_map(|(key, expected, new)| Op::Cas { key, expected, new }),
        Just(Op::Status),
        Just(Op::RegisterSession),
        Just(Op::MemberList),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(expected, id, force)| {
            Op::MemberChange {
                expected,
                change: wire::MemberChange::Remove { id },
                force,
            }
        }),
    ]
}

fn any_request() -> impl Strategy<Value = ClientRequest> {
    (
        any::<u64>(),
        proptest::option::of((any::<u64>(), any::<u64>())),
        any_op(),
    )
        .prop_map(|(id, session, op)| ClientRequest {
            id,
            session: session.map(|(client_id, seq)| Session { client_id, seq }),
            op,
        })
}

fn sample_encodings() -> Vec<Vec<u8>> {
    let request = ClientRequest {
        id: 300,
        session: Some(Session {
            client_id: 7,
            seq: 70_000,
        }),
        op: Op::Cas {
            key: Bytes::from("key"),
            expected: Some(Bytes::from("a")),
            new: Bytes::from("b"),
        },
    };
    let response = ClientResponse {
        id: 300,
        result: Err(ErrorReply::NotLeader {
            leader: Some(2),
            leader_addr: Some("h:1".into()),
        }),
    };
    let value = ClientResponse {
        id: 1,
        result: Ok(Reply::Value {
            value: Some(Bytes::from("v")),
            stale: true,
        }),
    };
    vec![
        encode(&request).unwrap().to_vec(),
        encode(&response).unwrap().to_vec(),
        encode(&value).unwrap().to_vec(),
        Hello::new("prod", PeerRole::Replica(3))
            .encode()
            .unwrap()
            .to_vec(),
        HelloReply::Refused(HandshakeRefusal::ClusterMismatch {
            expected: "a".into(),
            got: "b".into(),
        })
        .encode()
        .to_vec(),
    ]
}

fn decode_all(bytes: &[u8]) {
    let _ = decode::<ClientRequest>(bytes);
    let _ = decode::<ClientResponse>(bytes);
    let _ = Hello::decode(bytes);
    let _ = HelloReply::decode(bytes);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
        // With a valid hello header in front, the body parser is exercised too.
        let mut hello = b"KVSW\x00\x01".to_vec();
        hello.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        hello.extend_from_slice(&bytes);
        decode_all(&hello);
    }

    #[test]
    fn mutated_encodings_never_panic(
        which in 0usize..5,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = sample_encodings().swap_remove(which);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        decode_all(&bytes);
        decode_all(&bytes[..cut.index(bytes.len() + 1)]);
    }

    #[test]
    fn arbitrary_requests_roundtrip(request in any_request()) {
        let bytes = encode(&request).unwrap();
        prop_assert_eq!(decode::<ClientRequest>(&bytes).unwrap(), request);
    }
}
