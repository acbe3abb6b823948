//! The handshake over an in-memory stream: acceptance, every refusal on both sides (the
//! replica identity checks included), garbage, an older and a newer version, timeouts, and
//! frames after the handshake.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use wire::handshake::layout;
use wire::{
    client_handshake, frame_codec, server_handshake, server_handshake_with, Accepted, ClusterInfo,
    HandshakeExpectation, HandshakeRefusal, Hello, HelloReply, PeerRole, ReplicaIdentity, Uid,
    WireError, PROTOCOL_VERSION,
};

const TIMEOUT: Duration = Duration::from_secs(5);
const SERVER_ID: u64 = 1;

type Conn = Framed<DuplexStream, LengthDelimitedCodec>;

fn pair() -> (Conn, Conn) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (Framed::new(a, frame_codec()), Framed::new(b, frame_codec()))
}

fn peer_port() -> HandshakeExpectation {
    HandshakeExpectation::replicas("prod", [1, 2, 3])
}

fn client_port() -> HandshakeExpectation {
    HandshakeExpectation::clients("prod")
}

/// Runs both sides concurrently.
async fn run(
    hello: Hello,
    expected: HandshakeExpectation,
) -> (
    Result<Accepted, WireError>,
    Result<Hello, WireError>,
    Conn,
    Conn,
) {
    let (mut client, mut server) = pair();
    let (c, s) = tokio::join!(
        client_handshake(&mut client, &hello, TIMEOUT),
        server_handshake(&mut server, &expected, SERVER_ID, TIMEOUT),
    );
    (c, s, client, server)
}

/// Runs a handshake that must be refused; checks both sides report `want`.
async fn refused(hello: Hello, expected: HandshakeExpectation, want: HandshakeRefusal) -> String {
    let (c, s, _, _) = run(hello, expected).await;
    match s {
        Err(WireError::Refused(got)) => assert_eq!(got, want, "server side"),
        other => panic!("server side: expected a refusal, got {other:?}"),
    }
    let err = c.expect_err("client side must fail");
    match &err {
        WireError::PeerRefused(got) => assert_eq!(got, &want, "client side"),
        other => panic!("client side: expected PeerRefused, got {other:?}"),
    }
    err.to_string()
}

#[tokio::test]
async fn replica_and_client_are_accepted_and_frames_follow() {
    let hello = Hello::new("prod", PeerRole::Replica(2));
    let (c, s, mut client, mut server) = run(hello.clone(), peer_port()).await;
    assert_eq!(
        c.unwrap(),
        Accepted {
            node_id: SERVER_ID,
            version: PROTOCOL_VERSION,
            cluster: None,
        }
    );
    assert_eq!(s.unwrap(), hello);

    // Frames flow both ways right behind the handshake records.
    client
        .send(bytes::Bytes::from_static(b"ping"))
        .await
        .unwrap();
    assert_eq!(&server.next().await.unwrap().unwrap()[..], b"ping");
    server
        .send(bytes::Bytes::from_static(b"pong"))
        .await
        .unwrap();
    assert_eq!(&client.next().await.unwrap().unwrap()[..], b"pong");

    let (c, s, _, _) = run(Hello::new("prod", PeerRole::Client), client_port()).await;
    assert_eq!(c.unwrap().node_id, SERVER_ID);
    assert_eq!(s.unwrap().role, PeerRole::Client);
}

#[tokio::test]
async fn cluster_mismatch_is_reported_on_both_sides() {
    let text = refused(
        Hello::new("staging", PeerRole::Replica(2)),
        peer_port(),
        HandshakeRefusal::ClusterMismatch {
            expected: "prod".into(),
            got: "staging".into(),
        },
    )
    .await;
    assert_eq!(
        text,
        "the peer refused our handshake: cluster id mismatch: the accepting node is in cluster \
         \"prod\", the connecting side says \"staging\""
    );
}

#[tokio::test]
async fn unknown_node_is_reported_on_both_sides() {
    let text = refused(
        Hello::new("prod", PeerRole::Replica(9)),
        peer_port(),
        HandshakeRefusal::UnknownNode { node_id: 9 },
    )
    .await;
    assert!(text.contains("unknown node id 9"), "{text}");
}

