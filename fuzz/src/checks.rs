//! What each fuzz target does with one input: decode it as the product does, never panic,
//! and check a property where it is cheap (decode → encode → decode is stable; what was
//! decoded is no larger than the input allows). Shared by the fuzz targets (fuzz/) and by
//! the corpus replay test (kvs-server/tests/fuzz_corpus.rs), so a committed corpus file is
//! checked the same way in `cargo test` as under the fuzzer.
//!
//! A failed property panics: that is what a fuzzer reports.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use paxos_core::{PersistEntry, Value};
use tokio_util::codec::{Decoder, Framed, LengthDelimitedCodec};
use wire::handshake::{ClusterInfo, HandshakeExpectation, ReplicaIdentity, Uid};
use wire::{
    ClientRequest, ClientResponse, Hello, HelloReply, MemberAddrs, PeerMessage, PeerRole, WireError,
};

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
    ("wal_segment_fixed", wal_segment_fixed),
    ("snapshot_fixed", snapshot_fixed),
    ("backup_fixed", backup_fixed),
    ("handshake_stream", handshake_stream),
    ("identity_file", identity_file),
    ("certificate", certificate),
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
    command(data);
}

/// A command, as the state machine decodes a chosen value (`wire::Command::decode`, which
/// may read earlier layouts too): it encodes, and decodes again to itself.
fn command(data: &[u8]) {
    if let Ok(command) = wire::Command::decode(data) {
        let again = command.encode().expect("a decoded command encodes");
        assert_eq!(wire::Command::decode(&again).ok(), Some(command));
    }
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
    let _ = wal_segment_decoded(data);
}

/// [`wal_segment`], returning the decoded segment.
fn wal_segment_decoded(data: &[u8]) -> Option<kvs_server::wal::decode::DecodedSegment> {
    use kvs_server::wal::decode;
    let segment = decode::segment(data).ok()?;
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
    Some(segment)
}

/// A WAL payload: one stored entry of this format or of an earlier release, and each
/// command of an accepted batch as the state machine decodes it when the log is replayed.
pub fn storage_record(data: &[u8]) {
    use kvs_server::storage::record;
    if let Ok(entry) = record::decode(data) {
        if let Ok(again) = record::encode(&entry) {
            assert_eq!(record::decode(&again).ok(), Some(entry.clone()));
        }
        if let PersistEntry::Accepted {
            value: Value::Commands(commands),
            ..
        } = &entry
        {
            for raw in commands {
                command(raw);
            }
        }
    }
}

/// A snapshot file: read, written back, read again to the same bytes.
pub fn snapshot(data: &[u8]) {
    let _ = snapshot_decoded(data);
}

