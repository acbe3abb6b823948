//! Unit tests of the WAL format, recovery rules, rewrite and poisoning.

use std::fs;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::record::{
    chained_crc, length_check, marker_payload, RecordHeader, MARKER_PAYLOAD_BYTES,
    RECORD_HEADER_BYTES,
};
use super::segment::{SegmentHeader, SEGMENT_HEADER_BYTES};
use super::writer::SegmentWriter;
use super::{Corruption, Wal, WalError, WalOptions, PAYLOAD_BYTES_MAX};

const HEADER: u64 = SEGMENT_HEADER_BYTES as u64;
const RECORD_HEADER: u64 = RECORD_HEADER_BYTES as u64;

fn options(segment_bytes_max: u64) -> WalOptions {
    WalOptions {
        segment_bytes_max,
        // Small, so tests exercise both the buffered and the direct write paths.
        write_buffer_bytes: 64,
    }
}

/// Ten-byte payloads `rec-000000`, `rec-000001`, ... (each record is 22 bytes on disk).
fn payloads(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| format!("rec-{i:06}").into_bytes())
        .collect()
}

/// Offset of record `index` in a segment of equal-size records.
fn record_offset(index: u64, payload_len: u64) -> u64 {
    HEADER + index * (RECORD_HEADER + payload_len)
}

fn write_log(dir: &Path, records: &[Vec<u8>], opts: WalOptions) {
    let (mut wal, replayed) = Wal::open(dir, opts).expect("open");
    assert!(replayed.is_empty());
    for record in records {
        wal.append(record).expect("append");
    }
    wal.sync().expect("sync");
}

fn reopen(dir: &Path) -> Result<Vec<Vec<u8>>, WalError> {
    Wal::open(dir, options(1 << 20)).map(|(_, replayed)| replayed)
}

fn segment_paths(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    paths.sort();
    paths
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut contents = fs::read(path).expect("read");
    contents.extend_from_slice(bytes);
    fs::write(path, contents).expect("write");
}

fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let mut contents = fs::read(path).expect("read");
    let start = offset as usize;
    contents[start..start + bytes.len()].copy_from_slice(bytes);
    fs::write(path, contents).expect("write");
}

fn flip_bit(path: &Path, offset: u64) {
    let mut contents = fs::read(path).expect("read");
    contents[offset as usize] ^= 0x01;
    fs::write(path, contents).expect("write");
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("metadata").len()
}

fn expect_corrupt(result: Result<Vec<Vec<u8>>, WalError>) -> (PathBuf, u64, Corruption) {
    match result {
        Err(WalError::Corrupt {
            path,
            offset,
            reason,
        }) => (path, offset, reason),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Writes `count` records into one segment as one group commit, followed by the sync
/// marker the next group commit would start with (so the records are known to have been
/// synced, and damage to any of them is corruption), and returns its path.
fn single_segment_log(dir: &Path, count: usize) -> PathBuf {
    write_log(dir, &payloads(count), options(1 << 20));
    let path = segment_paths(dir)[0].clone();
    append_bytes(&path, &marker_after(&payloads(count), file_len(&path)));
    path
}

/// The bytes of the sync marker at `offset` of segment 1, chained after `records`.
fn marker_after(records: &[Vec<u8>], offset: u64) -> Vec<u8> {
    let mut prev = 0;
    for record in records {
        prev = chained_crc(prev, record.len() as u32, record);
    }
    let marker = marker_payload(offset, 1);
    let mut bytes = RecordHeader::for_marker(prev, &marker).encode().to_vec();
    bytes.extend_from_slice(&marker);
    bytes
}

/// Bytes of a sync marker record.
const MARKER: u64 = RECORD_HEADER + MARKER_PAYLOAD_BYTES as u64;

// ---- round trips -------------------------------------------------------------------

#[test]
fn open_creates_missing_dir_with_one_empty_segment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("a/b/wal");
    let (wal, replayed) = Wal::open(&dir, WalOptions::default()).expect("open");
    assert!(replayed.is_empty());
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(wal.size_bytes(), HEADER);
    assert_eq!(file_names(&dir), ["wal-00000000000000000001.log"]);
}

#[test]
fn roundtrip_across_segment_rollover_and_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let records = payloads(20);
    // 28 + 22 * 3 = 94 < 100 <= 28 + 22 * 4: four records per segment.
    let (mut wal, _) = Wal::open(tmp.path(), options(100)).expect("open");
    for record in &records {
        wal.append(record).expect("append");
    }
    wal.sync().expect("sync");
    assert_eq!(wal.segment_count(), 5);
    assert_eq!(wal.size_bytes(), 5 * HEADER + 20 * 22);
    drop(wal);
    let names = file_names(tmp.path());
    assert_eq!(names.len(), 5);
    assert_eq!(names[0], "wal-00000000000000000001.log");
    assert_eq!(names[4], "wal-00000000000000000005.log");
    for path in &segment_paths(tmp.path()) {
        assert_eq!(file_len(path), HEADER + 4 * 22);
    }
    let (wal, replayed) = Wal::open(tmp.path(), options(100)).expect("reopen");
    assert_eq!(replayed, records);
    assert_eq!(wal.segment_count(), 5);
    assert_eq!(wal.size_bytes(), 5 * HEADER + 20 * 22);
}

