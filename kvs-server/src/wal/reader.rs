//! Reading one segment during recovery, and telling a torn tail from corruption.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::error::{corrupt, io_err, Corruption, WalError};
use super::record::{RecordHeader, RECORD_HEADER_BYTES};
use super::segment::{SegmentHeader, SEGMENT_HEADER_BYTES};

const READ_BUFFER_BYTES: usize = 256 * 1024;

/// What a segment's header turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderRead {
    /// A valid header.
    Valid(SegmentHeader),
    /// The last segment is shorter than a header, or nothing but zero bytes. It cannot
    /// hold a record, so nothing in it was ever acknowledged.
    Blank,
}

/// Reads the header of the last segment, which alone may be [`HeaderRead::Blank`].
pub(crate) fn read_last_segment_header(path: &Path, sequence: u64) -> Result<HeaderRead, WalError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let len_bytes = file.metadata().map_err(io_err("stat", path))?.len();
    if len_bytes < SEGMENT_HEADER_BYTES as u64 || rest_is_zero(&mut file, path)? {
        return Ok(HeaderRead::Blank);
    }
    read_segment_header(path, sequence).map(HeaderRead::Valid)
}

/// Reads and checks the header of segment `sequence` at `path`.
pub(crate) fn read_segment_header(path: &Path, sequence: u64) -> Result<SegmentHeader, WalError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let len_bytes = file.metadata().map_err(io_err("stat", path))?.len();
    if len_bytes < SEGMENT_HEADER_BYTES as u64 {
        let reason = Corruption::TruncatedSegmentHeader { len_bytes };
        return Err(corrupt(path, 0, reason));
    }
    let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
    file.read_exact(&mut bytes).map_err(io_err("read", path))?;
    let header = SegmentHeader::decode(&bytes).map_err(|reason| corrupt(path, 0, reason))?;
    if header.sequence != sequence {
        let reason = Corruption::SequenceMismatch {
            expected: sequence,
            found: header.sequence,
        };
        return Err(corrupt(path, 0, reason));
    }
    Ok(header)
}

/// The outcome of reading a segment's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ScannedSegment {
    /// Offset just past the last valid record.
    pub valid_end: u64,
    /// Checksum of the last valid record (the seed if there is none).
    pub chain_end: u32,
    /// Set if the segment ends in a torn tail starting at `valid_end`.
    pub torn: Option<Corruption>,
}

/// One attempt to read a record.
enum RecordRead {
    /// A record that passed every check.
    Valid {
        header: RecordHeader,
        payload: Vec<u8>,
    },
    /// A record that did not.
    Defective(Defect),
}

/// Why the record at some offset could not be accepted.
struct Defect {
    reason: Corruption,
    /// The record runs into end of file: nothing can follow it.
    incomplete: bool,
}

/// Reads every record of a segment, pushing payloads to `payloads`.
///
/// The rule: a defective record is a torn tail only in the last segment, and only if it
/// is cut off by end of file or followed by nothing but zero bytes (a crash mid-append
/// leaves exactly that; an acknowledged record was fsynced and is followed by data or
/// nothing). Anything else is [`WalError::Corrupt`].
pub(crate) fn scan_records(
    path: &Path,
    chain_seed: u32,
    is_last: bool,
    payloads: &mut Vec<Vec<u8>>,
) -> Result<ScannedSegment, WalError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let file_len_bytes = file.metadata().map_err(io_err("stat", path))?.len();
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
    let mut offset = SEGMENT_HEADER_BYTES as u64;
    reader
        .seek(SeekFrom::Start(offset))
        .map_err(io_err("seek", path))?;
    let mut chain = chain_seed;
    loop {
        let remaining_bytes = file_len_bytes.saturating_sub(offset);
        if remaining_bytes == 0 {
            return Ok(ScannedSegment {
                valid_end: offset,
                chain_end: chain,
                torn: None,
            });
        }
        let defect = match read_record(&mut reader, path, remaining_bytes, chain)? {
            RecordRead::Valid { header, payload } => {
                payloads.push(payload);
                chain = header.crc;
                offset += RECORD_HEADER_BYTES as u64 + u64::from(header.len_bytes);
                continue;
            }
            RecordRead::Defective(defect) => defect,
        };
        // The reader now sits just past the defective record (or at end of file).
        let torn = is_last && (defect.incomplete || rest_is_zero(&mut reader, path)?);
        if !torn {
            return Err(corrupt(path, offset, defect.reason));
        }
        return Ok(ScannedSegment {
            valid_end: offset,
            chain_end: chain,
            torn: Some(defect.reason),
        });
    }
}

/// Reads the record at the reader's position, given how many bytes the file has left.
fn read_record(
    reader: &mut impl Read,
    path: &Path,
    remaining_bytes: u64,
    prev_crc: u32,
) -> Result<RecordRead, WalError> {
    if remaining_bytes < RECORD_HEADER_BYTES as u64 {
        return Ok(RecordRead::Defective(Defect {
            reason: Corruption::TruncatedRecordHeader,
            incomplete: true,
        }));
    }
    let mut header_bytes = [0u8; RECORD_HEADER_BYTES];
    reader
        .read_exact(&mut header_bytes)
        .map_err(io_err("read", path))?;
    let header = RecordHeader::decode(&header_bytes);
    if let Err(reason) = header.validate_length() {
        return Ok(RecordRead::Defective(Defect {
            reason,
            incomplete: false,
        }));
    }
    let available_bytes = remaining_bytes - RECORD_HEADER_BYTES as u64;
    if u64::from(header.len_bytes) > available_bytes {
        return Ok(RecordRead::Defective(Defect {
            reason: Corruption::TruncatedPayload {
                len_bytes: header.len_bytes,
                available_bytes,
            },
            incomplete: true,
        }));
    }
    // Bounded by PAYLOAD_BYTES_MAX and by the bytes actually in the file.
    let mut payload = vec![0u8; header.len_bytes as usize];
    reader
        .read_exact(&mut payload)
        .map_err(io_err("read", path))?;
    if let Err(reason) = header.validate_payload(prev_crc, &payload) {
        return Ok(RecordRead::Defective(Defect {
            reason,
            incomplete: false,
        }));
    }
    Ok(RecordRead::Valid { header, payload })
}

/// Whether everything from the reader's position to end of file is zero bytes
/// (file systems zero-fill space allocated but never written before a crash).
fn rest_is_zero(reader: &mut impl Read, path: &Path) -> Result<bool, WalError> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read_bytes = match reader.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", path)(e)),
        };
        if chunk[..read_bytes].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}
