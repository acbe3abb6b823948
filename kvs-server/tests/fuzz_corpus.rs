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
use wire::auth::{AuthChange, AuthStatus, Grant, Permission, RoleInfo, UserInfo};
use wire::{
    ClientRequest, ClientResponse, Command, ErrorReply, Hello, HelloReply, MemberAddrs, Op,
    PeerMessage, PeerRole, ReadConsistency, Reply, Session, WriteOp,
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
    // The auth operations and their state.
    let grant = AuthChange::RoleGrant {
        role: "nurse".to_owned(),
        prefix: Bytes::from("patient/"),
        perm: Permission::ReadWrite,
    };
    let auth_status = AuthStatus {
        enabled: true,
        roles: vec![
            RoleInfo {
                name: wire::auth::ADMIN_ROLE.to_owned(),
                grants: vec![Grant {
                    prefix: Bytes::new(),
                    perm: Permission::ReadWrite,
                }],
            },
            RoleInfo {
                name: "nurse".to_owned(),
                grants: vec![Grant {
                    prefix: Bytes::from("patient/"),
                    perm: Permission::Read,
                }],
            },
        ],
        users: vec![
            UserInfo {
                name: "alice".to_owned(),
                roles: vec![wire::auth::ADMIN_ROLE.to_owned()],
            },
            UserInfo {
                name: "bob".to_owned(),
                roles: vec!["nurse".to_owned()],
            },
        ],
    };
    let denied = ErrorReply::PermissionDenied {
        identity: Some("bob".to_owned()),
        reason: "\"bob\" may not write \"patient/1\"".to_owned(),
    };
    let requests: Vec<ClientRequest> = requests
        .into_iter()
        .chain([
            ClientRequest {
                id: 11,
                session: Some(Session {
                    client_id: 42,
                    seq: 2,
                }),
                op: Op::Auth(grant.clone()),
            },
            ClientRequest {
                id: 12,
                session: None,
                op: Op::AuthStatus,
            },
        ])
        .collect();
    let request_bytes: Vec<Vec<u8>> = requests
        .iter()
        .map(|r| wire::encode(r).unwrap().to_vec())
        .collect();
    // Commands as a log value holds them: with an origin, an auth change, and one of the
    // layout before origins.
    let session = Session {
        client_id: 42,
        seq: 5,
    };
    let put = WriteOp::Put {
        key: Bytes::from("patient/1"),
        value: Bytes::from("x"),
    };
    let old_layout = wire::encode(&(session, put.clone())).unwrap();
    let commands = vec![
        Command::new(session, put, Some("alice".to_owned()))
            .encode()
            .unwrap(),
        Command::new(session, WriteOp::Auth(grant), None)
            .encode()
            .unwrap(),
        old_layout,
    ];
    let auth_value = Value::Commands(commands.clone());
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
        ClientResponse {
            id: 10,
            result: Err(denied.clone()),
        },
        ClientResponse {
            id: 11,
            result: Ok(Reply::AuthStatus(Box::new(auth_status.clone()))),
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
        PeerMessage::Paxos(Message::Accept {
            ballot,
            entries: vec![(8, auth_value.clone())],
            commit: 7,
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
        HelloReply::Refused(wire::HandshakeRefusal::TlsRequired),
        HelloReply::Refused(wire::HandshakeRefusal::CertificateMismatch {
            claimed: 1,
            certified: 2,
        }),
        HelloReply::Refused(wire::HandshakeRefusal::CertificateNamesNoMember {
            claimed: 1,
            reason: "no URI SAN urn:kvs:member:<id>".to_owned(),
        }),
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
    let addrs = MemberAddrs {
        peer_addr: "10.0.0.1:7000".to_owned(),
        client_addr: Some("10.0.0.1:7001".to_owned()),
    };
    let voters = [1, 2, 3];
    let mut metas = BTreeMap::new();
    metas.insert(1, addrs.encode().unwrap());
    let log = paxos_core::MembershipLog::new(16, paxos_core::Membership::initial(&voters, &metas));
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
        data.clone(),
        kvs_server::sessions::SessionTable::default(),
    );
    let snapshot = kvs_server::snapshot::encode(&sm).unwrap();
    // A snapshot with every section filled: sessions with results, and a membership.
    let mut results = BTreeMap::new();
    results.insert(3, Ok(Reply::Written));
    results.insert(4, Ok(Reply::Deleted { existed: false }));
    results.insert(5, Err(denied));
    let mut sessions = BTreeMap::new();
    sessions.insert(
        42,
        kvs_server::sessions::SessionResults {
            last_slot: 11,
            floor: 2,
            results,
        },
    );
    let mut full = kvs_server::state_machine::StateMachine::from_parts(
        12,
        data,
        kvs_server::sessions::SessionTable::from_parts(1, 99, sessions),
    );
    let empty_snapshot =
        kvs_server::snapshot::encode(&kvs_server::state_machine::StateMachine::new()).unwrap();
    full.set_membership(log.clone());
    full.set_auth(kvs_server::auth::AuthState::from_status(&auth_status).unwrap());
    let full_snapshot = kvs_server::snapshot::encode(&full).unwrap();
    let body = full_snapshot.clone();
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
    // A segment with a sync marker between two records: a marker's length field, and a
    // payload the fix-up fills in.
    let mut marked = kvs_server::wal::decode::encode_segment(1, 0, &record_refs[..1]).unwrap();
    marked.extend_from_slice(&0x8000_001cu32.to_le_bytes());
    marked.extend_from_slice(&[0; 8 + 28]);
    marked.extend_from_slice(&(records[1].len() as u32).to_le_bytes());
    marked.extend_from_slice(&[0; 8]);
    marked.extend_from_slice(&records[1]);
    checks::fix_wal_segment(&mut marked);
    // The handshake as a stream: a mode byte (the side and the expectation, see
    // checks::handshake_stream), then what the other side sends.
    let identity = wire::handshake::ReplicaIdentity {
        cluster_uid: wire::handshake::Uid([7; 16]),
        instance: wire::handshake::Uid([9; 16]),
        members: vec![1, 2, 3],
        sessions_max: 1000,
        joining: false,
        configuration: 5,
        peer_addr: "10.0.0.2:7000".to_owned(),
    };
    let joining = wire::handshake::ReplicaIdentity::joining(wire::handshake::Uid([8; 16]), 1000);
    let stream_hellos = [
        (0u8, Hello::new("prod", PeerRole::Client)),
        (1, Hello::new("prod", PeerRole::Replica(2))),
        (2, Hello::replica("prod", 2, identity.clone())),
        (3, Hello::replica("prod", 4, joining)),
    ];
    let stream_replies = [
        (0x80u8, replies[0].clone()),
        (0x81, replies[1].clone()),
        (
            0x83,
            HelloReply::Accepted(wire::handshake::Accepted {
                node_id: 1,
                version: wire::handshake::PROTOCOL_VERSION,
                cluster: Some(wire::handshake::ClusterInfo {
                    cluster_uid: wire::handshake::Uid([7; 16]),
                    members: vec![1, 2, 3],
                    voters: vec![1, 2, 3],
                }),
            }),
        ),
    ];
    let mut streams: Vec<Vec<u8>> = stream_hellos
        .iter()
        .map(|(mode, hello)| {
            let mut out = vec![*mode];
            out.extend_from_slice(&hello.encode().unwrap());
            out
        })
        .collect();
    streams.extend(stream_replies.iter().map(|(mode, reply)| {
        let mut out = vec![*mode];
        out.extend_from_slice(&reply.encode());
        out
    }));
    // A plain hello to a port that requires TLS (the refusing mode).
    let mut plain = vec![0x40u8];
    plain.extend_from_slice(&stream_hellos[0].1.encode().unwrap());
    streams.push(plain);
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
                .chain(commands.iter().map(|c| c.to_vec()))
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
        ("wal_segment", vec![segment.clone()]),
        (
            "storage_record",
            records
                .iter()
                .cloned()
                .chain([
                    kvs_server::storage::record::encode(&PersistEntry::Accepted {
                        slot: 8,
                        ballot,
                        value: auth_value,
                    })
                    .unwrap(),
                ])
                .collect(),
        ),
        (
            "snapshot",
            vec![
                snapshot.clone(),
                empty_snapshot.clone(),
                full_snapshot.clone(),
            ],
        ),
        ("backup", vec![backup.clone()]),
        ("wal_segment_fixed", vec![segment, marked]),
        (
            "snapshot_fixed",
            vec![snapshot, empty_snapshot, full_snapshot],
        ),
        ("backup_fixed", vec![backup]),
        ("handshake_stream", streams),
        ("identity_file", identity_files()),
        ("certificate", certificates()),
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

/// Identity files of a bootstrapped member and of one that joined.
fn identity_files() -> Vec<Vec<u8>> {
    use kvs_server::identity::{Identity, Origin};
    let mut known = BTreeMap::new();
    known.insert(2, wire::handshake::Uid([2; 16]));
    let member = Identity {
        cluster_name: "prod".to_owned(),
        cluster_uid: wire::handshake::Uid([7; 16]),
        member_id: 1,
        instance: wire::handshake::Uid([1; 16]),
        members: vec![1, 2, 3],
        joined: true,
        known,
        origin: Origin::Bootstrapped,
    };
    let joined = Identity {
        member_id: 4,
        joined: false,
        origin: Origin::Joined,
        ..member.clone()
    };
    [member, joined]
        .iter()
        .map(|i| i.encode().into_bytes())
        .collect()
}

/// Certificates (DER) of a CA, a replica (its member id in a URI SAN) and a client.
fn certificates() -> Vec<Vec<u8>> {
    use kvs_server::certs::{Authority, LeafSpec, Validity};
    let validity = Validity::days_from_now(365);
    let ca = Authority::new("kvs fuzz seeds", validity).unwrap();
    let node = ca
        .issue(&LeafSpec::node(2, &["localhost".to_owned()], validity))
        .unwrap();
    let client = ca.issue(&LeafSpec::client("alice", validity)).unwrap();
    [ca.cert_pem().to_owned(), node.cert_pem, client.cert_pem]
        .iter()
        .map(|pem| {
            let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
            pem.contents
        })
        .collect()
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
                "peer_message" => {
                    wire::decode::<PeerMessage>(&input).is_ok() || Command::decode(&input).is_ok()
                }
                "handshake_hello" => Hello::decode(&input).is_ok(),
                "handshake_reply" => HelloReply::decode(&input).is_ok(),
                "wal_segment" => kvs_server::wal::decode::segment(&input)
                    .is_ok_and(|s| s.defect.is_none() && s.payloads.len() == 4),
                "wal_segment_fixed" => kvs_server::wal::decode::segment(&input)
                    .is_ok_and(|s| s.defect.is_none() && !s.payloads.is_empty()),
                "storage_record" => kvs_server::storage::record::decode(&input).is_ok(),
                "snapshot" | "snapshot_fixed" => {
                    kvs_server::snapshot::decode(&input, Path::new("seed")).is_ok()
                }
                "backup" | "backup_fixed" => wire::backup::verify(input.as_slice()).is_ok(),
                "identity_file" => std::str::from_utf8(&input)
                    .is_ok_and(|text| kvs_server::identity::Identity::decode(text).is_ok()),
                "certificate" => {
                    kvs_server::tls::identity::not_after_unix(&input).is_some()
                        && (kvs_server::tls::identity::member_id(&input).is_ok()
                            || kvs_server::tls::identity::common_name(&input).is_some())
                }
                "handshake_stream" => match input.split_first() {
                    Some((mode, record)) if mode & 0x80 == 0 => Hello::decode(record).is_ok(),
                    Some((_, record)) => HelloReply::decode(record).is_ok(),
                    None => false,
                },
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

/// The seed of `target` numbered `n`.
fn seed(target: &str, n: usize) -> Vec<u8> {
    let (_, inputs) = seeds()
        .into_iter()
        .find(|(name, _)| *name == target)
        .unwrap();
    inputs[n].clone()
}

/// `bytes` with the first occurrence of `from` replaced by `to` (of the same length).
fn replaced(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("the pattern is there");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

#[test]
fn the_fix_ups_carry_changed_bytes_past_the_checksums() {
    // WAL: a changed payload byte fails the record's chained checksum; fixed, every record
    // reads again, the changed one included.
    let segment = seed("wal_segment_fixed", 0);
    let mut changed = replaced(&segment, b"a command", b"a cummand");
    let damaged = kvs_server::wal::decode::segment(&changed).unwrap();
    assert!(damaged.payloads.len() < 4, "{damaged:?}");
    checks::fix_wal_segment(&mut changed);
    let fixed = kvs_server::wal::decode::segment(&changed).unwrap();
    assert_eq!((fixed.payloads.len(), fixed.defect), (4, None));
    assert!(fixed.payloads[1].windows(9).any(|w| w == b"a cummand"));
    // A length made longer than the bytes left becomes the bytes left.
    let mut longer = segment.clone();
    let first_len = kvs_server::wal::decode::SEGMENT_HEADER_LEN;
    longer[first_len..first_len + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    checks::fix_wal_segment(&mut longer);
    let fixed = kvs_server::wal::decode::segment(&longer).unwrap();
    assert_eq!((fixed.payloads.len(), fixed.defect), (1, None));

    // Snapshot: a changed value fails the trailing checksum; fixed, it decodes to the
    // changed value. A missing checksum, and bytes after it, are fixed the same way.
    let origin = Path::new("test");
    let snapshot = seed("snapshot_fixed", 2);
    let changed = replaced(&snapshot, b"blue", b"blux");
    let err = kvs_server::snapshot::decode(&changed, origin).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    let fixed = checks::fix_snapshot(&changed).unwrap();
    let sm = kvs_server::snapshot::decode(&fixed, origin).unwrap();
    assert_eq!(kvs_server::snapshot::encode(&sm).unwrap(), fixed);
    assert!(fixed.windows(4).any(|w| w == b"blux"));
    let cut = &changed[..changed.len() - 4];
    assert_eq!(checks::fix_snapshot(cut), Some(fixed.clone()));
    let mut longer = changed.clone();
    longer.extend_from_slice(b"more");
    assert_eq!(checks::fix_snapshot(&longer), Some(fixed.clone()));
    assert_eq!(checks::fix_snapshot(&snapshot), None, "already valid");

    // Backup: a changed body byte fails the body checksum (and the snapshot's own); fixed,
    // the file verifies and its body is the fixed snapshot.
    let backup = seed("backup_fixed", 0);
    let changed = replaced(&backup, b"blue", b"blux");
    assert!(wire::backup::verify(changed.as_slice()).is_err());
    let fixed_backup = checks::fix_backup(&changed);
    let header = wire::backup::verify(fixed_backup.as_slice()).unwrap();
    assert!(fixed_backup.ends_with(&fixed));
    assert_eq!(header.body_bytes, fixed.len() as u64);

    // Identity file: a changed cluster name fails the checksum line; fixed, it decodes to
    // the changed name.
    let identity = seed("identity_file", 0);
    let changed = replaced(&identity, b"prod", b"test");
    let text = String::from_utf8(changed).unwrap();
    let err = kvs_server::identity::Identity::decode(&text).unwrap_err();
    assert_eq!(err, "checksum mismatch");
    let fixed = checks::fix_identity(text.as_bytes()).unwrap();
    let decoded = kvs_server::identity::Identity::decode(&fixed).unwrap();
    assert_eq!(decoded.cluster_name, "test");
}