#[test]
fn empty_and_large_payloads_roundtrip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Larger than the 64-byte write buffer: written directly.
    let records = vec![Vec::new(), vec![7u8; 1000], Vec::new(), b"x".to_vec()];
    write_log(tmp.path(), &records, options(1 << 20));
    assert_eq!(reopen(tmp.path()).expect("reopen"), records);
}

#[test]
fn append_after_reopen_continues_the_chain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let records = payloads(10);
    write_log(tmp.path(), &records[..3], options(100));
    let (mut wal, replayed) = Wal::open(tmp.path(), options(100)).expect("reopen");
    assert_eq!(replayed, &records[..3]);
    for record in &records[3..] {
        wal.append(record).expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    assert_eq!(reopen(tmp.path()).expect("reopen"), records);
    // The first append after reopen starts with a sync marker (the 3 records before it
    // were synced), chained from the 3rd record's CRC; the 4th record chains from it.
    let first = fs::read(&segment_paths(tmp.path())[0]).expect("read");
    let crc_at = |at: u64| {
        let at = (at + 8) as usize;
        u32::from_le_bytes([first[at], first[at + 1], first[at + 2], first[at + 3]])
    };
    let marker_at = record_offset(3, 10);
    let marker = marker_payload(marker_at, 1);
    let marker_crc = chained_crc(
        crc_at(record_offset(2, 10)),
        super::record::MARKER_LEN_FIELD,
        &marker,
    );
    assert_eq!(crc_at(marker_at), marker_crc);
    assert_eq!(
        crc_at(marker_at + MARKER),
        chained_crc(marker_crc, 10, &records[3])
    );
}

#[test]
fn unsynced_appends_are_not_written_on_drop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(tmp.path(), options(1 << 20)).expect("open");
    wal.append(b"durable").expect("append");
    wal.sync().expect("sync");
    wal.append(b"buffered").expect("append");
    drop(wal);
    assert_eq!(reopen(tmp.path()).expect("reopen"), [b"durable".to_vec()]);
}

#[test]
fn unrelated_files_are_ignored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(2), options(1 << 20));
    fs::write(tmp.path().join("README"), b"hi").expect("write");
    fs::write(
        tmp.path().join("wal-1.log"),
        b"not ours: 20 digits required",
    )
    .expect("write");
    assert_eq!(reopen(tmp.path()).expect("reopen"), payloads(2));
}

#[test]
fn oversized_payload_is_rejected_without_poisoning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(tmp.path(), options(1 << 20)).expect("open");
    let big = vec![0u8; PAYLOAD_BYTES_MAX as usize + 1];
    assert!(matches!(
        wal.append(&big),
        Err(WalError::PayloadTooLarge { len_bytes, max_bytes: PAYLOAD_BYTES_MAX })
            if len_bytes == big.len()
    ));
    assert!(!wal.is_poisoned());
    wal.append(b"ok").expect("append");
    wal.sync().expect("sync");
    drop(wal);
    assert_eq!(reopen(tmp.path()).expect("reopen"), [b"ok".to_vec()]);
}

// ---- torn tails: truncated, reported, appendable ----------------------------------