#[tokio::test]
async fn wrong_port_is_reported_on_both_sides() {
    let text = refused(
        Hello::new("prod", PeerRole::Client),
        peer_port(),
        HandshakeRefusal::UnexpectedRole {
            got: PeerRole::Client,
        },
    )
    .await;
    assert!(
        text.contains("a client is not accepted on this port"),
        "{text}"
    );
    refused(
        Hello::new("prod", PeerRole::Replica(1)),
        client_port(),
        HandshakeRefusal::UnexpectedRole {
            got: PeerRole::Replica(1),
        },
    )
    .await;
}

#[tokio::test]
async fn higher_version_is_refused_with_the_supported_range() {
    let mut hello = Hello::new("prod", PeerRole::Replica(2));
    hello.version = PROTOCOL_VERSION + 1;
    let text = refused(
        hello,
        peer_port(),
        HandshakeRefusal::UnsupportedVersion {
            got: PROTOCOL_VERSION + 1,
            min: 2,
            max: 4,
        },
    )
    .await;
    assert!(text.contains("unsupported protocol version 5"), "{text}");
    assert!(text.contains("supports versions 2 to 4"), "{text}");
}

/// A replica of version 2 (before membership changes) or 3 (its hello does not say which
/// configuration it knows) is refused by version. Clients of versions 2 and 3 are still
/// served.
#[tokio::test]
async fn replicas_before_version_4_are_refused_and_older_clients_served() {
    for version in [2, 3] {
        let mut old = replica_hello(2, identity());
        old.version = version;
        let text = refused(
            old,
            identity_port(),
            HandshakeRefusal::UnsupportedVersion {
                got: version,
                min: 4,
                max: 4,
            },
        )
        .await;
        assert!(text.contains("supports versions 4 to 4"), "{text}");
        let mut client = Hello::new("prod", PeerRole::Client);
        client.version = version;
        let (c, s, _, _) = run(client.clone(), client_port()).await;
        assert_eq!(c.unwrap().version, version);
        assert_eq!(s.unwrap(), client);
    }
}

/// A joining replica presents only its instance and session-table size; a member that
/// takes joining replicas accepts it (if its id is a member) and tells it the cluster's
/// identity. A node that takes none refuses it.
#[tokio::test]
async fn a_joining_replica_is_told_the_cluster_identity() {
    let cluster = ClusterInfo {
        cluster_uid: Uid([7; 16]),
        members: vec![1, 2, 3],
        voters: vec![1, 2, 3],
    };
    let port = HandshakeExpectation::members_of("prod", identity(), [1, 2, 3, 4], cluster.clone());
    let hello = replica_hello(4, ReplicaIdentity::joining(Uid([9; 16]), 1000));
    let (c, s, _, _) = run(hello.clone(), port.clone()).await;
    assert_eq!(c.unwrap().cluster, Some(cluster.clone()));
    assert_eq!(s.unwrap(), hello);
    // A member dialling with its full identity is not told anything.
    let mut member = identity();
    member.instance = Uid([5; 16]);
    let (c, _, _, _) = run(replica_hello(2, member), port.clone()).await;
    assert_eq!(c.unwrap().cluster, None);
    // Not a member (yet): refused by id.
    refused(
        replica_hello(5, ReplicaIdentity::joining(Uid([9; 16]), 1000)),
        port.clone(),
        HandshakeRefusal::UnknownNode { node_id: 5 },
    )
    .await;
    // Another --sessions-max: refused, named.
    refused(
        replica_hello(4, ReplicaIdentity::joining(Uid([9; 16]), 7)),
        port,
        HandshakeRefusal::SessionsMaxMismatch {
            expected: 1000,
            got: 7,
        },
    )
    .await;
    // A node that takes no joining replica (one joining itself) refuses it.
    let hello = replica_hello(2, ReplicaIdentity::joining(Uid([9; 16]), 1000));
    let (c, _, _, _) = run(hello, identity_port()).await;
    assert!(matches!(
        c,
        Err(WireError::PeerRefused(HandshakeRefusal::Malformed { .. }))
    ));
}

