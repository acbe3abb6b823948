//! Snapshot streams and backup files: the messages survive encode then decode, the largest
//! chunk fits a default frame, and reading a backup file never panics whatever its bytes.

use bytes::Bytes;
use proptest::prelude::*;
use wire::backup::{self, BackupHeader};
use wire::{
    decode, encode, ClientRequest, ClientResponse, ErrorReply, Op, Reply, SnapshotStream, Uid,
    SNAPSHOT_SAVES_MAX, SNAPSHOT_STREAM_CHUNK_BYTES,
};

fn roundtrip<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(msg).expect("encodes");
    let back: T = decode(&bytes).expect("decodes");
    assert_eq!(&back, msg);
}

#[test]
fn snapshot_requests_and_answers_roundtrip() {
    for op in [
        Op::SnapshotSave,
        Op::SnapshotRead {
            stream: 7,
            offset: u64::MAX,
        },
    ] {
        roundtrip(&ClientRequest {
            id: 3,
            session: None,
            op,
        });
    }
    let stream = SnapshotStream {
        stream: 1,
        slot: 99,
        keys: 1_000_000,
        bytes: 275_000_000,
        cluster_name: "prod".into(),
        cluster_uid: [9; 16],
    };
    for result in [
        Ok(Reply::SnapshotStream(Box::new(stream))),
        Ok(Reply::SnapshotChunk {
            data: Bytes::from_static(b"chunk"),
        }),
        Err(ErrorReply::SnapshotBusy {
            saves_max: SNAPSHOT_SAVES_MAX as u64,
        }),
    ] {
        roundtrip(&ClientResponse { id: 4, result });
    }
}

#[test]
fn the_largest_chunk_fits_a_default_frame() {
    let response = ClientResponse {
        id: u64::MAX,
        result: Ok(Reply::SnapshotChunk {
            data: Bytes::from(vec![0xab; SNAPSHOT_STREAM_CHUNK_BYTES]),
        }),
    };
    let bytes = encode(&response).expect("encodes");
    assert!(
        bytes.len() <= wire::FRAME_BYTES_MAX_DEFAULT,
        "{}",
        bytes.len()
    );
}

#[test]
fn the_busy_refusal_says_how_many_saves_are_served() {
    let text = ErrorReply::SnapshotBusy { saves_max: 2 }.to_string();
    assert!(text.starts_with("busy") && text.contains('2'), "{text}");
}

proptest! {
    #[test]
    fn reading_any_bytes_as_a_backup_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = backup::verify(&bytes[..]);
    }

    #[test]
    fn any_header_reads_back(
        slot in any::<u64>(),
        keys in any::<u64>(),
        uid in any::<[u8; 16]>(),
        name in "[a-z0-9-]{0,40}",
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let header = BackupHeader {
            version: backup::VERSION,
            cluster_uid: Uid(uid),
            cluster_name: name,
            slot,
            keys,
            body_bytes: body.len() as u64,
            body_crc32c: backup::crc32c_append(backup::body_crc32c_start(), &body),
        };
        let mut file = header.encode().expect("encodes");
        let header_len = file.len();
        file.extend_from_slice(&body);
        let mut input = &file[..];
        let (read, len) = BackupHeader::read_from(&mut input).expect("reads");
        prop_assert_eq!(&read, &header);
        prop_assert_eq!(len, header_len);
        prop_assert_eq!(backup::verify(&file[..]).expect("valid"), header);
    }
}