/// Opens a log whose last segment has `tail` appended after 3 valid records; expects
/// the 3 records back, the file truncated to them, and appending to work afterwards.
fn assert_tail_is_torn(tail: &[u8]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = single_segment_log(tmp.path(), 3);
    let valid_len = file_len(&path);
    append_bytes(&path, tail);
    let (mut wal, replayed) = Wal::open(tmp.path(), options(1 << 20)).expect("open");
    assert_eq!(replayed, payloads(3));
    assert_eq!(file_len(&path), valid_len, "torn tail must be truncated");
    wal.append(b"after").expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let mut expected = payloads(3);
    expected.push(b"after".to_vec());
    assert_eq!(reopen(tmp.path()).expect("reopen"), expected);
}

/// A valid encoding of `payload` as the 4th record of `payloads(3)`.
fn fourth_record(payload: &[u8]) -> Vec<u8> {
    let mut prev = 0;
    for record in payloads(3) {
        prev = chained_crc(prev, 10, &record);
    }
    let marker = marker_payload(record_offset(3, 10), 1);
    prev = chained_crc(prev, super::record::MARKER_LEN_FIELD, &marker);
    let len_bytes = payload.len() as u32;
    let mut bytes = RecordHeader::for_payload(prev, len_bytes, payload)
        .encode()
        .to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

#[test]
fn torn_record_header_is_truncated() {
    assert_tail_is_torn(&fourth_record(b"lost")[..5]);
}

#[test]
fn torn_payload_is_truncated() {
    let record = fourth_record(&[9u8; 100]);
    assert_tail_is_torn(&record[..RECORD_HEADER_BYTES + 10]);
}

#[test]
fn complete_tail_record_with_garbage_checksum_is_truncated() {
    let mut record = fourth_record(b"lost-rec");
    record[8] ^= 0xff;
    assert_tail_is_torn(&record);
}

#[test]
fn garbage_checksum_followed_by_zeros_is_truncated() {
    let mut record = fourth_record(b"lost-rec");
    record[8] ^= 0xff;
    record.extend_from_slice(&[0u8; 300]);
    assert_tail_is_torn(&record);
}

#[test]
fn zero_filled_tail_is_truncated() {
    assert_tail_is_torn(&[0u8; 4096]);
}

#[test]
fn replayed_record_at_the_tail_is_caught_by_the_chain_and_dropped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = single_segment_log(tmp.path(), 3);
    let bytes = fs::read(&path).expect("read");
    let last = record_offset(2, 10) as usize;
    let valid_len = bytes.len() as u64;
    append_bytes(&path, &bytes[last..]);
    assert_eq!(reopen(tmp.path()).expect("reopen"), payloads(3));
    assert_eq!(file_len(&path), valid_len);
}

#[test]
fn blank_last_segment_is_recreated() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(8), options(100));
    let paths = segment_paths(tmp.path());
    assert_eq!(paths.len(), 2);
    fs::write(&paths[1], [0u8; 10]).expect("write");
    let (mut wal, replayed) = Wal::open(tmp.path(), options(100)).expect("open");
    assert_eq!(replayed, payloads(4));
    assert_eq!(file_len(&paths[1]), HEADER);
    wal.append(b"next").expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let mut expected = payloads(4);
    expected.push(b"next".to_vec());
    assert_eq!(reopen(tmp.path()).expect("reopen"), expected);
}

// ---- corruption: refuse, with file and offset ---------------------------------------

#[test]
fn flipped_bit_in_middle_record_is_corrupt_at_its_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = single_segment_log(tmp.path(), 5);
    let len = file_len(&path);
    flip_bit(&path, record_offset(2, 10) + RECORD_HEADER + 3);
    let (bad_path, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!(bad_path, path);
    assert_eq!(offset, record_offset(2, 10));
    assert_eq!(offset, 72);
    assert_eq!(reason, Corruption::ChecksumMismatch);
    assert_eq!(file_len(&path), len, "corruption must never be truncated");
}

#[test]
fn corrupt_error_message_names_file_and_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = single_segment_log(tmp.path(), 5);
    flip_bit(&path, record_offset(1, 10) + RECORD_HEADER);
    let message = reopen(tmp.path()).expect_err("corrupt").to_string();
    assert_eq!(
        message,
        format!(
            "corrupt WAL data in {} at offset 50: checksum mismatch \
             (record may have been acknowledged; refusing to start)",
            path.display()
        )
    );
}

#[test]
fn flipped_bit_in_last_record_of_a_non_last_segment_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(12), options(100));
    let paths = segment_paths(tmp.path());
    assert_eq!(paths.len(), 3);
    // Followed only by end of file, but a later segment exists: it was acknowledged.
    flip_bit(&paths[1], record_offset(3, 10) + RECORD_HEADER);
    let (bad_path, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!(bad_path, paths[1]);
    assert_eq!(offset, record_offset(3, 10));
    assert_eq!(reason, Corruption::ChecksumMismatch);
}