/// A node of the previous version (1, before replica identities) is refused with a reason
/// both sides can print: by a new node accepting it, and when it accepts a new node.
#[tokio::test]
async fn previous_version_is_refused_both_ways() {
    // An old node dials a new one: its version-1 hello is refused by version.
    let mut old = Hello::new("prod", PeerRole::Replica(2));
    old.version = 1;
    let text = refused(
        old,
        peer_port(),
        HandshakeRefusal::UnsupportedVersion {
            got: 1,
            min: 2,
            max: 4,
        },
    )
    .await;
    assert!(text.contains("unsupported protocol version 1"), "{text}");
    // A new node dials an old one, which answers in the reply layout all versions share.
    let (mut client, server_io) = pair();
    let mut raw = server_io.into_inner();
    let old_server = async move {
        let mut hello = [0u8; 256];
        let _ = raw.read(&mut hello).await.unwrap();
        let refusal = HelloReply::Refused(HandshakeRefusal::UnsupportedVersion {
            got: PROTOCOL_VERSION,
            min: 1,
            max: 1,
        });
        raw.write_all(&refusal.encode()).await.unwrap();
        raw
    };
    let hello = replica_hello(2, identity());
    let (c, _raw) = tokio::join!(client_handshake(&mut client, &hello, TIMEOUT), old_server);
    let text = c.unwrap_err().to_string();
    assert_eq!(
        text,
        "the peer refused our handshake: unsupported protocol version 4: the accepting node \
         supports versions 1 to 1"
    );
}

fn identity() -> ReplicaIdentity {
    ReplicaIdentity {
        cluster_uid: Uid([7; 16]),
        instance: Uid([1; 16]),
        members: vec![1, 2, 3],
        sessions_max: 1000,
        joining: false,
        configuration: 3,
        peer_addr: "127.0.0.1:7001".into(),
    }
}

fn replica_hello(id: u64, identity: ReplicaIdentity) -> Hello {
    Hello::replica("prod", id, identity)
}

fn identity_port() -> HandshakeExpectation {
    HandshakeExpectation::replicas_of("prod", identity())
}

#[tokio::test]
async fn matching_identity_is_accepted() {
    let mut theirs = identity();
    theirs.instance = Uid([9; 16]); // every member has its own instance
    let hello = replica_hello(2, theirs);
    let (c, s, _, _) = run(hello.clone(), identity_port()).await;
    assert_eq!(c.unwrap().node_id, SERVER_ID);
    assert_eq!(s.unwrap(), hello);
}

#[tokio::test]
async fn membership_mismatch_names_the_difference_on_both_sides() {
    let mut theirs = identity();
    theirs.members = vec![1, 2, 4];
    let text = refused(
        replica_hello(2, theirs),
        identity_port(),
        HandshakeRefusal::MembershipMismatch {
            expected: vec![1, 2, 3],
            got: vec![1, 2, 4],
        },
    )
    .await;
    assert_eq!(
        text,
        "the peer refused our handshake: membership mismatch: the accepting node's members \
         are {1, 2, 3}, the connecting node's are {1, 2, 4} (only the accepting node lists \
         {3}, only the connecting node lists {4})"
    );
    // A member unknown to the accepting node is refused as such first.
    let mut theirs = identity();
    theirs.members = vec![1, 2, 3, 4];
    refused(
        replica_hello(4, theirs),
        identity_port(),
        HandshakeRefusal::UnknownNode { node_id: 4 },
    )
    .await;
}