/// [`snapshot`], returning why the bytes are not a snapshot.
fn snapshot_decoded(data: &[u8]) -> Result<(), kvs_server::snapshot::SnapshotError> {
    let origin = Path::new("fuzz-input");
    let sm = kvs_server::snapshot::decode(data, origin)?;
    let again = kvs_server::snapshot::encode(&sm).expect("a decoded snapshot encodes");
    let sm2 = kvs_server::snapshot::decode(&again, origin).expect("re-encoded decodes");
    let third = kvs_server::snapshot::encode(&sm2).expect("encodes again");
    assert_eq!(again, third);
    Ok(())
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

/// CRC32C, as every checksum of the formats (`wire::backup::crc32c_append` from zero).
fn crc32c(bytes: &[u8]) -> u32 {
    wire::backup::crc32c_append(0, bytes)
}

/// The length field of a WAL sync marker (`kvs_server::wal::record`): the high bit and the
/// marker's payload size.
const WAL_MARKER_LEN_FIELD: u32 = 0x8000_0000 | WAL_MARKER_PAYLOAD_BYTES as u32;
/// A sync marker's payload: magic, its own offset, the segment's sequence, a checksum.
const WAL_MARKER_PAYLOAD_BYTES: usize = 28;

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Rewrites what a WAL segment's checksums cover so that they match: the header checksum,
/// then record by record the length check and the chained checksum. A length longer than
/// the bytes left becomes the bytes left; a record whose length field is a sync marker's
/// (in a segment of version 2) gets the marker payload that belongs at its offset. Magic,
/// version, flags, lengths within the input and payloads are left as the fuzzer made them,
/// so the decoder behind the checksums sees them.
pub fn fix_wal_segment(bytes: &mut [u8]) {
    use kvs_server::wal::decode::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
    if bytes.len() < SEGMENT_HEADER_LEN {
        return;
    }
    let crc = crc32c(&bytes[..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    let sequence = le_u64(bytes, 12);
    let mut chain = le_u32(bytes, 20);
    let mut offset = SEGMENT_HEADER_LEN;
    // Each pass moves `offset` forward by at least a record header.
    while bytes.len() - offset >= RECORD_HEADER_LEN {
        let available = bytes.len() - offset - RECORD_HEADER_LEN;
        let mut len_field = le_u32(bytes, offset);
        let payload_at = offset + RECORD_HEADER_LEN;
        let payload_len = if version >= 2
            && len_field == WAL_MARKER_LEN_FIELD
            && available >= WAL_MARKER_PAYLOAD_BYTES
        {
            let mut marker = [0u8; WAL_MARKER_PAYLOAD_BYTES];
            marker[0..8].copy_from_slice(b"KVS-SYNC");
            marker[8..16].copy_from_slice(&(offset as u64).to_le_bytes());
            marker[16..24].copy_from_slice(&sequence.to_le_bytes());
            let check = crc32c(&marker[0..24]);
            marker[24..28].copy_from_slice(&check.to_le_bytes());
            bytes[payload_at..payload_at + WAL_MARKER_PAYLOAD_BYTES].copy_from_slice(&marker);
            WAL_MARKER_PAYLOAD_BYTES
        } else {
            if len_field as usize > available {
                len_field = available as u32;
            }
            len_field as usize
        };
        let payload = &bytes[payload_at..payload_at + payload_len];
        let mut crc = crc32c(&chain.to_le_bytes());
        crc = wire::backup::crc32c_append(crc, &len_field.to_le_bytes());
        crc = wire::backup::crc32c_append(crc, payload);
        let len_check = crc32c(&len_field.to_le_bytes());
        bytes[offset..offset + 4].copy_from_slice(&len_field.to_le_bytes());
        bytes[offset + 4..offset + 8].copy_from_slice(&len_check.to_le_bytes());
        bytes[offset + 8..offset + 12].copy_from_slice(&crc.to_le_bytes());
        chain = crc;
        offset = payload_at + payload_len;
    }
}

/// A WAL segment with its checksums made to match ([`fix_wal_segment`]): every record
/// passes its checks, so the payloads reach the storage-record decoder, and a segment
/// with a valid header reads to its end but for a tail shorter than a record header.
pub fn wal_segment_fixed(data: &[u8]) {
    use kvs_server::wal::Corruption;
    let mut bytes = data.to_vec();
    fix_wal_segment(&mut bytes);
    if let Some(segment) = wal_segment_decoded(&bytes) {
        assert!(
            matches!(
                segment.defect,
                None | Some(Corruption::TruncatedRecordHeader)
            ),
            "a segment with matching checksums stops at {}: {:?}",
            segment.valid_end,
            segment.defect
        );
    }
}

/// A reader of a byte slice that remembers where the last read of exactly 4 bytes began:
/// a snapshot's last such read is its trailing checksum.
struct TailFinder<'a> {
    bytes: &'a [u8],
    pos: usize,
    last_word_at: Option<usize>,
}

impl Read for TailFinder<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.len() == 4 {
            self.last_word_at = Some(self.pos);
        }
        let rest = &self.bytes[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// `data` as a snapshot file whose trailing checksum matches: if the snapshot decoder
/// got through the whole structure and stopped at the checksum (missing, wrong, or
/// followed by more bytes), the structure's bytes followed by their CRC32C. `None` if
/// decoding stopped before the checksum (or `data` is already valid).
pub fn fix_snapshot(data: &[u8]) -> Option<Vec<u8>> {
    let mut reader = TailFinder {
        bytes: data,
        pos: 0,
        last_word_at: None,
    };
    let err = kvs_server::snapshot::decode_from(&mut reader, Path::new("fuzz-input")).err()?;
    if !err.to_string().contains("checksum") {
        return None;
    }
    let end = reader.last_word_at?;
    let mut fixed = data[..end].to_vec();
    let crc = crc32c(&fixed);
    fixed.extend_from_slice(&crc.to_le_bytes());
    Some(fixed)
}

/// A snapshot file with its trailing checksum made to match ([`fix_snapshot`]), so the
/// decoded entries, session table and membership are re-encoded and read again.
pub fn snapshot_fixed(data: &[u8]) {
    match fix_snapshot(data) {
        Some(fixed) => {
            if let Err(e) = snapshot_decoded(&fixed) {
                let reason = e.to_string();
                assert!(
                    !reason.contains("checksum"),
                    "a snapshot with a matching checksum: {reason}"
                );
            }
        }
        None => snapshot(data),
    }
}

/// Header bytes of a backup file before the cluster name (`wire::backup`).
const BACKUP_FIXED_BYTES: usize = 62;

/// Rewrites a backup file so that its header and body checks pass: the header length and
/// checksum, the body length (all the bytes after the header) and checksum; the body's
/// own trailing checksum is fixed first ([`fix_snapshot`]). Magic, version, cluster name
/// and the other fields stay as the fuzzer made them. Unchanged if the header does not fit.
pub fn fix_backup(data: &[u8]) -> Vec<u8> {
    let Some(name_bytes) = data.get(60..62) else {
        return data.to_vec();
    };
    let name_len = usize::from(u16::from_le_bytes([name_bytes[0], name_bytes[1]]));
    let header_len = BACKUP_FIXED_BYTES + name_len + 4;
    if name_len > wire::backup::CLUSTER_NAME_BYTES_MAX || data.len() < header_len {
        return data.to_vec();
    }
    let body = &data[header_len..];
    let body = fix_snapshot(body).unwrap_or_else(|| body.to_vec());
    let mut out = data[..header_len].to_vec();
    out[12..16].copy_from_slice(&(header_len as u32).to_le_bytes());
    out[48..56].copy_from_slice(&(body.len() as u64).to_le_bytes());
    let body_crc = wire::backup::crc32c_append(wire::backup::body_crc32c_start(), &body);
    out[56..60].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c(&out[..header_len - 4]);
    out[header_len - 4..].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A backup file with its checksums and lengths made to match ([`fix_backup`]): a header
/// that reads makes the whole file verify, and the body is read as the snapshot that
/// `kvs-server restore` reads from it.
pub fn backup_fixed(data: &[u8]) {
    let file = fix_backup(data);
    let verified = wire::backup::verify(file.as_slice());
    let mut input = file.as_slice();
    if let Ok((header, header_len)) = wire::backup::BackupHeader::read_from(&mut input) {
        let again = header.encode().expect("a decoded header encodes");
        assert_eq!(&again[..], &file[..header_len]);
        if let Err(e) = verified {
            panic!("a backup with matching checksums does not verify: {e}");
        }
        snapshot(&file[header_len..]);
    }
}

/// How long the handshake may take on an in-memory stream that is always ready: never
/// reached unless the exchange waits for bytes that cannot come (a hang).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime builds");
}

/// The identity of the accepting node in [`handshake_stream`].
fn local_identity() -> ReplicaIdentity {
    ReplicaIdentity {
        cluster_uid: Uid([7; 16]),
        instance: Uid([1; 16]),
        members: vec![1, 2, 3],
        sessions_max: 1000,
        joining: false,
        configuration: 5,
        peer_addr: "10.0.0.1:7000".to_owned(),
    }
}

/// The expectations a port has, by `mode`: clients, replicas by id, replicas with a
/// matching identity, or the members of a running cluster (newcomers and joiners too).
fn expectation(mode: u8) -> HandshakeExpectation {
    match mode % 4 {
        0 => HandshakeExpectation::clients("prod"),
        1 => HandshakeExpectation::replicas("prod", [1, 2, 3]),
        2 => HandshakeExpectation::replicas_of("prod", local_identity()),
        _ => {
            let cluster = ClusterInfo {
                cluster_uid: Uid([7; 16]),
                members: vec![1, 2, 3],
                voters: vec![1, 2, 3, 4],
            };
            HandshakeExpectation {
                configuration: Some(5),
                ..HandshakeExpectation::members_of("prod", local_identity(), [1, 2, 3, 4], cluster)
            }
        }
    }
}

/// The hello the connecting side sends, by `mode`.
fn hello_for(mode: u8) -> Hello {
    match mode % 4 {
        0 => Hello::new("prod", PeerRole::Client),
        1 => Hello::new("prod", PeerRole::Replica(2)),
        2 => Hello::replica("prod", 2, local_identity()),
        _ => Hello::replica("prod", 4, ReplicaIdentity::joining(Uid([2; 16]), 1000)),
    }
}

/// The length of the record at the start of `bytes` as its header announces it, if the
/// header is there and its magic right.
fn record_len(bytes: &[u8]) -> Option<usize> {
    let body = wire::handshake::layout::body_len(bytes).ok()??;
    Some(wire::handshake::layout::RECORD_HEADER_BYTES + body)
}

/// The handshake as a byte stream: the first byte picks the side and the expectation, the
/// rest is what the other side sends, then the connection ends. Either side runs its real
/// async exchange (`server_handshake` or `client_handshake`, or `refuse_handshake` as a
/// port that requires TLS answers a plain connection) on it. Checked: it ends without
/// waiting (no timeout), consumes no byte past the record, accepts only what the record
/// decodes to, and the accepting side answers every hello with a reply that reads.
pub fn handshake_stream(data: &[u8]) {
    let Some((&mode, incoming)) = data.split_first() else {
        return;
    };
    let io = tokio::io::join(std::io::Cursor::new(incoming), Vec::new());
    let mut framed = Framed::new(io, LengthDelimitedCodec::new());
    let server = mode & 0x80 == 0;
    if mode & 0xc0 == 0x40 {
        refusing(incoming);
        return;
    }
    let hello = hello_for(mode);
    let expected = expectation(mode);
    let (accepted, refused) = RUNTIME.with(|rt| {
        rt.block_on(async {
            if server {
                let result =
                    wire::server_handshake(&mut framed, &expected, 1, HANDSHAKE_TIMEOUT).await;
                assert!(
                    !matches!(result, Err(WireError::HandshakeTimeout { .. })),
                    "the accepting side waited on a stream that had ended"
                );
                let refused = matches!(result, Err(WireError::Refused(_)));
                (result.ok(), refused)
            } else {
                let result = wire::client_handshake(&mut framed, &hello, HANDSHAKE_TIMEOUT).await;
                assert!(
                    !matches!(result, Err(WireError::HandshakeTimeout { .. })),
                    "the connecting side waited on a stream that had ended"
                );
                (result.ok().map(|_| hello.clone()), false)
            }
        })
    });
    let (cursor, written) = framed.into_inner().into_inner();
    let consumed = cursor.position() as usize;
    let record = &incoming[..consumed];
    if let Some(len) = record_len(incoming) {
        assert!(
            consumed <= len,
            "read {consumed} bytes of a {len}-byte record"
        );
    }
    if server {
        if let Some(hello) = accepted {
            assert_eq!(Hello::decode(record), Ok(hello), "accepted another hello");
            assert!(matches!(
                HelloReply::decode(&written),
                Ok(HelloReply::Accepted(_))
            ));
        }
        if refused {
            assert!(matches!(
                HelloReply::decode(&written),
                Ok(HelloReply::Refused(_))
            ));
        }
    } else {
        assert_eq!(hello.encode().ok().as_deref(), Some(&written[..]));
        if accepted.is_some() {
            assert!(matches!(
                HelloReply::decode(record),
                Ok(HelloReply::Accepted(_))
            ));
        }
    }
}

/// `data` as a data directory's identity file (`kvs_server::identity`) whose checksum line
/// matches: the text without its last line if that is a checksum line, ended by a newline,
/// then the checksum line of that. `None` if `data` is not UTF-8.
pub fn fix_identity(data: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(data).ok()?;
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    let last_start = trimmed.rfind('\n').map_or(0, |i| i + 1);
    let mut body = if trimmed[last_start..].starts_with("crc32c ") {
        text[..last_start].to_owned()
    } else {
        text.to_owned()
    };
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    let crc = crc32c(body.as_bytes());
    body.push_str(&format!("crc32c {crc:08x}\n"));
    Some(body)
}

/// A data directory's identity file with its checksum line made to match
/// ([`fix_identity`]): never a checksum error then; what decodes encodes and decodes again
/// to itself.
pub fn identity_file(data: &[u8]) {
    use kvs_server::identity::Identity;
    let Some(text) = fix_identity(data) else {
        return;
    };
    match Identity::decode(&text) {
        Ok(identity) => {
            let again = identity.encode();
            assert_eq!(Identity::decode(&again), Ok(identity));
        }
        Err(reason) => assert_ne!(reason, "checksum mismatch"),
    }
}

/// A certificate (DER) as a TLS peer or client presents it: the member id, the Common Name
/// and the expiry read from it (`kvs_server::tls::identity`).
pub fn certificate(data: &[u8]) {
    use kvs_server::tls::identity;
    let _ = identity::member_id(data);
    let _ = identity::common_name(data);
    let _ = identity::not_after_unix(data);
}

/// A port that requires TLS refusing a plain connection (`wire::refuse_handshake`) after
/// reading its first record from `incoming`: it ends without waiting, reads no byte past
/// the record, and its refusal is sent whenever the record was read.
fn refusing(incoming: &[u8]) {
    let mut io = tokio::io::join(std::io::Cursor::new(incoming), Vec::new());
    let refusal = wire::HandshakeRefusal::TlsRequired;
    let result = RUNTIME.with(|rt| {
        rt.block_on(wire::refuse_handshake(
            &mut io,
            refusal.clone(),
            HANDSHAKE_TIMEOUT,
        ))
    });
    assert!(
        !matches!(result, WireError::HandshakeTimeout { .. }),
        "the refusing side waited on a stream that had ended"
    );
    let (cursor, written) = io.into_inner();
    let consumed = cursor.position() as usize;
    if let Some(len) = record_len(incoming) {
        assert!(
            consumed <= len,
            "read {consumed} bytes of a {len}-byte record"
        );
    }
    if matches!(result, WireError::Refused(_)) {
        assert_eq!(
            HelloReply::decode(&written),
            Ok(HelloReply::Refused(refusal))
        );
    }
}