#[test]
fn truncated_non_last_segment_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(8), options(100));
    let paths = segment_paths(tmp.path());
    let len = file_len(&paths[0]);
    fs::OpenOptions::new()
        .write(true)
        .open(&paths[0])
        .expect("open")
        .set_len(len - 3)
        .expect("set_len");
    let (bad_path, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!(bad_path, paths[0]);
    assert_eq!(offset, record_offset(3, 10));
    assert_eq!(
        reason,
        Corruption::TruncatedPayload {
            len_bytes: 10,
            available_bytes: 7
        }
    );
}

#[test]
fn swapped_records_are_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = single_segment_log(tmp.path(), 5);
    let mut bytes = fs::read(&path).expect("read");
    let (a, b) = (record_offset(1, 10) as usize, record_offset(2, 10) as usize);
    let first = bytes[a..b].to_vec();
    let second = bytes[b..b + 22].to_vec();
    bytes[a..b].copy_from_slice(&second);
    bytes[b..b + 22].copy_from_slice(&first);
    fs::write(&path, bytes).expect("write");
    let (_, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!(offset, record_offset(1, 10));
    assert_eq!(reason, Corruption::ChecksumMismatch);
}

#[test]
fn replayed_record_in_the_middle_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = single_segment_log(tmp.path(), 4);
    let mut bytes = fs::read(&path).expect("read");
    let first = record_offset(0, 10) as usize;
    let copy = bytes[first..first + 22].to_vec();
    let at = record_offset(2, 10) as usize;
    bytes[at..at + 22].copy_from_slice(&copy);
    fs::write(&path, bytes).expect("write");
    let (_, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!(offset, record_offset(2, 10));
    assert_eq!(reason, Corruption::ChecksumMismatch);
}

#[test]
fn oversized_length_field_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = single_segment_log(tmp.path(), 4);
    let len_bytes = PAYLOAD_BYTES_MAX + 1;
    let mut field = len_bytes.to_le_bytes().to_vec();
    field.extend_from_slice(&length_check(len_bytes).to_le_bytes());
    patch(&path, record_offset(1, 10), &field);
    let (_, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!(offset, record_offset(1, 10));
    assert_eq!(reason, Corruption::LengthTooLarge { len_bytes });
}

