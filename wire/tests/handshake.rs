//! The handshake over an in-memory stream: acceptance, every refusal on both sides,
//! garbage, a newer version, timeouts, and frames after the handshake.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use wire::handshake::layout;
use wire::{
    client_handshake, frame_codec, server_handshake, Accepted, HandshakeExpectation,
    HandshakeRefusal, Hello, HelloReply, PeerRole, WireError, PROTOCOL_VERSION,
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
            version: PROTOCOL_VERSION
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
            min: 1,
            max: 1,
        },
    )
    .await;
    assert!(text.contains("unsupported protocol version 2"), "{text}");
    assert!(text.contains("supports versions 1 to 1"), "{text}");
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
        min: 1,
        max: 1,
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
    // Version 1, body: role 7 (unknown).
    raw.write_all(b"KVSW\x00\x01\x00\x0b\x07\x00\x00\x00\x00\x00\x00\x00\x00\x01a")
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
    let replies = [
        HelloReply::Accepted(Accepted {
            node_id: 5,
            version: 1,
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
