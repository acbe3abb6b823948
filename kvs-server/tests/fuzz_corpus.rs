//! The fuzz corpus (`fuzz/corpus/<target>/`) replayed through the decoders, with the same
//! checks as the fuzz targets (`fuzz/src/checks.rs`): every committed input, seeds and
//! regressions alike, is checked by an ordinary `cargo test`, without a fuzzer.
//!
//! `KVS_FUZZ_CORPUS_WRITE=1 cargo test -p kvs-server --test fuzz_corpus` (re)writes the
//! seed inputs: a few valid encodings per target.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use paxos_core::{Ballot, Message, PersistEntry, Value};
use wire::{
    ClientRequest, ClientResponse, Hello, HelloReply, MemberAddrs, Op, PeerMessage, PeerRole,
    ReadConsistency, Reply, Session,
};

#[path = "../../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

/// Most files replayed per target (a bound; the corpus is kept small).
const FILES_MAX: usize = 10_000;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let requests = [
        ClientRequest {
            id: 7,
            session: Some(Session {
                client_id: 42,
                seq: 1,
            }),
            op: Op::Put {
                key: Bytes::from("color"),
                value: Bytes::from("blue"),
            },
        },
        ClientRequest {
            id: 8,
            session: None,
            op: Op::Get {
                key: Bytes::from("color"),
                consistency: ReadConsistency::Linearizable,
            },
        },
        ClientRequest {
            id: 9,
            session: None,
            op: Op::Delete {
                key: Bytes::from("k"),
            },
        },
        ClientRequest {
            id: 10,
            session: None,
            op: Op::Status,
        },
    ];
    let request_bytes: Vec<Vec<u8>> = requests
        .iter()
        .map(|r| wire::encode(r).unwrap().to_vec())
        .collect();
    let frames: Vec<Vec<u8>> = request_bytes
        .iter()
        .map(|payload| {
            let mut out = (payload.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(payload);
            out.extend_from_slice(&out.clone());
            out
        })
        .collect();
    let responses = [
        ClientResponse {
            id: 7,
            result: Ok(Reply::Written),
        },
        ClientResponse {
            id: 8,
            result: Ok(Reply::Value {
                value: Some(Bytes::from("blue")),
                stale: false,
            }),
        },
        ClientResponse {
            id: 9,
            result: Ok(Reply::Deleted { existed: true }),
        },
    ];
    let ballot = Ballot { round: 3, node: 2 };
    let value = Value::Commands(vec![Bytes::from("a command"), Bytes::from("another")]);
    let peers = [
        PeerMessage::Paxos(Message::Prepare {
            ballot,
            from_slot: 5,
        }),
        PeerMessage::Paxos(Message::Accept {
            ballot,
            entries: vec![(6, value.clone()), (7, Value::Noop)],
            commit: 5,
        }),
        PeerMessage::SnapshotChunk {
            slot: 9,
            total_bytes: 4,
            offset: 0,
            data: Bytes::from("snap"),
        },
    ];
    let hellos = [
        Hello::new("prod", PeerRole::Client),
        Hello::new("prod", PeerRole::Replica(3)),
    ];
    let refusal = Hello::decode(b"XXXX\0\0\0\0").unwrap_err();
    let replies = [
        HelloReply::Accepted(wire::handshake::Accepted {
            node_id: 1,
            version: wire::handshake::PROTOCOL_VERSION,
            cluster: None,
        }),
        HelloReply::Refused(refusal),
    ];
    let entries = [
        PersistEntry::Promised(ballot),
        PersistEntry::Accepted {
            slot: 6,
            ballot,
            value: value.clone(),
        },
        PersistEntry::Accepted {
            slot: 7,
            ballot,
            value: Value::Noop,
        },
        PersistEntry::Committed { upto: 6 },
    ];
    let records: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| kvs_server::storage::record::encode(e).unwrap())
        .collect();
    let record_refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let segment = kvs_server::wal::decode::encode_segment(1, 0, &record_refs).unwrap();
    let mut data = BTreeMap::new();
    data.insert(
        b"color".to_vec().into_boxed_slice(),
        b"blue".to_vec().into_boxed_slice(),
    );
    data.insert(
        b"size".to_vec().into_boxed_slice(),
        b"large".to_vec().into_boxed_slice(),
    );
    let sm = kvs_server::state_machine::StateMachine::from_parts(
        12,
        data,
        kvs_server::sessions::SessionTable::default(),
    );
    let snapshot = kvs_server::snapshot::encode(&sm).unwrap();
    let empty_snapshot =
        kvs_server::snapshot::encode(&kvs_server::state_machine::StateMachine::new()).unwrap();
    let body = snapshot.clone();
    let header = wire::backup::BackupHeader {
        version: 1,
        cluster_uid: wire::handshake::Uid([7; 16]),
        cluster_name: "prod".to_owned(),
        slot: 12,
        keys: 2,
        body_bytes: body.len() as u64,
        body_crc32c: wire::backup::crc32c_append(wire::backup::body_crc32c_start(), &body),
    };
    let mut backup = header.encode().unwrap();
    backup.extend_from_slice(&body);
    let addrs = MemberAddrs {
        peer_addr: "10.0.0.1:7000".to_owned(),
        client_addr: Some("10.0.0.1:7001".to_owned()),
    };
    let voters = [1, 2, 3];
    let mut metas = BTreeMap::new();
    metas.insert(1, addrs.encode().unwrap());
    let log = paxos_core::MembershipLog::new(16, paxos_core::Membership::initial(&voters, &metas));
    vec![
        ("client_request", request_bytes),
        ("client_frames", frames),
        (
            "client_response",
            responses
                .iter()
                .map(|r| wire::encode(r).unwrap().to_vec())
                .collect(),
        ),
        (
            "peer_message",
            peers
                .iter()
                .map(|m| wire::encode(m).unwrap().to_vec())
                .collect(),
        ),
        (
            "handshake_hello",
            hellos
                .iter()
                .map(|h| h.encode().unwrap().to_vec())
                .collect(),
        ),
        (
            "handshake_reply",
            replies.iter().map(|r| r.encode().to_vec()).collect(),
        ),
        ("wal_segment", vec![segment]),
        ("storage_record", records.clone()),
        ("snapshot", vec![snapshot, empty_snapshot]),
        ("backup", vec![backup]),
        (
            "membership",
            vec![
                addrs.encode().unwrap().to_vec(),
                wire::membership::encode_membership_log(&log)
                    .unwrap()
                    .to_vec(),
            ],
        ),
    ]
}