#[tokio::test]
async fn sessions_max_mismatch_is_reported_on_both_sides() {
    let mut theirs = identity();
    theirs.sessions_max = 10;
    let text = refused(
        replica_hello(3, theirs),
        identity_port(),
        HandshakeRefusal::SessionsMaxMismatch {
            expected: 1000,
            got: 10,
        },
    )
    .await;
    assert!(
        text.contains(
            "--sessions-max mismatch: the accepting node uses 1000, the connecting node 10"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn cluster_identity_mismatch_names_both_ids() {
    let mut theirs = identity();
    theirs.cluster_uid = Uid([8; 16]);
    let text = refused(
        replica_hello(3, theirs),
        identity_port(),
        HandshakeRefusal::ClusterUidMismatch {
            expected: Uid([7; 16]),
            got: Uid([8; 16]),
        },
    )
    .await;
    assert!(
        text.contains(&format!(
            "accepting node belongs to cluster {}, the connecting node to cluster {}",
            "07".repeat(16),
            "08".repeat(16)
        )),
        "{text}"
    );
}

#[tokio::test]
async fn replica_without_identity_is_refused_where_one_is_required() {
    refused(
        Hello::new("prod", PeerRole::Replica(2)),
        identity_port(),
        HandshakeRefusal::MissingIdentity { node_id: 2 },
    )
    .await;
}

/// The host's own check runs after the generic ones and before the reply: its refusal
/// reaches both sides, and the acceptance is sent only after it returned.
#[tokio::test]
async fn host_check_refuses_or_admits_before_the_reply() {
    let replaced = HandshakeRefusal::MemberReplaced {
        node_id: 2,
        known: Uid([1; 16]),
        got: Uid([2; 16]),
    };
    let (mut client, mut server) = pair();
    let want = replaced.clone();
    let (hello, expect) = (replica_hello(2, identity()), identity_port());
    let (c, s) = tokio::join!(
        client_handshake(&mut client, &hello, TIMEOUT),
        server_handshake_with(&mut server, &expect, SERVER_ID, TIMEOUT, |_| {
            let want = want.clone();
            async move { Err(want) }
        }),
    );
    assert!(
        matches!(s, Err(WireError::Refused(ref r)) if *r == replaced),
        "{s:?}"
    );
    let text = c.unwrap_err().to_string();
    assert!(
        text.contains("node 2 is known here by data dir instance 0101"),
        "{text}"
    );
    assert!(
        text.contains("must not vote; replace this member"),
        "{text}"
    );

    // Admitted: the host saw the hello before the client saw the acceptance.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (mut client, mut server) = pair();
    let flag = seen.clone();
    let (c, s) = tokio::join!(
        async {
            let r = client_handshake(&mut client, &hello, TIMEOUT).await;
            (r, seen.load(std::sync::atomic::Ordering::SeqCst))
        },
        server_handshake_with(&mut server, &expect, SERVER_ID, TIMEOUT, |h| {
            assert_eq!(h.role, PeerRole::Replica(2));
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            }
        }),
    );
    assert!(s.is_ok(), "{s:?}");
    let (accepted, seen_before_reply) = c;
    assert!(accepted.is_ok(), "{accepted:?}");
    assert!(seen_before_reply);
}

#[tokio::test]
async fn future_hello_with_an_unknown_body_is_refused_by_version() {
    // A version 9 hello whose body this build cannot parse: the version alone decides.
    let (mut raw, server_io) = tokio::io::duplex(64 * 1024);
    let mut server = Framed::new(server_io, frame_codec());
    let mut record = b"KVSW\x00\x09\x00\x05".to_vec();
    record.extend_from_slice(b"\xff\xff\xff\xff\xff");
    raw.write_all(&record).await.unwrap();
    let s = server_handshake(&mut server, &peer_port(), SERVER_ID, TIMEOUT).await;
    let want = HandshakeRefusal::UnsupportedVersion {
        got: 9,
        min: 2,
        max: 4,
    };
    assert!(
        matches!(s, Err(WireError::Refused(ref r)) if *r == want),
        "{s:?}"
    );
    let mut reply = Vec::new();
    raw.read_to_end(&mut reply).await.unwrap();
    assert_eq!(HelloReply::decode(&reply), Ok(HelloReply::Refused(want)));
}

#[tokio::test]
async fn garbage_instead_of_a_hello_is_not_a_kvs_peer() {
    let (mut raw, server_io) = tokio::io::duplex(64 * 1024);
    let mut server = Framed::new(server_io, frame_codec());
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let err = server_handshake(&mut server, &peer_port(), SERVER_ID, TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused the peer's handshake: not a kvs peer (bad magic \"GET \")"
    );
    // The garbage sender is told too, in our reply format.
    let mut reply = Vec::new();
    raw.read_to_end(&mut reply).await.unwrap();
    assert_eq!(
        HelloReply::decode(&reply),
        Ok(HelloReply::Refused(HandshakeRefusal::BadMagic {
            got: b"GET ".to_vec()
        }))
    );
}

#[tokio::test]
async fn garbage_instead_of_a_reply_is_not_a_kvs_peer() {
    let (mut client, server_io) = pair();
    let mut raw = server_io.into_inner();
    let server = async move {
        let mut hello = [0u8; 64];
        let _ = raw.read(&mut hello).await.unwrap();
        raw.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        raw
    };
    let hello = Hello::new("prod", PeerRole::Client);
    let (c, _raw) = tokio::join!(client_handshake(&mut client, &hello, TIMEOUT), server);
    let err = c.unwrap_err();
    assert!(
        matches!(err, WireError::BadReply(HandshakeRefusal::BadMagic { .. })),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "invalid handshake reply: not a kvs peer (bad magic \"HTTP\")"
    );
}

#[tokio::test]
async fn malformed_hello_is_refused() {
    let (mut raw, server_io) = tokio::io::duplex(64 * 1024);
    let mut server = Framed::new(server_io, frame_codec());
    // Version 2, body: role 7 (unknown).
    raw.write_all(b"KVSW\x00\x02\x00\x0c\x07\x00\x00\x00\x00\x00\x00\x00\x00\x01a\x00")
        .await
        .unwrap();
    let err = server_handshake(&mut server, &peer_port(), SERVER_ID, TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, WireError::Refused(HandshakeRefusal::Malformed { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("unknown role 7"), "{err}");
}

#[tokio::test]
async fn silent_peer_times_out_and_closed_peer_is_reported() {
    let (_client, mut server) = pair();
    let err = server_handshake(
        &mut server,
        &peer_port(),
        SERVER_ID,
        Duration::from_millis(20),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, WireError::HandshakeTimeout { timeout_ms: 20 }),
        "{err:?}"
    );

    let (client, mut server) = pair();
    drop(client);
    let err = server_handshake(&mut server, &peer_port(), SERVER_ID, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, WireError::ClosedDuringHandshake), "{err:?}");
}

#[tokio::test]
async fn handshake_must_come_first() {
    let (mut client, _server) = pair();
    // A frame buffered (not yet flushed) before the handshake.
    client
        .feed(bytes::Bytes::from_static(b"early"))
        .await
        .unwrap();
    let err = client_handshake(&mut client, &Hello::new("prod", PeerRole::Client), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, WireError::HandshakeNotFirst), "{err:?}");
}

#[test]
fn hello_and_reply_records_roundtrip() {
    for role in [
        PeerRole::Client,
        PeerRole::Replica(0),
        PeerRole::Replica(u64::MAX),
    ] {
        let hello = Hello::new("c".repeat(wire::CLUSTER_ID_BYTES_MAX), role);
        assert_eq!(Hello::decode(&hello.encode().unwrap()), Ok(hello));
    }
    let mut seven = identity();
    seven.members = (1..=wire::IDENTITY_MEMBERS_MAX as u64).collect();
    seven.sessions_max = u64::MAX;
    let hello = replica_hello(u64::MAX, seven);
    assert_eq!(Hello::decode(&hello.encode().unwrap()), Ok(hello));
    let replies = [
        HelloReply::Accepted(Accepted {
            node_id: 5,
            version: 1,
            cluster: None,
        }),
        HelloReply::Refused(HandshakeRefusal::BadMagic {
            got: b"\x16\x03\x01\x00".to_vec(),
        }),
        HelloReply::Refused(HandshakeRefusal::BadMagic { got: vec![] }),
        HelloReply::Refused(HandshakeRefusal::UnsupportedVersion {
            got: 3,
            min: 1,
            max: 2,
        }),
        HelloReply::Refused(HandshakeRefusal::ClusterMismatch {
            expected: "a".into(),
            got: "b".into(),
        }),
        HelloReply::Refused(HandshakeRefusal::UnknownNode { node_id: 77 }),
        HelloReply::Refused(HandshakeRefusal::UnexpectedRole {
            got: PeerRole::Replica(4),
        }),
        HelloReply::Refused(HandshakeRefusal::UnexpectedRole {
            got: PeerRole::Client,
        }),
        HelloReply::Refused(HandshakeRefusal::Malformed {
            reason: "truncated".into(),
        }),
        HelloReply::Refused(HandshakeRefusal::Other {
            code: 200,
            message: "from the future".into(),
        }),
        HelloReply::Refused(HandshakeRefusal::MembershipMismatch {
            expected: vec![1, 2, 3],
            got: vec![],
        }),
        HelloReply::Refused(HandshakeRefusal::SessionsMaxMismatch {
            expected: 1,
            got: u64::MAX,
        }),
        HelloReply::Refused(HandshakeRefusal::ClusterUidMismatch {
            expected: Uid([0; 16]),
            got: Uid([0xff; 16]),
        }),
        HelloReply::Refused(HandshakeRefusal::MemberReplaced {
            node_id: 2,
            known: Uid([3; 16]),
            got: Uid([4; 16]),
        }),
        HelloReply::Refused(HandshakeRefusal::MissingIdentity { node_id: 9 }),
        HelloReply::Refused(HandshakeRefusal::Removed {
            node_id: 2,
            configuration: 7,
        }),
        HelloReply::Refused(HandshakeRefusal::TlsRequired),
        HelloReply::Refused(HandshakeRefusal::CertificateMismatch {
            claimed: 1,
            certified: 2,
        }),
        HelloReply::Refused(HandshakeRefusal::CertificateNamesNoMember {
            claimed: 3,
            reason: "no URI SAN".into(),
        }),
    ];
    for reply in replies {
        assert_eq!(HelloReply::decode(&reply.encode()), Ok(reply));
    }
}

#[test]
fn invalid_hellos_do_not_encode() {
    assert!(matches!(
        Hello::new("", PeerRole::Client).encode(),
        Err(WireError::InvalidHello { .. })
    ));
    assert!(matches!(
        Hello::new("x".repeat(wire::CLUSTER_ID_BYTES_MAX + 1), PeerRole::Client).encode(),
        Err(WireError::InvalidHello { .. })
    ));
}

#[test]
fn records_reject_trailing_and_missing_bytes() {
    let bytes = Hello::new("prod", PeerRole::Client).encode().unwrap();
    for len in 0..bytes.len() {
        assert!(
            Hello::decode(&bytes[..len]).is_err(),
            "prefix of {len} bytes"
        );
    }
    let mut long = bytes.to_vec();
    long.push(0);
    assert!(matches!(
        Hello::decode(&long),
        Err(HandshakeRefusal::Malformed { .. })
    ));
    // A newer peer's refusal with extra fields is still readable by its text.
    let mut future = b"KVSW\x00\x05\x00\x00\x01\xc8\x00\x03abc\x01\x02".to_vec();
    let body_len = (future.len() - layout::RECORD_HEADER_BYTES) as u16;
    future[6..8].copy_from_slice(&body_len.to_be_bytes());
    assert_eq!(
        HelloReply::decode(&future),
        Ok(HelloReply::Refused(HandshakeRefusal::Other {
            code: 200,
            message: "abc".into()
        }))
    );
}

#[tokio::test]
async fn a_refusal_before_the_hello_reaches_the_client_with_its_reason() {
    let (client, mut server) = tokio::io::duplex(4096);
    let server = tokio::spawn(async move {
        wire::refuse_handshake(
            &mut server,
            HandshakeRefusal::TlsRequired,
            Duration::from_secs(5),
        )
        .await
    });
    let mut framed = Framed::new(client, wire::frame_codec());
    let hello = Hello::new("kvs", PeerRole::Client);
    let got = wire::client_handshake(&mut framed, &hello, Duration::from_secs(5)).await;
    let Err(WireError::PeerRefused(refusal)) = got else {
        panic!("{got:?}");
    };
    assert_eq!(refusal, HandshakeRefusal::TlsRequired);
    assert!(refusal
        .to_string()
        .contains("requires TLS: connect with --cacert"));
    assert!(matches!(
        server.await.unwrap(),
        WireError::Refused(HandshakeRefusal::TlsRequired)
    ));
}