#[test]
fn enlarged_length_in_last_record_is_corrupt_not_torn() {
    // Without the length check this would read as a payload cut off by end of file.
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = single_segment_log(tmp.path(), 4);
    flip_bit(&path, record_offset(3, 10) + 1);
    let (_, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!(offset, record_offset(3, 10));
    assert_eq!(reason, Corruption::LengthCheckMismatch);
}

#[test]
fn garbage_followed_by_data_but_no_sync_marker_is_torn() {
    // What a power cut leaves when a later sector of an unsynced group commit landed and
    // an earlier one did not: nothing proves the damaged record was ever synced.
    let mut tail = fourth_record(b"unsynced!");
    tail[8] ^= 0xff;
    tail.extend_from_slice(b"more data of the same group commit");
    assert_tail_is_torn(&tail);
}

#[test]
fn garbage_followed_by_a_sync_marker_is_corrupt() {
    // A sync marker after the damage proves it was synced: possibly acknowledged.
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = single_segment_log(tmp.path(), 3);
    let marker_at = record_offset(3, 10);
    let mut tail = fourth_record(b"maybe-ack");
    tail[8] ^= 0xff;
    let next_marker_at = marker_at + MARKER + tail.len() as u64;
    let mut marker = RecordHeader::for_marker(0, &marker_payload(next_marker_at, 1))
        .encode()
        .to_vec();
    marker.extend_from_slice(&marker_payload(next_marker_at, 1));
    tail.extend_from_slice(&marker);
    append_bytes(&path, &tail);
    let (_, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!(offset, marker_at + MARKER);
    assert_eq!(reason, Corruption::ChecksumMismatch);
}

#[test]
fn a_marker_out_of_place_is_not_proof() {
    // A marker copied elsewhere (or forged in a payload) names another offset.
    let mut tail = fourth_record(b"unsynced!");
    tail[8] ^= 0xff;
    let mut marker = RecordHeader::for_marker(0, &marker_payload(28, 1))
        .encode()
        .to_vec();
    marker.extend_from_slice(&marker_payload(28, 1));
    tail.extend_from_slice(&marker);
    assert_tail_is_torn(&tail);
}

#[test]
fn bad_segment_magic_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = single_segment_log(tmp.path(), 2);
    patch(&path, 0, b"X");
    let (bad_path, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!((bad_path, offset, reason), (path, 0, Corruption::BadMagic));
}

#[test]
fn unsupported_segment_version_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = single_segment_log(tmp.path(), 2);
    patch(&path, 8, &3u16.to_le_bytes());
    let (_, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!((offset, reason), (0, Corruption::UnsupportedVersion(3)));
}

#[test]
fn flipped_bit_in_segment_header_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = single_segment_log(tmp.path(), 2);
    flip_bit(&path, 21);
    let (_, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!((offset, reason), (0, Corruption::HeaderChecksumMismatch));
}

#[test]
fn segments_swapped_by_name_are_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(12), options(100));
    let paths = segment_paths(tmp.path());
    let scratch = tmp.path().join("scratch");
    fs::rename(&paths[0], &scratch).expect("rename");
    fs::rename(&paths[1], &paths[0]).expect("rename");
    fs::rename(&scratch, &paths[1]).expect("rename");
    let (bad_path, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!(bad_path, paths[1]);
    assert_eq!(offset, 0);
    assert_eq!(
        reason,
        Corruption::SequenceMismatch {
            expected: 2,
            found: 1
        }
    );
}

#[test]
fn segment_from_another_log_breaks_the_chain() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    write_log(&one, &payloads(12), options(100));
    let other: Vec<Vec<u8>> = payloads(12).into_iter().rev().collect();
    write_log(&two, &other, options(100));
    let (ours, theirs) = (segment_paths(&one), segment_paths(&two));
    fs::copy(&theirs[1], &ours[1]).expect("copy");
    let (bad_path, offset, reason) = expect_corrupt(reopen(&one));
    assert_eq!((bad_path, offset), (ours[1].clone(), 0));
    assert!(matches!(reason, Corruption::ChainSeedMismatch { .. }));
}

#[test]
fn missing_middle_segment_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(12), options(100));
    let paths = segment_paths(tmp.path());
    fs::remove_file(&paths[1]).expect("remove");
    let (bad_path, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!((bad_path, offset), (paths[2].clone(), 0));
    assert_eq!(reason, Corruption::MissingSegment { expected: 2 });
}

#[test]
fn missing_first_segment_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(12), options(100));
    let paths = segment_paths(tmp.path());
    fs::remove_file(&paths[0]).expect("remove");
    let (bad_path, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!((bad_path, offset), (paths[1].clone(), 0));
    assert!(matches!(
        reason,
        Corruption::ChainSeedMismatch { expected: 0, .. }
    ));
}

#[test]
fn short_non_last_segment_header_is_corrupt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(8), options(100));
    let paths = segment_paths(tmp.path());
    fs::write(&paths[0], [0u8; 5]).expect("write");
    let (bad_path, offset, reason) = expect_corrupt(reopen(tmp.path()));
    assert_eq!((bad_path, offset), (paths[0].clone(), 0));
    assert_eq!(reason, Corruption::TruncatedSegmentHeader { len_bytes: 5 });
}

// ---- rewrite (compaction) -----------------------------------------------------------

#[test]
fn rewrite_then_append_then_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(tmp.path(), options(100)).expect("open");
    for record in payloads(10) {
        wal.append(&record).expect("append");
    }
    wal.sync().expect("sync");
    assert_eq!(wal.segment_count(), 3);
    let compacted = [b"a".to_vec(), b"bb".to_vec(), b"ccc".to_vec()];
    wal.rewrite(&compacted).expect("rewrite");
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(wal.size_bytes(), HEADER + 3 * RECORD_HEADER + 6);
    assert_eq!(file_names(tmp.path()), ["wal-00000000000000000004.log"]);
    wal.append(b"d").expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let mut expected = compacted.to_vec();
    expected.push(b"d".to_vec());
    assert_eq!(reopen(tmp.path()).expect("reopen"), expected);
}

