//! What each fuzz target does with one input: decode it as the product does, never panic,
//! and check a property where it is cheap (decode → encode → decode is stable; what was
//! decoded is no larger than the input allows). Shared by the fuzz targets (fuzz/) and by
//! the corpus replay test (kvs-server/tests/fuzz_corpus.rs), so a committed corpus file is
//! checked the same way in `cargo test` as under the fuzzer.
//!
//! A failed property panics: that is what a fuzzer reports.

use std::path::Path;

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use wire::{ClientRequest, ClientResponse, Hello, HelloReply, MemberAddrs, PeerMessage};

/// Most frames taken from one input by [`client_frames`] (a bound on its loop).
const FRAMES_MAX: usize = 64;

/// What a target does with one input.
pub type Check = fn(&[u8]);

/// The targets, by name: each is a directory of `fuzz/corpus/` and a fuzz target.
pub const TARGETS: &[(&str, Check)] = &[
    ("client_request", client_request),
    ("client_frames", client_frames),
    ("client_response", client_response),
    ("peer_message", peer_message),
    ("handshake_hello", handshake_hello),
    ("handshake_reply", handshake_reply),
    ("wal_segment", wal_segment),
    ("storage_record", storage_record),
    ("snapshot", snapshot),
    ("backup", backup),
    ("membership", membership),
];

/// A message decoded by `wire::decode` re-encodes to no more bytes than it came from, and
/// decodes again to itself.
fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(msg) = wire::decode::<T>(data) {
        let again = wire::encode(&msg).expect("a decoded message encodes");
        assert!(
            again.len() <= data.len(),
            "{} bytes re-encode to {}",
            data.len(),
            again.len()
        );
        let back = wire::decode::<T>(&again).expect("a re-encoded message decodes");
        assert_eq!(back, msg);
    }
}

/// One frame payload, as the server reads a client's request.
pub fn client_request(data: &[u8]) {
    round_trip::<ClientRequest>(data);
    if let Ok(request) = wire::decode::<ClientRequest>(data) {
        let _ = wire::validate(&request.op);
    }
}

/// A byte stream as a client connection delivers it: frames cut by the frame codec, each
/// decoded as a request.
pub fn client_frames(data: &[u8]) {
    let Ok(mut codec) = wire::frame_codec_with_max(wire::FRAME_BYTES_MAX_MIN) else {
        return;
    };
    let mut buf = BytesMut::from(data);
    for _ in 0..FRAMES_MAX {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(frame.len() <= wire::FRAME_BYTES_MAX_MIN);
                client_request(&frame);
            }
            Ok(None) | Err(_) => break,
        }
    }
}

/// One frame payload, as the client reads a reply.
pub fn client_response(data: &[u8]) {
    round_trip::<ClientResponse>(data);
}

/// One frame payload from a peer replica, and a log value (a command).
pub fn peer_message(data: &[u8]) {
    round_trip::<PeerMessage>(data);
    round_trip::<wire::Command>(data);
}

/// The first record of a connection, as the accepting side reads it.
pub fn handshake_hello(data: &[u8]) {
    let _ = wire::handshake::layout::body_len(data);
    if let Ok(hello) = Hello::decode(data) {
        if let Ok(again) = hello.encode() {
            assert_eq!(Hello::decode(&again), Ok(hello));
        }
    }
}

/// The answer to a hello, as the connecting side reads it.
pub fn handshake_reply(data: &[u8]) {
    if let Ok(reply) = HelloReply::decode(data) {
        let again = reply.encode();
        assert_eq!(HelloReply::decode(&again), Ok(reply));
    }
}

/// A WAL segment file, and each payload in it as a storage record.
pub fn wal_segment(data: &[u8]) {
    use kvs_server::wal::decode;
    let Ok(segment) = decode::segment(data) else {
        return;
    };
    assert!(segment.valid_end <= data.len());
    let payload_bytes: usize = segment.payloads.iter().map(Vec::len).sum();
    assert!(payload_bytes <= data.len());
    let payloads: Vec<&[u8]> = segment.payloads.iter().map(Vec::as_slice).collect();
    if segment.header.version == 2 && !segment.header.supersedes {
        // A segment without sync markers re-encodes to the bytes it was read from.
        if let Some(again) = decode::encode_segment(
            segment.header.sequence,
            segment.header.chain_seed,
            &payloads,
        ) {
            let markers = again.len() != segment.valid_end;
            if !markers {
                assert_eq!(&again[..], &data[..segment.valid_end]);
            }
        }
    }
    for payload in payloads {
        storage_record(payload);
    }
}

/// A WAL payload: one stored entry of this format or of an earlier release.
pub fn storage_record(data: &[u8]) {
    use kvs_server::storage::record;
    if let Ok(entry) = record::decode(data) {
        if let Ok(again) = record::encode(&entry) {
            assert_eq!(record::decode(&again).ok(), Some(entry));
        }
    }
}

/// A snapshot file: read, written back, read again to the same bytes.
pub fn snapshot(data: &[u8]) {
    let origin = Path::new("fuzz-input");
    if let Ok(sm) = kvs_server::snapshot::decode(data, origin) {
        let again = kvs_server::snapshot::encode(&sm).expect("a decoded snapshot encodes");
        let sm2 = kvs_server::snapshot::decode(&again, origin).expect("re-encoded decodes");
        let third = kvs_server::snapshot::encode(&sm2).expect("encodes again");
        assert_eq!(again, third);
    }
}

/// A backup file: verified as a whole; a valid header re-encodes to its own bytes.
pub fn backup(data: &[u8]) {
    let _ = wire::backup::verify(data);
    let mut input = data;
    if let Ok((header, len)) = wire::backup::BackupHeader::read_from(&mut input) {
        let again = header.encode().expect("a decoded header encodes");
        assert_eq!(&again[..], &data[..len]);
    }
}

/// The membership encodings: a member's addresses, and the membership log.
pub fn membership(data: &[u8]) {
    if let Ok(Some(addrs)) = MemberAddrs::decode(data) {
        let again = addrs.encode().expect("decoded addresses encode");
        assert_eq!(MemberAddrs::decode(&again).ok(), Some(Some(addrs)));
    }
    if let Ok(log) = wire::membership::decode_membership_log(data) {
        let again = wire::membership::encode_membership_log(&log).expect("a decoded log encodes");
        assert_eq!(
            wire::membership::decode_membership_log(&again).ok(),
            Some(log)
        );
    }
}