#[test]
fn every_target_has_seeds_and_the_corpus_replays() {
    let write = std::env::var_os("KVS_FUZZ_CORPUS_WRITE").is_some();
    let seeds = seeds();
    for (target, check) in checks::TARGETS {
        let dir = corpus_dir().join(target);
        if write {
            let (_, inputs) = seeds
                .iter()
                .find(|(name, _)| name == target)
                .unwrap_or_else(|| panic!("no seeds for {target}"));
            std::fs::create_dir_all(&dir).unwrap();
            for (i, input) in inputs.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), input).unwrap();
            }
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .take(FILES_MAX)
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no corpus", dir.display());
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            check(&bytes);
        }
    }
}

#[test]
fn every_seed_decodes() {
    // The seeds are valid encodings: each must get past the decoder, not only not panic.
    for (target, inputs) in seeds() {
        for input in inputs {
            let ok = match target {
                "client_request" => wire::decode::<ClientRequest>(&input).is_ok(),
                "client_frames" => input.len() > 4,
                "client_response" => wire::decode::<ClientResponse>(&input).is_ok(),
                "peer_message" => wire::decode::<PeerMessage>(&input).is_ok(),
                "handshake_hello" => Hello::decode(&input).is_ok(),
                "handshake_reply" => HelloReply::decode(&input).is_ok(),
                "wal_segment" => kvs_server::wal::decode::segment(&input)
                    .is_ok_and(|s| s.defect.is_none() && s.payloads.len() == 4),
                "storage_record" => kvs_server::storage::record::decode(&input).is_ok(),
                "snapshot" => kvs_server::snapshot::decode(&input, Path::new("seed")).is_ok(),
                "backup" => wire::backup::verify(input.as_slice()).is_ok(),
                "membership" => {
                    MemberAddrs::decode(&input).is_ok()
                        || wire::membership::decode_membership_log(&input).is_ok()
                }
                other => panic!("unknown target {other}"),
            };
            assert!(ok, "a seed of {target} does not decode: {input:?}");
        }
    }
}