#[test]
fn rewrite_then_rollover_chains_from_the_superseding_segment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(tmp.path(), options(100)).expect("open");
    for record in payloads(6) {
        wal.append(&record).expect("append");
    }
    wal.rewrite(payloads(2)).expect("rewrite");
    let more = payloads(9);
    for record in &more[2..] {
        wal.append(record).expect("append");
    }
    wal.sync().expect("sync");
    // Segment 3 (superseding) holds 2 + 2 records, segment 4 holds 4, segment 5 holds 1.
    assert_eq!(wal.segment_count(), 3);
    drop(wal);
    assert_eq!(
        file_names(tmp.path()),
        [
            "wal-00000000000000000003.log",
            "wal-00000000000000000004.log",
            "wal-00000000000000000005.log"
        ]
    );
    assert_eq!(reopen(tmp.path()).expect("reopen"), more);
}

#[test]
fn rewrite_to_nothing_then_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(5), options(100));
    let (mut wal, _) = Wal::open(tmp.path(), options(100)).expect("open");
    wal.rewrite(std::iter::empty::<&[u8]>()).expect("rewrite");
    drop(wal);
    assert!(reopen(tmp.path()).expect("reopen").is_empty());
}

#[test]
fn crash_before_rename_leaves_the_old_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(10), options(100));
    let before = file_names(tmp.path());
    // What rewrite leaves if it dies before publishing: a complete or partial temp file.
    let header = SegmentHeader {
        sequence: 4,
        chain_seed: 0,
        supersedes: true,
        version: super::segment::SEGMENT_FORMAT_VERSION,
    };
    let mut temp =
        SegmentWriter::create_temp(&crate::disk::RealDisk, tmp.path(), header, 64).expect("temp");
    let record = RecordHeader::for_payload(0, 3, b"new");
    temp.append_record(&record, b"new").expect("append");
    temp.flush().expect("flush");
    drop(temp);
    assert_eq!(file_names(tmp.path()).len(), 4);
    assert_eq!(reopen(tmp.path()).expect("reopen"), payloads(10));
    assert_eq!(file_names(tmp.path()), before, "temp file must be removed");
}

#[test]
fn crash_before_deleting_old_segments_yields_the_new_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("wal");
    write_log(&dir, &payloads(10), options(100));
    let old: Vec<(PathBuf, Vec<u8>)> = segment_paths(&dir)
        .into_iter()
        .map(|path| {
            let bytes = fs::read(&path).expect("read");
            (path, bytes)
        })
        .collect();
    let (mut wal, _) = Wal::open(&dir, options(100)).expect("open");
    wal.rewrite([b"only".to_vec()]).expect("rewrite");
    drop(wal);
    // Put the old segments back, as if the deletions never reached the disk.
    for (path, bytes) in &old {
        fs::write(path, bytes).expect("restore");
    }
    assert_eq!(file_names(&dir).len(), 4);
    let (wal, replayed) = Wal::open(&dir, options(100)).expect("reopen");
    assert_eq!(replayed, [b"only".to_vec()]);
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(file_names(&dir), ["wal-00000000000000000004.log"]);
}

#[test]
fn crash_midway_through_deletions_yields_the_new_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(10), options(100));
    let paths = segment_paths(tmp.path());
    let last_old = fs::read(&paths[2]).expect("read");
    let (mut wal, _) = Wal::open(tmp.path(), options(100)).expect("open");
    wal.rewrite([b"x".to_vec(), b"y".to_vec()])
        .expect("rewrite");
    drop(wal);
    // Segments 1 and 2 deleted, segment 3 not: stale, and even damaged it is not read.
    fs::write(&paths[2], &last_old[..7]).expect("restore");
    assert_eq!(
        reopen(tmp.path()).expect("reopen"),
        [b"x".to_vec(), b"y".to_vec()]
    );
    assert_eq!(file_names(tmp.path()), ["wal-00000000000000000004.log"]);
}

#[test]
fn rewrite_with_oversized_payload_keeps_the_old_log() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(3), options(100));
    let (mut wal, _) = Wal::open(tmp.path(), options(100)).expect("open");
    let big = vec![0u8; PAYLOAD_BYTES_MAX as usize + 1];
    let result = wal.rewrite([b"ok".to_vec(), big]);
    assert!(matches!(result, Err(WalError::PayloadTooLarge { .. })));
    assert!(!wal.is_poisoned());
    assert_eq!(file_names(tmp.path()), ["wal-00000000000000000001.log"]);
    wal.append(b"more").expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let mut expected = payloads(3);
    expected.push(b"more".to_vec());
    assert_eq!(reopen(tmp.path()).expect("reopen"), expected);
}

