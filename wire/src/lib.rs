//! # wire
//!
//! Every byte the key-value store sends over a socket is defined here, and nowhere else:
//! the handshake that opens a connection, the framing, and the messages of the client
//! protocol (and, later, of the replica-to-replica protocol).
//!
//! A connection goes like this:
//! 1. **Handshake** ([`handshake`]): the connecting side sends a [`Hello`] (magic bytes,
//!    protocol version, cluster id, its node id or "client", and a replica's
//!    [`ReplicaIdentity`]); the accepting side checks
//!    it with [`check_hello`] and answers with a [`HelloReply`], which is either accepted or
//!    refused with a [`HandshakeRefusal`] that both sides can print. These two records have
//!    a fixed byte layout (see [`handshake::layout`]) so that any future version can still
//!    read and refuse them. [`client_handshake`] and [`server_handshake`] run the exchange.
//! 2. **Frames** ([`codec`]): a 4-byte big-endian length, then the payload, with a maximum
//!    size enforced on read ([`frame_codec`], default [`FRAME_BYTES_MAX_DEFAULT`]).
//! 3. **Messages**: one per frame, encoded by [`encode`] and decoded by [`decode`], a plain
//!    function from bytes to a typed result that never panics and rejects trailing bytes.
//!    The client protocol is [`ClientRequest`] / [`ClientResponse`] ([`client`]).
//!
//! The message encoding library is called from [`codec`] only, so it can be swapped in one
//! place. Message types only derive `serde` traits; adding the replica-to-replica protocol
//! is one more `#[derive(Serialize, Deserialize)] enum PeerMessage` in a `peer` module,
//! sent with the same [`encode`] and [`decode`].
//!
//! ## Encoding and decoding a request
//!
//! ```
//! use bytes::Bytes;
//! use wire::{ClientRequest, ClientResponse, Op, ReadConsistency, Reply, Session};
//!
//! let request = ClientRequest {
//!     id: 7,
//!     session: Some(Session { client_id: 42, seq: 1 }),
//!     op: Op::Put { key: Bytes::from("color"), value: Bytes::from("blue") },
//! };
//! wire::validate(&request.op).expect("within the size limits");
//! let payload: Bytes = wire::encode(&request)?;
//! let decoded: ClientRequest = wire::decode(&payload)?;
//! assert_eq!(decoded, request);
//!
//! let response = ClientResponse { id: 7, result: Ok(Reply::Written) };
//! assert_eq!(wire::decode::<ClientResponse>(&wire::encode(&response)?)?, response);
//!
//! // Decoding never panics: garbage and trailing bytes are errors.
//! assert!(wire::decode::<ClientRequest>(b"\xff\xff garbage").is_err());
//! let mut long = payload.to_vec();
//! long.push(0);
//! assert!(wire::decode::<ClientRequest>(&long).is_err());
//! # let _ = ReadConsistency::Linearizable;
//! # Ok::<(), wire::WireError>(())
//! ```
//!
//! ## A handshake, then a frame
//!
//! ```
//! use futures::{SinkExt, StreamExt};
//! use tokio_util::codec::Framed;
//! use wire::{HandshakeExpectation, Hello, PeerRole, WireError, HANDSHAKE_TIMEOUT_DEFAULT};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), WireError> {
//! let (client_io, server_io) = tokio::io::duplex(64 * 1024);
//! let mut client = Framed::new(client_io, wire::frame_codec());
//! let mut server = Framed::new(server_io, wire::frame_codec());
//!
//! let hello = Hello::new("prod", PeerRole::Client);
//! let expected = HandshakeExpectation::clients("prod");
//! let (accepted, peer) = tokio::join!(
//!     wire::client_handshake(&mut client, &hello, HANDSHAKE_TIMEOUT_DEFAULT),
//!     wire::server_handshake(&mut server, &expected, 1, HANDSHAKE_TIMEOUT_DEFAULT),
//! );
//! assert_eq!(accepted?.node_id, 1);
//! assert_eq!(peer?.role, PeerRole::Client);
//!
//! // Frames flow from now on.
//! client.send(wire::encode(&wire::ClientRequest { id: 1, session: None, op: wire::Op::Status })?).await?;
//! let frame = server.next().await.expect("a frame")?;
//! assert_eq!(wire::decode::<wire::ClientRequest>(&frame)?.op, wire::Op::Status);
//!
//! // A client of another cluster is refused, and both sides can say why.
//! let (client_io, server_io) = tokio::io::duplex(64 * 1024);
//! let mut client = Framed::new(client_io, wire::frame_codec());
//! let mut server = Framed::new(server_io, wire::frame_codec());
//! let stranger = Hello::new("test", PeerRole::Client);
//! let (refused, refusal) = tokio::join!(
//!     wire::client_handshake(&mut client, &stranger, HANDSHAKE_TIMEOUT_DEFAULT),
//!     wire::server_handshake(&mut server, &expected, 1, HANDSHAKE_TIMEOUT_DEFAULT),
//! );
//! assert_eq!(
//!     refused.unwrap_err().to_string(),
//!     "the peer refused our handshake: cluster id mismatch: the accepting node is in \
//!      cluster \"prod\", the connecting side says \"test\"",
//! );
//! assert!(matches!(refusal, Err(WireError::Refused(_))));
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod backup;
pub mod client;
pub mod codec;
pub mod command;
pub mod handshake;
pub mod kv;
pub mod membership;
pub mod peer;
pub mod status;

mod error;

pub use auth::{AuthChange, AuthStatus, Permission, ADMIN_ROLE};
pub use client::{
    validate, ClientRequest, ClientResponse, ErrorReply, Op, ReadConsistency, Reply, Session,
    SnapshotStream, KEY_BYTES_MAX, NO_CLIENT_ID, SESSION_WINDOW, SNAPSHOT_SAVES_MAX,
    SNAPSHOT_STREAM_CHUNK_BYTES, VALUE_BYTES_MAX,
};
pub use codec::{
    decode, encode, encode_into, frame_codec, frame_codec_with_max, FRAME_BYTES_MAX_CEILING,
    FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MAX_MIN,
};
pub use command::{Command, Origin, WriteOp};
pub use error::WireError;
pub use handshake::{
    check_hello, check_identity, client_handshake, is_newcomer, is_removed, refuse_handshake,
    server_handshake, server_handshake_with, Accepted, ClusterInfo, HandshakeExpectation,
    HandshakeRefusal, Hello, HelloReply, PeerRole, ReplicaIdentity, Uid, CLUSTER_ID_BYTES_MAX,
    HANDSHAKE_TIMEOUT_DEFAULT, IDENTITY_MEMBERS_MAX, MAGIC, PEER_ADDR_BYTES_MAX,
    PEER_PROTOCOL_VERSION_MIN, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
pub use kv::{
    in_range, prefix_end, Compare, RangeMode, RangePage, RangeRequest, Txn, TxnOp,
    RANGE_COUNT_PAGE_MAX, RANGE_PAGE_BYTES_MAX, RANGE_PAGE_KEYS_MAX, TXN_BYTES_MAX, TXN_OPS_MAX,
};
pub use membership::{MemberAddrs, MemberChange, MemberInfo, MemberList};
pub use peer::{PeerMessage, SNAPSHOT_CHUNK_BYTES};
pub use status::{BallotInfo, NodeRole, NodeStatus, PeerReachability};