// ---- poisoning ----------------------------------------------------------------------

#[test]
fn failed_sync_poisons_every_later_operation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(tmp.path(), options(1 << 20)).expect("open");
    wal.append(b"one").expect("append");
    wal.fail_next_sync = true;
    let error = wal.sync().expect_err("injected failure");
    assert!(matches!(
        error,
        WalError::Io {
            op: "fdatasync",
            ..
        }
    ));
    assert!(error.to_string().contains("wal-00000000000000000001.log"));
    assert!(wal.is_poisoned());
    assert!(matches!(wal.append(b"two"), Err(WalError::Poisoned)));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
    assert!(matches!(wal.rewrite([b"x"]), Err(WalError::Poisoned)));
    drop(wal);
    // Recovery by reopening still works and never sees the refused append.
    assert_eq!(reopen(tmp.path()).expect("reopen"), [b"one".to_vec()]);
}

// ---- property: any truncation of the last segment opens to a prefix -----------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn truncating_the_last_segment_yields_a_prefix(
        records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..30),
        segment_bytes_max in 60u64..300,
        cut_fraction in 0.0f64..=1.0,
    ) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(tmp.path(), options(segment_bytes_max)).expect("open");
        for record in &records {
            wal.append(record).expect("append");
        }
        wal.sync().expect("sync");
        let sealed_records: usize = {
            // Records in sealed segments can never be lost to a truncation of the last.
            let paths = segment_paths(tmp.path());
            let last = fs::read(&paths[paths.len() - 1]).expect("read");
            let mut in_last = 0;
            let mut at = SEGMENT_HEADER_BYTES;
            while at < last.len() {
                let len = u32::from_le_bytes([last[at], last[at + 1], last[at + 2], last[at + 3]]);
                at += RECORD_HEADER_BYTES + len as usize;
                in_last += 1;
            }
            records.len() - in_last
        };
        drop(wal);
        let paths = segment_paths(tmp.path());
        let last = &paths[paths.len() - 1];
        let cut = (file_len(last) as f64 * cut_fraction) as u64;
        fs::OpenOptions::new().write(true).open(last).expect("open").set_len(cut).expect("set_len");

        let (mut wal, replayed) = Wal::open(tmp.path(), options(segment_bytes_max)).expect("reopen");
        prop_assert!(replayed.len() >= sealed_records);
        prop_assert_eq!(&replayed[..], &records[..replayed.len()]);
        // The repaired log accepts appends that survive another reopen.
        wal.append(b"after").expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let (_, again) = Wal::open(tmp.path(), options(segment_bytes_max)).expect("reopen");
        prop_assert_eq!(again.len(), replayed.len() + 1);
        prop_assert_eq!(&again[..replayed.len()], &replayed[..]);
        prop_assert_eq!(&again[replayed.len()], b"after");
    }
}

#[test]
fn a_log_of_the_first_format_is_read_and_continued_in_a_new_segment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write_log(tmp.path(), &payloads(3), options(1 << 20));
    let path = segment_paths(tmp.path())[0].clone();
    // Rewrite the header as version 1 (no sync markers), with its checksum.
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header.copy_from_slice(&fs::read(&path).expect("read")[..SEGMENT_HEADER_BYTES]);
    header[8..10].copy_from_slice(&1u16.to_le_bytes());
    let crc = crc32c::crc32c(&header[..24]);
    header[24..28].copy_from_slice(&crc.to_le_bytes());
    patch(&path, 0, &header);
    // The older torn rule applies to it: garbage followed by data is corrupt there.
    let (mut wal, replayed) = Wal::open(tmp.path(), options(1 << 20)).expect("open v1");
    assert_eq!(replayed, payloads(3));
    assert_eq!(
        wal.segment_count(),
        2,
        "continues in a segment of the current format"
    );
    wal.append(b"after").expect("append");
    wal.sync().expect("sync");
    drop(wal);
    let mut expected = payloads(3);
    expected.push(b"after".to_vec());
    assert_eq!(reopen(tmp.path()).expect("reopen"), expected);
    let mut tail = fourth_record(b"v1-tail");
    tail[8] ^= 0xff;
    tail.extend_from_slice(b"data");
    append_bytes(&path, &tail);
    assert!(matches!(reopen(tmp.path()), Err(WalError::Corrupt { .. })));
}
